"""The warm pool: ready VMs booted ahead of ``vm create``/``vm run`` (SPEC §3, issue 12).

Owns: keeping each ``PoolTarget`` (``banger.config.pool_policy``) filled in the background
— after daemon start, after each claim, one boot at a time, never while a user's create
is running (they share the CPUs), a VM called ready only once its guest has settled
(systemd's boot over) — removing pool VMs that died or no longer match a
target, the per-image status (``pool status``, ``daemon status``) and draining.
Pool VMs are ordinary VM rows marked ``pool``; start-up reconciliation re-adopts living
ones like any VM. Must not: claim (``banger.services.pool_claim``), block the API, or
pull an image for the pool (a pool waits until its image exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from banger.config.pool_policy import PoolTarget
from banger.errors import BangerError, NotFound
from banger.model.records import ImageRecord, VmRecord, VmState
from banger.services.operations import Progress
from banger.services.pool_claim import POOL_PREFIX
from banger.services.vm_create import CreateRequest
from banger.services.vms import VmService
from banger.state import repo

log = logging.getLogger("banger.pool")

#: How often the filler looks again without being woken (a pool VM may have died).
RECHECK_S = 5.0
#: After a failed boot, wait this long before the next try (a broken image must not
#: make the daemon boot in a loop).
RETRY_AFTER_FAILURE_S = 60.0
BOOT_TIMEOUT_S = 300.0
#: How long a booted pool VM may take to settle before it is called ready anyway.
SETTLE_TIMEOUT_S = 60.0
#: A guest answers (agent or SSH) well before its boot is over: under TCG the Debian
#: guest still starts units for seconds, and a claim then competes with them (a rename
#: one second after boot took 2.5 s). systemd says when it is done, whatever the outcome
#: (``degraded`` is settled too); a guest without systemd is settled when it answers.
SETTLE_SCRIPT = (
    "command -v systemctl >/dev/null 2>&1 || exit 0; "
    f"timeout {SETTLE_TIMEOUT_S:g} systemctl is-system-running --wait >/dev/null 2>&1; exit 0"
)
SETTLE_ARGV = ["sh", "-c", SETTLE_SCRIPT]


@dataclass
class PoolState:
    """What ``pool status`` shows for one target."""

    target: PoolTarget
    ready: list[str] = field(default_factory=list)
    booting: str | None = None
    waiting: str | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        t = self.target
        return {
            "image": t.image,
            "wanted": t.size,
            "ready": len(self.ready),
            "booting": 0 if self.booting is None else 1,
            "vcpu": t.vcpu,
            "memory_mib": t.memory_mib,
            "disk_size_bytes": t.disk_size_bytes,
            "why": t.why,
            "vms": list(self.ready) + ([self.booting] if self.booting else []),
            "waiting": self.waiting,
            "last_error": self.last_error,
        }


class PoolService:
    def __init__(
        self,
        vms: VmService,
        targets: list[PoolTarget],
        *,
        retry_after_s: float = RETRY_AFTER_FAILURE_S,
    ) -> None:
        self.vms = vms
        self.retry_after_s = retry_after_s
        self.states = [PoolState(t) for t in targets]
        self._task: asyncio.Task[None] | None = None
        self._boot_lock = asyncio.Lock()
        self._paused = False

    @property
    def wanted(self) -> int:
        return sum(s.target.size for s in self.states)

    # -- background ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop filling (pool VMs keep running: a restarted daemon re-adopts them)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.fill_once()
            except Exception:
                log.exception("pool pass failed")
            self.vms.pool_claimed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.vms.pool_claimed.wait(), RECHECK_S)

    async def fill_once(self) -> int:
        """Prune, then boot what is missing, one at a time; returns how many were booted."""
        await self.prune()
        booted = 0
        for state in self.states:
            while not self._paused and len(state.ready) < state.target.size:
                if not await self._boot_one(state):
                    break
                booted += 1
        return booted

    async def prune(self) -> None:
        """Pool VMs that are dead, failed or match no target are removed; the rest are
        counted as ready (or as booting, while their create runs)."""
        rows: list[VmRecord] = await self.vms.ctx.db.run(repo.list_vms, pool=True)
        images = {i.id: i.name for i in await self.vms.ctx.db.run(repo.list_images)}
        kept: dict[int, list[str]] = {i: [] for i in range(len(self.states))}
        for vm in rows:
            if vm.state is VmState.CREATING:
                continue  # being booted right now
            index = self._target_of(vm, images.get(vm.image_id))
            if self.vms.busy(vm.name):
                # Being claimed (or asked whether it can grow): still the pool's until it
                # is renamed, and a claim that lets go of it leaves it pooled. Counted,
                # so that no replacement boots for a VM that may come back.
                if index is not None:
                    kept[index].append(vm.name)
                continue
            alive = vm.state is VmState.RUNNING and self.vms.alive(vm)
            full = index is not None and len(kept[index]) >= self.states[index].target.size
            if index is None or not alive or full:
                await self._remove(vm)
                continue
            kept[index].append(vm.name)
        for i, state in enumerate(self.states):
            state.ready = kept[i]

    def _target_of(self, vm: VmRecord, image: str | None) -> int | None:
        for i, state in enumerate(self.states):
            t = state.target
            if (image, vm.vcpu, vm.memory_mib, vm.disk_size_bytes) == (
                t.image,
                t.vcpu,
                t.memory_mib,
                t.disk_size_bytes,
            ):
                return i
        return None

    async def _remove(self, vm: VmRecord) -> None:
        async with self.vms.locked(vm.name):
            try:
                current = await self.vms.get(vm.name)
            except NotFound:
                return
            if current.pool:
                log.info("pool VM removed", extra={"fields": {"vm": vm.name, "state": vm.state}})
                await self.vms.remove_pool_vm(current)

    async def _boot_one(self, state: PoolState) -> bool:
        target = state.target
        image: list[ImageRecord] = await self.vms.ctx.db.run(repo.list_images)
        if target.image not in {i.name for i in image}:
            state.waiting = f"image {target.image!r} is not here yet (the first create gets it)"
            return False
        while self.vms.creating:
            state.waiting = "a create is running"
            await asyncio.sleep(0.5)
        state.waiting = None
        name = POOL_PREFIX + secrets.token_hex(4)
        request = CreateRequest(
            name=name,
            image=target.image,
            vcpu=target.vcpu,
            memory_mib=target.memory_mib,
            disk_size_bytes=target.disk_size_bytes,
            boot_timeout_s=BOOT_TIMEOUT_S,
            pool=True,
        )
        async with self._boot_lock:
            state.booting = name
            try:
                await self.vms.create_silently(request, Progress(lambda _event: None))
                answered = time.monotonic()
                await self._settle(name)
            except BangerError as exc:
                state.last_error = f"{name}: {exc.brief}"
                log.warning("pool boot failed", extra={"fields": {"vm": name, "error": exc.brief}})
                await self._remove_failed(name)
                await asyncio.sleep(self.retry_after_s)
                return False
            finally:
                state.booting = None
        state.last_error = None
        state.ready.append(name)
        settled_s = round(time.monotonic() - answered, 3)
        log.info(
            "pool VM ready",
            extra={"fields": {"vm": name, "image": target.image, "settle_s": settled_s}},
        )
        return True

    async def _settle(self, name: str) -> None:
        """Wait until the guest's boot is over; held like a claim, so none takes it
        before. A guest that cannot be asked is left to the claim (which discards a VM
        it cannot rename)."""
        async with self.vms.locked(name):
            vm = await self.vms.get(name)
            try:
                await self.vms.guest_namer.run(
                    vm,
                    self.vms.ssh_argv_of(vm),
                    SETTLE_ARGV,
                    timeout_s=SETTLE_TIMEOUT_S + 5.0,
                    what="waiting for the guest's boot to finish",
                )
            except BangerError as exc:
                log.warning(
                    "pool VM not settled", extra={"fields": {"vm": name, "error": exc.brief}}
                )

    async def _remove_failed(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            await self._remove(await self.vms.get(name))

    # -- status and drain ----------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.states]

    def reply(self) -> dict[str, Any]:
        """``GET /pool``: every image, whether filling is paused, the one-line summary."""
        return {"images": self.status(), "paused": self._paused, "summary": self.summary()}

    def summary(self) -> str:
        """One line for ``daemon status``."""
        if not self.states or not self.wanted:
            return "off"
        if self._paused:
            return "drained (`banger pool fill` refills it)"
        parts = []
        for s in self.states:
            part = f"{s.target.image}: {len(s.ready)}/{s.target.size} ready"
            if s.booting:
                part += ", 1 booting"
            if s.last_error:
                part += f", last error: {s.last_error}"
            parts.append(part)
        return "; ".join(parts)

    async def drain(self) -> list[str]:
        """Remove every pool VM and stop refilling until ``resume``."""
        self._paused = True
        removed = []
        for vm in await self.vms.ctx.db.run(repo.list_vms, pool=True):
            await self._remove(vm)
            removed.append(vm.name)
        for state in self.states:
            state.ready = []
        return removed

    def resume(self) -> None:
        self._paused = False
        self.vms.pool_claimed.set()
