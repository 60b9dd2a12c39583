"""``vm create`` through VmService with fakes at the seams: the stages, in order, and
what is refused before any work starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from banger.errors import AlreadyExists, ImageNotFound, InvalidArgument
from banger.model.records import VmState
from banger.services.vm_create import CreateOrder
from banger.state import repo
from tests.fakes import answered
from tests.services.conftest import DISK_BYTES, IMAGE, World, collect


def test_create_runs_every_stage_and_leaves_a_running_vm(world: World) -> None:
    async def scenario() -> None:
        got = await world.create(name="web", vcpu=2, memory_mib=256)
        assert got.error is None, got.error
        assert got.stages() == ["reserve", "disks", "boot", "wait-ready"]
        assert got.result is not None and got.result["state"] == "running"
        vm = await world.row("web")
        assert (vm.state, vm.vcpu, vm.memory_mib, vm.disk_size_bytes) == (
            VmState.RUNNING,
            2,
            256,
            DISK_BYTES,
        )
        assert vm.pid is not None and vm.tap in world.ops.taps
        paths = world.vms.paths(vm)
        for made in (paths.rootfs, paths.work_disk, paths.known_hosts):
            assert made.is_file()
        spec = world.vmm.launched[-1]
        assert (spec.vcpu, spec.memory_mib, spec.net and spec.net.ip) == (2, 256, vm.ip)
        assert world.dns.records == {"web": vm.ip}
        assert world.runner.ran("ssh"), "readiness asked the guest over ssh"
        assert "ensure_bridge" in world.ops.calls

    asyncio.run(scenario())


def test_a_create_that_must_wait_for_the_kvm_probe_says_so_before_reserving(
    world: World,
) -> None:
    async def scenario() -> None:
        world.vmms.kvm_unknown = True
        got = await world.create(name="first")
        assert got.error is None
        assert got.stages() == ["kvm-probe", "reserve", "disks", "boot", "wait-ready"]
        image = await world.ctx.db.run(repo.get_image, IMAGE)
        assert world.vmms.probed == [Path(image.kernel_path or "")]
        again = await world.create(name="second")
        assert "kvm-probe" not in again.stages(), "the verdict is kept"

    asyncio.run(scenario())


def test_defaults_and_the_default_image_fill_what_the_order_leaves_out(world: World) -> None:
    async def scenario() -> None:
        request = await world.vms.validate(CreateOrder())
        defaults = world.ctx.vm_defaults
        assert request.image == IMAGE
        assert (request.vcpu, request.memory_mib, request.disk_size_bytes) == (
            defaults.vcpu.value,
            defaults.memory_mib.value,
            defaults.disk_size_bytes.value,
        )
        assert request.name is None

    asyncio.run(scenario())


@pytest.mark.parametrize("name", ["Bad_Name", "a" * 64, "ß", "-x"])
def test_an_invalid_name_is_refused_before_the_image_or_the_vmm_is_looked_at(
    world: World, name: str
) -> None:
    """Issue 14 item 10: the name first, even when the image does not exist."""

    async def scenario() -> None:
        with pytest.raises(InvalidArgument, match="invalid VM name"):
            await world.vms.validate(CreateOrder(name=name, image="no-such-image", vcpu=999))
        assert world.vmms.wanted == [] and world.vmm.launched == []
        assert world.vmms.probed == []
        assert await world.rows() == []

    asyncio.run(scenario())


def test_a_taken_name_is_refused_before_any_work(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="dup")).error is None
        launched = len(world.vmm.launched)
        with pytest.raises(AlreadyExists, match="dup"):
            await world.vms.validate(CreateOrder(name="dup"))
        assert len(world.vmm.launched) == launched
        assert [v.name for v in await world.rows()] == ["dup"]

    asyncio.run(scenario())


def test_more_than_the_host_has_is_refused_with_units_e47(world: World) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidArgument, match="vcpu 5 is more than this host's 4 CPUs"):
            await world.vms.validate(CreateOrder(vcpu=5))
        with pytest.raises(InvalidArgument, match="MiB is more than this host's 8192 MiB"):
            await world.vms.validate(CreateOrder(memory_mib=9000))
        assert await world.rows() == []

    asyncio.run(scenario())


def test_an_unknown_image_fails_in_the_stream_and_reserves_nothing(world: World) -> None:
    async def scenario() -> None:
        got = await world.create(name="lost", image="no-such-image")
        assert isinstance(got.error, ImageNotFound)
        assert await world.rows() == [] and world.ops.taps == {}
        assert world.vmm.launched == []

    asyncio.run(scenario())


def test_concurrent_creates_get_unique_names_ips_and_taps(world: World) -> None:
    async def scenario() -> None:
        results = await asyncio.gather(*(world.create() for _ in range(5)))
        assert [r.error for r in results] == [None] * 5
        vms = await world.rows()
        assert len(vms) == 5
        assert len({v.name for v in vms}) == 5
        assert len({v.ip for v in vms}) == 5
        assert len({v.tap for v in vms}) == 5
        assert all(v.state is VmState.RUNNING for v in vms)
        assert set(world.dns.records) == {v.name for v in vms}

    asyncio.run(scenario())


def test_concurrent_creates_of_one_name_make_one_vm(world: World) -> None:
    async def scenario() -> None:
        order = CreateOrder(name="same", image=IMAGE, disk_size_bytes=DISK_BYTES)
        requests = [await world.vms.validate(order) for _ in range(3)]
        results = await asyncio.gather(*(collect(world.vms.create(r)) for r in requests))
        errors = [r.error for r in results if r.error is not None]
        assert len(errors) == 2 and all(isinstance(e, AlreadyExists) for e in errors)
        assert [v.name for v in await world.rows()] == ["same"]
        assert len(world.ops.taps) == 1

    asyncio.run(scenario())


def test_disks_failing_takes_the_reservation_back(world: World) -> None:
    """A failure between reserve and boot (here mkfs) leaves no row, TAP or VM dir."""

    async def scenario() -> None:
        world.runner.answers["mkfs.ext4"] = answered(1, stderr=b"No space left on device")
        got = await world.create(name="nodisk")
        assert got.error is not None
        assert got.stages() == ["reserve"] and got.stages("fail") == ["disks"]
        assert await world.rows() == []
        assert world.ops.taps == {}
        assert not (world.ctx.layout.vms_dir / "nodisk").exists()
        assert world.vmm.launched == []

    asyncio.run(scenario())


def test_nat_is_set_up_only_when_asked(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="plain")).error is None
        assert "ensure_nat" not in world.ops.calls
        got = await world.create(name="natted", nat=True)
        assert "nat" in got.stages()
        assert world.ops.nat == (world.ctx.config.bridge_name, world.ctx.config.cidr)
        assert world.ops.ip_forward

    asyncio.run(scenario())


def test_a_kernel_the_vmm_cannot_boot_is_refused_at_reserve(world: World) -> None:
    async def scenario() -> None:
        image = await world.ctx.db.run(repo.get_image, IMAGE)
        assert image.kernel_path is not None
        world.vmm.bad_kernels.add(Path(image.kernel_path))
        got = await world.create(name="badkernel")
        assert isinstance(got.error, InvalidArgument)
        assert got.stages("fail") == ["reserve"]
        assert await world.rows() == [] and world.ops.taps == {}

    asyncio.run(scenario())
