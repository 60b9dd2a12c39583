"""The host side of file operations in a guest, over the exec channel.

Each operation runs the agent as a short-lived command, ``python3 -I -S <agent> --file OP
ARG…`` (docs/explanation/guest-files.md): the data travels as its stdout (read, list,
pack) or stdin (write, unpack) under the exec channel's credits, so neither side holds
more than a window per transfer whatever the file's size; the exit code says how it went
and stderr, one line, why.

Owns: the argv of each operation, parsing and bounding what the guest answers (stat
records, listings, sizes) and turning exit codes into typed errors.
Must not: trust the guest — a record is parsed strictly (kind, size, mode, mtime, name
bounded and checked) and a read never yields more than the caller's ``max_bytes`` — or
use anything the guest says as a host path.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence

from banger.errors import (
    AgentUnavailable,
    BadResponse,
    BangerError,
    CommandFailed,
    GuestPathNotFound,
    GuestPathRefused,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    PayloadTooLarge,
    PermissionDenied,
    Timeout,
)
from banger.guest.exec_client import ExecConnection, ExecProcess
from banger.guest.exec_frames import Kind
from banger.model.api_types import GuestFile, GuestFileKind
from banger.model.guest_paths import LIST_MAX_ENTRIES, MAX_NAME_BYTES, check_guest_path

AGENT_PATH = "/usr/local/lib/banger/banger-agent"
#: -S: no site module, the agent needs only the stdlib (and start-up under TCG counts).
DEFAULT_AGENT_ARGV: tuple[str, ...] = ("python3", "-I", "-S", AGENT_PATH)
#: A stat, list or remove must be done within this; a transfer must make progress
#: (a chunk either way) at least this often.
OP_TIMEOUT_S = 60.0
IDLE_TIMEOUT_S = 60.0
#: The guest kills a transfer's process after this whatever the host does.
GUEST_TRANSFER_TIMEOUT_S = 6 * 3600.0
MAX_STDERR = 1024
MAX_RECORD_BYTES = 512 + MAX_NAME_BYTES
MAX_LISTING_BYTES = (LIST_MAX_ENTRIES + 1) * MAX_RECORD_BYTES

_KINDS: dict[bytes, GuestFileKind] = {b"f": "file", b"d": "dir", b"l": "symlink", b"o": "other"}
_RECORD = re.compile(rb"([fdlo]) ([0-9]{1,19}) ([0-7]{1,6}) (-?[0-9]{1,12})\.([0-9]{9}) (.*)", re.S)


def parse_record(record: bytes, parent: str, *, named: bool = True) -> GuestFile:
    """One ``kind size mode mtime name`` record (without its NUL); BadResponse if malformed.
    ``named=False`` (a stat): the name is the caller's, the guest's is not checked."""
    match = _RECORD.fullmatch(record)
    if match is None:
        raise BadResponse("the guest sent a malformed file record", details=repr(record[:80]))
    kind, size, mode, secs, nanos, raw_name = match.groups()
    if not named:
        raw_name = b"_"
    if not raw_name or b"/" in raw_name or raw_name in (b".", b"..") or len(raw_name) > 255:
        raise BadResponse("the guest sent a bad file name", details=repr(raw_name[:80]))
    if int(mode, 8) > 0o7777:
        raise BadResponse("the guest sent a bad file mode", details=mode.decode())
    name = raw_name.decode("utf-8", "replace")
    return GuestFile(
        name=name,
        path=parent.rstrip("/") + "/" + name,
        kind=_KINDS[kind],
        size=int(size),
        mode=int(mode, 8),
        mtime=int(secs) + int(nanos) / 1e9,
    )


_ERRORS: dict[int, Callable[[str, str], BangerError]] = {
    2: lambda text, _: InvalidArgument(text),
    3: lambda _, path: GuestPathNotFound(f"{path}: no such file or directory in the guest"),
    4: lambda _, path: IsADirectory(f"{path} is a directory in the guest"),
    5: lambda _, path: NotADirectory(f"{path}: a component is not a directory in the guest"),
    6: lambda text, _: GuestPathRefused(
        text, hint="banger never writes through or removes past a symlink in a guest"
    ),
    7: lambda text, _: PermissionDenied(text),
    8: lambda text, _: GuestPathRefused(text, hint="remove it recursively"),
    9: lambda text, _: InvalidArgument(text, hint="the data did not match its announced size"),
    10: lambda text, _: GuestPathRefused(text, hint="only regular files can be read"),
    11: lambda text, _: GuestPathRefused(text),
}


def error_for(code: int, message: str, path: str) -> BangerError:
    """The typed error of a file operation's exit code (the agent's ``FILE_EXIT``)."""
    if code == 2 and message.startswith("usage:"):  # an agent without ``--file``
        return AgentUnavailable("the guest's agent is too old for file operations")
    text = message or f"file operation on {path} failed"
    make = _ERRORS.get(code)
    if make is None:
        return CommandFailed(f"file operation on {path} failed in the guest", details=text)
    return make(text, path)


class GuestStream:
    """A started read (or archive): the file's ``stat`` (reads only), then its bytes."""

    def __init__(self, files: GuestFiles, proc: ExecProcess, path: str, max_bytes: int) -> None:
        self._files = files
        self._proc = proc
        self._path = path
        self._max = max_bytes
        self._pending = bytearray()
        self._stderr = bytearray()
        self.info: GuestFile | None = None
        self.sent = 0
        # One generator for the whole stream: it grants credit back as data is taken.
        self._events = proc.output()

    async def _next_stdout(self) -> bytes:
        """The next stdout bytes; b"" once the command exited."""
        while True:
            async with _idle(f"reading {self._path} from the guest"):
                item = await anext(self._events, None)
            if item is None:
                return b""
            kind, data = item
            if kind is Kind.STDERR:
                self._stderr += data[: MAX_STDERR - len(self._stderr)]
                continue
            return data

    async def start(self, *, header: bool) -> GuestStream:
        """Wait for the ``stat`` record (or the failure that comes instead)."""
        if not header:
            return self
        while (end := self._pending.find(b"\0")) < 0:
            if len(self._pending) > MAX_RECORD_BYTES:
                raise BadResponse("the guest's file record is too long")
            data = await self._next_stdout()
            if not data:
                await self._finish()
                raise BadResponse(f"the guest ended reading {self._path} without a record")
            self._pending += data
        parent = self._path.rsplit("/", 1)[0] or "/"
        self.info = parse_record(bytes(self._pending[:end]), parent)
        del self._pending[: end + 1]
        if self.info.size > self._max:
            self.close()
            raise _too_large(self._path, self._max)
        return self

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes, at most ``max_bytes``; the operation's failure raised at the end."""
        try:
            data = bytes(self._pending)
            self._pending.clear()
            while True:
                if data:
                    self.sent += len(data)
                    if self.sent > self._max:
                        raise _too_large(self._path, self._max)
                    yield data
                data = await self._next_stdout()
                if not data:
                    break
            await self._finish()
        finally:
            self.close()

    async def _finish(self) -> None:
        status = await self._proc.wait()
        self._files.check_exit(status.code, status.signal, bytes(self._stderr), self._path)

    def close(self) -> None:
        if self._proc.exit is None:
            with contextlib.suppress(BangerError):
                self._proc.kill()


class GuestFiles:
    """File operations in one guest, over its (shared) exec connection."""

    def __init__(
        self, conn: ExecConnection, *, agent_argv: Sequence[str] = DEFAULT_AGENT_ARGV
    ) -> None:
        self._conn = conn
        self._agent = list(agent_argv)

    async def _start(self, op: str, *args: str, timeout_s: float) -> ExecProcess:
        try:
            return await self._conn.start([*self._agent, "--file", op, *args], timeout_s=timeout_s)
        except CommandFailed as exc:
            if exc.details in ("not_found", "permission"):
                raise AgentUnavailable(
                    "the guest cannot run banger's agent for file operations",
                    details=exc.brief,
                ) from exc
            raise

    def check_exit(self, code: int | None, signal: int | None, stderr: bytes, path: str) -> None:
        if code == 0:
            return
        message = stderr.decode("utf-8", "replace").strip().splitlines()
        text = "".join(ch if ch.isprintable() else "?" for ch in (message[0] if message else ""))
        if code is None:
            raise CommandFailed(f"the file operation on {path} was killed (signal {signal})")
        raise error_for(code, text[:MAX_STDERR], path)

    async def _collect(self, op: str, *args: str, path: str, limit: int) -> bytes:
        """Run a small operation to its end; its stdout (at most ``limit`` bytes)."""
        async with _deadline(OP_TIMEOUT_S, f"{op} {path} in the guest"):
            proc = await self._start(op, *args, timeout_s=OP_TIMEOUT_S)
            out, err = bytearray(), bytearray()
            try:
                async for kind, data in proc.output():
                    if kind is Kind.STDERR:
                        err += data[: MAX_STDERR - len(err)]
                        continue
                    out += data
                    if len(out) > limit:
                        raise BadResponse(f"the guest's answer to {op} {path} is too long")
            finally:
                if proc.exit is None:
                    proc.kill()
            assert proc.exit is not None
            self.check_exit(proc.exit.code, proc.exit.signal, bytes(err), path)
            return bytes(out)

    async def stat(self, path: str) -> GuestFile:
        """``path`` itself (a symlink is reported as one, not followed)."""
        check_guest_path(path)
        out = await self._collect("stat", path, path=path, limit=MAX_RECORD_BYTES)
        if not out.endswith(b"\0") or out.count(b"\0") != 1:
            raise BadResponse(f"the guest's stat of {path} is malformed")
        info = parse_record(out[:-1], "/", named=False)
        name = path.rsplit("/", 1)[1] or "/"
        return GuestFile(
            name=name, path=path, kind=info.kind, size=info.size, mode=info.mode, mtime=info.mtime
        )

    async def list(
        self, path: str, *, limit: int = LIST_MAX_ENTRIES
    ) -> tuple[list[GuestFile], bool]:
        """The entries of the directory ``path``, sorted by name; whether it was cut."""
        check_guest_path(path)
        limit = max(1, min(limit, LIST_MAX_ENTRIES))
        out = await self._collect("list", path, str(limit + 1), path=path, limit=MAX_LISTING_BYTES)
        if out and not out.endswith(b"\0"):
            raise BadResponse(f"the guest's listing of {path} is cut short")
        records = out[:-1].split(b"\0") if out else []
        files = [parse_record(record, path) for record in records]
        if len({f.name for f in files}) != len(files):
            raise BadResponse(f"the guest's listing of {path} repeats a name")
        files.sort(key=lambda f: f.name)
        return files[:limit], len(files) > limit

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        check_guest_path(path)
        if path == "/":
            raise InvalidArgument("refusing to remove / in the guest")
        await self._collect("remove", path, "1" if recursive else "0", path=path, limit=0)

    async def open_read(self, path: str, *, max_bytes: int, offset: int = 0) -> GuestStream:
        """Start reading a regular file: ``info`` is its stat, ``chunks()`` its bytes.
        A file larger than ``max_bytes`` is refused (PayloadTooLarge) before any data."""
        check_guest_path(path)
        proc = await self._start(
            "read", path, str(offset), str(max_bytes + 1), timeout_s=GUEST_TRANSFER_TIMEOUT_S
        )
        stream = GuestStream(self, proc, path, max_bytes)
        try:
            return await stream.start(header=True)
        except BaseException:
            stream.close()
            raise

    async def open_pack(self, path: str, *, max_bytes: int) -> GuestStream:
        """Start archiving the directory ``path`` (guest-files.md's format) at most
        ``max_bytes`` long; the archive is parsed by whoever writes it out."""
        check_guest_path(path)
        proc = await self._start("pack", path, timeout_s=GUEST_TRANSFER_TIMEOUT_S)
        return GuestStream(self, proc, path, max_bytes)

    async def write(
        self,
        path: str,
        data: bytes | AsyncIterable[bytes],
        *,
        size: int,
        mode: int = 0o644,
        parents: bool = True,
    ) -> None:
        """Replace ``path`` with exactly ``size`` bytes (atomically in the guest)."""
        check_guest_path(path)
        if not 0 <= mode <= 0o7777:
            raise InvalidArgument(f"mode {mode:o} is not a file mode")
        args = (path, f"{mode:o}", "1" if parents else "0", str(size))
        await self._send("write", args, data, path=path)

    async def unpack(
        self, path: str, data: bytes | AsyncIterable[bytes], *, parents: bool = True
    ) -> None:
        """Create the archive ``data`` under the directory ``path`` in the guest."""
        check_guest_path(path)
        await self._send("unpack", (path, "1" if parents else "0"), data, path=path)

    async def _send(
        self, op: str, args: Sequence[str], data: bytes | AsyncIterable[bytes], *, path: str
    ) -> None:
        proc = await self._start(op, *args, timeout_s=GUEST_TRANSFER_TIMEOUT_S)
        err = bytearray()

        async def drain() -> None:
            async for kind, chunk in proc.output():
                if kind is Kind.STDERR:
                    err.extend(chunk[: MAX_STDERR - len(err)])

        reader = asyncio.create_task(drain())
        try:
            chunks = _once(data) if isinstance(data, bytes) else data
            async for chunk in chunks:
                if proc.exit is not None or reader.done():
                    break  # it failed early: the exit code says why
                async with _idle(f"writing {path} to the guest"):
                    await proc.write(chunk)
            proc.close_stdin()
            async with _idle(f"writing {path} to the guest"):
                await reader
        finally:
            if proc.exit is None:
                proc.kill()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, BangerError):
                await reader
        assert proc.exit is not None
        self.check_exit(proc.exit.code, proc.exit.signal, bytes(err), path)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1 << 20):
        yield data[start : start + (1 << 20)]


def _too_large(path: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{path} is larger than {limit} bytes", hint="raise the limit (max_bytes, --max-size)"
    )


@contextlib.asynccontextmanager
async def _deadline(seconds: float, what: str) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise Timeout(f"{what} did not finish within {seconds:g}s") from None


@contextlib.asynccontextmanager
async def _idle(what: str) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(IDLE_TIMEOUT_S):
            yield
    except TimeoutError:
        raise Timeout(f"{what} made no progress for {IDLE_TIMEOUT_S:g}s") from None
