"""Read-only facts about one VM beyond its row: log slices, process stats, SSH details.

Owns: reading the VM's log files (bounded slices, through ``console_logs``), /proc of the
VMM process for CPU and memory (SPEC §3), and the SSH parameters. Must not: change
anything.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from banger.guest import ports
from banger.guest.agent_client import AgentClient
from banger.guest.webprobe import probe_web
from banger.host import procinfo
from banger.model.records import VmRecord
from banger.services import console_logs, vm_boot
from banger.services.readiness import SSH_PORT
from banger.services.vm_addresses import ssh_target
from banger.services.vms import VmService
from banger.vmm.table import agent_channel_at

MAX_CHUNK = 1 << 20


async def log_chunk(
    service: VmService, name: str, source: str, offset: int | None, tail_bytes: int
) -> dict[str, Any]:
    vm = await service.get(name)
    paths = service.paths(vm)
    path = paths.console_log if source == "console" else paths.vmm_log
    # After a rotation the tail continues in ``<log>.1`` (console_logs, ADVERSARIAL 102).
    chunk = await asyncio.to_thread(
        console_logs.read_slice, path, offset, tail_bytes, limit=MAX_CHUNK
    )
    return {
        "source": source,
        "path": str(path),
        "offset": chunk.offset,
        "size": chunk.size,
        "data": chunk.data.decode(errors="replace"),
    }


async def stats(service: VmService, name: str) -> dict[str, Any]:
    vm = await service.get(name)
    handle = vm_boot.handle_of(vm, service.paths(vm))
    cpu = rss = uptime = None
    if handle is not None and procinfo.is_running(handle.process):
        cpu, rss, uptime = _proc_stats(handle.process.pid, handle.process.start_ticks)
    return {
        "name": vm.name,
        "state": vm.state.value,
        "pid": vm.pid,
        "cpu_seconds": cpu,
        "rss_bytes": rss,
        "uptime_s": uptime,
    }


def _proc_stats(pid: int, start_ticks: int) -> tuple[float | None, int | None, float | None]:
    hz = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        status = Path(f"/proc/{pid}/status").read_text()
        uptime_host = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return None, None, None
    cpu = (int(fields[11]) + int(fields[12])) / hz  # utime + stime (fields 14, 15)
    rss = None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return round(cpu, 2), rss, round(uptime_host - start_ticks / hz, 1)


async def ssh_info(service: VmService, name: str) -> dict[str, Any]:
    vm = await service.get(name)
    paths = service.paths(vm)
    target = ssh_target(vm)
    return {
        "name": vm.name,
        "state": vm.state.value,
        "ip": vm.ip,
        "user": "root",
        "key": str(service.ctx.config.ssh_key_file()),
        "known_hosts": str(paths.known_hosts),
        "host": target.host if target else None,
        "port": target.port if target else SSH_PORT,
        "host_key_alias": target.host_key_alias if target else None,
    }


def _agent(service: VmService, vm: VmRecord) -> AgentClient:
    handle = vm_boot.running_handle(vm, service.paths(vm))
    return agent_channel_at(service.paths(vm).run_dir, handle.backend).client()


async def health(service: VmService, name: str) -> dict[str, Any]:
    """The guest agent's /healthz, through virtio-serial (QEMU) or vsock (Firecracker)."""
    vm = await service.get(name)
    reply = await asyncio.to_thread(_agent(service, vm).health)
    return {"vm": vm.name, "health": reply.to_dict()}


async def listening_ports(service: VmService, name: str) -> dict[str, Any]:
    """Listening sockets the agent reports, merged across IPv4/IPv6, web ones probed."""
    vm = await service.get(name)
    reply = await asyncio.to_thread(_agent(service, vm).ports)
    entries = ports.merge(reply.listeners)
    # A rootless VM's ports are not reachable from the host (only SSH is forwarded).
    if vm.ip:
        schemes = await probe_web(vm.ip, ports.probe_targets(entries))
        entries = ports.with_schemes(entries, schemes)
    return {"vm": vm.name, "truncated": reply.truncated, "ports": [e.to_dict() for e in entries]}
