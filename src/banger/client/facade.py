"""The typed facade of the daemon's API: one method per route, plain dataclasses in and out.

Owns: every URL the client sends (names quoted as one path segment), query strings,
request bodies from ``banger.model.api_types``, and turning replies and NDJSON progress
streams into those types. Errors arrive already typed from ``banger.client.http``.
Must not: start the daemon (``banger.client.launcher`` does), print, or import click,
rich or pydantic.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, TypeVar
from urllib.parse import quote, urlencode

from banger.client.http import Client
from banger.errors import BadResponse
from banger.model.api_types import (
    CatalogImageInfo,
    CatalogKernelInfo,
    ConfigReply,
    CreateVmRequest,
    DaemonStatus,
    DoctorResult,
    ExecResult,
    GuestFile,
    GuestFileList,
    GuestFileRemoved,
    HealthReply,
    ImageDeleted,
    ImageInfo,
    ImagePullRequest,
    ImageRegisterRequest,
    KernelDetail,
    KernelImportRequest,
    KernelInfo,
    KernelPullRequest,
    KernelRemoved,
    KillRequest,
    LogChunk,
    Ping,
    PoolDrained,
    PoolStatus,
    PortsReply,
    SetVmRequest,
    ShutdownReply,
    SshInfo,
    StageEvent,
    VmDefaults,
    VmDeleted,
    VmInfo,
    VmStats,
    from_json,
    list_from_json,
    to_body,
)
from banger.model.guest_paths import READ_MAX_BYTES_DEFAULT

if TYPE_CHECKING:
    from banger.client.exec_session import ExecSession, Sink, Stdin

T = TypeVar("T")


def segment(name: str) -> str:
    """``name`` as one URL path segment: '/', '?', '#', '%' and the rest percent-encoded."""
    return quote(name, safe="")


class Progress(Generic[T]):
    """A progress stream: iterate for its events; ``result`` is the typed result after.

    An error event is raised as its typed error while iterating (``banger.client.http``).
    """

    def __init__(self, events: Iterator[dict[str, Any]], result_type: type[T]) -> None:
        self._events = events
        self._type = result_type
        self._result: T | None = None
        self._done = False

    def __iter__(self) -> Iterator[StageEvent]:
        for raw in self._events:
            event = from_json(StageEvent, raw)
            if event.type == "result":
                self._result = from_json(self._type, event.data)
                self._done = True
            yield event

    @property
    def result(self) -> T:
        if not self._done or self._result is None:
            raise BadResponse("the progress stream ended without a result")
        return self._result

    def close(self) -> None:
        """Stop following: the connection closes, and the daemon sees the client go."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    def wait(self) -> T:
        """Follow the stream silently to its end; its result."""
        for _ in self:
            pass
        return self.result


class _Section:
    def __init__(self, http: Client) -> None:
        self._http = http


class Vms(_Section):
    def list(self) -> builtins.list[VmInfo]:
        return list_from_json(VmInfo, self._http.get("/vms"))

    def get(self, name: str) -> VmInfo:
        return from_json(VmInfo, self._http.get(_vm(name)))

    def defaults(self) -> VmDefaults:
        return from_json(VmDefaults, self._http.get("/vm-defaults"))

    def create(self, request: CreateVmRequest) -> Progress[VmInfo]:
        return Progress(self._http.stream("POST", "/vms", to_body(request)), VmInfo)

    def start(self, name: str) -> Progress[VmInfo]:
        return Progress(self._http.stream("POST", _vm(name, "/start")), VmInfo)

    def restart(self, name: str) -> Progress[VmInfo]:
        return Progress(self._http.stream("POST", _vm(name, "/restart")), VmInfo)

    def stop(self, name: str) -> VmInfo:
        return from_json(VmInfo, self._http.post(_vm(name, "/stop")))

    def kill(self, name: str, request: KillRequest | None = None) -> VmInfo:
        body = to_body(request or KillRequest())
        return from_json(VmInfo, self._http.post(_vm(name, "/kill"), body))

    def delete(self, name: str, *, force: bool = False) -> VmDeleted:
        query = "?force=true" if force else ""
        return from_json(VmDeleted, self._http.request("DELETE", _vm(name) + query))

    def set(self, name: str, request: SetVmRequest) -> VmInfo:
        return from_json(VmInfo, self._http.request("PATCH", _vm(name), to_body(request)))

    def logs(self, name: str, *, source: str = "console", offset: int | None = None) -> LogChunk:
        query: dict[str, str | int] = {"source": source}
        if offset is not None:
            query["offset"] = offset
        return from_json(LogChunk, self._http.get(_vm(name, "/logs?" + urlencode(query))))

    def stats(self, name: str) -> VmStats:
        return from_json(VmStats, self._http.get(_vm(name, "/stats")))

    def ssh_info(self, name: str) -> SshInfo:
        return from_json(SshInfo, self._http.get(_vm(name, "/ssh")))

    def health(self, name: str) -> HealthReply:
        return from_json(HealthReply, self._http.get(_vm(name, "/health")))

    def ports(self, name: str) -> PortsReply:
        return from_json(PortsReply, self._http.get(_vm(name, "/ports")))

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        stdin: Stdin = None,
        on_stdout: Sink | None = None,
        on_stderr: Sink | None = None,
    ) -> ExecResult:
        """Run ``argv`` (exact words, no shell) in VM ``name`` through its guest agent:
        ``stdin`` fed then closed, output to the callbacks as it comes."""
        from banger.client.exec_session import run_exec

        session = self.exec_start(name, argv, cwd=cwd, env=env, timeout_s=timeout_s)
        return run_exec(session, stdin=stdin, on_stdout=on_stdout, on_stderr=on_stderr)

    def exec_start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> ExecSession:
        """Start ``argv`` in VM ``name``; the session streams stdin, signals and output."""
        from banger.client.exec_session import start_session

        return start_session(
            self._http.upgrade, _vm(name, "/exec"), argv, cwd=cwd, env=env, timeout_s=timeout_s
        )

    # -- files in the guest (docs/explanation/guest-files.md) ---------------------------

    def read_file(self, name: str, path: str, *, max_bytes: int | None = None) -> bytes:
        """A regular guest file, whole; larger than ``max_bytes`` (default 1 GiB): 413."""
        buffer = io.BytesIO()
        self.read_file_to(name, path, buffer, max_bytes=max_bytes)
        return buffer.getvalue()

    def read_file_to(
        self, name: str, path: str, dest: BinaryIO, *, max_bytes: int | None = None
    ) -> int:
        """Stream a regular guest file into ``dest``; the number of bytes written."""
        query = _files_query(path, max_bytes=_max_bytes(max_bytes))
        return self._download(_vm(name, "/files?" + query), dest)

    def write_file(
        self,
        name: str,
        path: str,
        data: bytes | BinaryIO,
        *,
        mode: int = 0o644,
        parents: bool = True,
    ) -> None:
        """Replace a guest file atomically with ``data`` (bytes, or a file object read
        from its position to its end)."""
        if not 0 <= mode <= 0o7777:
            raise ValueError(f"mode {mode:o} is not a file mode")
        query = _files_query(path, mode=f"{mode:o}", parents=_flag(parents))
        self._http.upload("PUT", _vm(name, "/files?" + query), data, _size_of(data))

    def list_files(self, name: str, path: str) -> builtins.list[GuestFile]:
        """A guest directory's entries, sorted by name (at most 10,000: ``list_dir``
        says whether it was cut)."""
        return self.list_dir(name, path).files

    def list_dir(self, name: str, path: str, *, limit: int | None = None) -> GuestFileList:
        query = _files_query(path, limit=limit)
        return from_json(GuestFileList, self._http.get(_vm(name, "/files/list?" + query)))

    def stat_file(self, name: str, path: str) -> GuestFile:
        """One guest path, not following a symlink; GuestPathNotFound when absent."""
        return from_json(GuestFile, self._http.get(_vm(name, "/files/stat?" + _files_query(path))))

    def remove_file(self, name: str, path: str, *, recursive: bool = False) -> None:
        query = _files_query(path, recursive=_flag(recursive))
        from_json(GuestFileRemoved, self._http.request("DELETE", _vm(name, "/files?" + query)))

    def read_archive_to(
        self, name: str, path: str, dest: BinaryIO, *, max_bytes: int | None = None
    ) -> int:
        """The tree under a guest directory, in the agent's archive format, into ``dest``
        (``banger.guest.file_archive`` reads it)."""
        query = _files_query(path, max_bytes=_max_bytes(max_bytes))
        return self._download(_vm(name, "/files/archive?" + query), dest)

    @contextlib.contextmanager
    def read_archive(
        self, name: str, path: str, *, max_bytes: int | None = None
    ) -> Iterator[BinaryIO]:
        """The archive as a file object to read (``banger.guest.file_archive.extract_archive``
        reads it as it arrives)."""
        query = _files_query(path, max_bytes=_max_bytes(max_bytes))
        with self._http.download(_vm(name, "/files/archive?" + query)) as (_, pieces):
            yield typing.cast(BinaryIO, io.BufferedReader(_PieceReader(pieces), 1 << 20))

    def write_archive(
        self, name: str, path: str, data: bytes | BinaryIO, *, parents: bool = True
    ) -> None:
        """Create an archive (``banger.guest.file_archive`` writes one) under a guest dir."""
        query = _files_query(path, parents=_flag(parents))
        self._http.upload("PUT", _vm(name, "/files/archive?" + query), data, _size_of(data))

    def _download(self, target: str, dest: BinaryIO) -> int:
        written = 0
        with self._http.download(target) as (_, pieces):
            for piece in pieces:
                dest.write(piece)
                written += len(piece)
        return written


class Images(_Section):
    def list(self) -> builtins.list[ImageInfo]:
        return list_from_json(ImageInfo, self._http.get("/images"))

    def get(self, name: str) -> ImageInfo:
        return from_json(ImageInfo, self._http.get(_image(name)))

    def register(self, request: ImageRegisterRequest) -> ImageInfo:
        return from_json(ImageInfo, self._http.post("/images/register", to_body(request)))

    def pull(self, request: ImagePullRequest) -> Progress[ImageInfo]:
        return Progress(self._http.stream("POST", "/images/pull", to_body(request)), ImageInfo)

    def promote(self, name: str) -> Progress[ImageInfo]:
        return Progress(self._http.stream("POST", _image(name, "/promote")), ImageInfo)

    def catalog(self) -> builtins.list[CatalogImageInfo]:
        return list_from_json(CatalogImageInfo, self._http.get("/catalog/images"))

    def delete(self, name: str) -> ImageDeleted:
        return from_json(ImageDeleted, self._http.request("DELETE", _image(name)))


class Kernels(_Section):
    def list(self) -> builtins.list[KernelInfo]:
        return list_from_json(KernelInfo, self._http.get("/kernels"))

    def get(self, name: str) -> KernelDetail:
        return from_json(KernelDetail, self._http.get(_kernel(name)))

    def catalog(self) -> builtins.list[CatalogKernelInfo]:
        return list_from_json(CatalogKernelInfo, self._http.get("/catalog/kernels"))

    def import_(self, request: KernelImportRequest) -> Progress[KernelInfo]:
        return Progress(self._http.stream("POST", "/kernels/import", to_body(request)), KernelInfo)

    def pull(self, request: KernelPullRequest) -> Progress[KernelInfo]:
        return Progress(self._http.stream("POST", "/kernels/pull", to_body(request)), KernelInfo)

    def delete(self, name: str) -> KernelRemoved:
        return from_json(KernelRemoved, self._http.request("DELETE", _kernel(name)))


class Daemon(_Section):
    def ping(self) -> Ping:
        return from_json(Ping, self._http.get("/ping"))

    def status(self) -> DaemonStatus:
        return from_json(DaemonStatus, self._http.get("/daemon/status"))

    def shutdown(self) -> ShutdownReply:
        return from_json(ShutdownReply, self._http.post("/daemon/shutdown"))

    def config(self) -> ConfigReply:
        return from_json(ConfigReply, self._http.get("/config"))

    def doctor(self) -> Progress[DoctorResult]:
        return Progress(self._http.stream("GET", "/doctor"), DoctorResult)


class Pool(_Section):
    def status(self) -> PoolStatus:
        return from_json(PoolStatus, self._http.get("/pool"))

    def drain(self) -> PoolDrained:
        return from_json(PoolDrained, self._http.post("/pool/drain"))

    def fill(self) -> PoolStatus:
        return from_json(PoolStatus, self._http.post("/pool/fill"))


class BangerClient:
    """The daemon's API by subject: ``vms``, ``images``, ``kernels``, ``pool``, ``daemon``."""

    def __init__(self, http: Client) -> None:
        self.http = http
        self.vms = Vms(http)
        self.images = Images(http)
        self.kernels = Kernels(http)
        self.daemon = Daemon(http)
        self.pool = Pool(http)


class _PieceReader(io.RawIOBase):
    """The pieces of a download as a raw stream."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._rest:
            self._rest = next(self._pieces, b"")
        size = min(len(buffer), len(self._rest))
        buffer[:size] = self._rest[:size]
        self._rest = self._rest[size:]
        return size


def _files_query(path: str, **params: str | int | None) -> str:
    query: dict[str, str | int] = {"path": path}
    query.update({k: v for k, v in params.items() if v is not None})
    return urlencode(query, quote_via=quote)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _max_bytes(value: int | None) -> int:
    return READ_MAX_BYTES_DEFAULT if value is None else value


def _size_of(data: bytes | BinaryIO) -> int:
    """What is left of ``data``: its length, or a seekable file's size past its position."""
    if isinstance(data, bytes):
        return len(data)
    try:
        here = data.tell()
        end = data.seek(0, io.SEEK_END)
        data.seek(here)
    except (OSError, ValueError) as exc:
        raise ValueError("write_file takes bytes or a seekable file object") from exc
    return end - here


def _vm(name: str, suffix: str = "") -> str:
    return f"/vms/{segment(name)}{suffix}"


def _image(name: str, suffix: str = "") -> str:
    return f"/images/{segment(name)}{suffix}"


def _kernel(name: str) -> str:
    return f"/kernels/{segment(name)}"
