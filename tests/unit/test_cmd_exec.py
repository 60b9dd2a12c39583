"""``vm exec``'s pure parts: which words become a shell command line, the exit status of
each way a command ends, and ``--env`` parsing."""

from __future__ import annotations

import click
import pytest

from banger.cli.cmd_exec import command_argv, exit_status, parse_env
from banger.model.api_types import ExecResult


@pytest.mark.parametrize(
    ("words", "argv"),
    [
        (("true",), ["true"]),
        (("/usr/bin/env",), ["/usr/bin/env"]),
        (("ls | wc -l",), ["/bin/sh", "-c", "ls | wc -l"]),
        (("echo $HOME",), ["/bin/sh", "-c", "echo $HOME"]),
        (("exit 3",), ["/bin/sh", "-c", "exit 3"]),
        (("sh", "-c", "exit 7"), ["sh", "-c", "exit 7"]),
        (("echo", "a b", "$x"), ["echo", "a b", "$x"]),
    ],
)
def test_one_word_with_shell_characters_is_a_command_line(
    words: tuple[str, ...], argv: list[str]
) -> None:
    assert command_argv(words) == argv


def test_exit_status_of_each_ending() -> None:
    assert exit_status(ExecResult(exit_code=0, signal=None)) == 0
    assert exit_status(ExecResult(exit_code=3, signal=None)) == 3
    assert exit_status(ExecResult(exit_code=None, signal=15)) == 143
    assert exit_status(ExecResult(exit_code=None, signal=9, timed_out=True)) == 124


def test_env_pairs() -> None:
    assert parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    for bad in ("A", "=1"):
        with pytest.raises(click.BadParameter):
            parse_env([bad])
