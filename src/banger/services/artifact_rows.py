"""Published images and kernels against their rows (issue 14 items 4, 5).

Owns: at daemon start-up, rewriting a kernel's row from the manifest in its directory when
the two disagree (a crash between ``kernel import --force``'s swap and its row update
leaves the old row over the new files: the manifest, written inside the staged tree, is
the truth); listing the directories under ``images/`` and ``kernels/`` that have no row
(a crash between a publish's rename and its row write), which ``doctor`` reports; and
removing such an orphan by name (what ``image delete`` / ``kernel rm`` do for a name
with no row).
Must not: remove an orphan on its own (a restored older ``state.db`` would make real
images look orphaned: removal is the user's call), or touch an entry not named like ours.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from banger.host.publish import remove_published
from banger.kernels.store import read_manifest
from banger.model.artifact_names import is_valid_name
from banger.model.records import KernelRecord
from banger.services.context import DaemonContext
from banger.state import repo

log = logging.getLogger("banger.services.artifact_rows")


@dataclass(frozen=True)
class Orphan:
    kind: str  # "image" | "kernel"
    name: str
    path: Path
    size_bytes: int

    @property
    def remedy(self) -> str:
        verb = "rm" if self.kind == "kernel" else "delete"
        return f"`banger {self.kind} {verb} {self.name}`"


def kernel_row_from_manifest(record: KernelRecord) -> KernelRecord | None:
    """The row ``record`` should be, per its directory's manifest; None when they agree
    (or when there is no usable manifest to go by)."""
    manifest = read_manifest(Path(record.dir_path))
    if manifest is None or manifest.get("name") != record.name:
        return None
    files = manifest.get("files")
    try:
        wanted = KernelRecord(
            name=record.name,
            arch=str(manifest["arch"]),
            source=str(manifest["source"]),
            dir_path=record.dir_path,
            imported_at=datetime.fromisoformat(str(manifest["imported_at"])),
            distro=manifest.get("distro"),
            version=manifest.get("version"),
            sha256=manifest.get("sha256"),
            has_initrd=isinstance(files, dict) and "initrd.img" in files,
            has_modules=isinstance(files, dict) and "modules" in files,
        )
    except (KeyError, TypeError, ValueError):
        return None
    return None if wanted == record else wanted


async def reconcile_kernel_rows(ctx: DaemonContext) -> list[str]:
    """Rewrite every kernel row that disagrees with its manifest; the names rewritten."""
    fixed: list[str] = []
    for record in await ctx.db.run(repo.list_kernels):
        wanted = await asyncio.to_thread(kernel_row_from_manifest, record)
        if wanted is None:
            continue
        log.warning(
            "kernel row disagreed with its manifest (interrupted replace): rewritten",
            extra={"fields": {"kernel": record.name, "was": str(record), "now": str(wanted)}},
        )
        await ctx.db.run(
            repo.update_kernel,
            record.name,
            arch=wanted.arch,
            source=wanted.source,
            imported_at=wanted.imported_at,
            distro=wanted.distro,
            version=wanted.version,
            sha256=wanted.sha256,
            has_initrd=wanted.has_initrd,
            has_modules=wanted.has_modules,
        )
        fixed.append(record.name)
    return fixed


async def find_orphans(ctx: DaemonContext) -> list[Orphan]:
    images = {i.name for i in await ctx.db.run(repo.list_images)}
    kernels = {k.name for k in await ctx.db.run(repo.list_kernels)}
    found = await asyncio.to_thread(_orphans, ctx.layout.images_dir, "image", images)
    found += await asyncio.to_thread(_orphans, ctx.layout.kernels_dir, "kernel", kernels)
    return found


def _orphans(root: Path, kind: str, rows: set[str]) -> list[Orphan]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return []
    return [
        Orphan(kind, e.name, Path(e.path), _size(Path(e.path)))
        for e in entries
        if is_valid_name(e.name) and e.name not in rows and e.is_dir(follow_symlinks=False)
    ]


def _size(top: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(top):
        for name in files:
            try:
                total += (Path(dirpath) / name).lstat().st_blocks * 512
            except OSError:
                continue
    return total


async def remove_orphan(ctx: DaemonContext, kind: str, name: str) -> bool:
    """Remove ``images/<name>`` or ``kernels/<name>`` when it has no row; False if absent.

    The caller found no row; this checks again under nothing but the name rule, so it is
    only for names that passed ``is_valid_name`` (never a path).
    """
    if not is_valid_name(name):
        return False
    root = ctx.layout.images_dir if kind == "image" else ctx.layout.kernels_dir
    path = root / name
    if not path.is_dir() or path.is_symlink():
        return False
    log.warning("removing orphan %s dir %s (no row)", kind, path)
    return await asyncio.to_thread(remove_published, path)
