"""The VM service: create, start, stop, restart, kill, delete and resize VMs.

Owns: the lifecycle of VM rows and their VMM processes, per-VM locks and the short global
reservation window (name, IP, TAP). Noticing VMMs that die on their own is
``vm_monitor``; the bridge, NAT and ``~vm`` routing are ``vm_network``.
Must not: build disks or talk netlink itself (``vm_disks``, ``banger.net``), or speak HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal as signals
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from banger import procinfo
from banger.daemon.context import DaemonContext
from banger.dns.server import records_from_vms
from banger.errors import AlreadyExists, BangerError, CommandFailed, InvalidArgument, InvalidState
from banger.net.addressing import allocate_ip, mac_for_ip
from banger.net.privileged import PrivilegedOps
from banger.net.taps import TapPool
from banger.publish import remove_published
from banger.services import catalog, readiness, vm_boot, vm_disks
from banger.services.inventory import record_dict
from banger.services.operations import Progress, run_streamed
from banger.services.vm_network import VmNetwork
from banger.services.vm_paths import VmPaths
from banger.state import repo
from banger.state.records import ImageRecord, KernelRecord, VmRecord, VmState, utc_now
from banger.vm.naming import generate_name, validate_vm_name
from banger.vmm import select, spawn
from banger.vmm.base import Accel, Backend, Vmm, VmmHandle
from banger.vmm.channels import agent_channel_at
from banger.vmm.firecracker import FirecrackerVmm
from banger.vmm.qemu import QemuVmm
from banger.wire import StageState
from banger.workspace import filesync

log = logging.getLogger("banger.vms")

STOP_TIMEOUT_S = 20.0
#: How long a SIGKILLed VMM may take to be gone (it frees the guest's memory first).
KILL_WAIT_S = 10.0


@dataclass(frozen=True)
class BootPlan:
    """What a boot uses: the image, its kernel, the VMM and the accelerator."""

    image: ImageRecord
    kernel: KernelRecord | None
    vmm: Vmm
    accel: Accel


@dataclass(frozen=True)
class CreateRequest:
    name: str | None
    image: str | None
    vcpu: int
    memory_mib: int
    disk_size_bytes: int
    nat: bool = False
    vmm: Backend | None = None
    boot_timeout_s: float = 300.0


class VmService:
    def __init__(self, ctx: DaemonContext, ops: PrivilegedOps) -> None:
        self.ctx = ctx
        self.ops = ops
        cfg = ctx.config
        self.taps = TapPool(ops, cfg.bridge_name, cfg.tap_pool_size, os.getuid())
        self._reserve_lock = asyncio.Lock()
        self.network = VmNetwork(ctx, ops)
        self._locks: dict[str, asyncio.Lock] = {}
        self._stopping: set[str] = set()
        self._said_backend = False

    # -- queries -----------------------------------------------------------------------

    async def get(self, name: str) -> VmRecord:
        record: VmRecord = await self.ctx.db.run(repo.get_vm, name)
        return record

    def paths(self, vm: VmRecord) -> VmPaths:
        assert vm.id is not None
        return VmPaths.of(self.ctx.layout, vm.name, vm.id)

    @contextlib.asynccontextmanager
    async def locked(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            yield

    # -- create ------------------------------------------------------------------------

    def create(self, req: CreateRequest) -> AsyncIterator[dict[str, Any]]:
        return run_streamed(lambda progress: self._create(req, progress))

    async def _create(self, req: CreateRequest, progress: Progress) -> dict[str, Any]:
        # A catalog image (the default one included) is obtained on first use, with its
        # kernel and its own progress stages; anything else must already exist.
        await catalog.ensure_image(
            self.ctx, req.image or self.ctx.config.default_image_name, progress
        )
        with progress.stage("reserve"):
            plan = await self._plan(await self._image(req.image), req.vmm, progress)
            await self.network.ensure()
            vm = await self._reserve(req, plan.image, plan.vmm.backend)
            progress.detail = f"{vm.name}: {vm.ip} on {vm.tap}"
        try:
            with progress.stage("disks"):
                progress.detail = await asyncio.to_thread(
                    vm_disks.build, self.ctx, vm, self.paths(vm), plan.image, plan.kernel
                )
        except BaseException:
            await self.discard(vm)
            raise
        if req.nat:
            with progress.stage("nat"):
                await self.network.ensure_nat()
        async with self.locked(vm.name):
            vm = await self._boot(vm, plan, progress, timeout_s=req.boot_timeout_s)
        return record_dict(vm)

    async def _image(self, name: str | None) -> tuple[ImageRecord, KernelRecord | None]:
        image: ImageRecord = await self.ctx.db.run(
            repo.get_image, name or self.ctx.config.default_image_name
        )
        kernel = None
        if image.kernel_name:
            kernel = await self.ctx.db.run(repo.get_kernel, image.kernel_name)
        return image, kernel

    async def _plan(
        self,
        artifacts: tuple[ImageRecord, KernelRecord | None],
        wanted: Backend | None,
        progress: Progress | None,
    ) -> BootPlan:
        image, kernel = artifacts
        probe_kernel = vm_boot.boot_files(image, kernel, Backend.QEMU).kernel
        qemu = select.find_binary(self.ctx.config.qemu_bin, "qemu-system-x86_64")
        cache = self.ctx.layout.runtime_dir / "kvm-probe.json"
        kvm = await select.kvm_runs_guests(qemu, probe_kernel, cache)
        choice = select.choose(self.ctx.config, kvm_usable=kvm, override=wanted)
        vmm: Vmm
        if choice.backend is Backend.FIRECRACKER:
            vmm = FirecrackerVmm(self.ctx.runner, choice.binary)
        else:
            vmm = QemuVmm(self.ctx.runner, choice.binary)
        vmm.check_kernel(vm_boot.boot_files(image, kernel, choice.backend).kernel)
        if progress is not None and not self._said_backend:
            self._said_backend = True
            progress.note("vmm", _state_of(choice.accel), choice.reason)
        return BootPlan(image, kernel, vmm, choice.accel)

    async def _reserve(self, req: CreateRequest, image: ImageRecord, backend: Backend) -> VmRecord:
        cfg = self.ctx.config
        async with self._reserve_lock:
            existing: list[VmRecord] = await self.ctx.db.run(repo.list_vms)
            names = {v.name for v in existing}
            name = validate_vm_name(req.name) if req.name else generate_name(names)
            if name in names:
                raise AlreadyExists(
                    f"a VM named {name!r} already exists",
                    hint="pick another --name, or `banger vm delete` it",
                )
            ip = allocate_ip(cfg.cidr, cfg.bridge_ip, {v.ip for v in existing if v.ip})
            tap = await asyncio.to_thread(self.taps.acquire, {v.tap for v in existing if v.tap})
            now = utc_now()
            record = VmRecord(
                name=name,
                image_id=image.id,
                state=VmState.CREATING,
                vcpu=req.vcpu,
                memory_mib=req.memory_mib,
                disk_size_bytes=req.disk_size_bytes,
                created_at=now,
                updated_at=now,
                vmm=backend.value,
                nat=req.nat,
                ip=ip,
                mac=mac_for_ip(ip),
                tap=tap,
                vm_dir=str(self.ctx.layout.vms_dir / name),
            )
            try:
                inserted: VmRecord = await self.ctx.db.run(repo.insert_vm, record)
            except BaseException:
                await asyncio.to_thread(self.taps.release, tap)
                raise
            return inserted

    # -- boot, start -------------------------------------------------------------------

    async def _boot(
        self, vm: VmRecord, plan: BootPlan, progress: Progress, *, timeout_s: float
    ) -> VmRecord:
        vmm, accel = plan.vmm, plan.accel
        paths = self.paths(vm)
        cfg = self.ctx.config
        net = vm_boot.NetFacts(gateway=cfg.bridge_ip, cidr=cfg.cidr, dns=tuple(cfg.default_dns))
        files = vm_boot.boot_files(plan.image, plan.kernel, vmm.backend)
        spec = vm_boot.machine_spec(vm, paths, files, net, accel)
        vm_disks.prepare_run_dir(paths)
        vm = await self._update(vm.name, state=VmState.STARTING, last_error=None)
        try:
            with progress.stage("boot"):
                handle = await vmm.launch(spec)
                ident = handle.process
                vm = await self._update(
                    vm.name,
                    pid=ident.pid,
                    pid_start_ticks=ident.start_ticks,
                    boot_id=ident.boot_id,
                    vmm=vmm.backend.value,
                )
                progress.detail = f"{vmm.backend.value} ({accel.value}), pid {ident.pid}"
            with progress.stage("wait-ready"):
                argv = vm_boot.ssh_argv(
                    self.ctx.config.ssh_key_file(), paths.known_hosts, vm.ip or ""
                )
                agent = agent_channel_at(paths.run_dir, vmm.backend).client()
                guest = readiness.Guest(vm.ip or "", ident, paths.console_log)
                ready = await readiness.wait_until_ready(
                    self.ctx.runner, argv, agent, guest, timeout_s=timeout_s
                )
                progress.detail = ready.describe()
        except BaseException as exc:
            await self._boot_failed(vm, exc)
            if isinstance(exc, BangerError):
                exc.hint = (
                    f"{exc.hint + '; ' if exc.hint else ''}the VM {vm.name!r} is kept "
                    f"in state error: `banger vm logs {vm.name}` shows its console, "
                    f"`banger vm delete {vm.name}` removes it"
                )
            raise
        vm = await self._update(vm.name, state=VmState.RUNNING)
        if self.ctx.config.file_sync:
            await self._file_sync(argv, progress)
        return vm

    async def _file_sync(self, ssh_argv: list[str], progress: Progress) -> None:
        """[[file_sync]] after the guest answers SSH; problems are warnings, never fatal."""
        cfg = self.ctx.config
        with progress.stage("file-sync"):
            report = await filesync.sync_files(
                cfg.file_sync, runner=self.ctx.runner, ssh_prefix=ssh_argv, home=cfg.home_dir
            )
            progress.detail = f"{len(report.copied)} of {len(cfg.file_sync)} entries copied"
        for warning in report.warnings:
            progress.note("file-sync", StageState.WARN, warning)

    async def _boot_failed(self, vm: VmRecord, exc: BaseException) -> None:
        current = await self.get(vm.name)
        handle = vm_boot.handle_of(current, self.paths(current))
        if handle is not None:
            spawn.signal_if_ours(handle.process, signals.SIGKILL)
            await spawn.wait_exit(handle.process, timeout_s=5)
        reason = exc.brief if isinstance(exc, BangerError) else repr(exc)
        await self._update(
            vm.name, state=VmState.ERROR, pid=None, last_error=reason, stopped_at=utc_now()
        )

    def start(self, name: str, *, boot_timeout_s: float = 300.0) -> AsyncIterator[dict[str, Any]]:
        return run_streamed(lambda progress: self._start(name, progress, boot_timeout_s))

    async def _start(self, name: str, progress: Progress, timeout_s: float) -> dict[str, Any]:
        async with self.locked(name):
            vm = await self.get(name)
            if self._alive(vm):
                progress.note("start", _state_of(None), f"{name} is already running")
                return record_dict(vm)
            wanted = Backend(vm.vmm) if vm.vmm else None
            plan = await self._plan(await self._image_of(vm), wanted, progress)
            await self.network.ensure()
            if vm.nat:
                await self.network.ensure_nat()
            vm = await self._boot(vm, plan, progress, timeout_s=timeout_s)
            return record_dict(vm)

    async def _image_of(self, vm: VmRecord) -> tuple[ImageRecord, KernelRecord | None]:
        if vm.image_id is None:
            raise InvalidState(f"VM {vm.name!r} has no image recorded")
        image: ImageRecord = await self.ctx.db.run(repo.get_image_by_id, vm.image_id)
        return await self._image(image.name)

    # -- stop, kill, restart, delete -----------------------------------------------------

    async def stop(self, name: str) -> VmRecord:
        async with self.locked(name):
            vm = await self.get(name)
            handle = vm_boot.handle_of(vm, self.paths(vm))
            if handle is None or not procinfo.is_running(handle.process):
                # Stopping a stopped VM succeeds (ADVERSARIAL 51).
                return await self._mark_stopped(vm, reason=None)
            self._stopping.add(name)
            try:
                await self._update(name, state=VmState.STOPPING)
                await self._shut_down(name, handle)
            finally:
                self._stopping.discard(name)
            outcome = await _stop_outcome(handle)
            return await self._mark_stopped(await self.get(name), reason=outcome)

    async def _shut_down(self, name: str, handle: VmmHandle) -> None:
        """The backend's graceful stop; whatever goes wrong there, the VMM ends: a stop
        never leaves a VM half-stopped (ADVERSARIAL 96, 97)."""
        try:
            await self._vmm_for(handle.backend).shutdown(handle, timeout_s=STOP_TIMEOUT_S)
        except BangerError as exc:
            log.warning("graceful stop failed", extra={"fields": {"vm": name, "error": exc.brief}})
        if not procinfo.is_running(handle.process):
            return
        spawn.signal_if_ours(handle.process, signals.SIGKILL)
        if not await spawn.wait_exit(handle.process, timeout_s=KILL_WAIT_S):
            raise CommandFailed(
                f"the VMM of {name!r} (pid {handle.process.pid}) survived SIGKILL",
                hint="it is stuck in the kernel (state D in /proc); `banger vm stop` again later",
            )

    async def kill(self, name: str, sig: int) -> VmRecord:
        async with self.locked(name):
            vm = await self.get(name)
            handle = vm_boot.handle_of(vm, self.paths(vm))
            if handle is None or not procinfo.is_running(handle.process):
                raise InvalidState(f"VM {name!r} is not running")
            spawn.signal_if_ours(handle.process, sig)
            if sig in (signals.SIGKILL, signals.SIGTERM):
                await spawn.wait_exit(handle.process, timeout_s=10)
            if not procinfo.is_running(handle.process):
                return await self._mark_stopped(vm, reason=f"killed with signal {sig}")
            return vm

    async def delete(self, name: str, *, force: bool) -> None:
        async with self.locked(name):
            vm = await self.get(name)
            handle = vm_boot.handle_of(vm, self.paths(vm))
            if handle is not None and procinfo.is_running(handle.process):
                if not force:
                    raise InvalidState(
                        f"VM {name!r} is running", hint="stop it first, or delete with --force"
                    )
                spawn.signal_if_ours(handle.process, signals.SIGKILL)
                await spawn.wait_exit(handle.process, timeout_s=10)
            await self.discard(vm)
        self._locks.pop(name, None)

    async def discard(self, vm: VmRecord) -> None:
        """Remove a VM's row, files and TAP (row first: leftovers are swept at start-up)."""
        await self.ctx.db.run(repo.delete_vm, vm.name)
        await self.publish_dns()
        paths = self.paths(vm)
        await asyncio.to_thread(remove_published, paths.vm_dir)
        await asyncio.to_thread(shutil.rmtree, paths.run_dir, True)
        if vm.tap:
            await asyncio.to_thread(self.taps.release, vm.tap)

    async def set_resources(
        self, name: str, *, vcpu: int | None, memory_mib: int | None, disk_size_bytes: int | None
    ) -> VmRecord:
        async with self.locked(name):
            vm = await self.get(name)
            if self._alive(vm):
                raise InvalidState(
                    f"VM {name!r} is running: changing its size is not supported after start",
                    hint="`banger vm stop` it first",
                )
            if disk_size_bytes is not None:
                if disk_size_bytes < vm.disk_size_bytes:
                    raise InvalidArgument(
                        f"the work disk can grow but not shrink (now {vm.disk_size_bytes} bytes)"
                    )
                await asyncio.to_thread(
                    vm_disks.grow_work_disk, self.ctx, self.paths(vm), disk_size_bytes
                )
            changes = {
                k: v
                for k, v in (
                    ("vcpu", vcpu),
                    ("memory_mib", memory_mib),
                    ("disk_size_bytes", disk_size_bytes),
                )
                if v is not None
            }
            return await self._update(name, **changes) if changes else vm

    # -- state helpers -------------------------------------------------------------------

    def _alive(self, vm: VmRecord) -> bool:
        handle = vm_boot.handle_of(vm, self.paths(vm))
        return handle is not None and procinfo.is_running(handle.process)

    def _vmm_for(self, backend: Backend) -> Vmm:
        cfg = self.ctx.config
        if backend is Backend.FIRECRACKER:
            binary = select.find_binary(cfg.firecracker_bin, "firecracker")
            return FirecrackerVmm(self.ctx.runner, binary or _missing("firecracker"))
        binary = select.find_binary(cfg.qemu_bin, "qemu-system-x86_64")
        return QemuVmm(self.ctx.runner, binary or _missing("qemu-system-x86_64"))

    async def _update(self, name: str, **changes: object) -> VmRecord:
        record: VmRecord = await self.ctx.db.run(repo.update_vm, name, **changes)
        if "state" in changes:
            await self.publish_dns()
        return record

    async def publish_dns(self) -> None:
        """Point ``<vm>.vm`` at running VMs only (records follow start/stop/delete)."""
        if self.ctx.dns is not None:
            running = await self.ctx.db.run(repo.list_vms, state=VmState.RUNNING)
            self.ctx.dns.update(records_from_vms(running))

    async def _mark_stopped(self, vm: VmRecord, *, reason: str | None) -> VmRecord:
        state = VmState.ERROR if vm.state is VmState.ERROR and reason is None else VmState.STOPPED
        return await self._update(
            vm.name,
            state=state,
            pid=None,
            pid_start_ticks=None,
            stopped_at=utc_now(),
            last_error=reason if reason else vm.last_error,
        )

    # -- for the monitor -------------------------------------------------------------------

    def busy(self, name: str) -> bool:
        """An operation holds the VM (its lock, or a stop in progress): leave it alone."""
        lock = self._locks.get(name)
        return name in self._stopping or (lock is not None and lock.locked())

    def alive(self, vm: VmRecord) -> bool:
        return self._alive(vm)

    async def mark_stopped(self, vm: VmRecord, *, reason: str | None) -> VmRecord:
        return await self._mark_stopped(vm, reason=reason)


def _state_of(accel: Accel | None) -> Any:
    from banger.wire import StageState

    return StageState.WARN if accel is Accel.TCG else StageState.OK


async def _stop_outcome(handle: VmmHandle) -> str | None:
    """What ``last_error`` says after a stop: nothing for a clean exit (or one we cannot
    know: a VMM adopted after a daemon restart is not our child)."""
    status = await spawn.exit_status(handle.process)
    pid = handle.process.pid
    if not status:
        return None
    if status < 0:
        try:
            sig = signals.Signals(-status).name
        except ValueError:
            sig = f"signal {-status}"
        return f"forcefully terminated: the VMM (pid {pid}) ended by {sig}, not by the guest"
    return f"the VMM (pid {pid}) exited with status {status} while stopping"


def _missing(binary: str) -> Any:
    raise InvalidState(f"{binary} is no longer installed", hint="`banger doctor` checks VMMs")
