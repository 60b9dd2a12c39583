"""Long operations that report progress and keep going if the client goes away.

Owns: running an operation as a task of the daemon (so a CLI interrupted mid-create
does not leave a half-made VM behind a cancelled coroutine), relaying its stage events
to whoever streams them, timing each stage, and telling the operation when its stream
was abandoned (``Progress.abandoned``: the client went away before the result). Must
not: know what the operation does, or decide what an abandoned operation does about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from banger.errors import Interrupted
from banger.model.wire import StageState, result_event, stage_event

T = TypeVar("T")
Event = dict[str, Any]
HEARTBEAT_S = 10.0
_tasks: set[asyncio.Task[None]] = set()


class Progress:
    """Emits stage events; ``with progress.stage("disks"):`` times one stage."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self._emit = emit
        self.detail: str | None = None
        #: Set when the client stopped reading before the result (it disconnected, was
        #: interrupted, or its terminal went away). The operation decides what that means.
        self.abandoned = asyncio.Event()

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


def running() -> int:
    """How many operations are still running in this event loop's daemon."""
    return sum(1 for task in _tasks if not task.done())


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def run_streamed(work: Callable[[Progress], Awaitable[Any]]) -> AsyncIterator[Event]:
    """The events of ``work``, run as a task of the daemon: stages as they happen, then its
    result. A failure is raised from the iterator after the events before it, for the
    stream's one catch-all (``banger.api.progress``) to turn into an error event."""
    queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
    progress = Progress(queue.put_nowait)

    async def body() -> None:
        try:
            result = await work(progress)
        except Exception as exc:  # noqa: BLE001 - handed to the stream, which renders it
            queue.put_nowait(exc)
        else:
            queue.put_nowait(result_event(result))

    task = asyncio.create_task(body())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)

    async def events() -> AsyncIterator[Event]:
        ended = False
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    # A long stage (an image build) is silent for minutes: tell the client
                    # we are alive, so its idle timeout measures the daemon, not the stage.
                    yield {"type": "heartbeat"}
                    continue
                if isinstance(event, BaseException):
                    ended = True
                    raise event
                ended = event["type"] == "result"
                yield event
                if ended:
                    return
        finally:
            # Closed or cancelled before the end: the HTTP layer saw the client go.
            if not ended:
                progress.abandoned.set()

    return events()


def _gone(what: str | None) -> Interrupted:
    subject = f"VM {what!r}" if what else "the VM"
    return Interrupted(
        f"the client went away: {subject} is not kept (it asked for that)",
        hint="nothing to clean up; `banger vm list` shows what exists",
    )


def stop_if_set(stop: asyncio.Event | None, what: str | None) -> None:
    """Raise ``Interrupted`` if ``stop`` (a ``Progress.abandoned``) is set."""
    if stop is not None and stop.is_set():
        raise _gone(what)


async def unless_set(stop: asyncio.Event | None, work: Awaitable[T], what: str | None) -> T:
    """``await work``, unless ``stop`` is set first: then ``work`` is cancelled and
    ``Interrupted`` raised. Only for work that is safe to cancel (no thread under it that
    would go on changing things)."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.cancelled():
        raise _gone(what)
    return task.result()
