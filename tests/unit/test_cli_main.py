"""``banger``'s root: ``--debug`` after any subcommand, and click's errors in banger's
form (issue 14 item 16). The end-to-end checks are in tests/component/test_cli_errors.py."""

from __future__ import annotations

import click
import pytest

from banger.cli.main import cli, format_click_error, wants_debug


def _command(*path: str) -> click.Command:
    ctx = click.Context(cli)
    command: click.Command | None = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.get_command(ctx, name)
    assert command is not None
    return command


def _has_debug(command: click.Command) -> bool:
    return any(p.name == "debug" for p in command.params)


@pytest.mark.parametrize(
    "path", [("vm", "list"), ("vm", "exec"), ("vm", "run"), ("image", "pull"), ("doctor",)]
)
def test_every_subcommand_takes_debug(path: tuple[str, ...]) -> None:
    assert _has_debug(_command(*path))


def test_vm_ssh_passes_debug_on_to_the_remote_command() -> None:
    assert not _has_debug(_command("vm", "ssh"))


def test_debug_words_after_the_double_dash_are_the_guest_commands() -> None:
    assert wants_debug(["vm", "list", "--debug"], {})
    assert not wants_debug(["vm", "exec", "x", "--", "tool", "--debug"], {})
    assert wants_debug(["vm", "exec", "x", "--", "tool"], {"BANGER_DEBUG": "1"})
    assert not wants_debug(["vm", "list"], {"BANGER_DEBUG": "0"})


def test_click_errors_read_as_bangers() -> None:
    ctx = click.Context(
        _command("vm", "show"), info_name="show", parent=click.Context(cli, info_name="banger")
    )
    text = format_click_error(click.UsageError("Missing argument 'NAME'.", ctx=ctx))
    assert text == "error: missing argument 'NAME'\nhint: see 'banger show --help'\n"
    bare = format_click_error(click.ClickException("NAME is wrong"))
    assert bare == "error: NAME is wrong\nhint: see 'banger --help'\n"
