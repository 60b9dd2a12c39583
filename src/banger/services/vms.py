"""The VM service: create, start, stop, restart, kill, delete and resize VMs.

Owns: the lifecycle of VM rows and their VMM processes, per-VM locks and the short global
reservation window (name, IP, TAP), and running the stages of a create
(``banger.services.vm_create``) in order. Its collaborators come in through the
constructor: the VMM factory, the privileged network operations, the image catalog, the
probe of guest ports; the runner, database and DNS publisher come with the context.
Noticing VMMs that die on their own is ``vm_monitor``; the bridge, NAT and ``~vm``
routing are ``vm_network``; which networking a VM gets (bridged, or rootless: SPEC §9)
and its address, TAP or SSH port are ``vm_addresses``.
Must not: build disks or talk netlink itself (``vm_disks``, ``banger.net``), or speak HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal as signals
from collections.abc import AsyncIterator, Callable
from typing import Any

from banger.dns.server import records_from_vms
from banger.errors import BangerError, InvalidArgument, InvalidState, NotFound
from banger.host import procinfo
from banger.host.procinfo import ProcessIdentity
from banger.host.publish import retire_published
from banger.model.naming import generate_name
from banger.model.records import ImageRecord, KernelRecord, VmRecord, VmState, utc_now
from banger.model.units import format_size
from banger.model.wire import StageState
from banger.net.privilege_mode import PrivilegeMode
from banger.net.privileged import PrivilegedOps
from banger.net.taps import TapPool
from banger.services import pool_claim, readiness, vm_addresses, vm_boot, vm_disks, vm_stop
from banger.services.catalog_fetch import CatalogService
from banger.services.context import DaemonContext
from banger.services.inventory import record_dict
from banger.services.operations import Progress, run_streamed, stop_if_set, unless_set
from banger.services.pool_claim import AgentGuestNamer, GuestNamer
from banger.services.readiness import PortProbe
from banger.services.sweeper import Sweeper
from banger.services.vm_addresses import VmAddresses
from banger.services.vm_create import (
    Artifacts,
    BootPlan,
    CreateOrder,
    CreateRequest,
    boot_spec,
    check_host_limits,
    name_taken,
    new_vm_record,
    plan_boot,
    probe_kernel,
    validate_request,
)
from banger.services.vm_network import VmNetwork
from banger.services.vm_paths import VmPaths
from banger.services.vmm_factory import VmmFactory
from banger.state import repo
from banger.vmm import spawn, table
from banger.vmm.base import Accel, Backend, VmmHandle
from banger.workspace import filesync

log = logging.getLogger("banger.vms")


class VmService:
    def __init__(
        self,
        ctx: DaemonContext,
        *,
        ops: PrivilegedOps,
        vmms: VmmFactory,
        catalog: CatalogService,
        mode: Callable[[], PrivilegeMode],
        guest_ports: PortProbe = readiness.port_open,
        forwarded_ports: PortProbe = readiness.ssh_banner,
        guest_namer: GuestNamer | None = None,
    ) -> None:
        self.ctx = ctx
        self.ops = ops
        self.vmms = vmms
        self.catalog = catalog
        self.guest_ports = guest_ports
        self.forwarded_ports = forwarded_ports
        cfg = ctx.config
        self.taps = TapPool(ops, cfg.bridge_name, cfg.tap_pool_size, os.getuid())
        self.addresses = VmAddresses(cfg, self.taps, mode)
        self.reserve_lock = asyncio.Lock()
        self.network = VmNetwork(ctx.config, ops, ctx.dns)
        self._locks: dict[str, asyncio.Lock] = {}
        self.sweeper = Sweeper()
        self._stopping: set[str] = set()
        self._said_backend = False
        #: Called with a VM's name when it stopped or was deleted (its exec connection).
        self.on_gone: list[Callable[[str], None]] = []
        #: Called with (old, new) when a claimed pool VM took a new name.
        self.on_renamed: list[Callable[[str, str], None]] = []
        #: How each running VMM's guest first answered (``vm exec`` waits less for an
        #: agent that was not the one to answer).
        self.ready_via: dict[ProcessIdentity, readiness.Via] = {}
        #: Renames a claimed warm-pool VM's guest (``banger.services.pool_claim``); over SSH
        #: until ``compose`` gives it the exec service (VmService comes first).
        self.guest_namer = guest_namer or AgentGuestNamer(ctx.runner)
        #: Set after each claim, so that the pool refills at once.
        self.pool_claimed = asyncio.Event()
        #: User creates in flight: the pool waits for none before it boots (CPU is shared).
        self.creating = 0

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

    # -- create: validate → resolve the image → plan → reserve → disks → boot → ready --

    async def validate(self, order: CreateOrder) -> CreateRequest:
        """The checks worth failing on before a progress stream starts."""
        existing: list[VmRecord] = await self.ctx.db.run(repo.list_vms)
        return validate_request(
            order,
            taken={v.name for v in existing},
            defaults=self.ctx.vm_defaults,
            host=self.ctx.host,
            default_image=self.ctx.config.default_image_name,
        )

    def create(self, req: CreateRequest) -> AsyncIterator[dict[str, Any]]:
        return run_streamed(lambda progress: self._create(req, progress))

    async def _create(self, req: CreateRequest, progress: Progress) -> dict[str, Any]:
        if req.pool:
            return await self._create_cold(req, progress)
        self.creating += 1
        try:
            return await self._create_cold(req, progress)
        finally:
            self.creating -= 1

    async def _create_cold(self, req: CreateRequest, progress: Progress) -> dict[str, Any]:
        # A client that goes away leaves the create running (docs/explanation/
        # interruption.md), unless it asked for delete_on_disconnect: then nothing new is
        # started once it is gone, a boot waiting for the guest stops, and the VM goes.
        stop = progress.abandoned if req.delete_on_disconnect else None
        artifacts = await self._resolve_image(req.image, progress)
        if not req.pool:
            claimed = await pool_claim.claim(self, req, artifacts.image.id, progress)
            if claimed is not None:
                await self._delete_if_abandoned(stop, claimed.name)
                return record_dict(claimed)
        kvm = await self._kvm_usable(artifacts, progress)
        stop_if_set(stop, None)
        with progress.stage("reserve"):
            rootless = (await self.addresses.mode_now()) is PrivilegeMode.ROOTLESS
            plan = self._plan(artifacts, kvm, req.vmm, progress, rootless=rootless, quiet=req.pool)
            if not rootless:
                await self.network.ensure()
            vm = await self._reserve(req, plan, rootless=rootless)
            progress.detail = vm_addresses.describe(vm)
        try:
            vm = await self._build_and_boot(vm, req, plan, progress, stop, rootless=rootless)
        except BaseException:
            await self._delete_if_abandoned(stop, vm.name)
            raise
        await self._delete_if_abandoned(stop, vm.name)
        return record_dict(vm)

    async def _delete_if_abandoned(self, stop: asyncio.Event | None, name: str) -> None:
        """The client went away and wants no VM: delete it, then raise ``Interrupted``."""
        if stop is None or not stop.is_set():
            return
        with contextlib.suppress(NotFound):
            await self.delete(name, force=True)
        stop_if_set(stop, name)

    async def _build_and_boot(
        self,
        vm: VmRecord,
        req: CreateRequest,
        plan: BootPlan,
        progress: Progress,
        stop: asyncio.Event | None,
        *,
        rootless: bool,
    ) -> VmRecord:
        try:
            with progress.stage("disks"):
                progress.detail = await asyncio.to_thread(
                    vm_disks.build, self.ctx, vm, self.paths(vm), plan.image, plan.kernel
                )
        except BaseException:
            await self.discard(vm)
            raise
        stop_if_set(stop, vm.name)
        if req.nat and not rootless:  # a rootless VM's outbound access is slirp's own
            with progress.stage("nat"):
                await self.network.ensure_nat()
        async with self.locked(vm.name):
            return await self._boot(vm, plan, progress, timeout_s=req.boot_timeout_s, stop=stop)

    async def _resolve_image(self, name: str, progress: Progress) -> Artifacts:
        """A catalog image (the default one included) is obtained on first use, with its
        kernel and its own progress stages; anything else must already exist."""
        await self.catalog.ensure_image(name, progress)
        return await self._artifacts(name)

    async def _artifacts(self, name: str) -> Artifacts:
        image: ImageRecord = await self.ctx.db.run(repo.get_image, name)
        kernel: KernelRecord | None = None
        if image.kernel_name:
            kernel = await self.ctx.db.run(repo.get_kernel, image.kernel_name)
        return Artifacts(image, kernel)

    async def _kvm_usable(self, artifacts: Artifacts, progress: Progress) -> bool:
        """The KVM verdict (kept across restarts: ``banger.vmm.kvm_probe``); when this
        operation must wait for a probe boot, a ``kvm-probe`` stage says so."""
        known = self.vmms.kvm_known()
        if known is not None:
            return known.runs_guests
        with progress.stage("kvm-probe"):
            verdict = await self.vmms.kvm_probe(probe_kernel(artifacts))
            progress.detail = (
                f"/dev/kvm {'runs' if verdict.runs_guests else 'cannot run'} guests "
                f"({verdict.detail}); kept until the host or QEMU changes"
            )
        return verdict.runs_guests

    def _plan(
        self,
        artifacts: Artifacts,
        kvm: bool,
        wanted: Backend | None,
        progress: Progress,
        *,
        rootless: bool,
        quiet: bool = False,
    ) -> BootPlan:
        pick = self.vmms.choose(kvm_usable=kvm, wanted=wanted, rootless=rootless)
        plan = plan_boot(artifacts, pick.vmm, pick.accel)
        if not self._said_backend and not quiet:
            self._said_backend = True
            progress.note("vmm", _state_of(pick.accel), pick.reason)
        return plan

    async def _reserve(self, req: CreateRequest, plan: BootPlan, *, rootless: bool) -> VmRecord:
        async with self.reserve_lock:
            existing: list[VmRecord] = await self.ctx.db.run(repo.list_vms)
            names = {v.name for v in existing}
            name = req.name or generate_name(names)
            if name in names:
                raise name_taken(name)
            net = await self.addresses.assign(existing, rootless=rootless)
            vm_dir = self.ctx.layout.vms_dir / name
            record = new_vm_record(req, name, plan, net=net, vm_dir=vm_dir)
            try:
                inserted: VmRecord = await self.ctx.db.run(repo.insert_vm, record)
            except BaseException:
                await self.addresses.release(net)
                raise
            return inserted

    async def _refresh_port(self, vm: VmRecord) -> VmRecord:
        """A rootless VM starting again keeps its SSH port unless someone took it."""
        async with self.reserve_lock:
            existing: list[VmRecord] = await self.ctx.db.run(repo.list_vms)
            port = await self.addresses.refresh_port(vm, existing)
            if port is None:
                return vm
            log.info("SSH port of %s taken meanwhile: %s -> %s", vm.name, vm.ssh_port, port)
            return await self._update(vm.name, ssh_port=port)

    # -- boot, start -------------------------------------------------------------------

    async def _boot(
        self,
        vm: VmRecord,
        plan: BootPlan,
        progress: Progress,
        *,
        timeout_s: float,
        stop: asyncio.Event | None = None,
    ) -> VmRecord:
        paths = self.paths(vm)
        spec = boot_spec(vm, paths, plan, self.ctx.config)
        vm_disks.prepare_run_dir(paths)
        vm = await self._update(vm.name, state=VmState.STARTING, last_error=None)
        target = vm_addresses.ssh_target(vm)
        assert target is not None  # every VM row has an address or a port
        argv = vm_boot.ssh_argv(self.ctx.config.ssh_key_file(), paths.known_hosts, target)
        try:
            with progress.stage("boot"):
                handle = await vm_addresses.launch(plan.vmm, spec, self.ops)
                vm = await self._record_launch(vm, handle)
                progress.detail = f"{handle.backend.value} ({plan.accel.value}), pid {vm.pid}"
            with progress.stage("wait-ready"):
                progress.detail = await unless_set(
                    stop, self._wait_ready(vm, handle, argv, timeout_s), vm.name
                )
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

    async def _record_launch(self, vm: VmRecord, handle: VmmHandle) -> VmRecord:
        ident = handle.process
        return await self._update(
            vm.name,
            pid=ident.pid,
            pid_start_ticks=ident.start_ticks,
            boot_id=ident.boot_id,
            vmm=handle.backend.value,
        )

    async def _wait_ready(
        self,
        vm: VmRecord,
        handle: VmmHandle,
        argv: list[str],
        timeout_s: float,
    ) -> str:
        paths = self.paths(vm)
        agent = table.agent_channel_at(paths.run_dir, handle.backend).client()
        target = vm_addresses.ssh_target(vm)
        assert target is not None  # every VM row has an address or a port
        # slirp accepts a forwarded connection before the guest does: there, only sshd's
        # banner says that sshd is up.
        probe = self.guest_ports if vm.ssh_port is None else self.forwarded_ports
        guest = readiness.Guest(
            target.host, handle.process, paths.console_log, ssh_port=target.port, port_probe=probe
        )
        ready = await readiness.wait_until_ready(
            self.ctx.runner, argv, agent, guest, timeout_s=timeout_s
        )
        self.ready_via[handle.process] = ready.via
        return ready.describe()

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

    async def start_checked(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """``start``, after a name that does not exist is refused before the stream starts
        (a 404, as for stop and restart: issue 14 item 13); the stream then re-reads the
        VM under its lock."""
        await self.get(name)
        return self.start(name)

    def start(self, name: str, *, boot_timeout_s: float = 300.0) -> AsyncIterator[dict[str, Any]]:
        return run_streamed(lambda progress: self._start(name, progress, boot_timeout_s))

    async def _start(self, name: str, progress: Progress, timeout_s: float) -> dict[str, Any]:
        async with self.locked(name):
            vm = await self.get(name)
            if self._alive(vm):
                progress.note("start", _state_of(None), f"{name} is already running")
                return record_dict(vm)
            wanted = Backend(vm.vmm) if vm.vmm else None
            artifacts = await self._image_of(vm)
            kvm = await self._kvm_usable(artifacts, progress)
            # A VM keeps the networking it was created with (its row says which).
            rootless = vm.ssh_port is not None
            plan = self._plan(artifacts, kvm, wanted, progress, rootless=rootless)
            if rootless:
                vm = await self._refresh_port(vm)
            else:
                await self.network.ensure()
                if vm.nat:
                    await self.network.ensure_nat()
            vm = await self._boot(vm, plan, progress, timeout_s=timeout_s)
            return record_dict(vm)

    async def _image_of(self, vm: VmRecord) -> Artifacts:
        if vm.image_id is None:
            raise InvalidState(f"VM {vm.name!r} has no image recorded")
        image: ImageRecord = await self.ctx.db.run(repo.get_image_by_id, vm.image_id)
        return await self._artifacts(image.name)

    # -- stop, kill, restart, delete -----------------------------------------------------

    async def restart(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """Stop (now, before the stream starts), then start with progress."""
        await self.stop(name)
        return self.start(name)

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
                await vm_stop.shut_down(self.vmms, name, handle)
            finally:
                self._stopping.discard(name)
            outcome = await vm_stop.stop_outcome(handle)
            return await self._mark_stopped(await self.get(name), reason=outcome)

    async def kill(self, name: str, sig: int) -> VmRecord:
        async with self.locked(name):
            vm = await self.get(name)
            handle = vm_boot.running_handle(vm, self.paths(vm))
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
        """Remove a VM's row, files and TAP (row first: leftovers are swept at start-up).

        Its directory is renamed away at once and deleted after the caller has its answer
        (``sweeper``)."""
        await self.ctx.db.run(repo.delete_vm, vm.name)
        self._gone(vm.name)
        await self.publish_dns()
        paths = self.paths(vm)
        trash = await asyncio.to_thread(retire_published, paths.vm_dir)
        await asyncio.to_thread(shutil.rmtree, paths.run_dir, True)
        if vm.tap:
            await asyncio.to_thread(self.taps.release, vm.tap)
        if trash is not None:
            self.sweeper.later(trash)  # its disks' blocks are freed after the answer

    async def set_resources(
        self, name: str, *, vcpu: int | None, memory_mib: int | None, disk_size_bytes: int | None
    ) -> VmRecord:
        check_host_limits(self.ctx.host, vcpu, memory_mib)
        async with self.locked(name):
            vm = await self.get(name)
            if self._alive(vm):
                raise InvalidState(
                    f"VM {name!r} is running: changing its size is not supported after start",
                    hint="`banger vm stop` it first",
                )
            if disk_size_bytes is not None:
                if disk_size_bytes < vm.disk_size_bytes:
                    now = format_size(vm.disk_size_bytes)
                    raise InvalidArgument(
                        f"--disk-size {format_size(disk_size_bytes)}: the work disk can grow "
                        f"but not shrink, and it is {now} now",
                        hint=f"give --disk-size {now} or more",
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

    # -- for the warm pool (banger.services.pool, pool_claim) -------------------------------

    async def create_silently(self, req: CreateRequest, progress: Progress) -> dict[str, Any]:
        """A create run in the caller's task (the pool's), with the caller's progress."""
        return await self._create(req, progress)

    async def fresh_name(self) -> str:
        """A generated name no row has now (the claim checks again under the lock)."""
        existing: list[VmRecord] = await self.ctx.db.run(repo.list_vms)
        return generate_name({v.name for v in existing})

    def ssh_argv_of(self, vm: VmRecord) -> list[str]:
        paths = self.paths(vm)
        target = vm_addresses.ssh_target(vm)
        assert target is not None  # every VM row has an address or a port
        return vm_boot.ssh_argv(self.ctx.config.ssh_key_file(), paths.known_hosts, target)

    async def remove_pool_vm(self, vm: VmRecord) -> None:
        """Kill a pool VM and remove it; the caller holds its lock (or owns it otherwise)."""
        handle = vm_boot.handle_of(vm, self.paths(vm))
        if handle is not None and procinfo.is_running(handle.process):
            spawn.signal_if_ours(handle.process, signals.SIGKILL)
            await spawn.wait_exit(handle.process, timeout_s=10)
        await self.discard(vm)

    # -- state helpers -------------------------------------------------------------------

    def _alive(self, vm: VmRecord) -> bool:
        handle = vm_boot.handle_of(vm, self.paths(vm))
        return handle is not None and procinfo.is_running(handle.process)

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
        self._gone(vm.name)
        return await self._update(
            vm.name,
            state=state,
            pid=None,
            pid_start_ticks=None,
            stopped_at=utc_now(),
            last_error=reason if reason else vm.last_error,
        )

    def _gone(self, name: str) -> None:
        for callback in self.on_gone:
            callback(name)
        for ident in [i for i in self.ready_via if not procinfo.is_running(i)]:
            del self.ready_via[ident]

    # -- for the monitor -------------------------------------------------------------------

    def busy(self, name: str) -> bool:
        """An operation holds the VM (its lock, or a stop in progress): leave it alone."""
        lock = self._locks.get(name)
        return name in self._stopping or (lock is not None and lock.locked())

    def alive(self, vm: VmRecord) -> bool:
        return self._alive(vm)

    async def mark_stopped(self, vm: VmRecord, *, reason: str | None) -> VmRecord:
        return await self._mark_stopped(vm, reason=reason)


def _state_of(accel: Accel | None) -> StageState:
    return StageState.WARN if accel is Accel.TCG else StageState.OK
