"""``AgentShell``: workspace scripts through the guest agent's exec session, ssh without
one. The session here is a stand-in that runs ``sh -c SCRIPT`` on this host with the
``ExecSession`` surface (write with stdin going nowhere once the command ended,
close_stdin, events, wait, close); the real session under a real guest is
tests/e2e (test_default_image, test_sdk, test_workspace)."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from banger.client.agent_shell import AgentShell
from banger.errors import AgentUnavailable, CommandFailed, Timeout
from banger.host.runner import Result
from banger.model.api_types import ExecResult
from banger.workspace import GuestShell


class LocalSession:
    """``sh -c SCRIPT`` here, seen through ExecSession's methods."""

    def __init__(self, argv: list[str], timeout_s: float) -> None:
        self.argv = argv
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # killed as a group, as the agent kills a command
        )
        self._events: collections.deque[tuple[str, bytes]] = collections.deque()
        self._cond = threading.Condition()
        self._open = 2
        self.closed = False
        self.written = 0
        for kind, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            threading.Thread(target=self._read, args=(kind, stream), daemon=True).start()

    def _read(self, kind: str, stream: IO[bytes] | None) -> None:
        assert stream is not None
        while chunk := stream.read1(4096):  # type: ignore[attr-defined]
            with self._cond:
                self._events.append((kind, chunk))
                self._cond.notify_all()
        with self._cond:
            self._open -= 1
            self._cond.notify_all()

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.written += len(data)
        except BrokenPipeError:
            pass  # like ExecSession: the command ended, nobody reads

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()

    def events(self) -> Iterator[tuple[str, bytes]]:
        while True:
            with self._cond:
                while not self._events and self._open and not self.closed:
                    self._cond.wait()
                if self.closed:
                    raise CommandFailed("the exec session was closed")
                if not self._events:
                    return
                event = self._events.popleft()
            yield event

    def wait(self) -> ExecResult:
        for _ in self.events():
            pass
        code = self.proc.wait()
        if code < 0:
            return ExecResult(exit_code=None, signal=-code)
        return ExecResult(exit_code=code, signal=None)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # sh's children too (`sh -c yes`)
        self.proc.wait()

    def __enter__(self) -> LocalSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Sessions:
    def __init__(self) -> None:
        self.started: list[LocalSession] = []

    def __call__(self, argv: list[str], timeout_s: float) -> Any:
        session = LocalSession(argv, timeout_s)
        self.started.append(session)
        return session


def no_ssh() -> GuestShell:
    raise AssertionError("ssh must not be used while the agent answers")


def test_send_streams_the_archive_to_the_script_and_reports_its_status(tmp_path: Path) -> None:
    sessions = Sessions()
    shell = AgentShell(None, "vm1", start=sessions, ssh=no_ssh)  # type: ignore[arg-type]
    dest = tmp_path / "dest"
    dest.mkdir()
    payload = bytes(range(256)) * 4096  # 1 MiB: many buffered writes

    def write(stream: IO[bytes]) -> None:
        with tarfile.open(fileobj=stream, mode="w|") as tar:
            info = tarfile.TarInfo("blob")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

    result = shell.send(f"cd {dest} && tar -x -f - && echo unpacked >&2", write)
    assert result.returncode == 0 and result.stderr == b"unpacked\n"
    assert (dest / "blob").read_bytes() == payload
    assert sessions.started[0].argv[:2] == ["sh", "-c"] and shell.agent is True
    assert sessions.started[0].closed, "the session is closed once the script ended"

    failed = shell.send("echo no room >&2; exit 17", lambda s: s.write(b"x" * (1 << 20)))
    assert failed.returncode == 17 and failed.stderr == b"no room\n", "early exit: no error"


def test_receive_hands_stdout_to_the_reader_and_drains_what_it_left() -> None:
    shell = AgentShell(None, "vm1", start=Sessions(), ssh=no_ssh)  # type: ignore[arg-type]
    value, result = shell.receive("head -c 300000 /dev/zero; echo warn >&2", lambda s: s.read(10))
    assert value == b"\0" * 10 and result.returncode == 0 and result.stderr == b"warn\n"
    whole, result = shell.receive("printf 'base=abc\\ngit=1\\n'; exit 3", lambda s: s.read())
    assert whole == b"base=abc\ngit=1\n" and result.returncode == 3
    # A reader that fails kills the script and the error is the reader's.
    with pytest.raises(ValueError, match="bad"):
        shell.receive("yes", lambda s: (_ for _ in ()).throw(ValueError("bad")))


def test_a_guest_without_the_agent_gets_ssh_and_is_not_asked_again() -> None:
    asked: list[list[str]] = []
    used: list[str] = []

    def refuse(argv: list[str], timeout_s: float) -> Any:
        asked.append(argv)
        raise AgentUnavailable("the guest agent of VM 'vm1' does not answer")

    class Ssh:
        def send(self, script: str, write: Any, *, timeout_s: float = 1) -> Result:
            used.append("send")
            return Result(("ssh",), 0, b"", b"")

        def receive(self, script: str, read: Any, *, timeout_s: float = 1) -> tuple[Any, Result]:
            used.append("receive")
            return read(io.BytesIO(b"over ssh")), Result(("ssh",), 0, b"", b"")

    shell = AgentShell(None, "vm1", start=refuse, ssh=Ssh)  # type: ignore[arg-type,return-value]
    assert shell.send("true", lambda s: None).argv == ("ssh",)
    assert shell.agent is False
    assert shell.receive("true", lambda s: s.read())[0] == b"over ssh"
    assert len(asked) == 1 and used == ["send", "receive"]


def test_an_agent_that_answered_and_then_does_not_is_an_error_not_a_fallback() -> None:
    sessions = Sessions()
    answers = [sessions, None]

    def flaky(argv: list[str], timeout_s: float) -> Any:
        start = answers.pop(0)
        if start is None:
            raise AgentUnavailable("gone")
        return start(argv, timeout_s)

    shell = AgentShell(None, "vm1", start=flaky, ssh=no_ssh)  # type: ignore[arg-type]
    assert shell.send("cat >/dev/null", lambda s: s.write(b"x")).returncode == 0
    with pytest.raises(AgentUnavailable):
        shell.send("true", lambda s: None)


def test_a_script_killed_or_timed_out_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    shell = AgentShell(None, "vm1", start=Sessions(), ssh=no_ssh)  # type: ignore[arg-type]
    killed = shell.send("kill -9 $$", lambda s: None)
    assert killed.returncode == 128 + 9

    class TimedOut(LocalSession):
        def wait(self) -> ExecResult:
            super().wait()
            return ExecResult(exit_code=None, signal=9, timed_out=True)

    shell = AgentShell(None, "vm1", start=TimedOut, ssh=no_ssh)  # type: ignore[arg-type]
    with pytest.raises(Timeout):
        shell.send("true", lambda s: None, timeout_s=5)


def test_a_wedged_guest_is_hung_up_on_after_the_time_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("banger.client.agent_shell.WATCHDOG_GRACE_S", 0.2)
    sessions = Sessions()
    shell = AgentShell(None, "vm1", start=sessions, ssh=no_ssh)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(CommandFailed, match="closed"):
        shell.receive("sleep 30", lambda s: s.read(), timeout_s=0.3)
    assert time.monotonic() - started < 10
    assert sessions.started[0].proc.poll() is not None, "the script was killed"
