"""The exec client against hostile guests on real socketpairs (ADVERSARIAL 99, 100, 102).

A fake guest (a thread) answers HELLO and then misbehaves: output beyond the granted
window, a frame length past the limit, a host's frame kind, a stray EXIT, closing in the
middle of a frame, or flooding stale bytes before its answer. Every case ends in
``BadResponse``/``CommandFailed`` for the commands, never in a hang or unbounded memory.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

import pytest

from banger.errors import BadResponse, CommandFailed
from banger.guest import exec_client
from banger.guest import exec_frames as ef
from banger.guest.exec_client import ExecConnection
from banger.guest.exec_frames import Kind

Guest = Callable[[socket.socket, bytes], None]


def _read_hello(sock: socket.socket) -> bytes:
    buf = b""
    while ef.MAGIC not in buf or len(buf) < buf.index(ef.MAGIC) + len(ef.MAGIC) + 16:
        chunk = sock.recv(65536)
        assert chunk, "the host left before its HELLO"
        buf += chunk
    start = buf.index(ef.MAGIC) + len(ef.MAGIC)
    return buf[start : start + 16]


def _ack(nonce: bytes) -> bytes:
    return ef.encode(Kind.HELLO_ACK, 0, ef.MAGIC + nonce + b"1")


def _with_guest(behaviour: Guest, host_side: Callable[[ExecConnection], object]) -> None:
    host, guest = socket.socketpair()

    def run() -> None:
        with guest:
            nonce = _read_hello(guest)
            behaviour(guest, nonce)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    async def main() -> None:
        conn = await ExecConnection.over_socket(host, "fake guest", timeout_s=5)
        try:
            await asyncio.wait_for(host_side(conn), 10)  # type: ignore[arg-type]
        finally:
            await conn.aclose()

    asyncio.run(main())
    thread.join(5)


def _started_then(extra: bytes) -> Guest:
    def behaviour(sock: socket.socket, nonce: bytes) -> None:
        sock.sendall(_ack(nonce))
        sock.recv(65536)  # the OPEN
        sock.sendall(ef.encode(Kind.STARTED, 1, ef.u32(42)) + extra)
        sock.recv(65536)  # until the host closes

    return behaviour


async def _run_true(conn: ExecConnection) -> None:
    await conn.run(["true"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(ef.HEADER.pack(Kind.STDOUT, 1, 2**31), "at most", id="huge-length"),
        pytest.param(ef.encode(Kind.OPEN, 1, b""), "host's frame", id="host-kind"),
        pytest.param(bytes([0x99]) + bytes(8), "unknown frame kind", id="unknown-kind"),
        pytest.param(ef.encode(Kind.STARTED, 1, ef.u32(43)), "twice", id="started-twice"),
        pytest.param(ef.encode(Kind.EXIT, 1, b"\x05\x00\x00"), "malformed EXIT", id="bad-exit"),
        pytest.param(ef.encode(Kind.STDIN_CREDIT, 1, ef.u32(1)), "more stdin", id="over-credit"),
        pytest.param(ef.HEADER.pack(Kind.STDOUT, 1, 100) + b"cut", "closed", id="cut-frame"),
    ],
)
def test_a_guest_breaking_the_protocol_fails_the_command(extra: bytes, message: str) -> None:
    def behaviour(sock: socket.socket, nonce: bytes) -> None:
        sock.sendall(_ack(nonce))
        sock.recv(65536)
        sock.sendall(ef.encode(Kind.STARTED, 1, ef.u32(42)) + extra)
        sock.shutdown(socket.SHUT_WR)  # after a cut frame: the VMM died (ADVERSARIAL 99)
        sock.recv(65536)

    with pytest.raises(BadResponse, match=message):
        _with_guest(behaviour, _run_true)


def test_output_beyond_the_granted_window_is_a_violation() -> None:
    """A consumer that has not taken anything yet: the guest may send one window, no more
    (ADVERSARIAL 102: the host's buffer per command is bounded)."""

    async def host_side(conn: ExecConnection) -> None:
        proc = await conn.start(["true"])
        await asyncio.sleep(0.3)  # take nothing while the guest floods
        assert proc._buffered <= ef.WINDOW
        async for _ in proc.output():
            pass

    flood = ef.encode(Kind.STDOUT, 1, bytes(60000)) * 5  # 300000 > WINDOW
    with pytest.raises(BadResponse, match="beyond the window"):
        _with_guest(_started_then(flood), host_side)


def test_stale_bytes_before_the_answer_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exec_client, "MAX_SKIPPED", 256 * 1024)

    def behaviour(sock: socket.socket, nonce: bytes) -> None:
        try:
            for _ in range(100):
                sock.sendall(b"\x84stale output " * 4096)
        except OSError:
            pass

    with pytest.raises(BadResponse, match="but no answer"):
        _with_guest(behaviour, _run_true)


def test_stale_frames_and_a_wrong_nonce_are_skipped() -> None:
    def behaviour(sock: socket.socket, nonce: bytes) -> None:
        stale = ef.encode(Kind.STDOUT, 1, b"old") + _ack(bytes(16)) + b"\x00junk"
        sock.sendall(stale + _ack(nonce))
        sock.recv(65536)
        sock.sendall(
            ef.encode(Kind.STARTED, 1, ef.u32(7))
            + ef.encode(Kind.STDOUT, 1, b"new")
            + ef.encode(Kind.EXIT, 1, b"\x00\x00\x00")
        )
        sock.recv(65536)

    async def host_side(conn: ExecConnection) -> None:
        out = bytearray()
        status = await conn.run(["true"], on_stdout=out.extend)
        assert (status.code, bytes(out)) == (0, b"new")

    _with_guest(behaviour, host_side)


def test_failed_reasons_are_printable_and_named() -> None:
    def behaviour(sock: socket.socket, nonce: bytes) -> None:
        sock.sendall(_ack(nonce))
        sock.recv(65536)
        sock.sendall(ef.encode(Kind.FAILED, 1, bytes([2]) + b"nope \x1b[31mred"))
        sock.recv(65536)

    with pytest.raises(CommandFailed, match=r"nope \?\[31mred") as exc:
        _with_guest(behaviour, _run_true)
    assert exc.value.details == "not_found"
