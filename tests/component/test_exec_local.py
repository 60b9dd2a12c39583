"""Exec through the real agent file, run on this host, against the real async client.

``banger_agent.py`` runs as a process (this Python and, when found, Python 3.7) with its
exec protocol on ``--exec-listen-unix`` (the vsock shape: a session per connection) or
``--exec-stream-fd`` on a socketpair (the serial shape: one byte stream that hosts share
in turn, where only a HELLO marks a new host). ``banger.guest.exec_client`` drives it.
The guest side of virtio-serial and Firecracker's vsock is tests/e2e/test_exec.py.
No guest and no network: Unix sockets and the commands the tests start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.errors import BadResponse, CommandFailed, Timeout
from banger.guest import exec_frames as ef
from banger.guest.exec_client import ExecConnection
from banger.guest.exec_frames import ExitStatus, Kind
from tests.localagent import PYTHONS, run_agent, short_dir, wait_for_socket

pytestmark = pytest.mark.component
__all__ = ["short_dir"]  # the fixture, re-exported for pytest


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def wait_gone(pid: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.02)


@contextlib.contextmanager
def listen_agent(python: str, short_dir: Path) -> Iterator[Path]:
    path = short_dir / "exec.sock"
    with run_agent(python, "--exec-listen-unix", str(path)) as proc:
        wait_for_socket(path, proc)
        yield path
        assert proc.poll() is None, "the agent died"


@contextlib.contextmanager
def stream_agent(python: str) -> Iterator[socket.socket]:
    """The serial shape: the agent's end of a socketpair as its exec port."""
    host, guest = socket.socketpair()
    fd = guest.fileno()
    with host, run_agent(python, "--exec-stream-fd", str(fd), pass_fds=(fd,)) as proc:
        guest.close()
        yield host
        assert proc.poll() is None, "the agent died"


@contextlib.asynccontextmanager
async def over_stream(sock: socket.socket) -> AsyncIterator[ExecConnection]:
    """A host on the shared stream; leaving does not close it (the next host reuses it)."""
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    conn = await ExecConnection.over_socket(dup, "stream")
    try:
        yield conn
    finally:
        await conn.aclose()


async def collect(
    conn: ExecConnection, argv: list[str], **kw: Any
) -> tuple[ExitStatus, bytes, bytes]:
    out, err = bytearray(), bytearray()
    status = await conn.run(argv, on_stdout=out.extend, on_stderr=err.extend, **kw)
    return status, bytes(out), bytes(err)


@pytest.mark.parametrize("python", PYTHONS)
def test_exit_codes_output_stdin_and_environment(python: str, short_dir: Path) -> None:
    """Exit codes and signals come back; stdout and stderr stay apart; stdin reaches the
    command and its EOF too; argv is passed as is (no shell); cwd and env apply."""

    async def main(path: Path) -> None:
        async with await ExecConnection.over_unix(path) as conn:
            assert await collect(conn, ["true"]) == (ExitStatus(0, None, False), b"", b"")
            assert (await collect(conn, ["false"]))[0] == ExitStatus(1, None, False)
            status, out, err = await collect(
                conn, ["sh", "-c", 'echo out; echo err >&2; echo "$1"; exit 7', "sh", "a b;c"]
            )
            assert (status.code, out, err) == (7, b"out\na b;c\n", b"err\n")
            status, out, _ = await collect(conn, ["cat"], stdin=b"line1\nline2")
            assert (status.code, out) == (0, b"line1\nline2")

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(100):
                    yield f"{i}\n".encode() * 1000  # 400 KiB in all: beyond one window

            status, out, _ = await collect(conn, ["wc", "-l"], stdin=chunks())
            assert out.strip() == b"100000"
            status, out, _ = await collect(
                conn, ["sh", "-c", 'pwd; echo "$FOO $HOME"'], cwd="/tmp", env={"FOO": "bar"}
            )
            assert out == b"/tmp\nbar /root\n"
            status, _, _ = await collect(conn, ["sh", "-c", "kill -TERM $$"])
            assert status == ExitStatus(None, 15, False)
            with pytest.raises(CommandFailed, match="command not found: no-such-cmd") as exc:
                await conn.run(["no-such-cmd"])
            assert exc.value.details == "not_found"
            with pytest.raises(CommandFailed, match="no such directory") as exc:
                await conn.run(["true"], cwd="/no/such/dir")
            assert exc.value.details == "no_cwd"
            assert (await collect(conn, ["true"]))[0].code == 0  # the connection goes on

    with listen_agent(python, short_dir) as path:
        asyncio.run(main(path))


def test_signals_reach_the_process_group_and_timeouts_kill_it(short_dir: Path) -> None:
    """Signals are forwarded to the whole process group, background children too, SIGINT
    (Ctrl-C) as well;
    a guest-side timeout SIGKILLs the group and says so; the host's own deadline holds."""

    async def main(path: Path) -> None:
        async with await ExecConnection.over_unix(path) as conn:
            proc = await conn.start(["sh", "-c", "sleep 300 & echo $!; wait"])
            child = 0
            async for kind, data in proc.output():
                assert kind is Kind.STDOUT
                child = int(data)
                break
            assert proc.pid is not None and pid_alive(child)
            proc.signal(15)  # (a non-interactive sh makes its background jobs ignore SIGINT)
            status = await proc.wait()
            assert status == ExitStatus(None, 15, False)
            wait_gone(child)
            proc = await conn.start(["sleep", "300"])
            proc.signal(2)  # Ctrl-C
            assert await proc.wait() == ExitStatus(None, 2, False)

            started = time.monotonic()
            status, out, _ = await collect(
                conn, ["sh", "-c", "sleep 300 & echo $!; wait"], timeout_s=0.5
            )
            assert status == ExitStatus(None, 9, True)
            assert time.monotonic() - started < 5
            wait_gone(int(out))

    with listen_agent(PYTHONS[0].values[0], short_dir) as path:  # type: ignore[arg-type]
        asyncio.run(main(path))


def test_commands_do_not_inherit_signals_the_agent_was_started_ignoring(short_dir: Path) -> None:
    """A shell without job control (a background job, ``nohup``) starts the agent with
    SIGINT, SIGQUIT or SIGHUP ignored, and exec keeps them ignored: a command's ``trap …
    INT`` then never fires and Ctrl-C cannot reach it (seen: a services test hung when
    pytest ran as a background job). The agent stays immune; its commands get defaults."""
    wrapper = short_dir / "ignoring-python"
    wrapper.write_text(f'#!/bin/sh\ntrap "" INT QUIT HUP\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    path = short_dir / "exec.sock"

    async def main() -> None:
        async with await ExecConnection.over_unix(path) as conn:
            status, out, _ = await collect(conn, ["sh", "-c", "grep SigIgn /proc/$$/status"])
            assert status.code == 0
            ignored = int(out.split()[1], 16)
            assert ignored & 0b111 == 0, f"the command ignores signals: {out!r}"

    with run_agent(str(wrapper), "--exec-listen-unix", str(path)) as proc:
        wait_for_socket(path, proc)
        agent_ignores = Path(f"/proc/{proc.pid}/status").read_text().split("SigIgn:")[1]
        assert int(agent_ignores.split()[0], 16) & 0b111 == 0
        asyncio.run(main())
        os.kill(proc.pid, signal.SIGINT)  # still immune, as it was started
        time.sleep(0.2)
        assert proc.poll() is None, "the agent died of a signal it was started ignoring"


def test_concurrent_commands_and_a_flood_with_a_slow_reader(short_dir: Path) -> None:
    """Channels are independent: while one command floods a reader that takes its time,
    others start and finish; the host never buffers more than one window per channel
    (ADVERSARIAL 102: host memory bounded whatever the guest writes)."""

    async def main(path: Path) -> None:
        async with await ExecConnection.over_unix(path) as conn:
            seen = 0
            peak = 0
            flood = await conn.start(["head", "-c", "20M", "/dev/zero"])

            async def slow_reader() -> None:
                nonlocal seen, peak
                async for _, data in flood.output():
                    seen += len(data)
                    peak = max(peak, flood._buffered)
                    await asyncio.sleep(0.001)

            reader = asyncio.create_task(slow_reader())
            quick = await asyncio.gather(
                *(collect(conn, ["sh", "-c", f"echo {i}; echo e{i} >&2"]) for i in range(16))
            )
            assert not reader.done(), "the flood finished first: the test proves nothing"
            assert [q[1] for q in quick] == [f"{i}\n".encode() for i in range(16)]
            assert [q[2] for q in quick] == [f"e{i}\n".encode() for i in range(16)]
            await reader
            assert seen == 20 * 1024 * 1024
            assert flood.exit == ExitStatus(0, None, False)
            assert peak <= ef.WINDOW

    with listen_agent(PYTHONS[0].values[0], short_dir) as path:  # type: ignore[arg-type]
        asyncio.run(main(path))


def test_a_new_host_on_the_stream_ends_the_previous_hosts_commands() -> None:
    """The serial shape: a host leaves mid-frame without the guest noticing; the next
    host's padding and HELLO resynchronise the stream, the previous host's commands are
    killed, its stale output is skipped, and the new host's commands run."""

    async def main(sock: socket.socket) -> None:
        async with over_stream(sock) as first:
            old = await first.start(["sh", "-c", "echo $$; exec sleep 300"])
            pid = 0
            async for _, data in old.output():
                pid = int(data)
                break
            running = await first.start(["sh", "-c", "while :; do echo spam; sleep 0.01; done"])
            assert running.pid is not None
            # ...and the host vanishes mid-frame: a STDIN header announcing 1000 bytes, 10 sent.
            first._writer.write(ef.HEADER.pack(Kind.STDIN, old.channel, 1000) + b"x" * 10)
            await first._writer.drain()
            first._task.cancel()  # type: ignore[union-attr]
        async with over_stream(sock) as second:
            wait_gone(pid)
            wait_gone(running.pid)
            status, out, _ = await collect(second, ["echo", "fresh"])
            assert (status.code, out) == (0, b"fresh\n")

    with stream_agent(PYTHONS[0].values[0]) as sock:  # type: ignore[arg-type]
        asyncio.run(main(sock))


def test_malformed_frames_from_the_host(short_dir: Path) -> None:
    """The agent is strict with its host too: an unknown kind, an oversized length or a
    frame before HELLO closes a socket session (its commands killed); on the stream it
    resynchronises on the next HELLO. The agent keeps serving either way."""

    async def on_socket(path: Path) -> None:
        conn = await ExecConnection.over_unix(path)
        proc = await conn.start(["sleep", "300"])
        conn._writer.write(bytes([0x7F]) + bytes(8))  # unknown kind
        with pytest.raises(BadResponse, match="closed the connection"):
            await proc.wait()
        assert proc.pid is not None
        wait_gone(proc.pid)
        await conn.aclose()
        with socket.socket(socket.AF_UNIX) as raw:  # frames before HELLO, a huge length
            raw.connect(str(path))
            raw.sendall(ef.HEADER.pack(Kind.OPEN, 1, 2**31))
            raw.settimeout(10)
            assert raw.recv(100) == b""
        async with await ExecConnection.over_unix(path) as again:
            assert (await collect(again, ["true"]))[0].code == 0

    async def on_stream(sock: socket.socket) -> None:
        async with over_stream(sock) as first:
            proc = await first.start(["sleep", "300"])
            first._writer.write(ef.HEADER.pack(Kind.SIGNAL, proc.channel, 1) + b"\x07")
            await first._writer.drain()
            assert proc.pid is not None
            wait_gone(proc.pid)  # a bad SIGNAL: the session ends
            first._task.cancel()  # type: ignore[union-attr]
        sock.sendall(secrets.token_bytes(5000))  # garbage between hosts
        async with over_stream(sock) as second:
            assert (await collect(second, ["echo", "ok"]))[1] == b"ok\n"

    with listen_agent(PYTHONS[0].values[0], short_dir) as path:  # type: ignore[arg-type]
        asyncio.run(on_socket(path))
    with stream_agent(PYTHONS[0].values[0]) as sock:  # type: ignore[arg-type]
        asyncio.run(on_stream(sock))


def test_cancelling_a_run_kills_the_command_and_the_host_deadline_holds(short_dir: Path) -> None:
    """Cancel-safety: a cancelled ``run`` kills the command's group in the guest; a guest
    that never reports an exit still ends at the host's deadline (ADVERSARIAL 100)."""

    async def main(path: Path) -> None:
        async with await ExecConnection.over_unix(path) as conn:
            pids: list[int] = []
            argv = ["sh", "-c", "echo $$; exec sleep 300"]
            task = asyncio.create_task(conn.run(argv, on_stdout=lambda d: pids.append(int(d))))
            while not pids:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            wait_gone(pids[0])
            assert (await collect(conn, ["true"]))[0].code == 0

    with listen_agent(PYTHONS[0].values[0], short_dir) as path:  # type: ignore[arg-type]
        asyncio.run(main(path))

    async def silent_guest() -> None:
        host, guest = socket.socketpair()
        with guest:

            def answer() -> None:  # acknowledges HELLO and then says nothing, ever
                buf = b""
                while ef.MAGIC not in buf or len(buf) < buf.index(ef.MAGIC) + 29:
                    buf += guest.recv(65536)
                nonce = buf[buf.index(ef.MAGIC) + len(ef.MAGIC) :][:16]
                guest.sendall(ef.encode(Kind.HELLO_ACK, 0, ef.MAGIC + nonce + b"1"))

            done = asyncio.get_running_loop().run_in_executor(None, answer)
            conn = await ExecConnection.over_socket(host, "silent")
            await done
            started = time.monotonic()
            with pytest.raises(Timeout, match="starting 'true'"):
                await conn.start(["true"], start_timeout_s=0.5)
            with pytest.raises(Timeout):
                await conn.run(["true"], timeout_s=0.1, start_timeout_s=60)
            assert time.monotonic() - started < 0.5 + 0.1 + 5 + 2
            await conn.aclose()

    asyncio.run(silent_guest())
