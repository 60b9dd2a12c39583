"""Pool VMs are not left running by `daemon stop --all` nor by `system uninstall` (issue 12).

The real API (uvicorn with banger's h11 protocol) over the fake VMM's world, driven by
the CLI's own functions: ``cmd_daemon.stop_every_vm`` (what `daemon stop --all` does
before asking the daemon to exit) and ``cmd_system.drain_pool`` (what uninstall does as
the owner, at the owner's default socket, before the daemon's unit is stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from banger.cli.cmd_daemon import stop_every_vm
from banger.cli.cmd_system import drain_pool
from banger.client.facade import BangerClient
from banger.client.http import Client
from banger.config.pool_policy import PoolTarget
from banger.host import procinfo
from banger.host.paths import Layout
from banger.model.records import VmState
from banger.services import vm_boot
from banger.services.pool import PoolState
from banger.state import repo
from banger.vmm import spawn
from tests.services.conftest import MIB, World, api_on_socket

#: A uid with no /run/user/<uid>: the owner's socket falls back under its home.
NO_RUNTIME_UID = 2**31 - 7


@contextlib.asynccontextmanager
async def serving(world: World, path: Path) -> AsyncIterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    async with api_on_socket(world.services, path):
        yield


async def fill_pool(world: World, size: int) -> list[str]:
    defaults = world.ctx.vm_defaults
    target = PoolTarget(
        image=world.ctx.config.default_image_name,
        size=size,
        vcpu=defaults.vcpu.value,
        memory_mib=defaults.memory_mib.value,
        disk_size_bytes=256 * MIB,
        why="test",
    )
    # The world's daemon keeps no pool (pool_size = 0): give its own service a target.
    pool = world.services.pool
    pool.states = [PoolState(target)]
    assert await pool.fill_once() == size
    rows = await world.ctx.db.run(repo.list_vms, pool=True)
    return [r.name for r in rows]


async def vmm_processes(world: World, names: list[str]) -> list[procinfo.ProcessIdentity]:
    found = []
    for name in names:
        vm = await world.row(name)
        handle = vm_boot.handle_of(vm, world.vms.paths(vm))
        assert handle is not None
        found.append(handle.process)
    return found


def test_daemon_stop_all_removes_pool_vms_and_stops_the_users(world: World) -> None:
    async def scenario() -> None:
        assert (await world.create(name="mine")).error is None
        pooled = await fill_pool(world, 2)
        processes = await vmm_processes(world, ["mine", *pooled])
        path = world.root / "api.sock"
        async with serving(world, path):
            api = BangerClient(Client(path, timeout_s=30))
            swept = await asyncio.to_thread(stop_every_vm, api)
        assert sorted(swept.pool_removed) == sorted(pooled)
        assert swept.stopped == ["mine"]
        assert await world.ctx.db.run(repo.list_vms, pool=True) == []
        assert (await world.row("mine")).state is VmState.STOPPED
        for process in processes:
            assert await spawn.wait_exit(process, timeout_s=5), "a VMM outlived --all"
        assert world.services.pool.reply()["paused"], "nothing refills before the exit"

    asyncio.run(scenario())


def test_uninstall_drains_the_owners_pool_at_the_owners_default_socket(world: World) -> None:
    async def scenario() -> None:
        assert not Path(f"/run/user/{NO_RUNTIME_UID}").exists()
        home = world.root / "home"
        path = Layout.from_env({"HOME": str(home)}, uid=NO_RUNTIME_UID).socket_path
        assert path.is_relative_to(home)
        assert await asyncio.to_thread(drain_pool, home, NO_RUNTIME_UID) == [], "no daemon"
        assert (await world.create(name="mine")).error is None
        [pooled] = await fill_pool(world, 1)
        [process] = await vmm_processes(world, [pooled])
        async with serving(world, path):
            removed = await asyncio.to_thread(drain_pool, home, NO_RUNTIME_UID)
        assert removed == [pooled]
        assert await spawn.wait_exit(process, timeout_s=5)
        mine = await world.row("mine")
        assert mine.state is VmState.RUNNING and world.vms.alive(mine), "the user's VM stays"
        assert os.path.exists(mine.vm_dir)

    asyncio.run(scenario())
