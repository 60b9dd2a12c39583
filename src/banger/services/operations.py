"""Long operations that report progress and keep going if the client goes away.

Owns: running an operation as a task of the daemon (so a CLI interrupted mid-create
does not leave a half-made VM behind a cancelled coroutine), relaying its stage events
to whoever streams them, and timing each stage. Must not: know what the operation does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from banger.model.wire import StageState, result_event, stage_event

Event = dict[str, Any]
HEARTBEAT_S = 10.0
_tasks: set[asyncio.Task[None]] = set()


class Progress:
    """Emits stage events; ``with progress.stage("disks"):`` times one stage."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self._emit = emit
        self.detail: str | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Progress]:
        self._emit(stage_event(name, StageState.RUNNING))
        self.detail = None
        started = time.monotonic()
        try:
            yield self
        except BaseException:
            self._emit(stage_event(name, StageState.FAIL, elapsed_ms=_ms(started)))
            raise
        self._emit(stage_event(name, StageState.OK, detail=self.detail, elapsed_ms=_ms(started)))

    def note(self, name: str, state: StageState, detail: str) -> None:
        self._emit(stage_event(name, state, detail=detail))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def run_streamed(work: Callable[[Progress], Awaitable[Any]]) -> AsyncIterator[Event]:
    """The events of ``work``, run as a task of the daemon: stages as they happen, then its
    result. A failure is raised from the iterator after the events before it, for the
    stream's one catch-all (``banger.api.progress``) to turn into an error event."""
    queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()

    async def body() -> None:
        try:
            result = await work(Progress(queue.put_nowait))
        except Exception as exc:  # noqa: BLE001 - handed to the stream, which renders it
            queue.put_nowait(exc)
        else:
            queue.put_nowait(result_event(result))

    task = asyncio.create_task(body())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)

    async def events() -> AsyncIterator[Event]:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                # A long stage (an image build) is silent for minutes: tell the client we
                # are alive, so its idle timeout measures the daemon, not the stage.
                yield {"type": "heartbeat"}
                continue
            if isinstance(event, BaseException):
                raise event
            yield event
            if event["type"] == "result":
                return

    return events()
