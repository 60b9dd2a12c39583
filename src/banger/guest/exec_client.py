"""The host side of exec through the guest agent: one multiplexed connection per VM.

``ExecConnection`` holds one connection to a VM's exec channel — QEMU's virtio-serial
chardev socket ``exec.sock`` (one host at a time, so one connection carries every command)
or Firecracker's vsock socket with ``CONNECT 53`` — and runs commands on it concurrently,
one channel each (``start`` → ``ExecProcess``; ``run`` streams to callbacks). Everything is
async and cancel-safe: a cancelled ``run``/``start`` kills the command's process group in
the guest and forgets its channel. Wire format: ``banger.guest.exec_frames``; design:
docs/explanation/guest-exec.md.

Bounds (the guest is untrusted, ADVERSARIAL 64, 100): frames ≤ 64 KiB, read 64 KiB at a
time; output a channel may send is limited by the credit the host granted (``WINDOW``:
what a consumer has not taken yet), more is a protocol violation; at most ``MAX_CHANNELS``
commands per connection; the handshake skips at most ``MAX_SKIPPED`` stale bytes within
its deadline; every ``run`` has a deadline (the guest's timeout plus ``GRACE_S``).

Must not: use anything the guest says as a host path or command, print, or block a thread.
Errors: ``CommandFailed`` (cannot connect; the command did not start: not found, bad
directory…), ``BadResponse`` (the guest broke the protocol or the connection dropped),
``Timeout``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import secrets
import signal as signals
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path

from banger.errors import BadResponse, CommandFailed, Timeout
from banger.guest import exec_frames
from banger.guest.exec_frames import ExitStatus, Failure, Kind

EXEC_VSOCK_PORT = 53
CONNECT_TIMEOUT_S = 5.0
#: How long the guest may take to say a command started (a fork and exec, under TCG).
START_TIMEOUT_S = 10.0
#: Past the guest-side timeout, how long the host waits before it gives up on the guest.
GRACE_S = 5.0
#: Stale bytes (a previous host's output) skipped while waiting for our HELLO_ACK.
MAX_SKIPPED = 8 * 1024 * 1024
READ_CHUNK = 64 * 1024
_OK_LINE = re.compile(rb"OK ([0-9]{1,10})\n")

Output = Callable[[bytes], Awaitable[None] | None]


class ExecProcess:
    """A command running in the guest: its output, its stdin, its signals, its exit."""

    def __init__(self, conn: ExecConnection, channel: int) -> None:
        self._conn = conn
        self.channel = channel
        self.pid: int | None = None
        self._started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._events: collections.deque[tuple[Kind, bytes]] = collections.deque()
        self._changed = asyncio.Event()
        self._buffered = 0
        self._out_allowed = exec_frames.WINDOW  # what the guest may still send
        self._consumed = 0  # taken by the consumer, not yet granted back
        self._stdin_credit = exec_frames.WINDOW
        self._stdin_closed = False
        self.exit: ExitStatus | None = None
        self._error: BaseException | None = None
        self.abandoned = False

    # -- guest frames (called by the connection's reader) ----------------------------------

    def _on_frame(self, kind: int, payload: bytes) -> None:
        if kind == Kind.STARTED:
            if self._started.done():
                raise BadResponse("the guest started a channel twice")
            self._started.set_result(exec_frames.decode_u32(payload))
        elif kind == Kind.FAILED:
            if self._started.done() or not payload:
                raise BadResponse("the guest sent a stray FAILED")
            self._started.set_exception(_not_started(payload))
            self._conn._forget(self)
        elif kind in (Kind.STDOUT, Kind.STDERR):
            self._on_output(Kind(kind), payload)
        elif kind == Kind.STDIN_CREDIT:
            self._stdin_credit += exec_frames.decode_u32(payload)
            if self._stdin_credit > exec_frames.WINDOW:
                raise BadResponse("the guest granted more stdin than the window")
        elif kind == Kind.EXIT:
            if not self._started.done() or self.exit is not None:
                raise BadResponse("the guest sent a stray EXIT")
            self.exit = exec_frames.decode_exit(payload)
            self._conn._forget(self)
        else:
            raise BadResponse(f"the guest sent a frame of kind {kind} on a channel")
        self._changed.set()

    def _on_output(self, kind: Kind, payload: bytes) -> None:
        if len(payload) > self._out_allowed:
            raise BadResponse("the guest sent output beyond the window it was granted")
        self._out_allowed -= len(payload)
        if self.abandoned:
            self._grant(len(payload))
        elif payload:
            self._events.append((kind, payload))
            self._buffered += len(payload)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        if not self._started.done():
            self._started.set_exception(error)
        self._changed.set()

    def _grant(self, size: int) -> None:
        self._consumed += size
        if self._consumed >= exec_frames.WINDOW // 4 or (self._consumed and not self._events):
            self._conn._send(Kind.CREDIT, self.channel, exec_frames.u32(self._consumed))
            self._out_allowed += self._consumed
            self._consumed = 0

    # -- the caller's side -----------------------------------------------------------------

    async def output(self) -> AsyncIterator[tuple[Kind, bytes]]:
        """``(Kind.STDOUT|Kind.STDERR, data)`` as it comes, until the command exited."""
        while True:
            if self._events:
                kind, data = self._events.popleft()
                self._buffered -= len(data)
                yield kind, data
                self._grant(len(data))  # taken: the guest may send that much more
                continue
            if self.exit is not None:
                return
            if self._error is not None:
                raise self._error
            self._changed.clear()
            await self._changed.wait()

    async def write(self, data: bytes) -> None:
        """Send stdin, waiting for the guest's credit (its buffer is bounded too)."""
        view = memoryview(data)
        while view:
            while self._stdin_credit <= 0:
                if self._error is not None:
                    raise self._error
                if self.exit is not None:
                    return  # it ended: nobody reads
                self._changed.clear()
                await self._changed.wait()
            size = min(len(view), self._stdin_credit, exec_frames.MAX_PAYLOAD)
            self._stdin_credit -= size
            self._conn._send(Kind.STDIN, self.channel, bytes(view[:size]))
            view = view[size:]
            await self._conn._drain()

    def close_stdin(self) -> None:
        if not self._stdin_closed:
            self._stdin_closed = True
            self._conn._send(Kind.STDIN_EOF, self.channel)

    def signal(self, sig: int) -> None:
        """Forward ``sig`` (HUP, INT, QUIT, KILL, TERM) to the command's process group."""
        if sig not in exec_frames.SIGNALS:
            raise ValueError(f"signal {sig} is not forwarded")
        if self.exit is None and self._error is None:
            self._conn._send(Kind.SIGNAL, self.channel, bytes([sig]))

    def kill(self) -> None:
        self.signal(signals.SIGKILL)

    async def wait(self) -> ExitStatus:
        """The exit status (output not taken by ``output()`` is discarded)."""
        async for _ in self.output():
            pass
        assert self.exit is not None
        return self.exit

    def _abandon(self) -> None:
        """The caller went away: kill it, and keep granting credit until its EXIT."""
        if self.exit is not None or self._error is not None:
            return
        self.abandoned = True
        self.kill()
        while self._events:
            self._grant(len(self._events.popleft()[1]))


def _not_started(payload: bytes) -> CommandFailed:
    message = payload[1 : 1 + exec_frames.MAX_MESSAGE].decode("utf-8", "replace")
    message = "".join(ch if ch.isprintable() else "?" for ch in message)
    try:
        reason = Failure(payload[0]).name.lower()
    except ValueError:
        reason = "other"
    return CommandFailed(f"the guest did not start the command: {message}", details=reason)


class ExecConnection:
    """One VM's exec channel; commands run on it concurrently. ``async with`` closes it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, describe: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.describe = describe
        self._processes: dict[int, ExecProcess] = {}
        self._next = 1
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def over_unix(cls, path: Path, *, timeout_s: float = CONNECT_TIMEOUT_S) -> ExecConnection:
        """QEMU's virtio-serial chardev socket (``<run_dir>/exec.sock``)."""
        describe = "the guest agent's exec channel (virtio-serial)"
        async with _deadline(timeout_s, describe):
            reader, writer = await _open_unix(path, describe)
            return await cls._handshake(reader, writer, describe)

    @classmethod
    async def over_socket(
        cls, sock: socket.socket, describe: str, *, timeout_s: float = CONNECT_TIMEOUT_S
    ) -> ExecConnection:
        """An already connected stream socket (AF_VSOCK, or a test's socketpair)."""
        async with _deadline(timeout_s, describe):
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=READ_CHUNK)
            return await cls._handshake(reader, writer, describe)

    @classmethod
    async def over_firecracker_vsock(
        cls, uds_path: Path, port: int = EXEC_VSOCK_PORT, *, timeout_s: float = CONNECT_TIMEOUT_S
    ) -> ExecConnection:
        """Firecracker's vsock Unix socket, ``CONNECT <port>`` / ``OK <hostport>``."""
        describe = f"the guest agent's exec channel (Firecracker vsock port {port})"
        async with _deadline(timeout_s, describe):
            reader, writer = await _open_unix(uds_path, describe)
            try:
                writer.write(f"CONNECT {port}\n".encode())
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    raise CommandFailed(
                        f"nothing listens on vsock port {port} in the guest (yet)"
                    ) from exc
                except asyncio.LimitOverrunError as exc:
                    raise BadResponse("Firecracker's CONNECT answer is too long") from exc
                if _OK_LINE.fullmatch(line) is None:
                    raise BadResponse(f"Firecracker answered CONNECT {port} with {line[:40]!r}")
                return await cls._handshake(reader, writer, describe)
            except BaseException:
                writer.close()
                raise

    @classmethod
    async def _handshake(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, describe: str
    ) -> ExecConnection:
        """Padding and HELLO out; skip stale bytes until the guest's HELLO_ACK echoes us."""
        try:
            nonce = secrets.token_bytes(exec_frames.NONCE_BYTES)
            writer.write(
                bytes(exec_frames.SYNC_PADDING)
                + exec_frames.encode(Kind.HELLO, 0, exec_frames.MAGIC + nonce)
            )
            await writer.drain()
            marker = exec_frames.ack_prefix(nonce)
            need = len(marker) + 1  # then the agent's version byte
            seen = bytearray()
            skipped = 0
            while (found := seen.find(marker)) < 0 or len(seen) < found + need:
                if found < 0:
                    drop = max(0, len(seen) - len(marker) + 1)
                    skipped += drop
                    del seen[:drop]
                    if skipped > MAX_SKIPPED:
                        raise BadResponse(f"{describe} sent {skipped} bytes but no answer")
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    raise CommandFailed(f"{describe} closed before the guest answered")
                seen += chunk
            rest = bytes(seen[found + need :])
        except BaseException:
            writer.close()
            raise
        conn = cls(reader, writer, describe)
        conn._task = asyncio.create_task(conn._read_loop(rest))
        return conn

    async def __aenter__(self) -> ExecConnection:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._writer.close()
        self._fail_all(CommandFailed(f"{self.describe} was closed"))

    @property
    def alive(self) -> bool:
        return self._error is None and self._task is not None and not self._task.done()

    # -- commands ----------------------------------------------------------------------------

    async def start(
        self,
        argv: list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> ExecProcess:
        """Start ``argv`` in the guest (its own session and process group); the guest must
        say it started (or why not) within ``start_timeout_s``."""
        timeout_ms = 0 if timeout_s is None else max(1, round(timeout_s * 1000))
        payload = exec_frames.encode_open(argv, cwd=cwd or "", env=env, timeout_ms=timeout_ms)
        if self._error is not None:
            raise self._error
        if len(self._processes) >= exec_frames.MAX_CHANNELS:
            raise CommandFailed(f"more than {exec_frames.MAX_CHANNELS} commands at once in one VM")
        while self._next in self._processes:
            self._next = self._next % (2**32 - 1) + 1
        proc = ExecProcess(self, self._next)
        self._next = self._next % (2**32 - 1) + 1
        self._processes[proc.channel] = proc
        try:
            self._send(Kind.OPEN, proc.channel, payload)
            await self._drain()
            async with _deadline(start_timeout_s, f"starting {argv[0]!r} in the guest"):
                proc.pid = await asyncio.shield(proc._started)
        except BaseException:
            proc._abandon()
            raise
        return proc

    async def run(
        self,
        argv: list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float | None = None,
        stdin: bytes | AsyncIterable[bytes] | None = None,
        on_stdout: Output | None = None,
        on_stderr: Output | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> ExitStatus:
        """Run ``argv`` to the end, streaming its output to the callbacks."""
        limit = None if timeout_s is None else timeout_s + GRACE_S
        async with _deadline(limit, f"{argv[0]!r} in the guest"):
            proc = await self.start(
                argv, cwd=cwd, env=env, timeout_s=timeout_s, start_timeout_s=start_timeout_s
            )
            feeder = asyncio.create_task(_feed(proc, stdin))
            try:
                async for kind, data in proc.output():
                    sink = on_stdout if kind is Kind.STDOUT else on_stderr
                    if sink is not None:
                        result = sink(data)
                        if result is not None:
                            await result
                assert proc.exit is not None
                return proc.exit
            finally:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feeder
                proc._abandon()

    # -- the wire ----------------------------------------------------------------------------

    def _send(self, kind: int, channel: int, payload: bytes = b"") -> None:
        if self._error is None:
            self._writer.write(exec_frames.encode(kind, channel, payload))

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except OSError as exc:
            self._fail_all(BadResponse(f"{self.describe} broke: {exc}"))
            raise BadResponse(f"{self.describe} broke: {exc}") from exc

    def _forget(self, proc: ExecProcess) -> None:
        self._processes.pop(proc.channel, None)

    def _fail_all(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        for proc in list(self._processes.values()):
            proc._fail(error)
        self._processes.clear()

    async def _read_loop(self, first: bytes) -> None:
        decoder = exec_frames.FrameDecoder()
        data = first
        try:
            while True:
                for frame in decoder.feed(data):
                    self._dispatch(frame)
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    raise BadResponse(f"{self.describe} closed the connection")
        except exec_frames.ProtocolError as exc:
            self._fail_all(BadResponse(f"{self.describe} broke the protocol: {exc}"))
        except (BadResponse, ValueError) as exc:
            self._fail_all(BadResponse(f"{self.describe}: {exc}"))
        except OSError as exc:
            self._fail_all(BadResponse(f"{self.describe} broke: {exc}"))
        finally:
            self._writer.close()

    def _dispatch(self, frame: exec_frames.Frame) -> None:
        if frame.kind < Kind.HELLO_ACK:
            raise BadResponse(f"the guest sent a host's frame (kind {frame.kind})")
        if frame.kind == Kind.HELLO_ACK:
            return  # a repeated answer to our HELLO: nothing to do
        proc = self._processes.get(frame.channel)
        if proc is not None:
            proc._on_frame(frame.kind, frame.payload)
        # else: a channel that ended or was never ours (an earlier host's): dropped


async def _feed(proc: ExecProcess, stdin: bytes | AsyncIterable[bytes] | None) -> None:
    try:
        if isinstance(stdin, bytes):
            await proc.write(stdin)
        elif stdin is not None:
            async for chunk in stdin:
                await proc.write(chunk)
    finally:
        with contextlib.suppress(BadResponse, CommandFailed):
            proc.close_stdin()


async def _open_unix(
    path: Path, describe: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(str(path), limit=READ_CHUNK)
    except OSError as exc:
        raise CommandFailed(f"cannot reach {describe} at {path}: {exc.strerror or exc}") from exc


@contextlib.asynccontextmanager
async def _deadline(seconds: float | None, what: str) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise Timeout(f"{what} did not finish within {seconds:g}s") from None
