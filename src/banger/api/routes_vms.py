"""Routes of the VM lifecycle: create, start, stop, restart, kill, delete, set, logs, stats."""

from __future__ import annotations

import signal as signals
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from starlette.responses import StreamingResponse

from banger.api.deps import Ctx, Services
from banger.api.models import (
    CreateBody,
    Deleted,
    HealthReply,
    KillBody,
    LogChunk,
    PortsReply,
    SetBody,
    SshInfo,
    StageEvent,
    VmDefaultsReply,
    VmInfo,
    VmStats,
)
from banger.api.progress import ndjson_response
from banger.model import limits
from banger.model.wire import NDJSON
from banger.services import daemon_info, vm_info
from banger.services.inventory import record_dict
from banger.services.vm_create import CreateOrder
from banger.vmm.base import Backend

router = APIRouter(tags=["vms"])
Name = Annotated[str, Path(min_length=1, max_length=limits.URL_NAME_MAX)]
STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NDJSON: {"schema": StageEvent.model_json_schema()}},
        "description": "one StageEvent per line; the result holds the VM",
    }
}
MIB = 1024 * 1024


@router.get("/vm-defaults", response_model=VmDefaultsReply)
async def vm_defaults(ctx: Ctx) -> dict[str, Any]:
    """Resolved VM defaults and where each came from (config|auto|builtin)."""
    return daemon_info.vm_defaults_reply(ctx)


@router.post("/vms", response_class=StreamingResponse, responses=STREAM)
async def create_vm(services: Services, body: CreateBody) -> StreamingResponse:
    order = CreateOrder(
        name=body.name,
        image=body.image,
        vcpu=body.vcpu,
        memory_mib=body.memory_mib,
        disk_size_bytes=body.disk_size_bytes,
        nat=body.nat,
        vmm=Backend(body.vmm) if body.vmm else None,
        boot_timeout_s=float(body.boot_timeout_s),
        delete_on_disconnect=body.delete_on_disconnect is True,
    )
    request = await services.vms.validate(order)
    return ndjson_response(services.vms.create(request))


@router.post("/vms/{name}/start", response_class=StreamingResponse, responses=STREAM)
async def start_vm(services: Services, name: Name) -> StreamingResponse:
    return ndjson_response(await services.vms.start_checked(name))


@router.post("/vms/{name}/stop", response_model=VmInfo)
async def stop_vm(services: Services, name: Name) -> dict[str, Any]:
    return record_dict(await services.vms.stop(name))


@router.post("/vms/{name}/restart", response_class=StreamingResponse, responses=STREAM)
async def restart_vm(services: Services, name: Name) -> StreamingResponse:
    return ndjson_response(await services.vms.restart(name))


@router.post("/vms/{name}/kill", response_model=VmInfo)
async def kill_vm(services: Services, name: Name, body: KillBody) -> dict[str, Any]:
    sig = int(getattr(signals, f"SIG{body.signal}"))
    return record_dict(await services.vms.kill(name, sig))


@router.delete("/vms/{name}", response_model=Deleted)
async def delete_vm(
    services: Services, name: Name, force: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    await services.vms.delete(name, force=force)
    return {"deleted": name}


@router.patch("/vms/{name}", response_model=VmInfo)
async def set_vm(services: Services, name: Name, body: SetBody) -> dict[str, Any]:
    record = await services.vms.set_resources(
        name, vcpu=body.vcpu, memory_mib=body.memory_mib, disk_size_bytes=body.disk_size_bytes
    )
    return record_dict(record)


@router.get("/vms/{name}/logs", response_model=LogChunk)
async def vm_logs(
    services: Services,
    name: Name,
    source: Annotated[Literal["console", "vmm"], Query()] = "console",
    offset: Annotated[int | None, Query(ge=0)] = None,
    tail_bytes: Annotated[int, Query(ge=0, le=1 << 20)] = 16384,
) -> dict[str, Any]:
    """A slice of the console or VMM log: from ``offset``, or the last ``tail_bytes``."""
    return await vm_info.log_chunk(services.vms, name, source, offset, tail_bytes)


@router.get("/vms/{name}/stats", response_model=VmStats)
async def vm_stats(services: Services, name: Name) -> dict[str, Any]:
    return await vm_info.stats(services.vms, name)


@router.get("/vms/{name}/ssh", response_model=SshInfo)
async def vm_ssh(services: Services, name: Name) -> dict[str, Any]:
    """What a client needs to run ssh into the VM (key and known_hosts are banger's own)."""
    return await vm_info.ssh_info(services.vms, name)


@router.get("/vms/{name}/health", response_model=HealthReply)
async def vm_health(services: Services, name: Name) -> dict[str, Any]:
    """Ask the guest agent whether the guest is healthy (bounded in size and time)."""
    return await vm_info.health(services.vms, name)


@router.get("/vms/{name}/ports", response_model=PortsReply)
async def vm_ports(services: Services, name: Name) -> dict[str, Any]:
    """Listening sockets in the guest, as the agent reports them; web ones as links."""
    return await vm_info.listening_ports(services.vms, name)
