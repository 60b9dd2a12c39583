"""Small building blocks of the long daemon operations (kernel pulls, image builds).

Owns: running one blocking step in a thread with a brief for OS errors (disk full…),
per-name asyncio locks (two callers racing for one name do the work once), and the note
about a download the catalog gives no checksum for.
Must not: know what a step does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from banger.errors import StateError
from banger.model.wire import StageState
from banger.services.operations import Progress

T = TypeVar("T")


def named_lock(locks: dict[str, asyncio.Lock], name: str) -> asyncio.Lock:
    return locks.setdefault(name, asyncio.Lock())


async def in_thread(fn: Callable[[], T], doing: str) -> T:
    """Run one blocking step in a thread; an OS error (disk full…) gets a brief."""
    try:
        return await asyncio.to_thread(fn)
    except OSError as exc:
        raise StateError(f"{doing} failed: {exc.strerror or exc}", details=str(exc)) from exc


def say_unverified(progress: Progress, sha256: str, what: str, *, pinned: bool) -> None:
    """The ``verify`` note of a download the catalog publishes no checksum for."""
    if pinned:
        progress.note("verify", StageState.OK, "matches the sha256 recorded at the first pull")
        return
    progress.note(
        "verify",
        StageState.WARN,
        f"unverified source: the catalog publishes no checksum for this {what}; "
        f"recorded sha256 {sha256} and later pulls must match it",
    )
