"""Daemon start-up reconciling rows with reality (SPEC §3), over what earlier services
left behind: a dead VMM, a pid reused by another process, a create cut between stages."""

from __future__ import annotations

import asyncio
import signal

from banger.host import procinfo
from banger.model.records import VmState
from banger.services import vm_disks
from banger.services.operations import Progress
from banger.services.reconcile import reconcile
from banger.services.vm_create import CreateOrder
from banger.state import repo
from banger.vmm import spawn
from tests.services.conftest import World


def test_a_vm_whose_vmm_died_while_the_daemon_was_down_is_marked_stopped_e86(
    world: World,
) -> None:
    async def scenario() -> None:
        assert (await world.create(name="dead")).error is None
        handle = world.vmm.handles[-1]
        spawn.signal_if_ours(handle.process, signal.SIGKILL)
        assert await spawn.wait_exit(handle.process, timeout_s=5)
        report = await reconcile(world.restarted().vms)
        assert report.marked_stopped == ["dead"] and report.adopted == []
        vm = await world.row("dead")
        assert vm.state is VmState.STOPPED and vm.pid is None
        assert vm.last_error == "the VM stopped while the daemon was not running"

    asyncio.run(scenario())


def test_a_pid_reused_by_another_process_is_not_adopted_nor_signalled_e89(
    world: World,
) -> None:
    async def scenario() -> None:
        assert (await world.create(name="reused")).error is None
        vm = await world.row("reused")
        assert vm.pid_start_ticks is not None
        # The row's pid now runs something that started at another time: not our VMM.
        await world.ctx.db.run(repo.update_vm, "reused", pid_start_ticks=vm.pid_start_ticks + 12345)
        report = await reconcile(world.restarted().vms)
        assert report.marked_stopped == ["reused"] and report.adopted == []
        assert (await world.row("reused")).state is VmState.STOPPED
        stranger = world.vmm.handles[-1].process
        assert procinfo.is_running(stranger), "a process that is not ours is left alone"

    asyncio.run(scenario())


def test_a_live_vmm_of_ours_is_adopted_as_running(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="alive")).error is None
        await world.ctx.db.run(repo.update_vm, "alive", state=VmState.STARTING)
        later = world.restarted()
        report = await reconcile(later.vms)
        assert report.adopted == ["alive"] and report.marked_stopped == []
        assert (await world.row("alive")).state is VmState.RUNNING
        # The new daemon's service can stop what the old one started.
        stopped = await later.vms.stop("alive")
        assert stopped.state is VmState.STOPPED and stopped.last_error is None

    asyncio.run(scenario())


def test_a_create_cut_between_disks_and_boot_is_rolled_back_e84(world: World) -> None:
    """The daemon dies after reserve and disks (row CREATING, VM dir and TAP made)."""

    async def scenario() -> None:
        vms = world.vms
        request = await vms.validate(CreateOrder(name="half", image="tiny"))
        # The create's own stages, up to the crash.
        artifacts = await vms._resolve_image(request.image, Progress(lambda _: None))
        plan = vms._plan(artifacts, False, None, Progress(lambda _: None), rootless=False)
        await vms.network.ensure()
        vm = await vms._reserve(request, plan, rootless=False)
        await asyncio.to_thread(vm_disks.build, world.ctx, vm, vms.paths(vm), plan.image)
        vm_dir, tap = vms.paths(vm).vm_dir, vm.tap
        assert vm_dir.is_dir() and tap in world.ops.taps
        # -- the daemon is killed here; a new one starts --
        report = await reconcile(world.restarted().vms)
        assert report.rolled_back == ["half"]
        assert await world.rows() == []
        assert not vm_dir.exists()
        assert tap not in world.ops.taps

    asyncio.run(scenario())


def test_leftovers_without_a_row_are_swept_and_others_kept_e93(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="kept")).error is None
        vms_dir = world.ctx.layout.vms_dir
        orphan = vms_dir / "orphan"
        orphan.mkdir()
        (orphan / "rootfs.ext4").write_bytes(b"")
        stranger = vms_dir / "not-a-vm"
        stranger.mkdir()
        (stranger / "notes.txt").write_text("mine")
        world.ops.taps["bgtap9"] = ("banger0", 0)
        report = await reconcile(world.restarted().vms)
        assert f"dir {orphan}" in report.removed and not orphan.exists()
        assert stranger.is_dir() and (vms_dir / "kept").is_dir()
        assert "tap bgtap9" in report.removed and "bgtap9" not in world.ops.taps
        assert (await world.row("kept")).tap in world.ops.taps

    asyncio.run(scenario())
