"""Start, stop, kill, delete and resize through VmService, and the monitor noticing a
VMM that dies on its own."""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

import pytest

from banger.errors import InvalidArgument, InvalidState
from banger.host import procinfo
from banger.host.publish import STAGING_DIR, cleanup_leftovers
from banger.model.records import VmState
from banger.model.units import format_size
from banger.services import sweeper
from banger.services.vm_monitor import VmMonitor
from tests.services.conftest import World, collect


def test_stop_then_start_boots_a_new_vmm(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="cycle")).error is None
        first = world.vmm.handles[-1]
        stopped = await world.vms.stop("cycle")
        assert stopped.state is VmState.STOPPED and stopped.pid is None
        assert stopped.last_error is None, "a clean stop leaves no error"
        assert world.vmm.shutdowns == [first]
        assert not procinfo.is_running(first.process)
        assert world.dns.records == {}
        started = await collect(world.vms.start("cycle", boot_timeout_s=5))
        assert started.error is None and started.stages() == ["boot", "wait-ready"]
        vm = await world.row("cycle")
        assert vm.state is VmState.RUNNING and vm.pid == world.vmm.handles[-1].process.pid
        assert vm.pid != first.process.pid
        assert world.dns.records == {"cycle": vm.ip}

    asyncio.run(scenario())


def test_stopping_a_stopped_vm_succeeds_e51(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="twice")).error is None
        await world.vms.stop("twice")
        again = await world.vms.stop("twice")
        assert again.state is VmState.STOPPED and len(world.vmm.shutdowns) == 1

    asyncio.run(scenario())


def test_a_guest_ignoring_the_stop_is_killed_and_says_so_e96(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="stubborn")).error is None
        world.vmm.script.ignore_shutdown = True
        vm = await world.vms.stop("stubborn")
        assert vm.state is VmState.STOPPED
        assert vm.last_error is not None and "forcefully terminated" in vm.last_error
        assert "SIGKILL" in vm.last_error

    asyncio.run(scenario())


def test_a_vm_whose_vmm_binary_is_gone_still_stops_e97(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="orphaned")).error is None
        world.vmms.uninstalled = True
        vm = await world.vms.stop("orphaned")
        assert vm.state is VmState.STOPPED and world.vmm.shutdowns == []
        assert not procinfo.is_running(world.vmm.handles[-1].process)

    asyncio.run(scenario())


def test_starting_a_running_vm_says_so_and_changes_nothing(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="busy")).error is None
        pid = (await world.row("busy")).pid
        got = await collect(world.vms.start("busy"))
        assert got.error is None and got.stages() == ["start"]
        assert (await world.row("busy")).pid == pid and len(world.vmm.launched) == 1

    asyncio.run(scenario())


def test_restart_stops_then_boots(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="re")).error is None
        got = await collect(await world.vms.restart("re"))
        assert got.error is None
        assert len(world.vmm.shutdowns) == 1 and len(world.vmm.handles) == 2
        assert (await world.row("re")).state is VmState.RUNNING

    asyncio.run(scenario())


def test_kill_ends_the_vmm_and_records_the_signal(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="victim")).error is None
        vm = await world.vms.kill("victim", signal.SIGKILL)
        assert vm.state is VmState.STOPPED
        assert vm.last_error == f"killed with signal {int(signal.SIGKILL)}"
        with pytest.raises(InvalidState) as again:
            await world.vms.kill("victim", signal.SIGKILL)
        # Issue 14 item 19: the state in words, and the way on (one wording everywhere).
        assert again.value.brief == "VM 'victim' is in state stopped, not running"
        assert again.value.hint == "`banger vm start victim`"

    asyncio.run(scenario())


def test_delete_refuses_a_running_vm_unless_forced(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="gone")).error is None
        vm = await world.row("gone")
        paths = world.vms.paths(vm)
        with pytest.raises(InvalidState, match="is running"):
            await world.vms.delete("gone", force=False)
        await world.vms.delete("gone", force=True)
        assert await world.rows() == []
        assert not paths.vm_dir.exists() and not paths.run_dir.exists()
        assert world.ops.taps == {} and world.dns.records == {}
        assert not procinfo.is_running(world.vmm.handles[-1].process)

    asyncio.run(scenario())


def test_delete_answers_before_the_disks_are_deleted_and_shutdown_waits_for_them(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The VM's directory is renamed away at once (the name is free), its disks deleted
    after the answer; a failed deletion leaves the trash to the next start's cleanup."""
    release = threading.Event()
    real = sweeper.remove_tree

    def slow_remove(path: Path) -> None:
        assert release.wait(10)
        real(path)

    async def scenario() -> None:
        assert (await world.create(name="quick")).error is None
        vm = await world.row("quick")
        staging_area = world.vms.paths(vm).vm_dir.parent / STAGING_DIR
        monkeypatch.setattr(sweeper, "remove_tree", slow_remove)
        await world.vms.delete("quick", force=True)
        assert not world.vms.paths(vm).vm_dir.exists() and await world.rows() == []
        trash = [p for p in staging_area.iterdir() if p.name.endswith(".trash")]
        assert len(trash) == 1 and (trash[0] / "work.ext4").exists(), "not deleted yet"
        assert world.vms.sweeper.pending == 1
        assert (await world.create(name="quick")).error is None, "the name is free"
        release.set()
        await world.vms.sweeper.drain()
        assert not trash[0].exists() and world.vms.sweeper.pending == 0

        def failing(path: Path) -> None:
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(sweeper, "remove_tree", failing)
        await world.vms.delete("quick", force=True)
        await world.vms.sweeper.drain()
        left = [p for p in staging_area.iterdir() if p.name.endswith(".trash")]
        assert len(left) == 1, "a failed deletion leaves the trash"
        assert cleanup_leftovers([staging_area.parent]) == left

    asyncio.run(scenario())


def test_delete_while_stopping_waits_for_the_stop_then_removes_the_vm(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="racing")).error is None
        world.vmm.script.shutdown_delay_s = 0.5
        stopping = asyncio.create_task(world.vms.stop("racing"))
        while not world.vmm.shutdowns:
            await asyncio.sleep(0.01)
        assert world.vms.busy("racing"), "the monitor must leave a stopping VM alone"
        assert (await world.row("racing")).state is VmState.STOPPING
        await world.vms.delete("racing", force=True)
        stopped = await stopping
        assert stopped.state is VmState.STOPPED
        assert await world.rows() == [] and world.ops.taps == {}

    asyncio.run(scenario())


def test_resize_refuses_a_running_vm_and_a_shrinking_disk(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="sized")).error is None
        with pytest.raises(InvalidState, match="not supported after start"):
            await world.vms.set_resources("sized", vcpu=2, memory_mib=None, disk_size_bytes=None)
        await world.vms.stop("sized")
        vm_before = await world.vms.get("sized")
        with pytest.raises(InvalidArgument, match="vcpu 64 is more than this host's 4 CPUs"):
            await world.vms.set_resources("sized", vcpu=64, memory_mib=None, disk_size_bytes=None)
        with pytest.raises(InvalidArgument, match="grow but not shrink") as shrink:
            await world.vms.set_resources("sized", vcpu=None, memory_mib=None, disk_size_bytes=1)
        # Issue 14 item 19: in the user's units, with what to give instead.
        now = format_size(vm_before.disk_size_bytes)
        assert shrink.value.brief.endswith(f"and it is {now} now"), shrink.value.brief
        assert shrink.value.hint == f"give --disk-size {now} or more"
        vm = await world.vms.set_resources(
            "sized", vcpu=2, memory_mib=512, disk_size_bytes=128 * 1024 * 1024
        )
        assert (vm.vcpu, vm.memory_mib, vm.disk_size_bytes) == (2, 512, 128 * 1024 * 1024)
        assert world.vms.paths(vm).work_disk.stat().st_size == 128 * 1024 * 1024

    asyncio.run(scenario())


def test_the_monitor_marks_a_vm_whose_vmm_died_as_stopped_e95(world: World) -> None:
    async def scenario() -> None:
        world.vmm.script.die_after_s = 0.3
        assert (await world.create(name="dies")).error is None
        handle = world.vmm.handles[-1]
        while procinfo.is_running(handle.process):
            await asyncio.sleep(0.02)
        await VmMonitor(world.vms).check_all()
        vm = await world.row("dies")
        assert vm.state is VmState.STOPPED and vm.pid is None
        console = world.vms.paths(vm).console_log
        assert vm.last_error == f"the VMM exited unexpectedly (console log: {console})"
        assert world.dns.records == {}

    asyncio.run(scenario())
