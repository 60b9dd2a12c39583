"""Kernel use cases: import into the local store, list, show, remove (SPEC §6).

Owns: the order of an import (checks → discover → kernel → modules → initrd → publish
→ row), its progress stages, the publication lock, and keeping files and rows in step:
the directory is published before its row is written and removed after its row is
deleted, so a crash leaves at worst a directory without a row, which the next import
of that name replaces.
Must not: block the event loop (file work runs in threads), speak HTTP, or decide
formats (``banger.kernels`` does).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from banger.errors import AlreadyExists, BangerError, KernelNotFound, StateError
from banger.host.publish import Staging, remove_published, staging
from banger.images.register import check_path
from banger.kernels.discover import Discovered, discover
from banger.kernels.store import KernelBuild, publish_kernel, read_manifest
from banger.model.artifact_names import is_valid_name, validate_name
from banger.model.records import KernelRecord, utc_now
from banger.services.artifact_rows import remove_orphan
from banger.services.context import DaemonContext
from banger.services.inventory import record_dict
from banger.services.operations import Progress, run_streamed
from banger.services.pull import failpoint
from banger.state import repo

T = TypeVar("T")
#: Held only around the rename into place and the row write, never around the copying.
publication_lock = asyncio.Lock()


@dataclass(frozen=True)
class ImportPlan:
    name: str
    source: Path
    force: bool


async def list_kernels(ctx: DaemonContext) -> list[dict[str, Any]]:
    return [record_dict(r) for r in await ctx.db.run(repo.list_kernels)]


async def get_kernel(ctx: DaemonContext, name: str) -> dict[str, Any]:
    record = await ctx.db.run(repo.get_kernel, name)
    reply = record_dict(record)
    reply["manifest"] = await asyncio.to_thread(read_manifest, Path(record.dir_path))
    return reply


async def remove_kernel(ctx: DaemonContext, name: str) -> dict[str, Any]:
    """Delete the row (``InUse`` while an image refers to it), then the directory."""
    if not is_valid_name(name):  # cannot exist, and must never become a path below
        raise KernelNotFound(f"kernel {name!r} not found")
    try:
        await ctx.db.run(repo.delete_kernel, name)
    except KernelNotFound:
        # kernels/<name> without a row (issue 14 item 4) goes the same way.
        async with publication_lock:
            if await _row_exists(ctx, name) or not await remove_orphan(ctx, "kernel", name):
                raise
        return {"name": name, "removed": True, "files_removed": True}
    removed = await asyncio.to_thread(remove_published, ctx.layout.kernels_dir / name)
    return {"name": name, "removed": True, "files_removed": removed}


async def plan_import(ctx: DaemonContext, name: str, source: str, *, force: bool) -> ImportPlan:
    """The checks worth failing on before a progress stream starts."""
    validate_name(name)
    src = await asyncio.to_thread(check_path, source, "source", directory=True)
    if not force and await _row_exists(ctx, name):
        raise _exists(name)
    return ImportPlan(name=name, source=src, force=force)


def _exists(name: str) -> AlreadyExists:
    return AlreadyExists(
        f"kernel {name!r} already exists", hint="`--force` replaces it, or pick another name"
    )


async def _row_exists(ctx: DaemonContext, name: str) -> bool:
    try:
        await ctx.db.run(repo.get_kernel, name)
    except KernelNotFound:
        return False
    return True


def import_events(ctx: DaemonContext, plan: ImportPlan) -> AsyncIterator[dict[str, Any]]:
    """The import as NDJSON events; it runs to the end even if the client goes away."""
    return run_streamed(lambda progress: _import(ctx, plan, progress))


async def _import(ctx: DaemonContext, plan: ImportPlan, progress: Progress) -> dict[str, Any]:
    with progress.stage("discover"):
        found = await _step(lambda: discover(plan.source), "looking for the kernel")
        progress.detail = _describe(found)
    kernels_dir = ctx.layout.kernels_dir
    with staging(kernels_dir, plan.name) as stage:
        build = KernelBuild(found, stage.path, ctx.runner)
        with progress.stage("extract"):
            progress.detail = await _step(build.kernel, "extracting the kernel")
        with progress.stage("modules"):
            progress.detail = await _step(build.modules, "copying the modules") or "none"
        with progress.stage("initrd"):
            progress.detail = await _step(build.initrd, "making the initrd") or "none (no modules)"
        with progress.stage("publish"):
            record = await _publish(ctx, plan, build, stage)
            progress.detail = str(record.dir_path)
    return record_dict(record)


async def _step(fn: Callable[[], T], doing: str) -> T:
    """Run one step in a thread; an OS error (disk full, unreadable file) gets a brief."""
    try:
        return await asyncio.to_thread(fn)
    except OSError as exc:
        raise StateError(f"{doing} failed: {exc.strerror or exc}", details=str(exc)) from exc


async def _publish(
    ctx: DaemonContext, plan: ImportPlan, build: KernelBuild, stage: Staging
) -> KernelRecord:
    imported_at = utc_now()
    source = f"import:{plan.source}"
    manifest = await _step(
        lambda: build.manifest(plan.name, source, imported_at.isoformat()), "writing the manifest"
    )
    final = ctx.layout.kernels_dir / plan.name
    record = record_from_manifest(plan.name, source, final, imported_at, manifest)
    async with publication_lock:
        exists = await _row_exists(ctx, plan.name)
        if exists and not plan.force:
            raise _exists(plan.name)
        # A directory without a row is what a crash before the row write leaves behind.
        replace = plan.force or (not exists and os.path.lexists(final))
        await publish_with_row(ctx, stage, final, record, exists=exists, replace=replace)
    return record


def record_from_manifest(
    name: str, source: str, final: Path, imported_at: datetime, manifest: dict[str, Any]
) -> KernelRecord:
    """The row of a kernel about to be published at ``final``, from its manifest."""
    return KernelRecord(
        name=name,
        arch=manifest["arch"],
        source=source,
        dir_path=str(final),
        imported_at=imported_at,
        distro=manifest["distro"],
        version=manifest["version"],
        sha256=manifest["sha256"],
        has_initrd="initrd.img" in manifest["files"],
        has_modules="modules" in manifest["files"],
    )


async def publish_with_row(
    ctx: DaemonContext,
    stage: Staging,
    final: Path,
    record: KernelRecord,
    *,
    exists: bool,
    replace: bool,
) -> None:
    """Publish a staged kernel directory, then insert or update its row; if the row cannot
    be written, a directory that did not exist before is taken back (no dir without row).
    The caller holds ``publication_lock``."""
    await asyncio.to_thread(publish_kernel, stage, final, replace=replace)
    failpoint("swapped", kind="kernel")  # crash tests: new files in place, row not yet
    try:
        await _write_row(ctx, record, exists=exists)
    except BangerError:
        if not exists:
            await asyncio.to_thread(remove_published, final)
        raise


async def _write_row(ctx: DaemonContext, record: KernelRecord, *, exists: bool) -> None:
    if not exists:
        await ctx.db.run(repo.insert_kernel, record)
        return
    changes = record_dict(record)
    del changes["name"]
    changes["imported_at"] = record.imported_at
    await ctx.db.run(repo.update_kernel, record.name, **changes)


def _describe(found: Discovered) -> str:
    parts = [found.kernel.name]
    if found.version:
        parts.append(f"version {found.version}")
    if found.initrd:
        parts.append(f"initrd {found.initrd.name}")
    if found.modules:
        parts.append("modules")
    if found.metadata:
        parts.append(f"metadata {found.metadata.name}")
    return ", ".join(parts)
