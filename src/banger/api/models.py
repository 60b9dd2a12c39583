"""Pydantic models of the API's replies: they are the OpenAPI document's schemas.

Owns: the JSON shapes on the wire. Must not: hold behaviour.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictInt


def _whole_number(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: A request integer as the OpenAPI document's ``"type": "integer"`` defines it: JSON
#: Schema counts ``450.0`` as an integer, so it is accepted as 450 (issue 14 item 12);
#: ``450.5``, ``"450"`` and ``true`` are still refused.
JsonInt = Annotated[StrictInt, BeforeValidator(_whole_number)]


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
    state: Literal["running", "ok", "warn", "fail", "skip"] | None = None
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
    state: Literal["creating", "starting", "running", "stopping", "stopped", "error"]
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
