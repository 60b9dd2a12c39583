"""Routes of the VM lifecycle: create, start, stop, restart, kill, delete, set, logs, stats."""

from __future__ import annotations

import os
import signal as signals
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import Field, StrictBool
from starlette.responses import StreamingResponse

from banger.api.deps import Ctx
from banger.api.models import JsonInt, StageEvent, Strict, VmDefaultsReply, VmInfo
from banger.api.progress import ndjson_response
from banger.errors import InvalidArgument
from banger.model.wire import NDJSON
from banger.services import daemon_info, vm_info
from banger.services.inventory import record_dict
from banger.services.vms import CreateRequest, VmService
from banger.vmm.base import Backend

router = APIRouter(tags=["vms"])
Name = Annotated[str, Path(min_length=1, max_length=128)]
STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NDJSON: {"schema": StageEvent.model_json_schema()}},
        "description": "one StageEvent per line; the result holds the VM",
    }
}
MIB = 1024 * 1024


class CreateBody(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=255)
    image: str | None = Field(default=None, min_length=1, max_length=128)
    vcpu: JsonInt | None = Field(default=None, ge=1, le=64)
    memory_mib: JsonInt | None = Field(default=None, ge=128, le=1024 * 1024)
    disk_size_bytes: JsonInt | None = Field(default=None, ge=256 * MIB, le=16 * 1024**4)
    nat: StrictBool = False
    vmm: Literal["firecracker", "qemu"] | None = None
    boot_timeout_s: JsonInt = Field(default=300, ge=1, le=3600)


class SetBody(Strict):
    vcpu: JsonInt | None = Field(default=None, ge=1, le=64)
    memory_mib: JsonInt | None = Field(default=None, ge=128, le=1024 * 1024)
    disk_size_bytes: JsonInt | None = Field(default=None, ge=256 * MIB, le=16 * 1024**4)


class KillBody(Strict):
    signal: Literal["KILL", "TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT"] = "KILL"


class Deleted(Strict):
    deleted: str


class LogChunk(Strict):
    source: Literal["console", "vmm"]
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


class HealthReply(Strict):
    vm: str
    health: dict[str, Any]


class PortsReply(Strict):
    vm: str
    truncated: bool
    ports: list[dict[str, Any]]


class SshInfo(Strict):
    name: str
    state: str
    ip: str | None
    user: str
    key: str
    known_hosts: str


def _service(ctx: Ctx) -> VmService:
    service = ctx.vms
    assert isinstance(service, VmService)
    return service


def _host_limits(ctx: Ctx, vcpu: int | None, memory_mib: int | None) -> None:
    # ADVERSARIAL 47: more than the host has is an error with units, not a silent clamp.
    cpus = os.cpu_count() or 1
    if vcpu is not None and vcpu > cpus:
        raise InvalidArgument(f"vcpu {vcpu} is more than this host's {cpus} CPUs")
    ram_mib = ctx.host.mem_total_bytes // MIB
    if memory_mib is not None and ram_mib and memory_mib > ram_mib:
        raise InvalidArgument(f"memory {memory_mib} MiB is more than this host's {ram_mib} MiB")


@router.get("/vm-defaults", response_model=VmDefaultsReply)
async def vm_defaults(ctx: Ctx) -> dict[str, Any]:
    """Resolved VM defaults and where each came from (config|auto|builtin)."""
    return daemon_info.vm_defaults_reply(ctx)


@router.post("/vms", response_class=StreamingResponse, responses=STREAM)
async def create_vm(ctx: Ctx, body: CreateBody) -> StreamingResponse:
    _host_limits(ctx, body.vcpu, body.memory_mib)
    defaults = ctx.vm_defaults
    request = CreateRequest(
        name=body.name,
        image=body.image,
        vcpu=body.vcpu or defaults.vcpu.value,
        memory_mib=body.memory_mib or defaults.memory_mib.value,
        disk_size_bytes=body.disk_size_bytes or defaults.disk_size_bytes.value,
        nat=body.nat,
        vmm=Backend(body.vmm) if body.vmm else None,
        boot_timeout_s=float(body.boot_timeout_s),
    )
    return ndjson_response(_service(ctx).create(request))


@router.post("/vms/{name}/start", response_class=StreamingResponse, responses=STREAM)
async def start_vm(ctx: Ctx, name: Name) -> StreamingResponse:
    service = _service(ctx)
    # A name that does not exist is a 404 before the stream starts, as for stop and
    # restart (issue 14 item 13); the stream then re-reads the VM under its lock.
    await service.get(name)
    return ndjson_response(service.start(name))


@router.post("/vms/{name}/stop", response_model=VmInfo)
async def stop_vm(ctx: Ctx, name: Name) -> dict[str, Any]:
    return record_dict(await _service(ctx).stop(name))


@router.post("/vms/{name}/restart", response_class=StreamingResponse, responses=STREAM)
async def restart_vm(ctx: Ctx, name: Name) -> StreamingResponse:
    service = _service(ctx)
    await service.stop(name)
    return ndjson_response(service.start(name))


@router.post("/vms/{name}/kill", response_model=VmInfo)
async def kill_vm(ctx: Ctx, name: Name, body: KillBody) -> dict[str, Any]:
    sig = int(getattr(signals, f"SIG{body.signal}"))
    return record_dict(await _service(ctx).kill(name, sig))


@router.delete("/vms/{name}", response_model=Deleted)
async def delete_vm(
    ctx: Ctx, name: Name, force: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    await _service(ctx).delete(name, force=force)
    return {"deleted": name}


@router.patch("/vms/{name}", response_model=VmInfo)
async def set_vm(ctx: Ctx, name: Name, body: SetBody) -> dict[str, Any]:
    _host_limits(ctx, body.vcpu, body.memory_mib)
    record = await _service(ctx).set_resources(
        name, vcpu=body.vcpu, memory_mib=body.memory_mib, disk_size_bytes=body.disk_size_bytes
    )
    return record_dict(record)


@router.get("/vms/{name}/logs", response_model=LogChunk)
async def vm_logs(
    ctx: Ctx,
    name: Name,
    source: Annotated[Literal["console", "vmm"], Query()] = "console",
    offset: Annotated[int | None, Query(ge=0)] = None,
    tail_bytes: Annotated[int, Query(ge=0, le=1 << 20)] = 16384,
) -> dict[str, Any]:
    """A slice of the console or VMM log: from ``offset``, or the last ``tail_bytes``."""
    return await vm_info.log_chunk(_service(ctx), name, source, offset, tail_bytes)


@router.get("/vms/{name}/stats", response_model=VmStats)
async def vm_stats(ctx: Ctx, name: Name) -> dict[str, Any]:
    return await vm_info.stats(_service(ctx), name)


@router.get("/vms/{name}/ssh", response_model=SshInfo)
async def vm_ssh(ctx: Ctx, name: Name) -> dict[str, Any]:
    """What a client needs to run ssh into the VM (key and known_hosts are banger's own)."""
    return await vm_info.ssh_info(_service(ctx), name)


@router.get("/vms/{name}/health", response_model=HealthReply)
async def vm_health(ctx: Ctx, name: Name) -> dict[str, Any]:
    """Ask the guest agent whether the guest is healthy (bounded in size and time)."""
    return await vm_info.health(_service(ctx), name)


@router.get("/vms/{name}/ports", response_model=PortsReply)
async def vm_ports(ctx: Ctx, name: Name) -> dict[str, Any]:
    """Listening sockets in the guest, as the agent reports them; web ones as links."""
    return await vm_info.listening_ports(_service(ctx), name)
