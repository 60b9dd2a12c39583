"""What ``vm run PATH`` and ``vm workspace prepare`` declare when ``banger vm`` loads:
``vm run``'s workspace flags and its ``--`` split (the copy modes are
``banger.model.workspace_modes``, which imports nothing).

Owns: only what click needs to build those commands. Must not: import the workspace
machinery (``run_workspace``, ``banger.workspace``, ``banger.host.runner`` and asyncio), so
that ``banger vm list`` and its siblings do not pay for it (docs/explanation/cli-startup.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

RUN_ARGV = "banger.run_argv"
#: The keyword arguments ``run_workspace_options`` adds, besides ``dry_run``.
WORKSPACE_KEYS = ("include_untracked", "branch", "from_ref")

F = TypeVar("F", bound=Callable[..., Any])


def run_workspace_options(func: F) -> F:
    """``vm run``'s workspace flags (they need a PATH)."""
    options = (
        click.option(
            "--include-untracked",
            is_flag=True,
            help="Also copy untracked files git does not ignore (ignored files never).",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            help="Print the files and mode that would be copied; create nothing.",
        ),
        click.option("--branch", metavar="NAME", help="Create and check out a guest-only branch."),
        click.option(
            "--from", "from_ref", metavar="REF", help="Start --branch at REF (its committed tree)."
        ),
    )
    for option in reversed(options):
        func = option(func)
    return func


class RunCommand(click.Command):
    """A command whose words after the first ``--`` are kept apart, verbatim.

    click would merge them into the positional arguments, so ``vm run ./repo -- make``
    could not tell the path from the command; they are in ``ctx.meta[RUN_ARGV]``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta[RUN_ARGV] = tuple(args[cut + 1 :])
            args = args[:cut]
        else:
            ctx.meta[RUN_ARGV] = ()
        return super().parse_args(ctx, args)
