"""Image use cases: register host files, promote, list, show, delete (SPEC §5).

Owns: the order of each use case and keeping files and rows in step: a promotion
publishes ``images/<name>/`` before the row points at it (and removes it again if the
row cannot be updated); a delete removes the row first (``InUse`` while a VM uses the
image, ADVERSARIAL 120) and only then the daemon's own copies. Files of an unmanaged
(registered) image belong to the user and are never deleted.
Must not: block the event loop (file work runs in threads) or speak HTTP.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from banger.errors import BangerError, ImageNotFound, InvalidState
from banger.host.publish import remove_published, staging
from banger.images.register import (
    Registration,
    build_record,
    copy_rest,
    copy_rootfs,
    promoted,
    recheck,
)
from banger.model.records import ImageRecord
from banger.services.artifact_rows import remove_orphan
from banger.services.context import DaemonContext
from banger.services.inventory import record_dict
from banger.services.operations import Progress, run_streamed
from banger.state import repo


class ImageService:
    """Registered and promoted images; owns the lock every image publication takes."""

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        #: Held only around the rename into place and the row update, never around
        #: copying; ``image pull`` and catalog images publish under it too.
        self.publication_lock = asyncio.Lock()

    async def list_images(self) -> list[dict[str, Any]]:
        return [record_dict(r) for r in await self.ctx.db.run(repo.list_images)]

    async def get_image(self, name: str) -> dict[str, Any]:
        return record_dict(await self.ctx.db.run(repo.get_image, name))

    async def register(self, registration: Registration) -> dict[str, Any]:
        """Check every path, then record an unmanaged image; nothing is recorded on error."""
        record = await asyncio.to_thread(build_record, registration)
        return record_dict(await self.ctx.db.run(repo.insert_image, record))

    async def delete_image(self, name: str) -> dict[str, Any]:
        try:
            image: ImageRecord = await self.ctx.db.run(repo.get_image, name)
        except ImageNotFound:
            # images/<name> without a row (a pull killed between rename and row: issue 14
            # item 4) is removed by the same command; the lock keeps a pull's own
            # rename-then-row from being mistaken for one.
            async with self.publication_lock:
                if await self._has_row(name) or not await remove_orphan(self.ctx, "image", name):
                    raise
            return {"name": name, "deleted": True, "files_removed": True}
        await self.ctx.db.run(repo.delete_image, name)
        removed = False
        own_dir = self.ctx.layout.images_dir / image.name
        # Only a managed image's own directory is ours to delete; registered files are not.
        if image.managed and Path(image.rootfs_path).parent == own_dir:
            removed = await asyncio.to_thread(remove_published, own_dir)
        return {"name": name, "deleted": True, "files_removed": removed}

    async def _has_row(self, name: str) -> bool:
        try:
            await self.ctx.db.run(repo.get_image, name)
        except ImageNotFound:
            return False
        return True

    async def plan_promote(self, name: str) -> ImageRecord:
        """Checks worth failing on before the progress stream starts."""
        image: ImageRecord = await self.ctx.db.run(repo.get_image, name)
        if image.managed:
            raise InvalidState(
                f"image {name!r} is already managed by banger", hint="nothing to promote"
            )
        return image

    def promote_events(self, image: ImageRecord) -> AsyncIterator[dict[str, Any]]:
        """The promotion as NDJSON events; it runs to the end even if the client goes away."""
        return run_streamed(lambda progress: self._promote(image, progress))

    async def _promote(self, image: ImageRecord, progress: Progress) -> dict[str, Any]:
        with progress.stage("check"):
            await asyncio.to_thread(recheck, image)
        images_dir = self.ctx.layout.images_dir
        with staging(images_dir, image.name) as stage:
            with progress.stage("rootfs"):
                progress.detail = await asyncio.to_thread(copy_rootfs, image, stage.path)
            with progress.stage("artifacts"):
                copied = await asyncio.to_thread(copy_rest, image, stage.path)
                progress.detail = ", ".join(copied) or "none"
            with progress.stage("publish"):
                final = images_dir / image.name
                async with self.publication_lock:
                    current: ImageRecord = await self.ctx.db.run(repo.get_image, image.name)
                    if current != image:
                        raise InvalidState(f"image {image.name!r} changed during the promotion")
                    if os.path.lexists(final):
                        # An unmanaged row has no directory: this one is a crash's leftover.
                        await asyncio.to_thread(remove_published, final)
                    await asyncio.to_thread(stage.commit, final)
                    updated = await self._point_at(promoted(image, final), final)
                progress.detail = str(final)
        return record_dict(updated)

    async def _point_at(self, image: ImageRecord, final: Path) -> ImageRecord:
        changes = record_dict(image)
        for fixed in ("id", "name", "created_at"):
            del changes[fixed]
        try:
            updated: ImageRecord = await self.ctx.db.run(repo.update_image, image.name, **changes)
        except BangerError:
            await asyncio.to_thread(remove_published, final)
            raise
        return updated
