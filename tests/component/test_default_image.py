"""A catalog image obtained on first use: ``ensure_image("debian-bookworm-minimal")`` for
real (the minimal variant of the default image: same sources and steps, a quarter of the
packages; tests/e2e/test_default_image.py builds and boots the default development image).

On this machine Docker Hub is out of reach, so the catalog's OCI source must fail fast
and the ``local-debian`` source take over: Debian's cloud kernel fetched with apt into
banger's own apt state and imported (initrd built), a minbase bookworm bootstrapped
from the host's apt sources into a tar, made into a bootable ext4 without root. All in
a throwaway ``Layout`` under a temp dir. Two callers racing for it build it once; a
later call is a no-op; a name outside the catalog is left to the caller.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from banger.config.settings import load_config
from banger.config.vm_defaults import HostFacts
from banger.daemon.main import compose_for_host
from banger.errors import BangerError
from banger.host import buildinfo
from banger.host.paths import Layout, ensure_private_dir
from banger.images.bootable import INIT_PATH
from banger.images.localbuild import host_release, host_sources, suite_sources
from banger.services.catalog_fetch import CatalogService
from banger.services.context import DaemonContext
from banger.services.operations import Progress
from banger.state import repo
from banger.state.db import AsyncDatabase, Database
from tests.catalogserver import GOOD, Route, Server, entry, sha, tar_zst

pytestmark = [pytest.mark.component, pytest.mark.timeout(2400)]
NAME = "debian-bookworm-minimal"


@dataclass
class Recorder:
    started: float = field(default_factory=time.monotonic)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def progress(self) -> Progress:
        return Progress(lambda e: self.events.append((time.monotonic() - self.started, e)))

    def ok_stages(self) -> list[str]:
        return [e["stage"] for _, e in self.events if e.get("state") == "ok"]

    def first(self, stage: str, state: str) -> tuple[float, dict[str, Any]]:
        return next((t, e) for t, e in self.events if e["stage"] == stage and e["state"] == state)


@dataclass
class Built:
    ctx: DaemonContext
    racers: list[Recorder]
    seconds: float

    @property
    def builder(self) -> Recorder:
        """The racer that got the lock first and did the work."""
        return max(self.racers, key=lambda r: len(r.events))


_catalogs: dict[int, CatalogService] = {}


async def ensure_image(ctx: DaemonContext, name: str, progress: Progress) -> None:
    """The daemon's catalog service for ``ctx`` (one per context: it owns the locks)."""
    catalog = _catalogs.setdefault(id(ctx), compose_for_host(ctx).catalog)
    await catalog.ensure_image(name, progress)


def make_context(root: Path) -> DaemonContext:
    layout = Layout(
        config_dir=root / "config",
        state_dir=root / "state",
        cache_dir=root / "cache",
        runtime_dir=root / "run",
    )
    ensure_private_dir(layout.runtime_dir)
    ensure_private_dir(layout.state_dir)
    return DaemonContext(
        layout=layout,
        config=load_config(env={}, layout=layout),
        db=AsyncDatabase(Database.open(layout.db_path)),
        build=buildinfo.current(),
        host=HostFacts.probe(),
    )


def _can_build_here() -> str | None:
    if not shutil.which("mmdebstrap") and not shutil.which("debootstrap"):
        return "neither mmdebstrap nor debootstrap is installed"
    try:
        suite_sources(host_sources(), "bookworm", host=host_release())
    except Exception as exc:
        return f"no bookworm archive in this host's apt sources: {exc}"
    return None


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    reason = _can_build_here()
    if reason:
        # On CI the default image must really be built: a missing tool is a failure there.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)
    with tempfile.TemporaryDirectory(prefix="bgr-img-", dir="/var/tmp") as tmp:
        ctx = make_context(Path(tmp))
        racers = [Recorder(), Recorder()]

        async def race() -> float:
            started = time.monotonic()
            await asyncio.gather(*(ensure_image(ctx, NAME, r.progress()) for r in racers))
            return time.monotonic() - started

        try:
            seconds = asyncio.run(race())
            yield Built(ctx, racers, seconds)
        finally:
            ctx.db.close()


def debugfs_cat(image: str, path: str) -> str:
    out = subprocess.run(
        ["debugfs", "-R", f"cat {path}", image], capture_output=True, text=True, check=True
    )
    return out.stdout


def debugfs_exists(image: str, path: str) -> bool:
    out = subprocess.run(
        ["debugfs", "-R", f"stat {path}", image], capture_output=True, text=True, check=False
    )
    return "Inode:" in out.stdout


def test_the_default_image_and_its_kernel_are_built_locally(built: Built) -> None:
    print(f"ensure_image({NAME!r}) built image and kernel in {built.seconds:.1f}s")
    for at, event in built.builder.events:
        print(f"  {at:7.1f}s {event}")
    image = asyncio.run(_get(built.ctx, "image"))
    assert image.managed and image.kernel_name == "debian-bookworm-cloud"
    assert image.init_path == INIT_PATH
    assert image.source.startswith(f"catalog:{NAME} local-debian")
    rootfs = Path(image.rootfs_path)
    assert rootfs == built.ctx.layout.images_dir / NAME / "rootfs.ext4"
    assert rootfs.stat().st_size == 2 << 30
    kernel = asyncio.run(_get(built.ctx, "kernel"))
    assert kernel.has_initrd and kernel.has_modules and kernel.distro == "debian"
    assert (Path(kernel.dir_path) / "vmlinux").is_file()
    for area in (built.ctx.layout.images_dir, built.ctx.layout.kernels_dir):
        staging = area / ".staging"
        assert not staging.exists() or list(staging.iterdir()) == []


def test_the_registry_failed_fast_and_the_local_build_took_over(built: Built) -> None:
    events = built.builder
    failed_at, _ = events.first("registry", "fail")
    noted_at, note = events.first("source", "warn")
    assert noted_at < 30, "the unreachable registry must not hold the build for long"
    assert "oci (docker.io/library/debian:bookworm)" in note["detail"]
    assert "trying the next source" in note["detail"]
    assert failed_at <= noted_at
    stages = events.ok_stages()
    assert stages[-4:] == ["bootstrap", "packages", "ext4", "publish"]
    timed = {e["stage"]: e for _, e in events.events if e.get("state") == "ok"}
    assert all(timed[s]["elapsed_ms"] > 0 for s in ("bootstrap", "packages", "ext4"))
    assert {"download", "extract", "modules", "initrd"} <= set(stages)


def test_the_racing_caller_waited_and_built_nothing(built: Built) -> None:
    one, two = (r.ok_stages() for r in built.racers)
    assert (one.count("bootstrap"), two.count("bootstrap")) in {(1, 0), (0, 1)}


def test_the_rootfs_is_bootable_debian_without_shared_host_keys(built: Built) -> None:
    image = asyncio.run(_get(built.ctx, "image"))
    rootfs = image.rootfs_path
    assert debugfs_exists(rootfs, INIT_PATH)
    assert debugfs_exists(rootfs, "/usr/sbin/sshd")
    assert debugfs_exists(rootfs, "/lib/systemd/systemd")
    assert debugfs_exists(rootfs, "/usr/bin/python3")
    assert debugfs_exists(rootfs, "/usr/bin/kmod")
    # The kernel's modules are baked in (VMs then copy nothing; kernel-modules.md).
    kernel = asyncio.run(_get(built.ctx, "kernel"))
    assert debugfs_exists(rootfs, f"/usr/lib/modules/{kernel.version}/modules.dep")
    assert debugfs_exists(rootfs, f"/usr/lib/modules/{kernel.version}/kernel/fs/overlayfs")
    assert not debugfs_exists(rootfs, "/etc/ssh/ssh_host_ed25519_key")
    assert debugfs_cat(rootfs, "/etc/hostname").strip() == "debian"
    assert debugfs_cat(rootfs, "/etc/resolv.conf") == ""
    assert "bookworm" in debugfs_cat(rootfs, "/usr/lib/os-release")
    guest_sources = debugfs_cat(rootfs, "/etc/apt/sources.list.d/0000sources.list")
    host = suite_sources(host_sources(), "bookworm", host=host_release())
    assert host[0].split()[-3] in guest_sources  # the host's mirror, never one of ours


def test_a_second_call_is_a_no_op(built: Built) -> None:
    again = Recorder()
    started = time.monotonic()
    asyncio.run(ensure_image(built.ctx, NAME, again.progress()))
    assert time.monotonic() - started < 2
    assert again.events == []


def test_a_name_outside_the_catalog_is_left_to_the_caller(built: Built) -> None:
    rec = Recorder()
    asyncio.run(ensure_image(built.ctx, "not-in-the-catalog", rec.progress()))
    assert rec.events == []
    names = [i.name for i in asyncio.run(built.ctx.db.run(repo.list_images))]
    assert names == [NAME]


async def _get(ctx: DaemonContext, kind: str) -> Any:
    if kind == "image":
        return await ctx.db.run(repo.get_image, NAME)
    return await ctx.db.run(repo.get_kernel, "debian-bookworm-cloud")


# -- the other sources, against a local server (fast) -------------------------------------------


@pytest.fixture
def local_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalWorld]:
    server = Server()
    ctx = make_context(tmp_path / "home")
    kernel_body = tar_zst(GOOD)
    kernels = tmp_path / "kernels.json"
    kernels.write_text(
        json.dumps(
            {
                "schema": 1,
                "kernels": [entry("tiny", serve(server, "/k.tar.zst", kernel_body), kernel_body)],
            }
        )
    )
    monkeypatch.setenv("BANGER_KERNEL_CATALOG", str(kernels))
    monkeypatch.setenv("BANGER_IMAGE_CATALOG", str(tmp_path / "images.json"))
    try:
        yield LocalWorld(ctx, server, tmp_path / "images.json")
    finally:
        ctx.db.close()
        server.close()


@dataclass
class LocalWorld:
    ctx: DaemonContext
    server: Server
    catalog: Path

    def publish(self, *sources: dict[str, Any]) -> None:
        image = {
            "name": "bundled",
            "distro": "test",
            "arch": "x86_64",
            "description": "a test image",
            "size_bytes": 256 << 20,
            "sources": list(sources),
        }
        self.catalog.write_text(json.dumps({"schema": 1, "images": [image]}))

    def staging_empty(self) -> bool:
        area = self.ctx.layout.images_dir / ".staging"
        return not area.exists() or not list(area.iterdir())


def serve(server: Server, path: str, body: bytes) -> str:
    server.routes[path] = Route(body)
    return server.url(path)


def bundle_bytes(tmp: Path) -> bytes:
    disk = tmp / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk), "64M"], check=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(disk, arcname="rootfs.ext4")
        tar.addfile(tarfile.TarInfo("README"), io.BytesIO(b""))
    return subprocess.run(
        ["zstd", "-q", "-c"], input=buf.getvalue(), capture_output=True, check=True
    ).stdout


UNREACHABLE_OCI = {"type": "oci", "ref": "127.0.0.1:1/nothing/here:latest", "kernels": ["tiny"]}


def test_a_bundle_source_takes_over_from_an_unreachable_registry(
    local_world: LocalWorld, tmp_path: Path
) -> None:
    body = bundle_bytes(tmp_path)
    url = serve(local_world.server, "/b.tar.zst", body)
    bundle = {"type": "bundle", "url": url, "sha256": sha(body), "kernels": ["tiny"]}
    local_world.publish(UNREACHABLE_OCI, bundle)
    rec = Recorder()
    asyncio.run(ensure_image(local_world.ctx, "bundled", rec.progress()))
    _, note = rec.first("source", "warn")
    assert "unreachable" in note["detail"] and "trying the next source" in note["detail"]
    image = asyncio.run(local_world.ctx.db.run(repo.get_image, "bundled"))
    assert image.kernel_name == "tiny" and image.source_digest == f"sha256:{sha(body)}"
    rootfs = Path(image.rootfs_path)
    assert rootfs.stat().st_size == 64 << 20
    assert rootfs.stat().st_blocks * 512 < 32 << 20  # written sparse
    assert sorted(p.name for p in rootfs.parent.iterdir()) == ["rootfs.ext4"]
    assert local_world.staging_empty()


def test_when_every_source_fails_the_error_lists_them_and_nothing_is_left(
    local_world: LocalWorld, tmp_path: Path
) -> None:
    body = bundle_bytes(tmp_path)
    url = serve(local_world.server, "/b.tar.zst", body)
    wrong = {"type": "bundle", "url": url, "sha256": "0" * 64, "kernels": ["tiny"]}
    local_world.publish(UNREACHABLE_OCI, wrong)
    with pytest.raises(BangerError) as err:
        asyncio.run(ensure_image(local_world.ctx, "bundled", Recorder().progress()))
    assert "does not match its sha256" in err.value.brief
    assert "oci (127.0.0.1:1/nothing/here:latest)" in (err.value.details or "")
    assert f"bundle ({url})" in (err.value.details or "")
    assert asyncio.run(local_world.ctx.db.run(repo.list_images)) == []
    assert local_world.staging_empty()
    assert not (local_world.ctx.layout.images_dir / "bundled").exists()
