"""One ``vm exec`` session after the 101: frames between a client and a guest command.

Owns: the daemon's side of the link (``exec_frames.LINK_CHANNEL``): the command's output
to the client within the credit the client granted, the client's stdin to the command
within the stdin window the daemon granted, signals, the EXIT frame, an error frame when
the session fails after the switch, and killing the command (SIGKILL to its process
group) when the client goes away, breaks the protocol, or the daemon shuts down.

Bounds: the daemon holds at most one window of output per command (``ExecProcess``
grants the guest credit only as this relay hands data on, and data is handed on only
within the client's credit) and one window of stdin (the client may send no more than
granted); frames from the client are at most 64 KiB.
Must not: decide anything about VMs (``banger.services.vm_exec``) or render errors other
than through ``banger.model.wire.error_body``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import signal as signals

from banger.errors import (
    BadResponse,
    BangerError,
    CommandFailed,
    ShuttingDown,
    Timeout,
    internal_error,
)
from banger.guest import exec_frames
from banger.guest.exec_client import GRACE_S, ExecProcess
from banger.guest.exec_frames import ExitStatus, Kind

log = logging.getLogger("banger.exec")
CHANNEL = exec_frames.LINK_CHANNEL
WINDOW = exec_frames.WINDOW
READ_CHUNK = 64 * 1024


class _ClientGone(Exception):
    pass


class _ClientBroke(Exception):
    pass


class ExecRelay:
    def __init__(
        self,
        proc: ExecProcess,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout_s: float | None,
    ) -> None:
        self.proc = proc
        self._reader = reader
        self._writer = writer
        self._timeout_s = timeout_s
        self._credit = WINDOW  # output the client will take
        self._credit_changed = asyncio.Event()
        self._stdin: collections.deque[bytes] = collections.deque()
        self._stdin_held = 0
        self._stdin_eof = False
        self._stdin_changed = asyncio.Event()
        self._stop = asyncio.Event()
        self.outcome = "running"

    def shutdown(self) -> None:
        """The daemon is stopping: end the session (the command is killed)."""
        self._stop.set()

    async def run(self) -> None:
        tasks = {
            asyncio.create_task(self._to_client(), name="exec-out"),
            asyncio.create_task(self._from_client(), name="exec-in"),
            asyncio.create_task(self._stop.wait(), name="exec-stop"),
        }
        stdin = asyncio.create_task(self._to_guest())
        limit = None if self._timeout_s is None else self._timeout_s + GRACE_S
        error: BangerError | None = None
        try:
            async with asyncio.timeout(limit):
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            if first.get_name() == "exec-stop":
                error = ShuttingDown("the daemon is shutting down; the command was killed")
            elif (exc := first.exception()) is not None:
                error = self._error_of(exc)
            elif first.get_name() == "exec-in":  # the client closed its side: it is gone
                self.outcome = "client gone"
        except TimeoutError:
            error = Timeout(f"the command did not end within {limit:g}s (the guest did not end it)")
        finally:
            for task in (*tasks, stdin):
                task.cancel()
            for task in (*tasks, stdin):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.proc.exit is None:
                with contextlib.suppress(BangerError):
                    self.proc.signal(signals.SIGKILL)
            if error is not None:
                self.outcome = error.code
                await self._send_error(error)
            self._writer.close()

    def _error_of(self, exc: BaseException) -> BangerError | None:
        if isinstance(exc, _ClientGone):
            self.outcome = "client gone"
            return None
        if isinstance(exc, _ClientBroke):
            return BadResponse(f"the client broke the exec protocol: {exc}")
        if isinstance(exc, BangerError):
            return exc
        log.error("exec relay failed", exc_info=exc)
        return internal_error()

    # -- output: guest -> client ----------------------------------------------------------

    async def _to_client(self) -> None:
        async for kind, data in self.proc.output():
            view = memoryview(data)
            while view:
                while self._credit <= 0:
                    self._credit_changed.clear()
                    await self._credit_changed.wait()
                size = min(len(view), self._credit)
                self._credit -= size
                self._write(kind, bytes(view[:size]))
                view = view[size:]
                await self._drain()
        status = self.proc.exit
        assert status is not None
        self._write(Kind.EXIT, exec_frames.encode_exit(status))
        await self._drain()
        self.outcome = _describe(status)

    # -- input: client -> daemon -----------------------------------------------------------

    async def _from_client(self) -> None:
        decoder = exec_frames.FrameDecoder()
        while True:
            try:
                data = await self._reader.read(READ_CHUNK)
            except OSError as exc:
                raise _ClientGone(str(exc)) from exc
            if not data:
                return
            try:
                frames = decoder.feed(data)
            except exec_frames.ProtocolError as exc:
                raise _ClientBroke(str(exc)) from exc
            for frame in frames:
                self._on_frame(frame)

    def _on_frame(self, frame: exec_frames.Frame) -> None:
        if frame.channel != CHANNEL:
            raise _ClientBroke(f"frame on channel {frame.channel}")
        if frame.kind == Kind.STDIN:
            if self._stdin_eof or self._stdin_held + len(frame.payload) > WINDOW:
                raise _ClientBroke("stdin beyond the window it was granted (or after its end)")
            if frame.payload:
                self._stdin.append(frame.payload)
                self._stdin_held += len(frame.payload)
        elif frame.kind == Kind.STDIN_EOF:
            self._stdin_eof = True
        elif frame.kind == Kind.SIGNAL:
            if len(frame.payload) != 1 or frame.payload[0] not in exec_frames.SIGNALS:
                raise _ClientBroke("a SIGNAL frame must carry one of 1, 2, 3, 9, 15")
            self.proc.signal(frame.payload[0])
            return
        elif frame.kind == Kind.CREDIT:
            try:
                self._credit += exec_frames.decode_u32(frame.payload)
            except ValueError as exc:
                raise _ClientBroke(str(exc)) from exc
            if self._credit > WINDOW:
                raise _ClientBroke("output credit beyond the window")
            self._credit_changed.set()
            return
        else:
            raise _ClientBroke(f"a frame of kind {frame.kind} from the client")
        self._stdin_changed.set()

    async def _to_guest(self) -> None:
        """Stdin to the command as the guest takes it; the client gets its credit back."""
        with contextlib.suppress(BadResponse, CommandFailed):
            while True:
                while not self._stdin and not self._stdin_eof:
                    self._stdin_changed.clear()
                    await self._stdin_changed.wait()
                if not self._stdin:
                    self.proc.close_stdin()
                    return
                chunk = self._stdin.popleft()
                await self.proc.write(chunk)
                self._stdin_held -= len(chunk)
                if self.proc.exit is None:
                    self._write(Kind.STDIN_CREDIT, exec_frames.u32(len(chunk)))

    # -- the wire ------------------------------------------------------------------------

    def _write(self, kind: int, payload: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(exec_frames.encode(kind, CHANNEL, payload))

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc

    async def _send_error(self, error: BangerError) -> None:
        payload = json.dumps(error.to_payload()).encode()[: exec_frames.MAX_PAYLOAD]
        self._write(Kind.FAILED, payload)
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with asyncio.timeout(1.0):
                await self._writer.drain()


def _describe(status: ExitStatus) -> str:
    if status.timed_out:
        return "timed out"
    if status.signal is not None:
        return f"signal {status.signal}"
    return f"exit {status.code}"
