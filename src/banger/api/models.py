"""Pydantic models of the API's requests and replies: the OpenAPI document's schemas.

Owns: the JSON shapes on the wire, as the daemon validates them. Each has a stdlib twin
in ``banger.model.api_types`` (what clients use); tests/unit/test_api_types.py checks
they agree field by field. Bounds come from ``banger.model.limits``.
Must not: hold behaviour.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic_core import PydanticCustomError

from banger.errors import InvalidArgument
from banger.model import limits, units
from banger.model.api_types import (
    GuestFileKind,
    LogSource,
    SignalName,
    StageStateName,
    VmmName,
    VmStateName,
)
from banger.model.artifact_names import NAME_PATTERN
from banger.oci.reference import MAX_REFERENCE_CHARS


def _whole_number(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: A request integer as the OpenAPI document's ``"type": "integer"`` defines it: JSON
#: Schema counts ``450.0`` as an integer, so it is accepted as 450 (issue 14 item 12);
#: ``450.5``, ``"450"`` and ``true`` are still refused.
JsonInt = Annotated[StrictInt, BeforeValidator(_whole_number)]
#: Host paths: absolute (the CLI makes them so). Longer than PATH_MAX is refused by the
#: service with a clear message, so the schema only bounds the body.
HostPath = Annotated[StrictStr, Field(pattern="^/", max_length=limits.HOST_PATH_MAX)]
ArtifactName = Annotated[StrictStr, Field(pattern=NAME_PATTERN)]


def _within(bound: limits.Bound) -> AfterValidator:
    """``bound`` checked with the message in its unit ("must be at least 128 MiB (got
    100)", the CLI's and the SDK's words; issue 14 item 15), pydantic's error type kept."""

    def check(value: int) -> int:
        try:
            return units.check_bound(value, bound)
        except InvalidArgument as err:
            low = value < bound.low
            kind = "greater_than_equal" if low else "less_than_equal"
            ctx = {"ge": bound.low} if low else {"le": bound.high}
            raise PydanticCustomError(kind, err.brief, ctx) from None

    return AfterValidator(check)


def _schema(bound: limits.Bound) -> Any:
    """The same bound in the OpenAPI document (``minimum``/``maximum``)."""
    return Field(json_schema_extra={"minimum": bound.low, "maximum": bound.high})


Vcpu = Annotated[JsonInt, _within(limits.VCPU), _schema(limits.VCPU)]
MemoryMib = Annotated[JsonInt, _within(limits.MEMORY_MIB), _schema(limits.MEMORY_MIB)]
DiskSize = Annotated[JsonInt, _within(limits.DISK_SIZE), _schema(limits.DISK_SIZE)]
ImageSize = Annotated[JsonInt, _within(limits.IMAGE_SIZE), _schema(limits.IMAGE_SIZE)]
BootTimeout = Annotated[JsonInt, _within(limits.BOOT_TIMEOUT_S), _schema(limits.BOOT_TIMEOUT_S)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(Strict):
    code: str
    message: str
    details: str | None = None
    hint: str | None = None


class ErrorReply(Strict):
    error: ErrorDetail


class Build(Strict):
    version: str
    commit: str
    build_time: str


class Ping(Strict):
    build: Build
    pid: int
    started_at: float
    api_version: Literal[1] = 1


class ResolvedInt(Strict):
    value: int
    source: Literal["config", "auto", "builtin"]


class VmDefaultsReply(Strict):
    vcpu: ResolvedInt
    memory_mib: ResolvedInt
    disk_size_bytes: ResolvedInt
    spec_line: str


class DbInfo(Strict):
    path: str
    schema_version: int
    counts: dict[str, int]


class PoolImageStatus(Strict):
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


class PoolStatus(Strict):
    images: list[PoolImageStatus]
    paused: bool
    summary: str


class PoolDrained(Strict):
    removed: list[str]


class DaemonStatus(Strict):
    build: Build
    pid: int
    started_at: float
    uptime_s: float
    socket: str
    state_dir: str
    config_file: str
    log_file: str
    db: DbInfo
    vm_defaults: VmDefaultsReply
    #: Where `<vm>.vm` names are answered (127.0.0.1:42069 unless BANGER_DNS_PORT says).
    dns: str | None = None


class ShutdownReply(Strict):
    stopping: bool


class ConfigReply(Strict):
    path: str
    values: dict[str, object]
    sources: dict[str, str]


class StageEvent(Strict):
    """One line of an NDJSON progress stream (see banger.model.wire)."""

    type: Literal["stage", "result", "error", "heartbeat"]
    stage: str | None = None
    state: StageStateName | None = None
    detail: str | None = None
    hint: str | None = None
    elapsed_ms: int | None = None
    data: object | None = None
    error: ErrorDetail | None = None


class KernelInfo(Strict):
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


class ImageInfo(Strict):
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


class VmInfo(Strict):
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


class KernelDetail(KernelInfo):
    manifest: dict[str, Any] | None = None


class CatalogImageInfo(Strict):
    name: str
    distro: str
    arch: str
    description: str
    #: The ext4 size the image is built with (sparse on disk).
    size_bytes: int
    #: What each source installs (``first_boot_packages`` or ``include``), in order.
    packages: list[str]
    sources: list[str]
    #: Whether an image of this name is already local.
    local: bool


class CatalogKernelInfo(Strict):
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
    #: Whether the store holds this kernel, pulled from this entry.
    local: bool


class KernelRemoved(Strict):
    name: str
    removed: bool
    files_removed: bool


class ImageDeleted(Strict):
    name: str
    deleted: bool
    files_removed: bool


class Deleted(Strict):
    deleted: str


class LogChunk(Strict):
    source: LogSource
    path: str
    offset: int
    size: int
    data: str


class VmStats(Strict):
    name: str
    state: str
    pid: int | None
    cpu_seconds: float | None
    rss_bytes: int | None
    uptime_s: float | None


class AgentHealth(Strict):
    ok: bool
    uptime_s: float
    hostname: str
    agent_version: str


class HealthReply(Strict):
    vm: str
    health: AgentHealth


class PortsReply(Strict):
    vm: str
    truncated: bool
    ports: list[dict[str, Any]]


class GuestFile(Strict):
    name: str
    path: str
    kind: GuestFileKind
    size: int
    mode: int
    mtime: float


class GuestFileList(Strict):
    vm: str
    path: str
    files: list[GuestFile]
    truncated: bool


class GuestFileWritten(Strict):
    vm: str
    path: str
    size: int


class GuestFileRemoved(Strict):
    vm: str
    path: str


class SshInfo(Strict):
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


# -- requests -----------------------------------------------------------------------------


class CreateBody(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=limits.VM_NAME_MAX)
    image: str | None = Field(default=None, min_length=1, max_length=limits.IMAGE_REF_NAME_MAX)
    vcpu: Vcpu | None = None
    memory_mib: MemoryMib | None = None
    disk_size_bytes: DiskSize | None = None
    nat: StrictBool = False
    vmm: VmmName | None = None
    boot_timeout_s: BootTimeout = limits.BOOT_TIMEOUT_S_DEFAULT
    delete_on_disconnect: StrictBool | None = Field(
        default=None,
        description=(
            "Delete the VM if the client disconnects before the result event (`vm run "
            "--rm`). Without it a create whose client went away runs to its end."
        ),
    )


class SetBody(Strict):
    vcpu: Vcpu | None = None
    memory_mib: MemoryMib | None = None
    disk_size_bytes: DiskSize | None = None


class KillBody(Strict):
    signal: SignalName = "KILL"


ExecField = Annotated[StrictStr, Field(max_length=limits.EXEC_FIELD_MAX)]


class ExecBody(Strict):
    """A command for the guest agent: exact argv (no shell), its directory (default the
    guest user's home), extra environment, and a timeout after which the guest kills it."""

    argv: Annotated[list[ExecField], Field(min_length=1, max_length=limits.EXEC_ARGV_MAX)]
    cwd: ExecField | None = None
    env: Annotated[dict[ExecField, ExecField], Field(max_length=limits.EXEC_ENV_MAX)] | None = None
    timeout_s: Annotated[StrictFloat, Field(gt=0, le=limits.EXEC_TIMEOUT_S_MAX)] | None = None


class ImageRegisterBody(Strict):
    name: ArtifactName
    rootfs: HostPath
    kernel: HostPath | None = None
    kernel_ref: ArtifactName | None = None
    initrd: HostPath | None = None
    modules: HostPath | None = None
    work_seed: HostPath | None = None


class ImagePullBody(Strict):
    #: An image reference such as ``debian:bookworm`` or ``ghcr.io/org/app@sha256:…``;
    #: its grammar is checked by the service, which names the rule broken.
    ref: Annotated[StrictStr, Field(min_length=1, max_length=MAX_REFERENCE_CHARS)]
    name: ArtifactName | None = None
    kernel_ref: ArtifactName | None = None
    size_bytes: ImageSize | None = None


class KernelImportBody(Strict):
    name: ArtifactName
    #: An absolute path on the daemon's host (the CLI makes relative paths absolute).
    source_dir: HostPath
    force: StrictBool = False


class KernelPullBody(Strict):
    name: ArtifactName
    #: Download again and replace the stored kernel (an unverified entry must still
    #: match the sha256 its first pull recorded).
    force: StrictBool = False
