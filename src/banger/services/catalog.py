"""Obtaining what the catalogs name: ``kernel pull``, and images on first use (SPEC §5, §6).

Owns: the order of a kernel pull (download or apt fetch → verify → unpack → the kernel
store's own import steps → publish → row) and of obtaining a catalog image (its kernel
first, then its sources in order until one works: an OCI pull after a quick
reachability probe, else a local build from the host's archive); per-name locks, so two
callers racing for one kernel or image fetch it once (ADVERSARIAL 43) and the second
finds it in place; and staging everything under ``kernels/.staging`` or
``images/.staging``, so a crash or ``kill -9`` leaves nothing that counts and the next
daemon start removes the leftovers (42, 85).
Must not: block the event loop (file and network work runs in threads), speak HTTP
(routes do), or decide formats (``banger.kernels``, ``banger.images``, ``banger.oci``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from banger.daemon.context import DaemonContext
from banger.errors import (
    AlreadyExists,
    BadResponse,
    BangerError,
    ImageNotFound,
    KernelNotFound,
    StateError,
)
from banger.images import catalog as image_catalog
from banger.images import localbuild
from banger.images.catalog import CatalogImage, ImageSource, SourceType
from banger.images.register import check_ext4
from banger.kernels import catalog as kernel_catalog
from banger.kernels import pull, tarball, validate_name
from banger.kernels.catalog import MAX_ARTIFACT_BYTES, ArtifactFormat, CatalogKernel
from banger.kernels.discover import discover
from banger.kernels.store import KernelBuild, publish_kernel, read_manifest
from banger.oci.reference import is_loopback_host, parse_reference
from banger.publish import Staging, remove_published, remove_tree, staging
from banger.services.images import publication_lock as image_publication
from banger.services.inventory import record_dict
from banger.services.kernels import publication_lock as kernel_publication
from banger.services.operations import Progress, run_streamed
from banger.state import repo
from banger.state.records import ImageRecord, KernelRecord, utc_now
from banger.wire import StageState

T = TypeVar("T")
#: A registry that does not accept a TCP connection in this time is treated as
#: unreachable, and the next source is tried (Docker Hub behind a firewall, offline).
REGISTRY_PROBE_TIMEOUT_S = 5.0
ROOTFS = "rootfs.ext4"
_kernel_locks: dict[str, asyncio.Lock] = {}
_image_locks: dict[str, asyncio.Lock] = {}


def _lock(locks: dict[str, asyncio.Lock], name: str) -> asyncio.Lock:
    return locks.setdefault(name, asyncio.Lock())


async def _step(fn: Callable[[], T], doing: str) -> T:
    """Run one blocking step in a thread; an OS error (disk full…) gets a brief."""
    try:
        return await asyncio.to_thread(fn)
    except OSError as exc:
        raise StateError(f"{doing} failed: {exc.strerror or exc}", details=str(exc)) from exc


# -- kernels: list --available, pull ----------------------------------------------------------


async def available_kernels(ctx: DaemonContext) -> list[dict[str, Any]]:
    """The catalog's kernels for this host, each with ``local`` (in the store or not)."""
    catalog = await asyncio.to_thread(kernel_catalog.load_catalog)
    local = {r.name: r for r in await ctx.db.run(repo.list_kernels)}
    return [
        {**e.to_dict(), "local": e.name in local and local[e.name].source == e.source}
        for e in catalog.for_arch()
    ]


async def plan_pull(name: str) -> CatalogKernel:
    """The checks worth failing on before a progress stream starts."""
    validate_name(name)
    catalog = await asyncio.to_thread(kernel_catalog.load_catalog)
    return catalog.find(name)


def pull_events(
    ctx: DaemonContext, entry: CatalogKernel, *, force: bool
) -> AsyncIterator[dict[str, Any]]:
    return run_streamed(lambda progress: pull_kernel(ctx, entry, progress, force=force))


async def pull_kernel(
    ctx: DaemonContext, entry: CatalogKernel, progress: Progress, *, force: bool = False
) -> dict[str, Any]:
    """Fetch ``entry`` into the store; a kernel already pulled from it is returned as is."""
    async with _lock(_kernel_locks, entry.name):
        existing = await _kernel_row(ctx, entry.name)
        if existing is not None and not force:
            if existing.source != entry.source:
                raise AlreadyExists(
                    f"kernel {entry.name!r} exists and did not come from the catalog",
                    details=f"its source: {existing.source}",
                    hint="`--force` replaces it with the catalog's",
                )
            progress.note("pull", StageState.SKIP, f"{entry.name} is already in the store")
            return record_dict(existing)
        pin = None
        if existing is not None and existing.source == entry.source:
            manifest = await asyncio.to_thread(read_manifest, Path(existing.dir_path))
            pin = pull.recorded_sha256(manifest, entry.url)
        with staging(ctx.layout.kernels_dir, entry.name) as work:
            tree, fetched = await _fetch_kernel(ctx, entry, work.path, pin, progress)
            record = await _import_tree(ctx, entry, tree, fetched, progress)
        return {**record_dict(record), "download": fetched}


async def _fetch_kernel(
    ctx: DaemonContext, entry: CatalogKernel, work: Path, pin: str | None, progress: Progress
) -> tuple[Path, dict[str, Any]]:
    if entry.format is ArtifactFormat.DEB:
        return await _fetch_deb(ctx, entry, work, progress)
    assert entry.url is not None
    url = entry.url
    expected = pull.Expected(entry.sha256 or pin, entry.size_bytes, MAX_ARTIFACT_BYTES)
    with progress.stage("download"):
        got = await _step(lambda: pull.download(url, work / "download", expected), "downloading")
        progress.detail = got.describe()
    if entry.sha256 is None:
        _say_unverified(progress, got.sha256, pinned=pin is not None)
    tree = work / "tree"
    with progress.stage("unpack"):
        if entry.format is ArtifactFormat.VMLINUX:
            progress.detail = await _step(lambda: pull.place_vmlinux(got.path, tree), "unpacking")
        else:
            done = await _step(lambda: tarball.unpack(got.path, tree, ctx.runner), "unpacking")
            progress.detail = done.describe()
        got.path.unlink(missing_ok=True)
    fetched = {"url": url, "sha256": got.sha256, "size_bytes": got.size_bytes}
    return tree, {**fetched, "verified": entry.sha256 is not None}


def _say_unverified(progress: Progress, sha256: str, *, pinned: bool) -> None:
    if pinned:
        progress.note("verify", StageState.OK, "matches the sha256 recorded at the first pull")
        return
    progress.note(
        "verify",
        StageState.WARN,
        "unverified source: the catalog publishes no checksum for this kernel; "
        f"recorded sha256 {sha256} and later pulls must match it",
    )


async def _fetch_deb(
    ctx: DaemonContext, entry: CatalogKernel, work: Path, progress: Progress
) -> tuple[Path, dict[str, Any]]:
    assert entry.package is not None and entry.suite is not None
    package, suite = entry.package, entry.suite
    with progress.stage("download"):
        sources = await _step(lambda: _suite_sources(suite), "reading the host's apt sources")
        apt = localbuild.PrivateApt(ctx.layout.cache_dir / "apt" / suite, sources)
        got = await _step(
            lambda: localbuild.fetch_kernel_package(apt, package, work, ctx.runner),
            "fetching the kernel package",
        )
        progress.detail = f"{got.deb} (apt checked the archive's signature)"
    return got.tree, {"package": got.package, "deb": got.deb, "suite": suite, "verified": True}


def _suite_sources(suite: str) -> list[str]:
    host = localbuild.host_release()
    return localbuild.suite_sources(localbuild.host_sources(), suite, host=host)


async def _import_tree(
    ctx: DaemonContext,
    entry: CatalogKernel,
    tree: Path,
    fetched: dict[str, Any],
    progress: Progress,
) -> KernelRecord:
    """The kernel store's import steps on an unpacked tree, then publication."""
    await _step(lambda: pull.write_metadata(tree, entry), "writing the metadata")
    with progress.stage("discover"):
        found = await _step(lambda: discover(tree), "looking for the kernel")
        version = f", version {found.version}" if found.version else ""
        progress.detail = found.kernel.name + version
    with staging(ctx.layout.kernels_dir, entry.name) as stage:
        build = KernelBuild(found, stage.path, ctx.runner)
        with progress.stage("extract"):
            progress.detail = await _step(build.kernel, "extracting the kernel")
        with progress.stage("modules"):
            progress.detail = await _step(build.modules, "copying the modules") or "none"
        with progress.stage("initrd"):
            progress.detail = await _step(build.initrd, "making the initrd") or "none"
        with progress.stage("publish"):
            record = await _publish_kernel(ctx, entry, build, stage, fetched)
            progress.detail = record.dir_path
    return record


async def _publish_kernel(
    ctx: DaemonContext,
    entry: CatalogKernel,
    build: KernelBuild,
    stage: Staging,
    fetched: dict[str, Any],
) -> KernelRecord:
    imported_at = utc_now()

    def manifest() -> dict[str, Any]:
        build.manifest(entry.name, entry.source, imported_at.isoformat())
        return pull.add_to_manifest(stage.path, "download", fetched)

    data = await _step(manifest, "writing the manifest")
    final = ctx.layout.kernels_dir / entry.name
    record = KernelRecord(
        name=entry.name,
        arch=data["arch"],
        source=entry.source,
        dir_path=str(final),
        imported_at=imported_at,
        distro=data["distro"],
        version=data["version"],
        sha256=data["sha256"],
        has_initrd="initrd.img" in data["files"],
        has_modules="modules" in data["files"],
    )
    # The import's own publication lock: an import of the same name cannot interleave.
    async with kernel_publication:
        exists = await _kernel_row(ctx, entry.name) is not None
        replace = exists or os.path.lexists(final)  # a directory without a row: a crash's
        await asyncio.to_thread(publish_kernel, stage, final, replace=replace)
        try:
            await _write_kernel_row(ctx, record, exists=exists)
        except BangerError:
            if not exists:
                await asyncio.to_thread(remove_published, final)
            raise
    return record


async def _write_kernel_row(ctx: DaemonContext, record: KernelRecord, *, exists: bool) -> None:
    if not exists:
        await ctx.db.run(repo.insert_kernel, record)
        return
    changes = record_dict(record)
    del changes["name"]
    changes["imported_at"] = record.imported_at
    await ctx.db.run(repo.update_kernel, record.name, **changes)


async def _kernel_row(ctx: DaemonContext, name: str) -> KernelRecord | None:
    try:
        record: KernelRecord = await ctx.db.run(repo.get_kernel, name)
    except KernelNotFound:
        return None
    return record


async def ensure_kernel(ctx: DaemonContext, names: Sequence[str], progress: Progress) -> str:
    """The first of ``names`` in the store, else the first the catalog can deliver."""
    for name in names:
        if await _kernel_row(ctx, name) is not None:
            return name
    catalog = await asyncio.to_thread(kernel_catalog.load_catalog)
    failures: list[str] = []
    for name in names:
        try:
            entry = catalog.find(name)
            await pull_kernel(ctx, entry, progress)
        except BangerError as err:
            failures.append(f"{name}: {err.brief}")
            progress.note(f"kernel {name}", StageState.WARN, err.brief)
            continue
        return name
    raise KernelNotFound(
        f"none of the kernels {', '.join(names)} could be obtained",
        details="\n".join(failures) or None,
    )


# -- images on first use ----------------------------------------------------------------------


async def is_catalog_name(ref: str) -> bool:
    """A bare catalog name (no registry, tag or digest), not an OCI reference."""
    if any(c in ref for c in ":/@"):
        return False
    return (await asyncio.to_thread(image_catalog.load_catalog)).find(ref) is not None


def ensure_image_events(ctx: DaemonContext, name: str) -> AsyncIterator[dict[str, Any]]:
    """``image pull <catalog name>``: obtain it now, streamed; the result is its row."""

    async def work(progress: Progress) -> dict[str, Any]:
        await ensure_image(ctx, name, progress)
        row = await _image_row(ctx, name)
        if row is None:
            raise ImageNotFound(f"catalog image {name!r} could not be obtained")
        return record_dict(row)

    return run_streamed(work)


async def ensure_image(ctx: DaemonContext, name: str, progress: Progress) -> None:
    """Make catalog image ``name`` local if it is not; nothing when it is not in the catalog
    (the caller then reports ``ImageNotFound``)."""
    if await _image_row(ctx, name) is not None:
        return
    entry = (await asyncio.to_thread(image_catalog.load_catalog)).find(name)
    if entry is None:
        return
    async with _lock(_image_locks, name):
        if await _image_row(ctx, name) is not None:
            return  # built by whoever held the lock before us
        await _obtain_image(ctx, entry, progress)


async def _obtain_image(ctx: DaemonContext, entry: CatalogImage, progress: Progress) -> None:
    failures: list[str] = []
    last: BangerError | None = None
    for index, source in enumerate(entry.sources):
        try:
            await _OBTAIN[source.type](ctx, entry, source, progress)
        except BangerError as err:
            failures.append(f"{source.describe()}: {err.brief}")
            more = "; trying the next source" if index + 1 < len(entry.sources) else ""
            progress.note("source", StageState.WARN, f"{source.describe()}: {err.brief}{more}")
            last = err
            continue
        return
    assert last is not None
    last.details = "\n".join(failures)
    raise last


async def _from_oci(
    ctx: DaemonContext, entry: CatalogImage, source: ImageSource, progress: Progress
) -> None:
    from banger.services import pull as image_pull  # the OCI path, only when it is tried

    assert source.ref is not None
    ref = parse_reference(source.ref)
    with progress.stage("registry"):
        progress.detail = await _probe(ref.api_host)
    kernel = await ensure_kernel(ctx, source.kernels, progress)
    await image_pull.pull_catalog_image(
        ctx,
        ref,
        name=entry.name,
        kernel_name=kernel,
        size_bytes=entry.size_bytes,
        first_boot_packages=source.packages,
        progress=progress,
    )


async def _probe(api_host: str) -> str:
    """Fail fast when the registry does not even accept a TCP connection."""
    parts = urlsplit(f"//{api_host}")
    port = parts.port or (80 if is_loopback_host(api_host) else 443)
    started = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, port), REGISTRY_PROBE_TIMEOUT_S
        )
    except (OSError, TimeoutError) as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise BadResponse(f"registry {api_host} is unreachable ({why})") from exc
    writer.close()
    return f"{api_host} reachable in {int((time.monotonic() - started) * 1000)} ms"


async def _from_local_debian(
    ctx: DaemonContext, entry: CatalogImage, source: ImageSource, progress: Progress
) -> None:
    from banger.images.bootable import INIT_PATH
    from banger.oci.ext4build import build_rootfs_image
    from banger.oci.flatten import Layer

    assert source.suite is not None
    suite = source.suite
    kernel = await ensure_kernel(ctx, source.kernels, progress)
    recipe = localbuild.DebianRecipe(suite, source.variant, source.packages)
    with staging(ctx.layout.images_dir, entry.name) as stage:
        work = stage.path / "build"
        work.mkdir()
        tar = work / "rootfs.tar"
        with progress.stage("bootstrap"):
            sources = await _step(lambda: _suite_sources(suite), "reading the host's apt sources")
            tool = await _step(
                lambda: localbuild.build_rootfs_tar(recipe, sources, tar, ctx.runner, work),
                "bootstrapping Debian",
            )
            progress.detail = f"{tool}: {suite} {source.variant}, {tar.stat().st_size >> 20} MiB"
        with progress.stage("rootfs"):
            layer = Layer(tar, "application/vnd.oci.image.layer.v1.tar", None)
            await _step(
                lambda: build_rootfs_image(
                    [layer],
                    stage.path / ROOTFS,
                    size_bytes=entry.size_bytes,
                    runner=ctx.runner,
                    work_dir=work,
                    inject="banger.images.bootable:make_bootable",
                ),
                "building the root filesystem",
            )
            await _step(lambda: remove_tree(work), "removing the build files")
            progress.detail = f"{entry.size_bytes >> 20} MiB ext4, made bootable"
        record = ImageRecord(
            name=entry.name,
            managed=True,
            rootfs_path=str(ctx.layout.images_dir / entry.name / ROOTFS),
            source=f"catalog:{entry.name} {source.describe()}",
            created_at=utc_now(),
            kernel_name=kernel,
            size_bytes=entry.size_bytes,
            init_path=INIT_PATH,
        )
        with progress.stage("publish"):
            await _publish_image(ctx, stage, record)
            progress.detail = str(Path(record.rootfs_path).parent)


async def _publish_image(ctx: DaemonContext, stage: Staging, record: ImageRecord) -> None:
    """Name still free, then rename into ``images/<name>/``, then the row: under the
    lock ``image pull`` and ``promote`` publish under."""
    final = ctx.layout.images_dir / record.name
    async with image_publication:
        if await _image_row(ctx, record.name) is not None:
            raise AlreadyExists(f"image {record.name!r} appeared while it was being built")
        if os.path.lexists(final):  # a directory without a row: what a crash leaves
            await asyncio.to_thread(remove_published, final)
        await asyncio.to_thread(stage.commit, final)
        try:
            await ctx.db.run(repo.insert_image, record)
        except BangerError:
            await asyncio.to_thread(remove_published, final)
            raise


async def _image_row(ctx: DaemonContext, name: str) -> ImageRecord | None:
    try:
        record: ImageRecord = await ctx.db.run(repo.get_image, name)
    except ImageNotFound:
        return None
    return record


async def _from_bundle(
    ctx: DaemonContext, entry: CatalogImage, source: ImageSource, progress: Progress
) -> None:
    from banger.images.bootable import INIT_PATH

    assert source.url is not None
    url = source.url
    kernel = await ensure_kernel(ctx, source.kernels, progress)
    expected = pull.Expected(source.sha256, source.size_bytes, MAX_ARTIFACT_BYTES)
    with staging(ctx.layout.images_dir, entry.name) as stage:
        archive = stage.path / "bundle.tar.zst"
        with progress.stage("download"):
            got = await _step(lambda: pull.download(url, archive, expected), "downloading")
            progress.detail = got.describe()
        if source.sha256 is None:
            _say_unverified(progress, got.sha256, pinned=False)
        tree = stage.path / "bundle"
        with progress.stage("unpack"):
            limits = tarball.Limits(max_output_bytes=entry.size_bytes + (64 << 20))
            done = await _step(
                lambda: tarball.unpack(archive, tree, ctx.runner, limits, tarball.IMAGE_MEMBERS),
                "unpacking",
            )
            await _step(lambda: _adopt_bundle(archive, tree, stage.path), "unpacking")
            progress.detail = done.describe()
        seed = stage.path / "work-seed.ext4"
        record = ImageRecord(
            name=entry.name,
            managed=True,
            rootfs_path=str(ctx.layout.images_dir / entry.name / ROOTFS),
            source=f"catalog:{entry.name} {source.describe()}",
            created_at=utc_now(),
            work_seed_path=str(ctx.layout.images_dir / entry.name / seed.name)
            if seed.exists()
            else None,
            kernel_name=kernel,
            source_digest=f"sha256:{got.sha256}",
            size_bytes=(stage.path / ROOTFS).stat().st_size,
            init_path=INIT_PATH,
        )
        with progress.stage("publish"):
            await _publish_image(ctx, stage, record)
            progress.detail = str(Path(record.rootfs_path).parent)


def _adopt_bundle(archive: Path, tree: Path, stage_dir: Path) -> None:
    """Move the bundle's disks to the top of the staging dir; each must be ext4."""
    archive.unlink()
    for disk in tree.iterdir():
        check_ext4(disk, f"bundle member {disk.name}")
        disk.rename(stage_dir / disk.name)
    tree.rmdir()


_OBTAIN = {
    SourceType.BUNDLE: _from_bundle,
    SourceType.OCI: _from_oci,
    SourceType.LOCAL_DEBIAN: _from_local_debian,
}
