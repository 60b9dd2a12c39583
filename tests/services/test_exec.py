"""``vm exec`` through the daemon, without a VM: the real API (uvicorn with banger's h11
protocol, the 101 switch), the real client (``BangerClient().vms.exec``), the real
``ExecService`` and relay, and the real guest agent run on this host behind a Unix
socket (the vsock shape). The VM is a ``FakeVmm`` one: running, with the agent's socket
standing in for its exec channel.

Covers: exit codes and signals, stdout/stderr apart, 1 MiB of stdin, cwd and env, a
signal forwarded, a guest timeout, a client that hangs up (its command is killed), a
stopped VM and a missing one (JSON errors with hints), an agent that does not answer,
an output flood held to a window by a client that does not read (ADVERSARIAL 100), and
the connection closed when the VM stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from banger.client.facade import BangerClient
from banger.client.http import Client
from banger.errors import AgentUnavailable, CommandNotStarted, InvalidState, VmNotFound
from banger.guest.exec_client import ExecConnection
from banger.model.api_types import ExecResult
from banger.services.readiness import Via
from banger.services.vm_exec import CONNECT_TIMEOUT_NO_AGENT_S, Connect, ExecService
from banger.vmm.channels import AgentChannel
from tests.localagent import run_agent, wait_for_socket
from tests.services.conftest import World, api_on_socket

T = TypeVar("T")


@pytest.fixture
def agent_socket() -> Iterator[Path]:
    import sys
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="bgx-"))
    path = short / "exec.sock"
    with run_agent(sys.executable, "--exec-listen-unix", str(path)) as proc:
        wait_for_socket(path, proc)
        yield path
    path.unlink(missing_ok=True)
    short.rmdir()


@contextlib.asynccontextmanager
async def serving(world: World, connect: Connect) -> AsyncIterator[Path]:
    """The daemon's app on a Unix socket, with exec connections from ``connect``."""
    execs = ExecService(world.vms, connect=connect)
    services = dataclasses.replace(world.services, execs=execs)
    path = world.root / "api.sock"
    try:
        async with api_on_socket(services, path):
            yield path
    finally:
        await execs.aclose()


def client_of(path: Path) -> BangerClient:
    return BangerClient(Client(path, timeout_s=10))


async def off_loop(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def local_agent(path: Path) -> Connect:
    async def connect(channel: AgentChannel, timeout_s: float) -> ExecConnection:
        return await ExecConnection.over_unix(path, timeout_s=timeout_s)

    return connect


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_exit_codes_streams_stdin_cwd_env(world: World, agent_socket: Path) -> None:
    async def scenario() -> None:
        assert (await world.create(name="box")).error is None
        async with serving(world, local_agent(agent_socket)) as api:
            vms = client_of(api).vms
            out, err = bytearray(), bytearray()
            result = await off_loop(
                lambda: vms.exec(
                    "box",
                    ["sh", "-c", "echo out; echo err >&2; exit 3"],
                    on_stdout=out.extend,
                    on_stderr=err.extend,
                )
            )
            assert result == ExecResult(exit_code=3, signal=None, timed_out=False)
            assert (bytes(out), bytes(err)) == (b"out\n", b"err\n")

            data = os.urandom(1 << 20)
            out.clear()
            result = await off_loop(
                lambda: vms.exec("box", ["sha256sum"], stdin=data, on_stdout=out.extend)
            )
            assert result.exit_code == 0
            assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()

            out.clear()
            chunks = (bytes([i]) * 70_000 for i in range(20))  # an iterable, 1.4 MB
            result = await off_loop(
                lambda: vms.exec("box", ["wc", "-c"], stdin=chunks, on_stdout=out.extend)
            )
            assert int(out) == 20 * 70_000

            out.clear()
            result = await off_loop(
                lambda: vms.exec(
                    "box",
                    ["sh", "-c", 'pwd; echo "$GREETING"'],
                    cwd="/tmp",
                    env={"GREETING": "hi there"},
                    on_stdout=out.extend,
                )
            )
            assert (result.exit_code, bytes(out)) == (0, b"/tmp\nhi there\n")

            result = await off_loop(lambda: vms.exec("box", ["sh", "-c", "kill -TERM $$"]))
            assert result == ExecResult(exit_code=None, signal=15, timed_out=False)

            result = await off_loop(lambda: vms.exec("box", ["sleep", "30"], timeout_s=0.5))
            assert result.timed_out and result.signal == 9

            with pytest.raises(CommandNotStarted) as info:
                await off_loop(lambda: vms.exec("box", ["/no/such/program"]))
            assert info.value.details == "not_found"

    asyncio.run(scenario())


def test_signals_and_a_client_hanging_up_kill_the_command(world: World, agent_socket: Path) -> None:
    async def scenario() -> None:
        assert (await world.create(name="sig")).error is None
        async with serving(world, local_agent(agent_socket)) as api:
            vms = client_of(api).vms
            script = "trap 'echo INT; exit 7' INT; echo ready; while :; do sleep 0.05; done"

            def interrupted() -> tuple[ExecResult, bytes]:
                got = bytearray()
                with vms.exec_start("sig", ["sh", "-c", script]) as session:
                    for _, data in session.events():
                        got += data
                        if got == b"ready\n":
                            session.signal(2)
                    return session.wait(), bytes(got)

            result, got = await off_loop(interrupted)
            assert result.exit_code == 7 and got == b"ready\nINT\n"

            def hang_up() -> int:
                session = vms.exec_start("sig", ["sh", "-c", "echo $$; exec sleep 60"])
                first = next(session.events())[1]
                session.close()
                return int(first)

            pid = await off_loop(hang_up)
            deadline = time.monotonic() + 10
            while pid_alive(pid):
                assert time.monotonic() < deadline, "the command outlived its client"
                await asyncio.sleep(0.05)

    asyncio.run(scenario())


def test_errors_before_the_switch_are_json_with_hints(world: World, agent_socket: Path) -> None:
    async def scenario() -> None:
        assert (await world.create(name="off")).error is None
        await world.vms.stop("off")

        async def silent(channel: AgentChannel, timeout_s: float) -> ExecConnection:
            raise __import__("banger.errors").errors.Timeout("nothing answered")

        async with serving(world, silent) as api:
            vms = client_of(api).vms
            with pytest.raises(InvalidState) as stopped:
                await off_loop(lambda: vms.exec("off", ["true"]))
            assert "not running" in stopped.value.brief
            assert stopped.value.hint == "`banger vm start off`"
            with pytest.raises(VmNotFound):
                await off_loop(lambda: vms.exec("nope", ["true"]))
            assert (await world.create(name="mute")).error is None
            with pytest.raises(AgentUnavailable) as mute:
                await off_loop(lambda: vms.exec("mute", ["true"]))
            assert mute.value.hint is not None and "banger vm ssh mute" in mute.value.hint
            # A plain POST (no Upgrade) is refused with a hint.
            with pytest.raises(Exception) as plain:
                await off_loop(lambda: client_of(api).http.post("/vms/mute/exec", {"argv": ["x"]}))
            assert "Upgrade" in str(getattr(plain.value, "hint", ""))

    asyncio.run(scenario())


def test_a_client_that_does_not_read_holds_the_flood_to_a_window(
    world: World, agent_socket: Path
) -> None:
    """ADVERSARIAL 100: 64 MiB of output to a client that reads nothing for a while; the
    daemon buffers at most its windows, then all of it arrives exactly."""

    async def scenario() -> None:
        assert (await world.create(name="flood")).error is None
        async with serving(world, local_agent(agent_socket)) as api:
            vms = client_of(api).vms
            size = 64 << 20

            def flood() -> int:
                total = 0
                with vms.exec_start("flood", ["head", "-c", str(size), "/dev/zero"]) as session:
                    time.sleep(1.0)  # the daemon and the agent must stop at their windows
                    for _, data in session.events():
                        total += len(data)
                    assert session.wait().exit_code == 0
                return total

            before = _rss()
            got = await off_loop(flood)
            assert got == size
            assert _rss() - before < 20 << 20

    asyncio.run(scenario())


def test_the_connection_closes_when_the_vm_stops(world: World, agent_socket: Path) -> None:
    async def scenario() -> None:
        assert (await world.create(name="gone")).error is None
        opened: list[ExecConnection] = []
        timeouts: list[float] = []

        async def connect(channel: AgentChannel, timeout_s: float) -> ExecConnection:
            conn = await ExecConnection.over_unix(agent_socket, timeout_s=timeout_s)
            opened.append(conn)
            timeouts.append(timeout_s)
            return conn

        execs = ExecService(world.vms, connect=connect)
        first = await execs.connection("gone")
        assert await execs.connection("gone") is first, "one connection per VM"
        await world.vms.stop("gone")
        await asyncio.sleep(0.1)
        assert not first.alive
        await collect_start(world, "gone")
        second = await execs.connection("gone")
        assert second is not first and len(opened) == 2
        # The fake guest answered its readiness over SSH: no agent is likely, wait less.
        assert set(world.vms.ready_via.values()) == {Via.SSH}
        assert timeouts == [CONNECT_TIMEOUT_NO_AGENT_S] * 2
        await execs.aclose()

    asyncio.run(scenario())


async def collect_start(world: World, name: str) -> None:
    async for _ in world.vms.start(name, boot_timeout_s=5):
        pass


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")
