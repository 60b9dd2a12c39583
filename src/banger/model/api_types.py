"""The API's requests and replies as plain records: the client's side of the contract.

Owns: one stdlib record (``banger.model.record``: a dataclass to type checkers) per JSON
shape the CLI (and later the SDK and MCP server) sends or reads, and ``from_json``,
which turns a decoded reply into them, refusing a missing field or a wrong type as
``BadResponse``. Field names, order, types and
defaults mirror the pydantic models of ``banger.api.models`` exactly;
tests/unit/test_api_types.py fails when either side drifts.
Must not: import pydantic or anything slow (the CLI imports this on every call); hold
behaviour beyond conversion.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, TypeVar, Union

from banger.errors import BadResponse
from banger.model import limits
from banger.model.record import Record, as_dict, defaults, fields

VmStateName = Literal["creating", "starting", "running", "stopping", "stopped", "error"]
StageStateName = Literal["running", "ok", "warn", "fail", "skip"]
#: The closed choices of ``banger.model.limits`` as types (a test checks they agree).
VmmName = Literal["firecracker", "qemu"]
SignalName = Literal["KILL", "TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT"]
LogSource = Literal["console", "vmm"]

# -- replies ------------------------------------------------------------------------------


class ErrorDetail(Record):
    code: str
    message: str
    details: str | None = None
    hint: str | None = None


class Build(Record):
    version: str
    commit: str
    build_time: str


class Ping(Record):
    build: Build
    pid: int
    started_at: float
    api_version: Literal[1] = 1


class ResolvedInt(Record):
    value: int
    source: Literal["config", "auto", "builtin"]


class VmDefaults(Record):
    vcpu: ResolvedInt
    memory_mib: ResolvedInt
    disk_size_bytes: ResolvedInt
    spec_line: str


class DbInfo(Record):
    path: str
    schema_version: int
    counts: dict[str, int]


class PoolImageStatus(Record):
    """One pooled image: how many ready VMs are wanted, ready and booting, and why not."""

    image: str
    wanted: int
    ready: int
    booting: int
    vcpu: int
    memory_mib: int
    disk_size_bytes: int
    why: str
    vms: list[str]
    waiting: str | None = None
    last_error: str | None = None


class PoolStatus(Record):
    images: list[PoolImageStatus]
    paused: bool
    summary: str


class PoolDrained(Record):
    removed: list[str]


class DaemonStatus(Record):
    build: Build
    pid: int
    started_at: float
    uptime_s: float
    socket: str
    state_dir: str
    config_file: str
    log_file: str
    db: DbInfo
    vm_defaults: VmDefaults
    dns: str | None = None


class ShutdownReply(Record):
    stopping: bool


class ConfigReply(Record):
    path: str
    values: dict[str, object]
    sources: dict[str, str]


class StageEvent(Record):
    """One line of an NDJSON progress stream (banger.model.wire)."""

    type: Literal["stage", "result", "error", "heartbeat"]
    stage: str | None = None
    state: StageStateName | None = None
    detail: str | None = None
    hint: str | None = None
    elapsed_ms: int | None = None
    data: object | None = None
    error: ErrorDetail | None = None

    def to_wire(self) -> dict[str, Any]:
        """The event as the daemon sent it: fields it left out stay out."""
        out: dict[str, Any] = {}
        for name in fields(self):
            value = getattr(self, name)
            if value is not None or (name == "data" and self.type == "result"):
                out[name] = as_dict(value)
        return out


class KernelInfo(Record):
    name: str
    arch: str
    source: str
    dir_path: str
    imported_at: str
    distro: str | None = None
    version: str | None = None
    sha256: str | None = None
    has_initrd: bool = False
    has_modules: bool = False


class KernelDetail(KernelInfo):
    manifest: dict[str, Any] | None = None


class CatalogImageInfo(Record):
    name: str
    distro: str
    arch: str
    description: str
    size_bytes: int
    packages: list[str]
    sources: list[str]
    local: bool


class CatalogKernelInfo(Record):
    name: str
    distro: str
    arch: str
    version: str | None
    format: str
    description: str
    url: str | None
    sha256: str | None
    size_bytes: int | None
    verified: bool
    package: str | None
    suite: str | None
    local: bool


class KernelRemoved(Record):
    name: str
    removed: bool
    files_removed: bool


class ImageInfo(Record):
    id: int | None = None
    name: str
    managed: bool
    rootfs_path: str
    source: str
    created_at: str
    work_seed_path: str | None = None
    kernel_name: str | None = None
    kernel_path: str | None = None
    initrd_path: str | None = None
    modules_path: str | None = None
    source_digest: str | None = None
    size_bytes: int | None = None
    init_path: str | None = None


class ImageDeleted(Record):
    name: str
    deleted: bool
    files_removed: bool


class VmInfo(Record):
    id: int | None = None
    name: str
    image_id: int | None
    state: VmStateName
    vcpu: int
    memory_mib: int
    disk_size_bytes: int
    created_at: str
    updated_at: str
    vmm: str | None = None
    nat: bool = False
    ip: str | None = None
    mac: str | None = None
    tap: str | None = None
    vm_dir: str | None = None
    pid: int | None = None
    pid_start_ticks: int | None = None
    boot_id: str | None = None
    last_error: str | None = None
    stopped_at: str | None = None
    ssh_port: int | None = None


class VmDeleted(Record):
    deleted: str


class LogChunk(Record):
    source: LogSource
    path: str
    offset: int
    size: int
    data: str


class VmStats(Record):
    name: str
    state: str
    pid: int | None
    cpu_seconds: float | None
    rss_bytes: int | None
    uptime_s: float | None


class AgentHealth(Record):
    ok: bool
    uptime_s: float
    hostname: str
    agent_version: str


class HealthReply(Record):
    vm: str
    health: AgentHealth


class PortsReply(Record):
    vm: str
    truncated: bool
    ports: list[dict[str, Any]]


GuestFileKind = Literal["file", "dir", "symlink", "other"]


class GuestFile(Record):
    """One entry of a guest directory, or a guest path's ``stat`` (links not followed)."""

    name: str
    path: str
    kind: GuestFileKind
    size: int
    mode: int
    mtime: float


class GuestFileList(Record):
    vm: str
    path: str
    files: list[GuestFile]
    truncated: bool


class GuestFileWritten(Record):
    vm: str
    path: str
    size: int


class GuestFileRemoved(Record):
    vm: str
    path: str


class SshInfo(Record):
    name: str
    state: str
    ip: str | None
    user: str
    key: str
    known_hosts: str
    #: Where ssh connects (the VM's address, or 127.0.0.1 for a rootless VM) and on which
    #: port; ``host_key_alias`` is the name its known_hosts files the key under, if not host.
    host: str | None = None
    port: int = 22
    host_key_alias: str | None = None


class DoctorResult(Record):
    """The result of the ``GET /doctor`` stream (not a pydantic model: streamed data)."""

    ok: bool
    failed: list[str]
    checks: list[dict[str, Any]]


# -- requests -----------------------------------------------------------------------------


class CreateVmRequest(Record):
    name: str | None = None
    image: str | None = None
    vcpu: int | None = None
    memory_mib: int | None = None
    disk_size_bytes: int | None = None
    nat: bool = False
    vmm: VmmName | None = None
    boot_timeout_s: int = limits.BOOT_TIMEOUT_S_DEFAULT
    #: True: no VM is kept if the client goes away before the result (`vm run --rm`).
    delete_on_disconnect: bool | None = None


class SetVmRequest(Record):
    vcpu: int | None = None
    memory_mib: int | None = None
    disk_size_bytes: int | None = None


class KillRequest(Record):
    signal: SignalName = "KILL"


class ExecRequest(Record):
    """``POST /vms/{name}/exec``: a command to run through the guest agent."""

    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] | None = None
    timeout_s: float | None = None


#: The exit status of a command the guest killed at its time limit (as timeout(1)).
EXIT_TIMED_OUT = 124


class ExecResult(Record):
    """How a command run with ``vms.exec`` ended: its exit code, or the signal that
    ended it; ``timed_out`` when the guest killed it at ``timeout_s``."""

    exit_code: int | None
    signal: int | None
    timed_out: bool = False


def exit_status(result: ExecResult, *, unknown: int) -> int:
    """The one number a caller checks: the exit code, 128+N for signal N, 124 when it
    timed out; ``unknown`` when the reply names neither code nor signal."""
    if result.timed_out:
        return EXIT_TIMED_OUT
    if result.signal is not None:
        return 128 + result.signal
    return result.exit_code if result.exit_code is not None else unknown


class ImageRegisterRequest(Record):
    name: str
    rootfs: str
    kernel: str | None = None
    kernel_ref: str | None = None
    initrd: str | None = None
    modules: str | None = None
    work_seed: str | None = None


class ImagePullRequest(Record):
    ref: str
    name: str | None = None
    kernel_ref: str | None = None
    size_bytes: int | None = None


class KernelImportRequest(Record):
    name: str
    source_dir: str
    force: bool = False


class KernelPullRequest(Record):
    name: str
    force: bool = False


def to_body(request: Record) -> dict[str, Any]:
    """A request as its JSON body; unset optional fields are left out."""
    values = as_dict(request)
    return {name: value for name, value in values.items() if value is not None}


def to_json(reply: object) -> Any:
    """A reply (or a list of them) as the plain JSON the daemon sent."""
    return as_dict(reply)


# -- conversion ---------------------------------------------------------------------------

T = TypeVar("T")
_HINTS: dict[type, dict[str, Any]] = {}


def from_json(cls: type[T], data: object) -> T:
    """``data`` (decoded JSON) as a ``cls``; a missing field or wrong type is BadResponse.

    Keys the record does not know are ignored, so a reply may grow.
    """
    return typing.cast(T, _convert(cls, data, cls.__name__))


def list_from_json(cls: type[T], data: object) -> list[T]:
    return typing.cast("list[T]", _convert(list[cls], data, f"list of {cls.__name__}"))  # type: ignore[valid-type]


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _convert(tp: Any, value: object, where: str) -> object:
    if tp is Any or tp is object:
        return value
    if isinstance(tp, type) and issubclass(tp, Record):
        return _convert_record(tp, value, where)
    if typing.get_origin(tp) is not None:
        return _convert_generic(tp, value, where)
    return _convert_scalar(tp, value, where)


def _convert_record(tp: type[Record], value: object, where: str) -> object:
    if not isinstance(value, dict):
        raise _bad(where, "an object", value)
    hints = _hints(tp)
    optional = defaults(tp)
    kwargs: dict[str, object] = {}
    for name in fields(tp):
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], f"{where}.{name}")
        elif name not in optional:
            raise BadResponse(f"the daemon's reply has no {where}.{name}")
    return tp(**kwargs)


def _convert_generic(tp: Any, value: object, where: str) -> object:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, where)
        raise TypeError(f"unsupported union {tp!r} in {where}")
    if origin is Literal:
        if value not in args:
            raise _bad(where, f"one of {args}", value)
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        return [_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported type {tp!r} in {where}")


def _convert_scalar(tp: Any, value: object, where: str) -> object:
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(where, "a number", value)
        return value  # an int stays one, so the JSON printed back is the daemon's
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, "an integer", value)
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise _bad(where, tp.__name__, value)
        return value
    raise TypeError(f"unsupported type {tp!r} in {where}")


def _bad(where: str, wanted: str, value: object) -> BadResponse:
    return BadResponse(
        f"the daemon's reply has a bad {where}: want {wanted}", details=repr(value)[:200]
    )
