"""A daemon's services over real SQLite and real files, with fakes at the seams.

``world`` builds what ``bangerd`` builds (``banger.daemon.main.compose``) for a throwaway
layout, with a ``FakeVmm``, ``FakePrivilegedOps``, a ``FakeRunner`` that answers ``ssh``
and a ``FakeDns``; an unmanaged image ``tiny`` (a real 8 MiB ext4 rootfs) is registered.
Each test runs its scenario in one ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from banger.api.transport import bind_unix_socket
from banger.config.settings import load_config
from banger.config.vm_defaults import HostFacts
from banger.daemon.main import compose, server_config
from banger.errors import BangerError
from banger.host import buildinfo
from banger.host.paths import Layout, ensure_private_dir
from banger.model.records import ImageRecord, VmRecord, utc_now
from banger.services.context import DaemonContext
from banger.services.daemon_services import DaemonServices
from banger.services.vm_create import CreateOrder
from banger.services.vms import VmService
from banger.state import repo
from banger.state.db import AsyncDatabase, Database
from tests.fakes import (
    FakeDns,
    FakeGuestNamer,
    FakeMode,
    FakePrivilegedOps,
    FakeRunner,
    FakeVmm,
    FakeVmms,
    answered,
)

IMAGE = "tiny"
MIB = 1024 * 1024
#: Small and quick: the work disk is a real ext4 made by mkfs (64 MiB is its minimum).
DISK_BYTES = 64 * MIB


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ext4 rootfs with the directories identity injection writes into."""
    root = tmp_path_factory.mktemp("tiny-image")
    tree = root / "tree"
    for sub in ("etc", "root", "sbin"):
        (tree / sub).mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("tiny\n")
    image = root / "rootfs.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "8M"],
        check=True,
        capture_output=True,
    )
    (root / "vmlinuz").write_bytes(b"not a kernel: the fake VMM boots anything")
    return image


@dataclass
class Events:
    events: list[dict[str, Any]]
    result: dict[str, Any] | None
    error: BangerError | None

    def stages(self, state: str = "ok") -> list[str]:
        return [e["stage"] for e in self.events if e["type"] == "stage" and e["state"] == state]


async def collect(stream: AsyncIterator[dict[str, Any]]) -> Events:
    events: list[dict[str, Any]] = []
    try:
        async for event in stream:
            events.append(event)
    except BangerError as err:
        return Events(events, None, err)
    result = events[-1]["data"] if events and events[-1]["type"] == "result" else None
    return Events(events, result, None)


@dataclass
class World:
    root: Path
    ctx: DaemonContext
    services: DaemonServices
    vmm: FakeVmm
    vmms: FakeVmms
    ops: FakePrivilegedOps
    runner: FakeRunner
    dns: FakeDns
    mode: FakeMode
    namer: FakeGuestNamer

    @property
    def vms(self) -> VmService:
        return self.services.vms

    async def create(self, **order: Any) -> Events:
        order.setdefault("image", IMAGE)
        order.setdefault("disk_size_bytes", DISK_BYTES)
        order.setdefault("boot_timeout_s", 5.0)
        request = await self.vms.validate(CreateOrder(**order))
        return await collect(self.vms.create(request))

    async def row(self, name: str) -> VmRecord:
        return await self.vms.get(name)

    async def rows(self) -> list[VmRecord]:
        found: list[VmRecord] = await self.ctx.db.run(repo.list_vms)
        return found

    def restarted(self) -> World:
        """The services a new daemon would build over the same state (same fakes)."""
        return _world(
            self.root, self.ctx, self.vmm, self.ops, self.runner, self.dns, self.mode, self.namer
        )


def _world(
    root: Path,
    ctx: DaemonContext,
    vmm: FakeVmm,
    ops: FakePrivilegedOps,
    runner: FakeRunner,
    dns: FakeDns,
    mode: FakeMode,
    namer: FakeGuestNamer,
) -> World:
    vmms = FakeVmms(vmm)
    services = compose(
        ctx,
        ops=ops,
        vmms=vmms,
        mode=mode,
        guest_ports=vmm.port_open,
        forwarded_ports=vmm.port_open,
        guest_namer=namer,
    )
    return World(root, ctx, services, vmm, vmms, ops, runner, dns, mode, namer)


@pytest.fixture
def world(rootfs: Path) -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="bgr-svc-"))
    layout = Layout(
        config_dir=root / "config",
        state_dir=root / "state",
        cache_dir=root / "cache",
        runtime_dir=root / "run",
    )
    ensure_private_dir(layout.runtime_dir)
    ensure_private_dir(layout.state_dir)
    config_file = root / "config.toml"
    config_file.write_text(f'default_image_name = "{IMAGE}"\ntap_pool_size = 0\npool_size = 0\n')
    config_file.chmod(0o600)
    runner = FakeRunner(answers={"ssh": answered(0)})
    dns = FakeDns()
    db = Database.open(layout.db_path)
    ctx = DaemonContext(
        layout=layout,
        config=load_config(config_file, env={}, layout=layout),
        db=AsyncDatabase(db),
        build=buildinfo.current(),
        host=HostFacts(cpu_count=4, mem_total_bytes=8 * 1024 * MIB),
        runner=runner,
        dns=dns,
    )
    repo.insert_image(
        db,
        ImageRecord(
            name=IMAGE,
            managed=False,
            rootfs_path=str(rootfs),
            kernel_path=str(rootfs.parent / "vmlinuz"),
            source="tests",
            created_at=utc_now(),
        ),
    )
    vmm = FakeVmm(runner)
    w = _world(root, ctx, vmm, FakePrivilegedOps(), runner, dns, FakeMode(), FakeGuestNamer())
    try:
        yield w
    finally:
        vmm.kill_all()
        ctx.db.close()
        db.close()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def api_on_socket(services: DaemonServices, path: Path) -> AsyncIterator[None]:
    """The daemon's app (banger's peer-checked h11) on a Unix socket at ``path``, for the
    real client; stopped on leaving."""
    sock = bind_unix_socket(path)
    server = uvicorn.Server(server_config(services))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task
