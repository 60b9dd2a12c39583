"""Images on first use: obtaining what the image catalog names (SPEC §5).

Owns: the order of obtaining a catalog image (its kernel first, through
``banger.services.kernel_pull``, then its sources in order until one works: an OCI pull
after a quick reachability probe, else a local build from the host's archive, or a
prebuilt bundle); per-name locks, so two callers racing for one image build it once
(ADVERSARIAL 43); and staging everything under ``images/.staging``, so a crash or
``kill -9`` leaves nothing that counts and the next daemon start removes the leftovers
(42, 85); and whether ``image pull REF`` names a catalog image or an OCI reference.
Must not: block the event loop (file and network work runs in threads), speak HTTP
(routes do), or decide formats (``banger.images``, ``banger.oci``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from banger.errors import (
    AlreadyExists,
    BadResponse,
    BangerError,
    ImageNotFound,
)
from banger.host.publish import Staging, remove_published, remove_tree, staging
from banger.images import image_catalog, localbuild
from banger.images.image_catalog import CatalogImage, ImageSource, SourceType
from banger.images.register import check_ext4
from banger.kernels import fetch, tarball
from banger.kernels.discover import ARCH
from banger.kernels.kernel_catalog import MAX_ARTIFACT_BYTES
from banger.model.hosts import is_loopback_host
from banger.model.records import ImageRecord, utc_now
from banger.model.wire import StageState
from banger.oci.reference import parse_reference
from banger.services.context import DaemonContext
from banger.services.image_pulls import ImagePullService
from banger.services.images import ImageService
from banger.services.inventory import record_dict
from banger.services.kernel_pull import KernelPullService
from banger.services.operations import Progress, run_streamed
from banger.services.steps import in_thread, named_lock, say_unverified
from banger.state import repo

#: A registry that does not accept a TCP connection in this time is treated as
#: unreachable, and the next source is tried (Docker Hub behind a firewall, offline).
REGISTRY_PROBE_TIMEOUT_S = 5.0
ROOTFS = "rootfs.ext4"
Obtain = Callable[[CatalogImage, ImageSource, Progress], Awaitable[None]]


async def is_catalog_name(ref: str) -> bool:
    """A bare catalog name (no registry, tag or digest), not an OCI reference."""
    if any(c in ref for c in ":/@"):
        return False
    return (await asyncio.to_thread(image_catalog.load_catalog)).find(ref) is not None


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


class CatalogService:
    """Catalog images obtained on first use; owns the per-name locks of those builds."""

    def __init__(
        self,
        ctx: DaemonContext,
        images: ImageService,
        kernel_pulls: KernelPullService,
        image_pulls: ImagePullService,
    ) -> None:
        self.ctx = ctx
        self.images = images
        self.kernel_pulls = kernel_pulls
        self.image_pulls = image_pulls
        self._locks: dict[str, asyncio.Lock] = {}

    async def pull_events(
        self,
        ref: str,
        *,
        name: str | None = None,
        kernel_ref: str | None = None,
        size_bytes: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """``image pull``: a bare catalog name (without ``--name``) obtains that catalog
        image, kernel included; anything else is an OCI reference, checked before the
        stream starts."""
        if name is None and await is_catalog_name(ref):
            return self.ensure_image_events(ref)
        plan = await self.image_pulls.plan_pull(
            ref, name=name, kernel_ref=kernel_ref, size_bytes=size_bytes
        )
        return self.image_pulls.pull_events(plan)

    async def available_images(self) -> list[dict[str, Any]]:
        """The catalog's images for this host's architecture, each with its package list
        (the first source's; the catalog's self-test keeps sources alike) and whether it
        is local."""
        found = (await asyncio.to_thread(image_catalog.load_catalog)).entries
        local = {i.name for i in await self.ctx.db.run(repo.list_images)}
        return [
            {
                **entry.to_dict(),
                "packages": list(entry.sources[0].packages) if entry.sources else [],
                "local": entry.name in local,
            }
            for entry in found
            if entry.arch == ARCH
        ]

    def ensure_image_events(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """``image pull <catalog name>``: obtain it now, streamed; the result is its row."""

        async def work(progress: Progress) -> dict[str, Any]:
            await self.ensure_image(name, progress)
            row = await self._image_row(name)
            if row is None:
                raise ImageNotFound(f"catalog image {name!r} could not be obtained")
            return record_dict(row)

        return run_streamed(work)

    async def ensure_image(self, name: str, progress: Progress) -> None:
        """Make catalog image ``name`` local if it is not; nothing when it is not in the catalog
        (the caller then reports ``ImageNotFound``)."""
        if await self._image_row(name) is not None:
            return
        entry = (await asyncio.to_thread(image_catalog.load_catalog)).find(name)
        if entry is None:
            return
        async with named_lock(self._locks, name):
            if await self._image_row(name) is not None:
                return  # built by whoever held the lock before us
            await self._obtain_image(entry, progress)

    async def _obtain_image(self, entry: CatalogImage, progress: Progress) -> None:
        failures: list[str] = []
        last: BangerError | None = None
        for index, source in enumerate(entry.sources):
            try:
                await self._obtain(source.type)(entry, source, progress)
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

    def _obtain(self, kind: SourceType) -> Obtain:
        return {
            SourceType.BUNDLE: self._from_bundle,
            SourceType.OCI: self._from_oci,
            SourceType.LOCAL_DEBIAN: self._from_local_debian,
        }[kind]

    async def _from_oci(self, entry: CatalogImage, source: ImageSource, progress: Progress) -> None:
        assert source.ref is not None
        ref = parse_reference(source.ref)
        with progress.stage("registry"):
            progress.detail = await _probe(ref.api_host)
        kernel = await self.kernel_pulls.ensure_kernel(source.kernels, progress)
        await self.image_pulls.pull_catalog_image(
            ref,
            name=entry.name,
            kernel_name=kernel,
            size_bytes=entry.size_bytes,
            first_boot_packages=source.packages,
            progress=progress,
        )

    async def _from_local_debian(
        self, entry: CatalogImage, source: ImageSource, progress: Progress
    ) -> None:
        from banger.images.bootable import INIT_PATH
        from banger.oci.ext4build import build_rootfs_image
        from banger.oci.flatten import Layer

        assert source.suite is not None
        suite = source.suite
        # A normal user's build needs mmdebstrap's unshare mode: say so before downloading.
        await in_thread(
            lambda: localbuild.check_user_build(self.ctx.runner), "checking the local build"
        )
        kernel = await self.kernel_pulls.ensure_kernel(source.kernels, progress)
        recipe = localbuild.DebianRecipe(suite, source.variant, source.packages)
        with staging(self.ctx.layout.images_dir, entry.name) as stage:
            work = stage.path / "build"
            work.mkdir()
            tar = work / "rootfs.tar"
            sources = await in_thread(
                lambda: localbuild.host_suite_sources(suite), "reading the host's apt sources"
            )
            build = asyncio.create_task(
                in_thread(
                    lambda: localbuild.build_rootfs_tar(
                        recipe, sources, tar, self.ctx.runner, work
                    ),
                    "bootstrapping Debian",
                )
            )
            marker = work / localbuild.ESSENTIAL_DONE
            try:
                # bootstrap: the Essential set (until mmdebstrap's essential hook runs);
                # packages: the image's own package list, then the tar.
                with progress.stage("bootstrap"):
                    while not build.done() and not marker.exists():
                        await asyncio.wait({build}, timeout=0.2)
                    progress.detail = (
                        f"{suite} {source.variant} Essential set"
                        if marker.exists()
                        else "all at once (no essential hook: debootstrap)"
                    )
                with progress.stage("packages"):
                    tool = await build
                    size_mib = tar.stat().st_size >> 20
                    progress.detail = (
                        f"{tool}: {len(recipe.include)} packages asked, {size_mib} MiB"
                    )
            finally:
                if not build.done():
                    build.cancel()
                    await asyncio.gather(build, return_exceptions=True)
            with progress.stage("ext4"):
                layer = Layer(tar, "application/vnd.oci.image.layer.v1.tar", None)
                await in_thread(
                    lambda: build_rootfs_image(
                        [layer],
                        stage.path / ROOTFS,
                        size_bytes=entry.size_bytes,
                        runner=self.ctx.runner,
                        work_dir=work,
                        inject="banger.images.bootable:make_bootable",
                    ),
                    "building the root filesystem",
                )
                await in_thread(lambda: remove_tree(work), "removing the build files")
                modules = await self._bake_modules(kernel, stage.path / ROOTFS)
                progress.detail = f"{entry.size_bytes >> 20} MiB ext4, made bootable{modules}"
            record = ImageRecord(
                name=entry.name,
                managed=True,
                rootfs_path=str(self.ctx.layout.images_dir / entry.name / ROOTFS),
                source=f"catalog:{entry.name} {source.describe()}",
                created_at=utc_now(),
                kernel_name=kernel,
                size_bytes=entry.size_bytes,
                init_path=INIT_PATH,
            )
            with progress.stage("publish"):
                await self._publish_image(stage, record)
                progress.detail = str(Path(record.rootfs_path).parent)

    async def _bake_modules(self, kernel: str, rootfs: Path) -> str:
        """The kernel's modules into the image once, so that a VM's disks need not copy
        them (``banger.disks.modules`` skips a version already there)."""
        from banger.disks.modules import install_modules

        record = await self.ctx.db.run(repo.get_kernel, kernel)
        tree = Path(record.dir_path) / "modules"
        if not record.has_modules or record.version is None or not tree.is_dir():
            return ""
        version = record.version
        runner = self.ctx.runner
        done = await in_thread(
            lambda: install_modules(rootfs, tree, version, runner), "copying kernel modules"
        )
        return f", {done.describe()}"

    async def _publish_image(self, stage: Staging, record: ImageRecord) -> None:
        """Name still free, then rename into ``images/<name>/``, then the row: under the
        lock ``image pull`` and ``promote`` publish under."""
        final = self.ctx.layout.images_dir / record.name
        async with self.images.publication_lock:
            if await self._image_row(record.name) is not None:
                raise AlreadyExists(f"image {record.name!r} appeared while it was being built")
            if os.path.lexists(final):  # a directory without a row: what a crash leaves
                await asyncio.to_thread(remove_published, final)
            await asyncio.to_thread(stage.commit, final)
            try:
                await self.ctx.db.run(repo.insert_image, record)
            except BangerError:
                await asyncio.to_thread(remove_published, final)
                raise

    async def _image_row(self, name: str) -> ImageRecord | None:
        try:
            record: ImageRecord = await self.ctx.db.run(repo.get_image, name)
        except ImageNotFound:
            return None
        return record

    async def _from_bundle(
        self, entry: CatalogImage, source: ImageSource, progress: Progress
    ) -> None:
        from banger.images.bootable import INIT_PATH

        assert source.url is not None
        url = source.url
        kernel = await self.kernel_pulls.ensure_kernel(source.kernels, progress)
        expected = fetch.Expected(source.sha256, source.size_bytes, MAX_ARTIFACT_BYTES)
        with staging(self.ctx.layout.images_dir, entry.name) as stage:
            archive = stage.path / "bundle.tar.zst"
            with progress.stage("download"):
                got = await in_thread(lambda: fetch.download(url, archive, expected), "downloading")
                progress.detail = got.describe()
            if source.sha256 is None:
                say_unverified(progress, got.sha256, "image", pinned=False)
            tree = stage.path / "bundle"
            with progress.stage("unpack"):
                limits = tarball.Limits(max_output_bytes=entry.size_bytes + (64 << 20))
                done = await in_thread(
                    lambda: tarball.unpack(
                        archive, tree, self.ctx.runner, limits, tarball.IMAGE_MEMBERS
                    ),
                    "unpacking",
                )
                await in_thread(lambda: _adopt_bundle(archive, tree, stage.path), "unpacking")
                progress.detail = done.describe()
            seed = stage.path / "work-seed.ext4"
            record = ImageRecord(
                name=entry.name,
                managed=True,
                rootfs_path=str(self.ctx.layout.images_dir / entry.name / ROOTFS),
                source=f"catalog:{entry.name} {source.describe()}",
                created_at=utc_now(),
                work_seed_path=str(self.ctx.layout.images_dir / entry.name / seed.name)
                if seed.exists()
                else None,
                kernel_name=kernel,
                source_digest=f"sha256:{got.sha256}",
                size_bytes=(stage.path / ROOTFS).stat().st_size,
                init_path=INIT_PATH,
            )
            with progress.stage("publish"):
                await self._publish_image(stage, record)
                progress.detail = str(Path(record.rootfs_path).parent)


def _adopt_bundle(archive: Path, tree: Path, stage_dir: Path) -> None:
    """Move the bundle's disks to the top of the staging dir; each must be ext4."""
    archive.unlink()
    for disk in tree.iterdir():
        check_ext4(disk, f"bundle member {disk.name}")
        disk.rename(stage_dir / disk.name)
    tree.rmdir()
