"""The warm pool over the fakes: filling, claiming (and not), refilling, restarts, races.

A ``PoolService`` is built per test with its own target (the world's config turns the
pool off), over the same ``VmService`` the creates go through.
"""

from __future__ import annotations

import asyncio
import signal

from banger.config.pool_policy import PoolTarget
from banger.model.records import VmState
from banger.services import inventory
from banger.services.pool import PoolService
from banger.services.reconcile import reconcile
from banger.services.vm_create import CreateOrder
from banger.state import repo
from banger.vmm import spawn
from tests.services.conftest import DISK_BYTES, IMAGE, MIB, World, collect

BOOT_STAGES = ["reserve", "disks", "boot", "wait-ready"]


def target(world: World, size: int, *, disk: int = 256 * MIB) -> PoolTarget:
    defaults = world.ctx.vm_defaults
    return PoolTarget(
        image=IMAGE,
        size=size,
        vcpu=defaults.vcpu.value,
        memory_mib=defaults.memory_mib.value,
        disk_size_bytes=disk,
        why="test",
    )


def pool_of(world: World, size: int, *, disk: int = 256 * MIB) -> PoolService:
    return PoolService(world.vms, [target(world, size, disk=disk)], retry_after_s=0.0)


async def pool_rows(world: World) -> list[str]:
    rows = await world.ctx.db.run(repo.list_vms, pool=True)
    return [r.name for r in rows]


def test_the_pool_fills_with_vms_nobody_lists_or_resolves(world: World) -> None:
    async def scenario() -> None:
        pool = pool_of(world, 2)
        assert await pool.fill_once() == 2
        names = await pool_rows(world)
        assert len(names) == 2 and all(n.startswith("pool-") for n in names)
        for name in names:
            vm = await world.row(name)
            assert vm.pool and vm.state is VmState.RUNNING and world.vms.alive(vm)
        assert await inventory.list_vms(world.ctx) == [], "pool VMs are not the user's"
        assert world.dns.records == {}, "a pool VM has no <name>.vm record"
        assert pool.status()[0] | {"vms": None} == {
            "image": IMAGE,
            "wanted": 2,
            "ready": 2,
            "booting": 0,
            "vcpu": world.ctx.vm_defaults.vcpu.value,
            "memory_mib": world.ctx.vm_defaults.memory_mib.value,
            "disk_size_bytes": 256 * MIB,
            "why": "test",
            "vms": None,
            "waiting": None,
            "last_error": None,
        }
        assert await pool.fill_once() == 0, "a full pool boots nothing"

    asyncio.run(scenario())


def test_a_matching_create_claims_a_ready_vm_and_the_pool_refills(world: World) -> None:
    async def scenario() -> None:
        pool = pool_of(world, 1)
        await pool.fill_once()
        [pooled] = await pool_rows(world)
        before = await world.row(pooled)
        launched = len(world.vmm.launched)
        got = await world.create(name="web")
        assert got.error is None, got.error
        assert got.stages() == ["claim"], "no boot stage: the VM was already running"
        assert len(world.vmm.launched) == launched
        vm = await world.row("web")
        assert not vm.pool and vm.state is VmState.RUNNING
        assert (vm.id, vm.ip, vm.pid, vm.tap) == (before.id, before.ip, before.pid, before.tap)
        assert vm.vm_dir == str(world.ctx.layout.vms_dir / "web")
        assert world.vms.paths(vm).work_disk.is_file(), "the VM dir moved with the name"
        assert not (world.ctx.layout.vms_dir / pooled).exists()
        assert world.namer.renamed == [(pooled, "web")]
        assert world.dns.records == {"web": vm.ip}
        assert got.result is not None and got.result["name"] == "web"
        assert "pool" not in got.result, "the API's VM record is unchanged"
        assert [v["name"] for v in await inventory.list_vms(world.ctx)] == ["web"]
        assert world.vms.pool_claimed.is_set(), "a claim wakes the filler"
        assert await pool.fill_once() == 1
        assert len(await pool_rows(world)) == 1 and pooled not in await pool_rows(world)

    asyncio.run(scenario())


def test_a_create_without_a_name_claims_under_a_generated_one(world: World) -> None:
    async def scenario() -> None:
        await pool_of(world, 1).fill_once()
        got = await world.create()
        assert got.error is None and got.stages() == ["claim"]
        assert got.result is not None
        name = got.result["name"]
        assert not name.startswith("pool-") and world.dns.records == {name: got.result["ip"]}

    asyncio.run(scenario())


def test_a_create_no_pool_vm_matches_boots_cold_and_leaves_the_pool_alone(world: World) -> None:
    async def scenario() -> None:
        pool = pool_of(world, 1)
        await pool.fill_once()
        pooled = await pool_rows(world)
        other_vcpu = world.ctx.vm_defaults.vcpu.value + 1
        for order in (
            {"name": "cpu", "vcpu": other_vcpu},
            {"name": "mem", "memory_mib": world.ctx.vm_defaults.memory_mib.value + 256},
        ):
            got = await world.create(**order)
            assert got.error is None, got.error
            assert got.stages() == BOOT_STAGES, order
        assert await pool_rows(world) == pooled, "the pool is not drained by a mismatch"
        assert world.namer.renamed == []

    asyncio.run(scenario())


def test_four_concurrent_claims_each_get_their_own_vm(world: World) -> None:
    async def scenario() -> None:
        pool = pool_of(world, 4)
        assert await pool.fill_once() == 4
        launched = len(world.vmm.launched)
        results = await asyncio.gather(*(world.create(name=f"c{i}") for i in range(4)))
        for got in results:
            assert got.error is None, got.error
            assert got.stages() == ["claim"]
        assert len(world.vmm.launched) == launched
        rows = [await world.row(f"c{i}") for i in range(4)]
        assert len({r.id for r in rows}) == 4 and len({r.pid for r in rows}) == 4
        assert await pool_rows(world) == []
        assert sorted(new for _old, new in world.namer.renamed) == ["c0", "c1", "c2", "c3"]

    asyncio.run(scenario())


def test_a_pool_vm_that_cannot_be_renamed_is_discarded_and_the_create_boots(world: World) -> None:
    async def scenario() -> None:
        await pool_of(world, 1).fill_once()
        [pooled] = await pool_rows(world)
        handle = world.vmm.handles[-1]
        world.namer.fail = True
        got = await world.create(name="cold")
        assert got.error is None, got.error
        assert got.stages() == BOOT_STAGES
        assert any(e["stage"] == "claim" and e["state"] == "warn" for e in got.events)
        assert await pool_rows(world) == []
        assert await spawn.wait_exit(handle.process, timeout_s=5), "its VMM was stopped"
        assert not (world.ctx.layout.vms_dir / pooled).exists()

    asyncio.run(scenario())


def test_a_claim_for_a_taken_name_fails_and_does_not_leave_a_misnamed_pool_vm(
    world: World,
) -> None:
    async def scenario() -> None:
        assert (await world.create(name="taken")).error is None
        await pool_of(world, 1).fill_once()
        # The name was free when the request was checked, then another create took it.
        order = CreateOrder(name="late", image=IMAGE, disk_size_bytes=DISK_BYTES)
        request = await world.vms.validate(order)
        assert (await world.create(name="late")).stages() == ["claim"]
        await pool_of(world, 1).fill_once()
        got = await collect(world.vms.create(request))
        assert got.error is not None and got.error.code == "already_exists"
        assert await pool_rows(world) == [], "a guest renamed to 'late' is not pooled again"

    asyncio.run(scenario())


def test_pool_vms_survive_a_daemon_restart_and_dead_ones_are_replaced(world: World) -> None:
    async def scenario() -> None:
        await pool_of(world, 2).fill_once()
        handle = world.vmm.handles[-1]
        rows = [await world.row(n) for n in await pool_rows(world)]
        [dead] = [r for r in rows if r.pid == handle.process.pid]
        [alive] = [r for r in rows if r.pid != handle.process.pid]
        first, second = alive.name, dead.name
        spawn.signal_if_ours(handle.process, signal.SIGKILL)
        assert await spawn.wait_exit(handle.process, timeout_s=5)
        later = world.restarted()
        report = await reconcile(later.vms)
        assert first in report.adopted and second in report.marked_stopped
        pool = PoolService(later.vms, [target(later, 2)])
        assert await pool.fill_once() == 1, "the dead one is removed and replaced"
        names = await pool_rows(later)
        assert first in names and second not in names and len(names) == 2
        got = await later.create(name="after")
        assert got.error is None and got.stages() == ["claim"]

    asyncio.run(scenario())


def test_a_pool_vm_that_matches_no_target_any_more_is_removed(world: World) -> None:
    async def scenario() -> None:
        await pool_of(world, 1, disk=256 * MIB).fill_once()
        [old] = await pool_rows(world)
        bigger = pool_of(world, 1, disk=512 * MIB)
        assert await bigger.fill_once() == 1
        names = await pool_rows(world)
        assert old not in names and len(names) == 1

    asyncio.run(scenario())


def test_drain_removes_every_pool_vm_and_stops_refilling_until_resumed(world: World) -> None:
    async def scenario() -> None:
        pool = pool_of(world, 2)
        await pool.fill_once()
        assert len(await pool.drain()) == 2
        assert await pool_rows(world) == []
        assert await pool.fill_once() == 0 and pool.summary().startswith("drained")
        assert pool.reply()["paused"] and pool.status()[0]["ready"] == 0
        pool.resume()
        assert await pool.fill_once() == 2
        assert pool.summary() == f"{IMAGE}: 2/2 ready" and not pool.reply()["paused"]

    asyncio.run(scenario())


def test_the_pool_waits_for_its_image_instead_of_pulling_it(world: World) -> None:
    async def scenario() -> None:
        pool = pool_of(world, 1)
        pool.states[0].target = PoolTarget("absent", 1, 1, 1024, 256 * MIB, "test")
        assert await pool.fill_once() == 0
        assert "not here yet" in (pool.status()[0]["waiting"] or "")
        assert world.vmm.launched == []

    asyncio.run(scenario())


def test_a_failed_pool_boot_is_recorded_and_removed(world: World) -> None:
    async def scenario() -> None:
        world.vmm.script.fail_start = True
        pool = pool_of(world, 1)
        assert await pool.fill_once() == 0
        assert "exited while starting" in (pool.status()[0]["last_error"] or "")
        assert await pool_rows(world) == []

    asyncio.run(scenario())
