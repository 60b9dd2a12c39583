"""``banger``: the root command, lazy loading of subcommands, and error rendering.

Owns: turning every outcome into an exit status (0 ok, 1 error, 2 usage, 130 Ctrl-C)
and printing errors, click's usage errors included, as ``error:``/``hint:`` lines: one of
the two places errors are rendered; and ``--debug`` accepted after any subcommand too.
Must not: import heavy modules at start-up; subcommands load on demand.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping

import click

from banger.cli.session import Session

#: command name -> (module, attribute, one-line help shown by `banger --help`)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "version": ("banger.cli.cmd_misc", "version", "Show the CLI's and the daemon's build."),
    "doctor": ("banger.cli.cmd_misc", "doctor", "Check this host for everything banger needs."),
    "config": ("banger.cli.cmd_misc", "config", "Show the configuration in effect."),
    "daemon": ("banger.cli.cmd_daemon", "daemon", "Start, stop and inspect the daemon."),
    "vm": ("banger.cli.cmd_vm", "vm", "Create and manage VMs."),
    "image": ("banger.cli.cmd_image", "image", "Register, list and delete images."),
    "kernel": ("banger.cli.cmd_kernel", "kernel", "Import, list and remove kernels."),
    "pool": ("banger.cli.cmd_pool", "pool", "Show, drain or refill the warm pool of ready VMs."),
    "ssh-config": ("banger.cli.cmd_sshconfig", "ssh_config", "Set up `ssh <name>.vm`."),
    "completion": ("banger.cli.cmd_completion", "completion", "Print a shell completion script."),
    "system": ("banger.cli.cmd_system", "system", "Install the root helper and daemon units."),
    "mcp": ("banger.cli.cmd_mcp", "mcp", "Serve sandboxes to coding agents over MCP (stdio)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, attr, _ = LAZY_COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            accept_debug(command)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help for the root lists commands without importing every module.
        rows = [(name, LAZY_COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks with errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """banger: disposable Linux development VMs in one command.

    The CLI talks to a per-user daemon (bangerd) over a Unix socket and starts it
    when it is not running.
    """
    ctx.obj = Session.from_env(debug=debug)


def _turn_on_debug(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    session = ctx.find_object(Session)
    if value and session is not None:
        session.debug = True


def accept_debug(command: click.Command) -> None:
    """Give ``command`` and its subcommands a hidden ``--debug``, so that ``banger vm list
    --debug`` works as ``banger --debug vm list`` does (issue 14 item 16).

    A command that passes unknown options on (``vm ssh NAME CMD…``) is left alone: there
    ``--debug`` belongs to the remote command, as it always has.
    """
    if command.context_settings.get("ignore_unknown_options"):
        return
    if not any(param.name == "debug" for param in command.params):
        command.params.append(
            click.Option(
                ["--debug"],
                is_flag=True,
                hidden=True,
                expose_value=False,
                callback=_turn_on_debug,
                help="Show tracebacks with errors.",
            )
        )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_debug(sub)


def wants_debug(args: list[str], env: Mapping[str, str]) -> bool:
    # Words after `--` are a guest command's own (`vm exec NAME -- tool --debug`).
    ours = args[: args.index("--")] if "--" in args else args
    return "--debug" in ours or env.get("BANGER_DEBUG") == "1"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    sys.exit(_run(args, debug=wants_debug(args, os.environ)))


def _run(args: list[str], *, debug: bool) -> int:
    try:
        result = cli.main(args=args, prog_name="banger", standalone_mode=False)
    except click.ClickException as exc:
        sys.stderr.write(format_click_error(exc))
        return exc.exit_code
    except (KeyboardInterrupt, click.Abort):
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `banger ... | head`): not an error of ours.
        silence_stdout()
        return 0
    except Exception as err:  # noqa: BLE001 - every error ends as `error:` + `hint:` here
        from banger.cli.render import format_error  # traceback and textwrap: errors only

        sys.stderr.write(format_error(err, debug=debug))
        return 1
    return result if isinstance(result, int) else 0


def format_click_error(exc: click.ClickException) -> str:
    """click's own errors in banger's form: ``error:`` then where to look (exit status
    stays click's: 2 for usage errors)."""
    message = exc.format_message().strip().rstrip(".")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]  # banger's briefs start in lower case
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if isinstance(ctx, click.Context) else "banger"
    return f"error: {message}\nhint: see '{path} --help'\n"


def silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
