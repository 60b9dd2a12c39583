"""``kernel pull`` and kernels on first use: fetching what the kernel catalog names (SPEC §6).

Owns: the order of a kernel pull (download or apt fetch → verify → unpack → the kernel
store's own import steps → publish → row), per-name locks so two callers racing for one
kernel fetch it once (ADVERSARIAL 43), and staging everything under ``kernels/.staging``
so a crash or ``kill -9`` leaves nothing that counts (42, 85).
Must not: block the event loop (file and network work runs in threads), speak HTTP
(routes do), or decide formats (``banger.kernels``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from banger.errors import (
    AlreadyExists,
    BangerError,
    KernelNotFound,
)
from banger.host.publish import Staging, staging
from banger.images import localbuild
from banger.kernels import fetch, kernel_catalog, tarball
from banger.kernels.discover import discover
from banger.kernels.kernel_catalog import MAX_ARTIFACT_BYTES, ArtifactFormat, CatalogKernel
from banger.kernels.store import KernelBuild, read_manifest
from banger.model.artifact_names import validate_name
from banger.model.records import KernelRecord, utc_now
from banger.model.wire import StageState
from banger.services.context import DaemonContext
from banger.services.inventory import record_dict
from banger.services.kernels import KernelService, record_from_manifest
from banger.services.operations import Progress, run_streamed
from banger.services.steps import in_thread, named_lock, say_unverified
from banger.state import repo


class KernelPullService:
    """Kernels from the catalog; owns the per-name locks of pulls."""

    def __init__(self, ctx: DaemonContext, kernels: KernelService) -> None:
        self.ctx = ctx
        self.kernels = kernels
        self._locks: dict[str, asyncio.Lock] = {}

    async def plan_pull(self, name: str) -> CatalogKernel:
        """The checks worth failing on before a progress stream starts."""
        validate_name(name)
        catalog = await asyncio.to_thread(kernel_catalog.load_catalog)
        return catalog.find(name)

    async def available_kernels(self) -> list[dict[str, Any]]:
        """The catalog's kernels for this host, each with ``local`` (in the store or not)."""
        catalog = await asyncio.to_thread(kernel_catalog.load_catalog)
        local = {r.name: r for r in await self.ctx.db.run(repo.list_kernels)}
        return [
            {**e.to_dict(), "local": e.name in local and local[e.name].source == e.source}
            for e in catalog.for_arch()
        ]

    def pull_events(self, entry: CatalogKernel, *, force: bool) -> AsyncIterator[dict[str, Any]]:
        return run_streamed(lambda progress: self.pull_kernel(entry, progress, force=force))

    async def pull_kernel(
        self, entry: CatalogKernel, progress: Progress, *, force: bool = False
    ) -> dict[str, Any]:
        """Fetch ``entry`` into the store; a kernel already pulled from it is returned as is."""
        async with named_lock(self._locks, entry.name):
            existing = await self._kernel_row(entry.name)
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
                pin = fetch.recorded_sha256(manifest, entry.url)
            with staging(self.ctx.layout.kernels_dir, entry.name) as work:
                tree, fetched = await self._fetch_kernel(entry, work.path, pin, progress)
                record = await self._import_tree(entry, tree, fetched, progress)
            return {**record_dict(record), "download": fetched}

    async def _fetch_kernel(
        self, entry: CatalogKernel, work: Path, pin: str | None, progress: Progress
    ) -> tuple[Path, dict[str, Any]]:
        if entry.format is ArtifactFormat.DEB:
            return await self._fetch_deb(entry, work, progress)
        assert entry.url is not None
        url = entry.url
        expected = fetch.Expected(entry.sha256 or pin, entry.size_bytes, MAX_ARTIFACT_BYTES)
        with progress.stage("download"):
            got = await in_thread(
                lambda: fetch.download(url, work / "download", expected), "downloading"
            )
            progress.detail = got.describe()
        if entry.sha256 is None:
            say_unverified(progress, got.sha256, "kernel", pinned=pin is not None)
        tree = work / "tree"
        with progress.stage("unpack"):
            if entry.format is ArtifactFormat.VMLINUX:
                progress.detail = await in_thread(
                    lambda: fetch.place_vmlinux(got.path, tree), "unpacking"
                )
            else:
                done = await in_thread(
                    lambda: tarball.unpack(got.path, tree, self.ctx.runner), "unpacking"
                )
                progress.detail = done.describe()
            got.path.unlink(missing_ok=True)
        fetched = {"url": url, "sha256": got.sha256, "size_bytes": got.size_bytes}
        return tree, {**fetched, "verified": entry.sha256 is not None}

    async def _fetch_deb(
        self, entry: CatalogKernel, work: Path, progress: Progress
    ) -> tuple[Path, dict[str, Any]]:
        assert entry.package is not None and entry.suite is not None
        package, suite = entry.package, entry.suite
        with progress.stage("download"):
            sources = await in_thread(
                lambda: localbuild.host_suite_sources(suite), "reading the host's apt sources"
            )
            apt = localbuild.PrivateApt(self.ctx.layout.cache_dir / "apt" / suite, sources)
            got = await in_thread(
                lambda: localbuild.fetch_kernel_package(apt, package, work, self.ctx.runner),
                "fetching the kernel package",
            )
            progress.detail = f"{got.deb} (apt checked the archive's signature)"
        return got.tree, {"package": got.package, "deb": got.deb, "suite": suite, "verified": True}

    async def _import_tree(
        self,
        entry: CatalogKernel,
        tree: Path,
        fetched: dict[str, Any],
        progress: Progress,
    ) -> KernelRecord:
        """The kernel store's import steps on an unpacked tree, then publication."""
        await in_thread(lambda: fetch.write_metadata(tree, entry), "writing the metadata")
        with progress.stage("discover"):
            found = await in_thread(lambda: discover(tree), "looking for the kernel")
            version = f", version {found.version}" if found.version else ""
            progress.detail = found.kernel.name + version
        with staging(self.ctx.layout.kernels_dir, entry.name) as stage:
            build = KernelBuild(found, stage.path, self.ctx.runner)
            with progress.stage("extract"):
                progress.detail = await in_thread(build.kernel, "extracting the kernel")
            with progress.stage("modules"):
                progress.detail = await in_thread(build.modules, "copying the modules") or "none"
            with progress.stage("initrd"):
                progress.detail = await in_thread(build.initrd, "making the initrd") or "none"
            with progress.stage("publish"):
                record = await self._publish_kernel(entry, build, stage, fetched)
                progress.detail = record.dir_path
        return record

    async def _publish_kernel(
        self,
        entry: CatalogKernel,
        build: KernelBuild,
        stage: Staging,
        fetched: dict[str, Any],
    ) -> KernelRecord:
        imported_at = utc_now()

        def manifest() -> dict[str, Any]:
            build.manifest(entry.name, entry.source, imported_at.isoformat())
            return fetch.add_to_manifest(stage.path, "download", fetched)

        data = await in_thread(manifest, "writing the manifest")
        final = self.ctx.layout.kernels_dir / entry.name
        record = record_from_manifest(entry.name, entry.source, final, imported_at, data)
        # The import's own publication lock: an import of the same name cannot interleave.
        async with self.kernels.publication_lock:
            exists = await self._kernel_row(entry.name) is not None
            replace = exists or os.path.lexists(final)  # a directory without a row: a crash's
            await self.kernels.publish_with_row(
                stage, final, record, exists=exists, replace=replace
            )
        return record

    async def _kernel_row(self, name: str) -> KernelRecord | None:
        try:
            record: KernelRecord = await self.ctx.db.run(repo.get_kernel, name)
        except KernelNotFound:
            return None
        return record

    async def ensure_kernel(self, names: Sequence[str], progress: Progress) -> str:
        """The first of ``names`` in the store, else the first the catalog can deliver."""
        for name in names:
            if await self._kernel_row(name) is not None:
                return name
        catalog = await asyncio.to_thread(kernel_catalog.load_catalog)
        failures: list[str] = []
        for name in names:
            try:
                entry = catalog.find(name)
                await self.pull_kernel(entry, progress)
            except BangerError as err:
                failures.append(f"{name}: {err.brief}")
                progress.note(f"kernel {name}", StageState.WARN, err.brief)
                continue
            return name
        raise KernelNotFound(
            f"none of the kernels {', '.join(names)} could be obtained",
            details="\n".join(failures) or None,
        )
