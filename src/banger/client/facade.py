"""The typed facade of the daemon's API: one method per route, plain dataclasses in and out.

Owns: every URL the client sends (names quoted as one path segment), query strings,
request bodies from ``banger.model.api_types``, and turning replies and NDJSON progress
streams into those types. Errors arrive already typed from ``banger.client.http``.
Must not: start the daemon (``banger.client.launcher`` does), print, or import click,
rich or pydantic.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import Any, Generic, TypeVar
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


class BangerClient:
    """The daemon's API by subject: ``vms``, ``images``, ``kernels`` and ``daemon``."""

    def __init__(self, http: Client) -> None:
        self.http = http
        self.vms = Vms(http)
        self.images = Images(http)
        self.kernels = Kernels(http)
        self.daemon = Daemon(http)


def _vm(name: str, suffix: str = "") -> str:
    return f"/vms/{segment(name)}{suffix}"


def _image(name: str, suffix: str = "") -> str:
    return f"/images/{segment(name)}{suffix}"


def _kernel(name: str) -> str:
    return f"/kernels/{segment(name)}"
