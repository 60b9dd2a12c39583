"""A claim's rename on the daemon's own exec connection, and a claim that boots saying why.

The guest is a fake agent on a socketpair (it speaks the exec frames: HELLO, OPEN →
STARTED, EXIT) that records each command instead of running it — the rename script
would set this host's hostname. The namer is the real ``AgentGuestNamer`` over a real
``ExecService``, so the claim opens no connection of its own (QEMU's exec chardev takes
one host at a time) and the connection follows the VM to its new name.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from banger.config.pool_policy import PoolTarget
from banger.guest import exec_frames as ef
from banger.guest.exec_client import ExecConnection
from banger.guest.exec_frames import Kind
from banger.model.records import VmState
from banger.services.pool import SETTLE_ARGV, PoolService
from banger.services.pool_claim import AgentGuestNamer
from banger.services.readiness import Via
from banger.services.vm_exec import ExecService
from banger.state import repo
from banger.vmm.channels import AgentChannel
from tests.services.conftest import MIB, World

BOOT_STAGES = ["reserve", "disks", "boot", "wait-ready"]


class FakeAgent:
    """Answers on any number of connections; ``hello_delay_s`` stands for a busy guest."""

    def __init__(self, hello_delay_s: float = 0.0) -> None:
        self.hello_delay_s = hello_delay_s
        self.connections = 0
        self.commands: list[list[str]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self, channel: AgentChannel, timeout_s: float) -> ExecConnection:
        self.connections += 1
        host, guest = socket.socketpair()
        task = asyncio.create_task(self._serve(guest))
        self._tasks.add(task)
        return await ExecConnection.over_socket(host, "fake agent", timeout_s=timeout_s)

    async def _serve(self, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        decoder = ef.FrameDecoder()
        try:
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    if frame.kind == Kind.HELLO:
                        await asyncio.sleep(self.hello_delay_s)
                        writer.write(ef.encode(Kind.HELLO_ACK, 0, frame.payload + b"1"))
                    elif frame.kind == Kind.OPEN:
                        self.commands.append(
                            [a.decode() for a in ef.decode_open(frame.payload).argv]
                        )
                        exit_ok = ef.encode_exit(ef.ExitStatus(0, None, False))
                        writer.write(
                            ef.encode(Kind.STARTED, frame.channel, ef.u32(7))
                            + ef.encode(Kind.EXIT, frame.channel, exit_ok)
                        )
                await writer.drain()
        except (ConnectionError, ef.ProtocolError):
            pass
        finally:
            writer.close()


def pool_of(world: World) -> PoolService:
    defaults = world.ctx.vm_defaults
    target = PoolTarget(
        image=world.ctx.config.default_image_name,
        size=1,
        vcpu=defaults.vcpu.value,
        memory_mib=defaults.memory_mib.value,
        disk_size_bytes=256 * MIB,
        why="test",
    )
    return PoolService(world.vms, [target], retry_after_s=0.0)


def with_agent(world: World, agent: FakeAgent) -> ExecService:
    execs = ExecService(world.vms, connect=agent.connect)
    world.vms.guest_namer = AgentGuestNamer(world.runner, execs)
    return execs


def claim_lines(events: list[dict[str, Any]], state: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("stage") == "claim" and e["state"] == state]


def ssh_calls(world: World) -> int:
    return sum(1 for argv in world.runner.calls if argv and argv[0] == "ssh")


def test_the_claim_renames_on_the_daemons_connection_which_follows_the_new_name(
    world: World,
) -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        execs = with_agent(world, agent)
        await pool_of(world).fill_once()
        [pooled] = [r.name for r in await world.ctx.db.run(repo.list_vms, pool=True)]
        ssh_before = ssh_calls(world)
        got = await world.create(name="web")
        assert got.error is None, got.error
        assert got.stages() == ["claim"]
        [claim] = claim_lines(got.events, "ok")
        assert "through the agent" in claim["detail"], claim
        assert agent.connections == 1, "the settle's connection, kept for the claim"
        assert agent.commands[0] == SETTLE_ARGV
        assert agent.commands[1][:2] == ["sh", "-c"] and agent.commands[1][-1] == "web"
        assert ssh_calls(world) == ssh_before, "no SSH session for the rename"
        # `vm exec web` right after rides the same connection: no second HELLO.
        proc = await execs.start("web", ["true"])
        assert (await proc.wait()).code == 0
        assert agent.connections == 1
        assert agent.commands[2] == ["true"]
        assert pooled not in execs._open and "web" in execs._open
        await execs.aclose()

    asyncio.run(scenario())


def test_a_busy_agent_slower_than_the_old_two_seconds_is_still_used(world: World) -> None:
    """Under load the agent's HELLO answer took over 2 s: the namer's own connection gave
    up at 2 s and went to SSH (which, as slow, missed too: a cold boot). The daemon's
    connection waits as long as for any `vm exec` of a guest whose agent answered."""

    async def scenario() -> None:
        agent = FakeAgent(hello_delay_s=2.5)
        execs = with_agent(world, agent)
        await pool_of(world).fill_once()
        [pooled] = await world.ctx.db.run(repo.list_vms, pool=True)
        handle = world.vmm.handles[-1]
        world.vms.ready_via[handle.process] = Via.AGENT  # a Debian guest's agent answered
        got = await world.create(name="slow")
        assert got.error is None, got.error
        assert got.stages() == ["claim"], got.events
        assert agent.commands and agent.commands[-1][-1] == "slow"
        assert (await world.row("slow")).state is VmState.RUNNING
        assert pooled.name != "slow"
        await execs.aclose()

    asyncio.run(scenario())


def test_a_guest_without_an_agent_is_renamed_over_ssh_and_says_why(world: World) -> None:
    async def scenario() -> None:
        agent = FakeAgent(hello_delay_s=30)  # never in time: no agent
        execs = with_agent(world, agent)
        await pool_of(world).fill_once()
        ssh_before = ssh_calls(world)
        got = await world.create(name="plain")
        assert got.stages() == ["claim"], got.events
        [claim] = claim_lines(got.events, "ok")
        assert "over ssh" in claim["detail"] and "does not answer" in claim["detail"], claim
        assert ssh_calls(world) == ssh_before + 1
        await execs.aclose()

    asyncio.run(scenario())


def test_a_create_that_finds_pool_vms_but_boots_says_why(world: World) -> None:
    async def scenario() -> None:
        await pool_of(world).fill_once()
        got = await world.create(name="big", vcpu=world.ctx.vm_defaults.vcpu.value + 1)
        assert got.error is None, got.error
        assert got.stages() == BOOT_STAGES
        [warn] = claim_lines(got.events, "warn")
        assert "no ready VM of this size" in warn["detail"], warn

        # Every ready VM held by another claim: the create says so, then boots.
        [pooled] = await world.ctx.db.run(repo.list_vms, pool=True)
        async with world.vms.locked(pooled.name):
            got = await world.create(name="late")
        assert got.stages() == BOOT_STAGES
        [warn] = claim_lines(got.events, "warn")
        assert "being claimed by another create" in warn["detail"], warn

    asyncio.run(scenario())


def test_no_pool_vm_of_the_image_means_no_claim_line(world: World) -> None:
    async def scenario() -> None:
        got = await world.create(name="cold")
        assert got.stages() == BOOT_STAGES
        assert not [e for e in got.events if e.get("stage") == "claim"]

    asyncio.run(scenario())
