"""Daemon start-up: make every VM row agree with reality (SPEC §3 restart safety).

Owns: re-adopting VMMs that are still ours (pid + start ticks + boot id), marking dead
ones stopped (ADVERSARIAL 86, 89), rolling back VMs caught half-created (84), and sweeping
leftovers that are provably ours: VM dirs and socket dirs without a row, and TAPs with
our prefix that no row uses (93). Must not: touch anything without our naming.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from banger.host import procinfo
from banger.host.publish import STAGING_DIR, remove_published
from banger.model.records import VmRecord, VmState, utc_now
from banger.services import vm_boot
from banger.services.vm_monitor import LIVE_STATES
from banger.services.vms import VmService
from banger.state import repo
from banger.vmm import spawn

log = logging.getLogger("banger.reconcile")


@dataclass
class Report:
    adopted: list[str] = field(default_factory=list)
    marked_stopped: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


async def reconcile(service: VmService) -> Report:
    report = Report()
    db = service.ctx.db
    vms: list[VmRecord] = await db.run(repo.list_vms)
    for vm in vms:
        await _one(service, vm, report)
    kept: list[VmRecord] = await db.run(repo.list_vms)
    await asyncio.to_thread(_sweep_dirs, service, kept, report)
    orphans = await asyncio.to_thread(service.taps.cleanup_orphans, {v.tap for v in kept if v.tap})
    report.removed.extend(f"tap {name}" for name in orphans)
    log.info("reconciled", extra={"fields": report.__dict__})
    return report


async def _one(service: VmService, vm: VmRecord, report: Report) -> None:
    handle = vm_boot.handle_of(vm, service.paths(vm))
    alive = handle is not None and procinfo.is_running(handle.process)
    if vm.state is VmState.CREATING:
        # Half-created: nothing the user was promised exists yet, so roll it back.
        if alive and handle is not None:
            spawn.signal_if_ours(handle.process, signal.SIGKILL)
            await spawn.wait_exit(handle.process, timeout_s=10)
        await service.discard(vm)
        report.rolled_back.append(vm.name)
    elif alive:
        if vm.state is not VmState.RUNNING:
            await service.ctx.db.run(repo.update_vm, vm.name, state=VmState.RUNNING)
        report.adopted.append(vm.name)
    elif vm.state in LIVE_STATES or vm.pid is not None:
        await service.ctx.db.run(
            repo.update_vm,
            vm.name,
            state=VmState.STOPPED,
            pid=None,
            pid_start_ticks=None,
            stopped_at=utc_now(),
            last_error="the VM stopped while the daemon was not running",
        )
        report.marked_stopped.append(vm.name)


def _sweep_dirs(service: VmService, kept: list[VmRecord], report: Report) -> None:
    layout = service.ctx.layout
    names = {v.name for v in kept}
    ids = {str(v.id) for v in kept}
    if layout.vms_dir.is_dir():
        for entry in layout.vms_dir.iterdir():
            if entry.name == STAGING_DIR or entry.name in names or not _looks_like_vm_dir(entry):
                continue
            remove_published(entry)
            report.removed.append(f"dir {entry}")
    run_root = layout.runtime_dir / "vms"
    if run_root.is_dir():
        for entry in run_root.iterdir():
            if entry.name not in ids and entry.name.isdigit() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                report.removed.append(f"run dir {entry}")


def _looks_like_vm_dir(entry: Path) -> bool:
    """Only a directory shaped like one banger publishes is ever swept (ADVERSARIAL 93)."""
    if entry.is_symlink() or not entry.is_dir():
        return False
    return any((entry / name).exists() for name in ("rootfs.ext4", "work.ext4", "known_hosts"))
