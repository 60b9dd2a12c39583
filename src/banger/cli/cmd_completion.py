"""``banger completion bash|zsh|fish``: print the shell's completion script (SPEC §1).

Owns: choosing click's completion class for the shell. The script calls back into
``banger`` with ``_BANGER_COMPLETE`` set; live names come from ``banger.cli.completion``.
Must not: talk to the daemon.
"""

from __future__ import annotations

import sys

import click
from click.shell_completion import get_completion_class

#: The variable click's generated scripts set when they ask ``banger`` for candidates.
COMPLETE_VAR = "_BANGER_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL; VM, image and kernel names complete live.

    \b
    bash: eval "$(banger completion bash)"            (in ~/.bashrc; bash >= 4.4)
    zsh:  eval "$(banger completion zsh)"             (in ~/.zshrc, after compinit)
    fish: banger completion fish > ~/.config/fish/completions/banger.fish

    Names are asked of a daemon that is already running; completion never starts one.
    """
    cls = get_completion_class(shell)
    assert cls is not None  # click.Choice admitted only shells click supports
    root = ctx.find_root()
    script = cls(root.command, {}, "banger", COMPLETE_VAR).source()
    sys.stdout.write(script if script.endswith("\n") else script + "\n")
