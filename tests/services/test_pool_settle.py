"""A pool VM is ready only once its guest has settled (systemd's boot over).

Over the fakes: the ``FakeGuestNamer`` records the settle command and can hold it (a
guest still starting units) or fail it (a guest that cannot be asked).
"""

from __future__ import annotations

import asyncio
from typing import Any

from banger.config.pool_policy import PoolTarget
from banger.services.pool import SETTLE_ARGV, PoolService
from banger.services.pool_claim import BUSY_WAIT_S
from banger.state import repo
from tests.services.conftest import IMAGE, MIB, World

BOOT_STAGES = ["reserve", "disks", "boot", "wait-ready"]


def pool_of(world: World) -> PoolService:
    defaults = world.ctx.vm_defaults
    target = PoolTarget(
        image=IMAGE,
        size=1,
        vcpu=defaults.vcpu.value,
        memory_mib=defaults.memory_mib.value,
        disk_size_bytes=256 * MIB,
        why="test",
    )
    return PoolService(world.vms, [target], retry_after_s=0.0)


def claim_warnings(events: list[dict[str, Any]]) -> list[str]:
    return [e["detail"] for e in events if e.get("stage") == "claim" and e["state"] == "warn"]


def test_a_pool_vm_is_ready_only_after_its_guest_settled(world: World) -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        world.namer.gate = ("is-system-running", release)
        pool = pool_of(world)
        filling = asyncio.create_task(pool.fill_once())
        while not world.namer.ran:
            await asyncio.sleep(0.01)
        [(name, argv)] = world.namer.ran
        assert argv == SETTLE_ARGV
        status = pool.status()[0]
        assert (status["ready"], status["booting"]) == (0, 1), "settling counts as booting"

        # A create meanwhile does not take the unsettled VM: it waits a while, then
        # boots, saying why.
        got = await world.create(name="early", disk_size_bytes=256 * MIB)
        assert got.stages() == BOOT_STAGES
        [why] = claim_warnings(got.events)
        assert "settling after its boot" in why and f"waited {BUSY_WAIT_S:g} s" in why, why
        assert [n for n, _ in world.namer.renamed] == []

        release.set()
        assert await filling == 1
        assert pool.status()[0]["ready"] == 1
        got = await world.create(name="late", disk_size_bytes=256 * MIB)
        assert got.stages() == ["claim"]
        assert world.namer.renamed == [(name, "late")]

    asyncio.run(scenario())


def test_a_guest_that_cannot_be_asked_is_still_called_ready(world: World) -> None:
    async def scenario() -> None:
        world.namer.fail_commands = "is-system-running"
        pool = pool_of(world)
        assert await pool.fill_once() == 1
        [vm] = await world.ctx.db.run(repo.list_vms, pool=True)
        assert pool.status()[0]["ready"] == 1 and pool.status()[0]["last_error"] is None
        assert world.namer.ran == [(vm.name, SETTLE_ARGV)]

    asyncio.run(scenario())


def test_a_create_that_finds_the_vm_settling_waits_and_claims_it(world: World) -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        world.namer.gate = ("is-system-running", release)
        pool = pool_of(world)
        filling = asyncio.create_task(pool.fill_once())
        while not world.namer.ran:
            await asyncio.sleep(0.01)
        [(name, _argv)] = world.namer.ran
        asyncio.get_running_loop().call_later(0.3, release.set)
        got = await world.create(name="soon", disk_size_bytes=256 * MIB)
        assert got.stages() == ["claim"], got.events
        assert claim_warnings(got.events) == []
        assert world.namer.renamed == [(name, "soon")]
        await filling

    asyncio.run(scenario())
