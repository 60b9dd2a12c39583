"""Noticing VMMs that die on their own, and keeping VM logs bounded.

Owns: one background pass every ``MONITOR_INTERVAL_S``: reaping exited children, marking
a live VM whose VMM is gone as stopped (ADVERSARIAL 95), and capping every live VM's
console and VMM log (ADVERSARIAL 102). Must not: touch a VM an operation holds (its lock
or a stop in progress), or let one failed pass end the monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from banger.model.records import VmRecord, VmState
from banger.services import console_logs
from banger.state import repo
from banger.vmm import spawn

if TYPE_CHECKING:
    from banger.services.vms import VmService

log = logging.getLogger("banger.vms")

MONITOR_INTERVAL_S = 1.0
LIVE_STATES = (VmState.STARTING, VmState.RUNNING, VmState.STOPPING)


class VmMonitor:
    def __init__(self, service: VmService) -> None:
        self.service = service
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            try:
                await self.check_all()
            except Exception:
                log.exception("VM monitor pass failed")

    async def check_all(self) -> None:
        service = self.service
        spawn.reap()
        vms: list[VmRecord] = await service.ctx.db.run(repo.list_vms)
        await self._cap_logs(vms)
        for vm in vms:
            if vm.state not in LIVE_STATES or service.busy(vm.name):
                continue
            if not service.alive(vm):
                log.warning("VMM exited", extra={"fields": {"vm": vm.name, "pid": vm.pid}})
                await service.mark_stopped(
                    vm,
                    reason="the VMM exited unexpectedly "
                    f"(console log: {service.paths(vm).console_log})",
                )

    async def _cap_logs(self, vms: list[VmRecord]) -> None:
        """Bound what guests write to their logs (ADVERSARIAL 102), booting VMs too: no VM
        lock is needed, the files are only truncated in place and renamed by path."""
        live = [self.service.paths(vm) for vm in vms if vm.state in LIVE_STATES]
        logs = [p.console_log for p in live] + [p.vmm_log for p in live]
        for rotation in await asyncio.to_thread(console_logs.cap_logs, logs):
            log.info(
                "VM log rotated",
                extra={"fields": {"path": str(rotation.path), "kept": rotation.kept_bytes}},
            )
