"""The readiness race (banger.services.readiness): the first way to answer wins, a failing
way waits for the other, both failing raise the SSH way's error; and the two waiters
against real sockets on loopback (a listener standing in for sshd is a real TCP socket,
the agent a real Unix socket server speaking HTTP/1.1)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from banger.errors import CommandFailed, Timeout
from banger.guest.agent_client import AgentClient
from banger.host.procinfo import ProcessIdentity
from banger.services import readiness
from banger.services.readiness import Guest, Via, first_ready


def _after(seconds: float, result: float | BaseException) -> Callable[[], Awaitable[float]]:
    async def way() -> float:
        await asyncio.sleep(seconds)
        if isinstance(result, BaseException):
            raise result
        return result

    return way


def test_first_to_answer_wins_and_the_other_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def slow() -> float:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 30.0

    async def main() -> readiness.Ready:
        ready = await first_ready({Via.SSH: slow, Via.AGENT: _after(0.01, 1.5)})
        assert cancelled.is_set()
        return ready

    started = time.monotonic()
    ready = asyncio.run(main())
    assert ready == readiness.Ready(Via.AGENT, 1.5)
    assert time.monotonic() - started < 5
    assert "guest agent answered" in ready.describe()


def test_a_failing_way_waits_for_the_other() -> None:
    ways = {
        Via.AGENT: _after(0.0, Timeout("the guest agent did not answer")),
        Via.SSH: _after(0.05, 2.0),
    }
    assert asyncio.run(first_ready(ways)) == readiness.Ready(Via.SSH, 2.0)


def test_both_failing_raise_the_ssh_error() -> None:
    ways = {
        Via.SSH: _after(0.05, Timeout("the guest did not accept SSH within 1s")),
        Via.AGENT: _after(0.0, Timeout("the guest agent did not answer within 1s")),
    }
    with pytest.raises(Timeout, match="accept SSH"):
        asyncio.run(first_ready(ways))


def test_a_bug_is_not_mistaken_for_a_slow_guest() -> None:
    ways = {Via.SSH: _after(5, 1.0), Via.AGENT: _after(0.0, KeyError("bug"))}
    with pytest.raises(KeyError):
        asyncio.run(first_ready(ways))


# -- the waiters against real sockets ------------------------------------------------------


@pytest.fixture
def sshd_port() -> Iterator[int]:
    """A listening TCP socket on loopback: what port 22 of a booted guest is to the host."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        yield srv.getsockname()[1]


def _serve_agent(path: Path, after_s: float) -> threading.Thread:
    """A real agent endpoint on a Unix socket that starts listening after ``after_s``."""
    body = json.dumps({"ok": True, "uptime_s": 1.0, "hostname": "g", "agent_version": "1"}).encode()

    def run() -> None:
        time.sleep(after_s)
        with socket.socket(socket.AF_UNIX) as srv:
            srv.bind(str(path))
            srv.listen()
            srv.settimeout(10)
            conn, _ = srv.accept()
            with conn:
                conn.recv(4096)
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
                conn.sendall(head.encode() + b"Content-Type: application/json\r\n\r\n" + body)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_agent_way_needs_the_agent_and_port_22(tmp_path: Path, sshd_port: int) -> None:
    sock = tmp_path / "agent.sock"
    server = _serve_agent(sock, after_s=0.3)
    guest = Guest("127.0.0.1", None, tmp_path / "console.log", ssh_port=sshd_port)
    client = AgentClient.over_unix(sock, timeout_s=1.0)
    took = asyncio.run(readiness.wait_for_agent_and_sshd(client, guest, timeout_s=10))
    server.join(5)
    assert 0.25 < took < 10


def test_agent_way_times_out_when_port_22_never_opens(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    sock = tmp_path / "agent.sock"
    _serve_agent(sock, after_s=0.0)
    guest = Guest("127.0.0.1", None, tmp_path / "console.log", ssh_port=closed)
    client = AgentClient.over_unix(sock, timeout_s=1.0)
    with pytest.raises(Timeout, match="port 22") as caught:
        asyncio.run(readiness.wait_for_agent_and_sshd(client, guest, timeout_s=1.0))
    assert str(tmp_path / "console.log") in (caught.value.hint or "")


def test_a_dead_vmm_ends_the_wait_at_once(tmp_path: Path) -> None:
    gone = ProcessIdentity(pid=2**22 + 12345, start_ticks=1, boot_id="x")
    guest = Guest("127.0.0.1", gone, tmp_path / "console.log")
    with pytest.raises(CommandFailed, match="stopped while booting"):
        guest.check_alive()
