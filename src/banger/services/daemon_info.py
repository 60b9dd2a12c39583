"""What the daemon says about itself: ping, status, resolved config, doctor stream.

Owns: assembling those replies from the daemon context. Must not: speak HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from banger.config.vm_defaults import spec_line
from banger.model.wire import StageState, result_event, stage_event
from banger.net import privilege_mode
from banger.services.artifact_rows import find_orphans
from banger.services.context import DaemonContext
from banger.services.doctor import CHECKS
from banger.services.doctor_inputs import DoctorInputs
from banger.state import repo
from banger.state.db import Database
from banger.vmm import kvm_probe, table
from banger.vmm.kvm_probe import Verdict


def ping(ctx: DaemonContext) -> dict[str, Any]:
    return {"build": ctx.build.as_dict(), "pid": ctx.pid, "started_at": ctx.started_at}


def config_reply(ctx: DaemonContext) -> dict[str, Any]:
    cfg = ctx.config
    path = cfg.path or ctx.layout.config_file
    return {"path": str(path), "values": cfg.as_display_dict(), "sources": dict(cfg.sources)}


def vm_defaults_reply(ctx: DaemonContext) -> dict[str, Any]:
    d = ctx.vm_defaults
    reply: dict[str, Any] = d.as_dict()
    reply["spec_line"] = spec_line(d.vcpu.value, d.memory_mib.value, d.disk_size_bytes.value)
    return reply


def _db_info(db: Database) -> dict[str, Any]:
    return {
        "path": str(db.path),
        "schema_version": db.schema_version(),
        "counts": repo.counts(db),
    }


async def db_info(ctx: DaemonContext) -> dict[str, Any]:
    info: dict[str, Any] = await ctx.db.run(_db_info)
    return info


async def status(ctx: DaemonContext) -> dict[str, Any]:
    layout = ctx.layout
    return {
        **ping(ctx),
        "uptime_s": ctx.uptime_s(),
        "socket": str(layout.socket_path),
        "state_dir": str(layout.state_dir),
        "config_file": str(ctx.config.path or layout.config_file),
        "log_file": str(layout.log_file),
        "db": await db_info(ctx),
        "vm_defaults": vm_defaults_reply(ctx),
        "dns": f"127.0.0.1:{ctx.dns.port}" if ctx.dns is not None else None,
    }


def _db_summary(db: Database) -> str:
    integrity = db.integrity_check()
    counts = repo.counts(db)
    listed = ", ".join(f"{n} {k}" for k, n in counts.items())
    return f"{db.path} (schema {db.schema_version()}, integrity {integrity}; {listed})"


async def _default_image(ctx: DaemonContext) -> str:
    from banger.images import image_catalog

    name = ctx.config.default_image_name
    if any(i.name == name for i in await ctx.db.run(repo.list_images)):
        return "local"
    found = (await asyncio.to_thread(image_catalog.load_catalog)).find(name)
    return "catalog" if found is not None else "missing"


async def stored_probe_kernel(ctx: DaemonContext) -> Path | None:
    """A stored kernel the KVM probe can boot; None before any was imported or pulled."""
    for kernel in await ctx.db.run(repo.list_kernels):
        path = table.boot_kernel(kvm_probe.PROBER, Path(kernel.dir_path))
        if path.exists():
            return path
    return None


async def start_kvm_probe(ctx: DaemonContext) -> None:
    """At daemon start: probe in the background unless the kept verdict still holds, so
    that no ``vm create`` waits for it (issue 12's first-run tax)."""
    if ctx.kvm_probe.known() is None:
        kernel = await stored_probe_kernel(ctx)
        if kernel is not None:
            ctx.kvm_probe.start(kernel)


async def _kvm_probe(ctx: DaemonContext) -> Verdict | None:
    """The KVM verdict (waiting for the probe if one must run); None with no kernel yet."""
    return await ctx.kvm_probe.verdict(await stored_probe_kernel(ctx))


async def doctor_events(ctx: DaemonContext) -> AsyncIterator[dict[str, Any]]:
    summary: str = await ctx.db.run(_db_summary)
    setting = ctx.config.privilege_mode
    inputs = DoctorInputs(
        ctx.layout,
        ctx.config,
        ctx.vm_defaults,
        lambda: summary,
        kvm_verdict=await _kvm_probe(ctx),
        default_image=await _default_image(ctx),
        runner=ctx.runner,
        orphans=tuple((str(o.path), o.size_bytes, o.remedy) for o in await find_orphans(ctx)),
        dns_port=ctx.dns.port if ctx.dns is not None else None,
        # Once for the network, NAT and DNS checks (it may ask the helper).
        privilege=await asyncio.to_thread(privilege_mode.probe, setting=setting),
    )
    checks: list[dict[str, Any]] = []
    for name, check in CHECKS:
        yield stage_event(name, StageState.RUNNING)
        started = time.monotonic()
        result = await asyncio.to_thread(check, inputs)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        yield stage_event(
            name, result.state, detail=result.detail, hint=result.hint, elapsed_ms=elapsed_ms
        )
        checks.append(
            {
                "name": name,
                "state": result.state.value,
                "detail": result.detail,
                "hint": result.hint,
            }
        )
    failed = [c["name"] for c in checks if c["state"] == StageState.FAIL]
    yield result_event({"ok": not failed, "failed": failed, "checks": checks})
