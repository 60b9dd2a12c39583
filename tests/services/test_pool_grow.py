"""A claim that grows the pool VM's work disk, and one whose grow fails.

Over the fakes: the ``FakeVmm`` records each drive resize (the size of the backing file
it saw, the size asked), the ``FakeGuestNamer`` each command run in the guest (the
online ``resize2fs``). A grow that fails at the VMM or in the guest hands out nothing
half-grown: the pool VM is removed and the create boots cold, with a ``! claim`` line.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from banger.config.pool_policy import PoolTarget
from banger.host import procinfo
from banger.model.records import VmState
from banger.services import pool_claim, vm_boot
from banger.services.operations import Progress
from banger.services.pool import PoolService
from banger.services.vm_create import CreateOrder
from banger.state import repo
from tests.services.conftest import IMAGE, MIB, World

BOOT_STAGES = ["reserve", "disks", "boot", "wait-ready"]
POOL_DISK = 256 * MIB


def pool_of(world: World, *, disk: int = POOL_DISK, size: int = 1) -> PoolService:
    defaults = world.ctx.vm_defaults
    target = PoolTarget(
        image=IMAGE,
        size=size,
        vcpu=defaults.vcpu.value,
        memory_mib=defaults.memory_mib.value,
        disk_size_bytes=disk,
        why="test",
    )
    return PoolService(world.vms, [target], retry_after_s=0.0)


def claim_lines(events: list[dict[str, Any]], state: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("stage") == "claim" and e["state"] == state]


def grow_commands(world: World) -> list[tuple[str, list[str]]]:
    return [(vm, argv) for vm, argv in world.namer.ran if argv[-2:-1] == ["/dev/vdb"]]


def test_a_bigger_disk_is_grown_on_the_claimed_vm(world: World) -> None:
    async def scenario() -> None:
        await pool_of(world).fill_once()
        [pooled] = await world.ctx.db.run(repo.list_vms, pool=True)
        got = await world.create(name="big", disk_size_bytes=1024 * MIB)
        assert got.error is None, got.error
        assert got.stages() == ["claim"], "no boot: the ready VM was grown"
        vm = await world.row("big")
        assert vm.id == pooled.id and vm.disk_size_bytes == 1024 * MIB
        assert world.vms.paths(vm).work_disk.stat().st_size == 1024 * MIB
        assert world.vmm.grown == [(vm_boot.WORK_DRIVE_ID, 1024 * MIB, 1024 * MIB)], (
            "the VMM was told after the file had grown"
        )
        [(where, argv)] = grow_commands(world)
        assert where == pooled.name, "grown before the rename, while still a pool VM"
        assert argv[-2:] == ["/dev/vdb", str(1024 * MIB // 512)]
        [claim] = claim_lines(got.events, "ok")
        assert "work disk grown to 1G" in claim["detail"], claim
        assert got.result is not None and got.result["disk_size_bytes"] == 1024 * MIB

    asyncio.run(scenario())


def test_a_smaller_or_equal_disk_is_not_grown(world: World) -> None:
    async def scenario() -> None:
        await pool_of(world, size=2).fill_once()
        for name, disk in (("same", POOL_DISK), ("less", 128 * MIB)):
            got = await world.create(name=name, disk_size_bytes=disk)
            assert got.stages() == ["claim"], got.events
            assert (await world.row(name)).disk_size_bytes == POOL_DISK
        assert world.vmm.grown == [] and grow_commands(world) == []

    asyncio.run(scenario())


def test_a_vm_that_needs_no_grow_is_claimed_first(world: World) -> None:
    async def scenario() -> None:
        await pool_of(world, disk=POOL_DISK).fill_once()
        await pool_of(world, disk=1024 * MIB).fill_once()
        got = await world.create(name="fits", disk_size_bytes=512 * MIB)
        assert got.stages() == ["claim"]
        assert (await world.row("fits")).disk_size_bytes == 1024 * MIB
        assert world.vmm.grown == []

    asyncio.run(scenario())


def test_a_guest_without_resize2fs_keeps_its_pool_vm_and_the_create_boots(
    world: World,
) -> None:
    async def scenario() -> None:
        await pool_of(world).fill_once()
        [pooled] = await world.ctx.db.run(repo.list_vms, pool=True)
        world.namer.fail_commands = "command -v resize2fs"
        got = await world.create(name="big", disk_size_bytes=1024 * MIB)
        assert got.error is None, got.error
        assert got.stages() == BOOT_STAGES
        [warn] = claim_lines(got.events, "warn")
        assert f"{pooled.name} cannot grow its work disk" in warn["detail"], warn
        assert world.vmm.grown == [] and grow_commands(world) == [], "nothing was changed"
        assert [r.name for r in await world.ctx.db.run(repo.list_vms, pool=True)] == [
            pooled.name
        ], "it stays in the pool"
        assert world.vms.paths(pooled).work_disk.stat().st_size == pooled.disk_size_bytes
        assert (await world.row("big")).disk_size_bytes == 1024 * MIB
        got = await world.create(name="fits", disk_size_bytes=POOL_DISK)
        assert got.stages() == ["claim"], "a create that needs no grow still claims it"

    asyncio.run(scenario())


def _assert_discarded_then_cold(world: World, got: Any, pooled: Any, why: str) -> None:
    assert got.error is None, got.error
    assert got.stages() == BOOT_STAGES, "a cold create instead"
    [warn] = claim_lines(got.events, "warn")
    assert f"{pooled.name} not usable (work disk not grown to 1G" in warn["detail"], warn
    assert why in warn["detail"], warn
    handle = vm_boot.handle_of(pooled, world.vms.paths(pooled))
    assert handle is not None and not procinfo.is_running(handle.process), "its VMM was killed"
    assert not world.vms.paths(pooled).vm_dir.exists(), "its files are gone"


def test_a_vmm_that_refuses_the_resize_means_no_half_grown_vm(world: World) -> None:
    async def scenario() -> None:
        await pool_of(world).fill_once()
        [pooled] = await world.ctx.db.run(repo.list_vms, pool=True)
        world.vmm.script.fail_grow = True
        got = await world.create(name="big", disk_size_bytes=1024 * MIB)
        _assert_discarded_then_cold(world, got, pooled, "did not resize the drive")
        assert await world.ctx.db.run(repo.list_vms, pool=True) == []
        vm = await world.row("big")
        assert vm.pid != pooled.pid and vm.disk_size_bytes == 1024 * MIB
        assert vm.state is VmState.RUNNING
        assert world.namer.renamed == [], "never renamed"

    asyncio.run(scenario())


def test_a_guest_that_cannot_grow_its_filesystem_means_no_half_grown_vm(world: World) -> None:
    async def scenario() -> None:
        await pool_of(world).fill_once()
        [pooled] = await world.ctx.db.run(repo.list_vms, pool=True)
        world.namer.fail_commands = 'resize2fs "$dev"'
        got = await world.create(name="big", disk_size_bytes=1024 * MIB)
        _assert_discarded_then_cold(world, got, pooled, "growing the guest's /root filesystem")
        assert [e[1] for e in world.vmm.grown] == [1024 * MIB], "the device had grown"
        vm = await world.row("big")
        assert vm.pid != pooled.pid and vm.disk_size_bytes == 1024 * MIB
        assert world.namer.renamed == []

    asyncio.run(scenario())


def test_a_claim_interrupted_mid_grow_discards_the_vm(world: World) -> None:
    async def scenario() -> None:
        await pool_of(world).fill_once()
        [pooled] = await world.ctx.db.run(repo.list_vms, pool=True)
        # Never set: the guest is busy growing.
        world.namer.gate = ('resize2fs "$dev"', asyncio.Event())
        req = await world.vms.validate(
            CreateOrder(name="big", image=IMAGE, disk_size_bytes=1024 * MIB)
        )
        claiming = asyncio.create_task(
            pool_claim.claim(world.vms, req, pooled.image_id, Progress(lambda _event: None))
        )
        while not grow_commands(world):
            await asyncio.sleep(0.01)
        claiming.cancel()
        with pytest.raises(asyncio.CancelledError):
            await claiming
        assert await world.ctx.db.run(repo.list_vms, pool=True) == [], "not pooled again"
        handle = vm_boot.handle_of(pooled, world.vms.paths(pooled))
        assert handle is not None and not procinfo.is_running(handle.process)

    asyncio.run(scenario())


def test_a_vm_held_by_a_claim_still_counts_so_no_replacement_boots(world: World) -> None:
    """A claim may let go of its VM (a guest that cannot grow keeps it pooled): while it
    holds it, the filler must not boot a replacement that would then be one too many."""

    async def scenario() -> None:
        pool = pool_of(world)
        await pool.fill_once()
        [pooled] = await world.ctx.db.run(repo.list_vms, pool=True)
        launched = len(world.vmm.launched)
        async with world.vms.locked(pooled.name):
            assert await pool.fill_once() == 0
            assert pool.status()[0]["vms"] == [pooled.name]
        assert len(world.vmm.launched) == launched

    asyncio.run(scenario())
