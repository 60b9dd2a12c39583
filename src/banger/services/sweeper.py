"""Deleting retired trees after the request that retired them has been answered.

Owns: the background deletion of ``*.trash`` entries (``banger.host.publish``'s second
half of a removal) and waiting for the ones under way at shutdown. A VM's directory
holds its root filesystem copy and work disk: unlinking them takes 0.1-0.3 s, which
``vm run --rm`` and ``vm delete`` would otherwise wait for (the name is free as soon as
the directory is renamed away). A deletion that fails, or a daemon that dies first,
leaves the trash for ``cleanup_leftovers`` at the next start.
Must not: retire anything itself, or touch rows.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from banger.errors import BangerError
from banger.host.publish import remove_tree

log = logging.getLogger("banger.sweeper")


class Sweeper:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def later(self, trash: Path) -> None:
        """Delete ``trash`` in a thread of its own, after the caller has moved on."""
        task = asyncio.create_task(self._remove(trash))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for the deletions under way (daemon shutdown; tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @staticmethod
    async def _remove(trash: Path) -> None:
        try:
            await asyncio.to_thread(remove_tree, trash)
        except (OSError, BangerError) as exc:
            log.warning(
                "a retired tree was not deleted (the next daemon start deletes it)",
                extra={"fields": {"path": str(trash), "error": str(exc)}},
            )
