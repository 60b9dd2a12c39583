"""``banger vm exec NAME -- CMD…``: a command in a running VM through its guest agent.

Owns: the command line of ``vm exec`` and ``exec_command``, which ``vm run … -- CMD``
uses too: output to this process's stdout and stderr as it comes (unbuffered), stdin
forwarded when it is not a terminal (a pipe or a file, then EOF), SIGINT forwarded (a
second one within ``KILL_AFTER_S`` sends SIGKILL), SIGTERM and SIGHUP forwarded, and the
exit status: the command's, 128+N for a signal, 124 for ``--timeout``, 127/126 when the
program is missing or not executable. banger's own failures raise (``main`` renders them).
Must not: import the exec machinery before a command runs (``--help`` stays cheap).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal as signals
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from banger.cli.completion import complete_vm_names
from banger.cli.session import Session
from banger.cli.vm_options import EXEC_TIMEOUT
from banger.cli.workspace_options import RUN_ARGV, RunCommand

if TYPE_CHECKING:
    from banger.client.exec_session import ExecSession
    from banger.model.api_types import ExecResult

#: A second Ctrl-C within this many seconds of the first kills the command.
KILL_AFTER_S = 2.0
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./:+@%,=-]+")
_FORWARDED = (signals.SIGTERM, signals.SIGHUP)


def command_argv(words: Sequence[str]) -> list[str]:
    """Several words run as exactly that argv; a single word is a shell command line
    (``-- 'ls | wc -l'``), as with ``vm ssh``, unless it is one plain word."""
    if len(words) == 1 and not _PLAIN_WORD.fullmatch(words[0]):
        return ["/bin/sh", "-c", words[0]]
    return list(words)


def exit_status(result: ExecResult) -> int:
    from banger.model.api_types import exit_status

    return exit_status(result, unknown=1)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def exec_command(
    session: Session,
    name: str,
    argv: list[str],
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> int:
    """Run ``argv`` in VM ``name`` attached to this terminal's streams; its exit status."""
    from banger.errors import CommandNotStarted

    client = session.client()
    try:
        exec_session = client.vms.exec_start(name, argv, cwd=cwd, env=env, timeout_s=timeout_s)
    except CommandNotStarted as err:
        from banger.cli.render import format_error

        sys.stderr.write(format_error(err, debug=session.debug))
        if err.details == "not_found":
            return EXIT_NOT_FOUND
        return EXIT_NOT_EXECUTABLE if err.details == "permission" else 1
    with exec_session:
        return _attached(exec_session)


def _attached(session: ExecSession) -> int:
    stdin_is_tty = _isatty(0)
    if stdin_is_tty:
        session.close_stdin()
    else:
        threading.Thread(target=_feed_stdin, args=(session,), daemon=True).start()
    outcome: dict[str, Any] = {}
    pump = threading.Thread(target=_pump, args=(session, outcome), daemon=True)
    previous = _forward_signals(session)
    try:
        pump.start()
        while pump.is_alive():
            pump.join(0.5)  # wakes for signal handlers in this (the main) thread
    finally:
        for sig, handler in previous.items():
            signals.signal(sig, handler)
    if "error" in outcome:
        raise outcome["error"]
    return exit_status(outcome["result"])


def _pump(session: ExecSession, outcome: dict[str, Any]) -> None:
    try:
        for kind, data in session.events():
            _write_all(1 if kind == "stdout" else 2, data)
        outcome["result"] = session.wait()
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        session.close()
        outcome["error"] = exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _feed_stdin(session: ExecSession) -> None:
    try:
        while chunk := os.read(0, 64 * 1024):
            session.write(chunk)
        session.close_stdin()
    except Exception:  # noqa: BLE001 - the session reports how it ended
        return


def _forward_signals(session: ExecSession) -> dict[int, Any]:
    last_interrupt = [0.0]

    def interrupt(sig: int, _frame: object) -> None:
        now = time.monotonic()
        second = now - last_interrupt[0] < KILL_AFTER_S
        last_interrupt[0] = now
        _send(session, signals.SIGKILL if second else signals.SIGINT)

    def forward(sig: int, _frame: object) -> None:
        _send(session, sig)

    previous: dict[int, Any] = {signals.SIGINT: signals.signal(signals.SIGINT, interrupt)}
    for sig in _FORWARDED:
        previous[sig] = signals.signal(sig, forward)
    return previous


def _send(session: ExecSession, sig: int) -> None:
    from banger.errors import BangerError

    with contextlib.suppress(BangerError):  # the session is over; the pump reports how
        session.signal(sig)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


@click.command("exec", cls=RunCommand)
@click.option("--cwd", metavar="DIR", help="Directory in the guest (default: /root).")
@click.option("--env", "env_pairs", metavar="K=V", multiple=True, help="Set a variable (repeat).")
@click.option(
    "--timeout",
    type=EXEC_TIMEOUT,
    metavar="SECONDS",
    help="Kill the command after this long (exit status 124).",
)
@click.argument("name", shell_complete=complete_vm_names)
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="-- COMMAND…")
@click.pass_context
def exec_(
    ctx: click.Context,
    /,
    name: str,
    words: tuple[str, ...],
    *,
    cwd: str | None,
    env_pairs: tuple[str, ...],
    timeout: float | None,
) -> int:
    """Run `-- COMMAND…` in a running VM through its guest agent (no SSH).

    Output streams to this terminal's stdout and stderr as it comes; stdin is forwarded
    when it is a pipe or a file; Ctrl-C is forwarded (twice within 2 s kills), as are
    SIGTERM and SIGHUP. Exits with the command's status (128+N for signal N, 124 after
    --timeout, 127 when the program is not found). Several words run as exactly that
    argv; a single word with spaces or shell characters is a shell command line.
    """
    command = (*words, *ctx.meta[RUN_ARGV])
    if not command:
        raise click.UsageError("give the command after `--`")
    return exec_command(
        ctx.obj,
        name,
        command_argv(command),
        cwd=cwd,
        env=parse_env(env_pairs),
        timeout_s=timeout,
    )
