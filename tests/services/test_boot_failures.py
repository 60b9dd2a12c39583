"""Boots that go wrong, on demand: what real QEMU cannot be made to do in a test."""

from __future__ import annotations

import asyncio

from banger.errors import CommandFailed, Timeout
from banger.host import procinfo
from banger.model.records import VmState
from tests.services.conftest import World, collect


def test_a_vmm_that_fails_to_start_leaves_the_vm_in_error_with_its_log(world: World) -> None:
    async def scenario() -> None:
        world.vmm.script.fail_start = True
        got = await world.create(name="nostart")
        assert isinstance(got.error, CommandFailed)
        assert got.stages() == ["reserve", "disks"] and got.stages("fail") == ["boot"]
        vm = await world.row("nostart")
        assert vm.state is VmState.ERROR and vm.pid is None
        assert vm.last_error == "the VMM exited while starting"
        hint = got.error.hint or ""
        assert str(world.vms.paths(vm).vmm_log) in hint
        assert "kept in state error" in hint and "banger vm delete nostart" in hint
        assert world.dns.records == {}
        # Kept, not leaked: its TAP stays with its row until it is deleted.
        assert vm.tap in world.ops.taps
        await world.vms.delete("nostart", force=False)
        assert world.ops.taps == {} and await world.rows() == []

    asyncio.run(scenario())


def test_a_guest_that_never_answers_times_out_into_error_with_the_console_path(
    world: World,
) -> None:
    async def scenario() -> None:
        world.vmm.script.ready = False
        got = await world.create(name="silent", boot_timeout_s=0.6)
        assert isinstance(got.error, Timeout)
        assert got.stages("fail") == ["wait-ready"]
        vm = await world.row("silent")
        console = world.vms.paths(vm).console_log
        assert vm.state is VmState.ERROR and vm.pid is None
        assert vm.last_error is not None and "did not" in vm.last_error
        assert f"the guest's console log is {console}" in (got.error.hint or "")
        # The VMM of a VM given up on is not left running.
        handle = world.vmm.handles[-1]
        assert not procinfo.is_running(handle.process)

    asyncio.run(scenario())


def test_a_vmm_that_dies_while_booting_is_reported_as_such(world: World) -> None:
    async def scenario() -> None:
        world.vmm.script.ready = False
        world.vmm.script.die_after_s = 0.2
        got = await world.create(name="crashes", boot_timeout_s=5)
        assert isinstance(got.error, CommandFailed)
        assert got.error.brief == "the VM stopped while booting"
        vm = await world.row("crashes")
        assert vm.state is VmState.ERROR
        assert str(world.vms.paths(vm).console_log) in (got.error.hint or "")

    asyncio.run(scenario())


def test_a_vm_in_error_starts_again_once_the_guest_answers(world: World) -> None:
    async def scenario() -> None:
        world.vmm.script.ready = False
        assert (await world.create(name="again", boot_timeout_s=0.4)).error is not None
        world.vmm.script.ready = True
        started = await collect(world.vms.start("again", boot_timeout_s=5))
        assert started.error is None
        vm = await world.row("again")
        assert vm.state is VmState.RUNNING and vm.last_error is None

    asyncio.run(scenario())
