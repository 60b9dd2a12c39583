"""The client's side of ``vm exec``'s link against a fake daemon on a socketpair: output,
stdin credit, the exit, a banger error frame, and a daemon that breaks the rules (output
beyond the granted window while the caller reads nothing, a frame on another channel,
hanging up without an exit)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from banger.client.exec_session import ExecSession, run_exec
from banger.errors import BadResponse, DaemonUnavailable, InvalidState
from banger.guest import exec_frames
from banger.guest.exec_frames import ExitStatus, Kind
from banger.model.api_types import ExecResult

CH = exec_frames.LINK_CHANNEL


@pytest.fixture
def pair() -> Iterator[tuple[ExecSession, socket.socket]]:
    client, daemon = socket.socketpair()
    session = ExecSession(client, client.makefile("rb"), 42)
    try:
        yield session, daemon
    finally:
        session.close()
        daemon.close()


def frame(kind: int, payload: bytes = b"", channel: int = CH) -> bytes:
    return exec_frames.encode(kind, channel, payload)


def read_frames(sock: socket.socket, until: int) -> list[exec_frames.Frame]:
    decoder = exec_frames.FrameDecoder()
    frames: list[exec_frames.Frame] = []
    while not any(f.kind == until for f in frames):
        data = sock.recv(1 << 16)
        assert data, "the client hung up"
        frames += decoder.feed(data)
    return frames


def test_output_stdin_and_exit(pair: tuple[ExecSession, socket.socket]) -> None:
    session, daemon = pair
    got: list[tuple[str, bytes]] = []

    def daemon_side() -> None:
        frames = read_frames(daemon, Kind.STDIN_EOF)
        stdin = b"".join(f.payload for f in frames if f.kind == Kind.STDIN)
        assert stdin == b"hello"
        daemon.sendall(frame(Kind.STDIN_CREDIT, exec_frames.u32(5)))
        daemon.sendall(frame(Kind.STDOUT, b"out") + frame(Kind.STDERR, b"err"))
        daemon.sendall(frame(Kind.EXIT, exec_frames.encode_exit(ExitStatus(None, 2, False))))

    thread = threading.Thread(target=daemon_side)
    thread.start()
    result = run_exec(
        session,
        stdin=b"hello",
        on_stdout=lambda d: got.append(("stdout", d)),
        on_stderr=lambda d: got.append(("stderr", d)),
    )
    thread.join()
    assert result == ExecResult(exit_code=None, signal=2, timed_out=False)
    assert got == [("stdout", b"out"), ("stderr", b"err")]


def test_an_error_frame_is_raised_typed(pair: tuple[ExecSession, socket.socket]) -> None:
    session, daemon = pair
    error = {"error": {"code": "invalid_state", "message": "gone", "hint": "start it"}}
    daemon.sendall(frame(Kind.FAILED, json.dumps(error).encode()))
    with pytest.raises(InvalidState) as info:
        session.wait()
    assert info.value.hint == "start it"


@pytest.mark.parametrize(
    "bad",
    [
        frame(Kind.STDOUT, b"x", channel=7),
        frame(Kind.STDIN_CREDIT, exec_frames.u32(1)),  # credit beyond the window
        frame(Kind.OPEN, b""),
        b"\xff" * 9,
    ],
)
def test_a_daemon_breaking_the_rules_fails_the_session(
    pair: tuple[ExecSession, socket.socket], bad: bytes
) -> None:
    session, daemon = pair
    daemon.sendall(bad)
    with pytest.raises(BadResponse):
        session.wait()


def test_output_beyond_the_window_while_nobody_reads(
    pair: tuple[ExecSession, socket.socket],
) -> None:
    """320 KiB of output against a 256 KiB window while the caller takes none of it: the
    session's reader catches the breach by itself and hangs up (a caller that stopped
    reading may never call close()). Nothing is taken before the hang-up is seen: a
    caller draining output grants credit back, and then the fifth frame is within the
    window — what made the earlier form of this test (wait() racing the flood) hang."""
    session, daemon = pair
    flood = frame(Kind.STDOUT, b"x" * exec_frames.MAX_PAYLOAD) * 5
    daemon.settimeout(20)  # a session that never hangs up fails here instead of hanging
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        daemon.sendall(flood)
    with contextlib.suppress(ConnectionResetError):
        assert daemon.recv(1 << 16) == b"", "the client sent something instead of hanging up"
    with pytest.raises(BadResponse, match="beyond the window"):
        session.wait()


def test_a_daemon_hanging_up_without_an_exit(pair: tuple[ExecSession, socket.socket]) -> None:
    session, daemon = pair
    daemon.sendall(frame(Kind.STDOUT, b"partial"))
    daemon.close()
    assert next(session.events()) == ("stdout", b"partial")
    with pytest.raises(DaemonUnavailable):
        session.wait()


def test_close_hangs_up(pair: tuple[ExecSession, socket.socket]) -> None:
    session, daemon = pair
    session.close()
    assert daemon.recv(10) == b""
