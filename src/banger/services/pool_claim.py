"""Handing a ready warm-pool VM to a create instead of booting one (issue 12).

Owns: which pool VM matches a create request (``matches``: what cannot change after
boot must be equal), the claim itself (a bigger work disk if asked, through
``banger.services.pool_grow``; the guest's hostname, the VM dir, the row and the
``<name>.vm`` record take the requested name; a VM that fails either is discarded and
the create boots cold), a short wait for a busy VM (settling, or held by another claim),
saying why a create that found pool VMs of its image still boots, and the
``GuestNamer`` seam that runs short commands in a running guest — the rename, the
grow's ``resize2fs``, the pool's settle — on the daemon's exec connection to the VM, over
SSH when the guest has no exec channel.
Must not: boot or refill (``banger.services.pool``), open an exec connection of its own
(QEMU's exec chardev takes one host at a time: ``ExecService`` holds it), or drain the
pool for a request no pool VM matches (no match simply means a cold create).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from banger.errors import BangerError, CommandFailed, NotFound
from banger.guest.exec_client import ExecConnection
from banger.host.publish import rename_noreplace
from banger.host.runner import Runner
from banger.model.records import VmRecord, VmState
from banger.model.units import format_size
from banger.model.wire import StageState
from banger.services import pool_grow
from banger.services.operations import Progress
from banger.services.vm_create import CreateRequest, name_taken
from banger.services.vm_paths import VmPaths
from banger.state import repo

if TYPE_CHECKING:
    from banger.services.vms import VmService

log = logging.getLogger("banger.pool")

#: Pool VMs are named ``pool-<hex>``; the row's ``pool`` column is what marks them.
POOL_PREFIX = "pool-"
RENAME_TIMEOUT_S = 10.0
#: How long a create with no free ready VM waits for a busy one (settling after its
#: boot, or held by another claim) before it boots instead: a settle takes ~0.7 s here,
#: a Debian boot under TCG 8.5 s.
BUSY_WAIT_S = 5.0


def rename_script(root: str = "") -> str:
    """Sets the running guest's hostname and makes /etc/hostname and the ``127.0.1.1`` line
    of /etc/hosts agree, with shell builtins only: under TCG each program a claim starts
    costs tens of milliseconds (``hostname``, ``grep`` and ``sed`` were three of them).
    The name is a checked DNS label; ``root`` is for tests (a directory standing for /)."""
    return (
        f'set -e; n="$1"; echo "$n" > {root}/proc/sys/kernel/hostname; '
        f'printf "%s\\n" "$n" > {root}/etc/hostname; out=; found=; nl="\n"; '
        'while IFS= read -r l || [ -n "$l" ]; do case "$l" in '
        '"127.0.1.1 "*|"127.0.1.1\t"*) l="127.0.1.1 $n"; found=1;; esac; '
        f'out="$out$l$nl"; done < {root}/etc/hosts; '
        '[ -n "$found" ] || out="${out}127.0.1.1 $n$nl"; '
        f'printf "%s" "$out" > {root}/etc/hosts'
    )


RENAME_SCRIPT = rename_script()


def rename_argv(name: str) -> list[str]:
    return ["sh", "-c", RENAME_SCRIPT, "sh", name]


class GuestNamer(Protocol):
    """Runs short commands in a running guest: the claim's rename, its disk grow and the
    pool's settle; raises ``BangerError`` when it cannot or the command fails."""

    async def rename(self, vm: VmRecord, paths: VmPaths, ssh_argv: list[str], name: str) -> str:
        """Returns how it was done (for the ``claim`` stage's detail)."""
        ...

    async def run(
        self, vm: VmRecord, ssh_argv: list[str], argv: list[str], *, timeout_s: float, what: str
    ) -> str:
        """Run ``argv`` to the end; returns how (through the agent, or over SSH and why).
        ``what`` names it in the error (``setting the guest's hostname``)."""
        ...


class ExecConnections(Protocol):
    """The daemon's exec connection of each VM (``banger.services.vm_exec.ExecService``)."""

    async def connection(self, name: str) -> ExecConnection: ...


#: Kept of a failed guest command's stderr, for the error's details.
STDERR_KEPT = 4096


class AgentGuestNamer:
    """On the daemon's exec connection to the guest agent (the one a later ``vm exec``
    uses: no second connection, no reconnect); over SSH when the guest has no agent
    (or no exec service was given)."""

    def __init__(self, runner: Runner, execs: ExecConnections | None = None) -> None:
        self.runner = runner
        self.execs = execs

    async def rename(self, vm: VmRecord, paths: VmPaths, ssh_argv: list[str], name: str) -> str:
        how = await self.run(
            vm,
            ssh_argv,
            rename_argv(name),
            timeout_s=RENAME_TIMEOUT_S,
            what="setting the guest's hostname",
        )
        return f"hostname set {how}"

    async def run(
        self, vm: VmRecord, ssh_argv: list[str], argv: list[str], *, timeout_s: float, what: str
    ) -> str:
        why_not = "no exec service"
        if self.execs is not None:
            try:
                conn = await self.execs.connection(vm.name)
            except BangerError as exc:
                why_not = exc.brief
            else:
                err = bytearray()

                def keep(data: bytes) -> None:
                    err.extend(data[: max(0, STDERR_KEPT - len(err))])

                status = await conn.run(argv, timeout_s=timeout_s, on_stderr=keep)
                if status.code != 0:
                    raise CommandFailed(
                        f"{what} failed ({status})",
                        details=err.decode(errors="replace").strip() or None,
                    )
                return "through the agent"
        log.info("no exec channel: running over ssh", extra={"fields": {"why": why_not}})
        await self.runner.run_async(
            [*ssh_argv, "--", *(_quoted(a) for a in argv)], timeout_s=timeout_s
        )
        return f"over ssh ({why_not})"


def _quoted(arg: str) -> str:
    """ssh joins its arguments with spaces for the remote shell: quote each one."""
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def matches(vm: VmRecord, req: CreateRequest, image_id: int | None) -> bool:
    """A ready pool VM can serve ``req``: same image, vCPUs and memory, a VMM it allows.
    Its work disk is grown at claim when ``req`` asks for more (``banger.services.
    pool_grow``). NAT is the bridge's, not the VM's: a claim turns it on."""
    return (
        vm.pool
        and vm.state is VmState.RUNNING
        and vm.image_id == image_id
        and vm.vcpu == req.vcpu
        and vm.memory_mib == req.memory_mib
        and (req.vmm is None or vm.vmm == req.vmm.value)
    )


async def claim(
    service: VmService, req: CreateRequest, image_id: int | None, progress: Progress
) -> VmRecord | None:
    """A matching ready pool VM, renamed to the request's name; None when there is none
    (the caller then boots one). A pool VM that cannot be renamed is thrown away."""
    ready: list[VmRecord] = await service.ctx.db.run(repo.list_vms, pool=True)
    # One whose disk is big enough first: a grow costs the claim time.
    ready.sort(key=lambda vm: vm.disk_size_bytes < req.disk_size_bytes)
    tried = False
    for candidate in ready:
        if not matches(candidate, req, image_id) or service.busy(candidate.name):
            continue
        tried = True
        async with service.locked(candidate.name):
            got = await _claim_one(service, candidate.name, req, image_id, progress)
        if got is not None:
            return got
    busy = [vm for vm in ready if matches(vm, req, image_id) and service.busy(vm.name)]
    why = None if tried else why_none(ready, req, image_id, busy=service.busy)
    if not tried and busy:
        # Settling (under a second here) or being claimed: waiting a little beats a boot.
        try:
            async with asyncio.timeout(BUSY_WAIT_S):
                async with service.locked(busy[0].name):
                    pass
        except TimeoutError:
            why = f"{why} (waited {BUSY_WAIT_S:g} s)"
        else:
            async with service.locked(busy[0].name):
                got = await _claim_one(service, busy[0].name, req, image_id, progress)
            if got is not None:
                return got
            why = None  # taken by the other claim, or it failed and said why
    # A candidate that failed said why itself; otherwise say why none was tried.
    if why is not None:
        progress.note("claim", StageState.WARN, f"{why}: booting")
    return None


def why_none(
    pool_vms: list[VmRecord],
    req: CreateRequest,
    image_id: int | None,
    *,
    busy: Callable[[str], bool],
) -> str | None:
    """Why a create whose image has pool VMs got none of them (None: the image has no
    pool VM, the pool is simply not in play)."""
    mine = [vm for vm in pool_vms if vm.image_id == image_id]
    if not mine:
        return None
    fitting = [vm for vm in mine if matches(replace(vm, state=VmState.RUNNING), req, image_id)]
    if not fitting:
        vm = mine[0]
        return f"no ready VM of this size (the pool's: {vm.vcpu} vCPU, {vm.memory_mib} MiB)"
    running = [vm for vm in fitting if vm.state is VmState.RUNNING]
    if not running:
        return f"the pool is still booting ({len(fitting)} VM(s))"
    if all(busy(vm.name) for vm in running):
        return (
            f"every ready VM ({len(running)}) is busy: settling after its boot, or being "
            "claimed by another create"
        )
    return "no ready VM could be claimed"


async def _claim_one(
    service: VmService, pool_name: str, req: CreateRequest, image_id: int | None, progress: Progress
) -> VmRecord | None:
    try:
        vm = await service.get(pool_name)
    except NotFound:
        return None  # another claim or a drain took it while we waited for its lock
    if not matches(vm, req, image_id) or not service.alive(vm):
        return None
    if vm.disk_size_bytes < req.disk_size_bytes:
        why = await pool_grow.why_not_growable(service, vm)
        if why is not None:  # nothing was changed: it stays in the pool
            progress.note(
                "claim", StageState.WARN, f"{pool_name} cannot grow its work disk ({why})"
            )
            return None
    name = req.name or await service.fresh_name()
    paths = service.paths(vm)
    grown = ""
    step = "renamed"
    try:
        if vm.disk_size_bytes < req.disk_size_bytes:
            step = f"work disk not grown to {format_size(req.disk_size_bytes)}"
            vm, via = await pool_grow.grow(service, vm, paths, req.disk_size_bytes)
            grown = f", work disk grown to {format_size(vm.disk_size_bytes)} ({via})"
            step = "renamed"
        how = await service.guest_namer.rename(vm, paths, service.ssh_argv_of(vm), name)
    except (BangerError, OSError) as exc:
        # Half-grown or unnamed, it is handed to nobody: removed, and the create boots.
        reason = exc.brief if isinstance(exc, BangerError) else str(exc)
        log.warning(
            "pool VM not claimed: discarded",
            extra={"fields": {"vm": pool_name, "step": step, "error": reason}},
        )
        progress.note(
            "claim", StageState.WARN, f"{pool_name} not usable ({step}: {reason}): booting"
        )
        await service.remove_pool_vm(vm)
        return None
    except BaseException:
        # Interrupted mid-grow or mid-rename: what state the guest is in is not known.
        await service.remove_pool_vm(vm)
        raise
    # The stage starts once the guest answers to its new name: a claim that fails
    # before shows as a warning, then the cold create's own stages.
    with progress.stage("claim"):
        try:
            claimed = await _take_name(service, vm, paths, name)
        except BaseException:
            # Its guest already answers to the new name: it cannot go back to the pool.
            await service.remove_pool_vm(vm)
            raise
        for callback in service.on_renamed:
            callback(pool_name, name)  # the exec connection follows the VM to its name
        await service.publish_dns()
        if req.nat and not claimed.nat:
            await service.network.ensure_nat()
            claimed = await service.ctx.db.run(repo.update_vm, name, nat=True)
        progress.detail = f"{name}: ready VM {pool_name} ({claimed.ip}), {how}{grown}"
    service.pool_claimed.set()
    return claimed


async def _take_name(service: VmService, vm: VmRecord, paths: VmPaths, name: str) -> VmRecord:
    """Row and VM dir take ``name``, under the lock cold creates reserve names with."""
    async with service.reserve_lock:
        taken: list[VmRecord] = await service.ctx.db.run(repo.list_vms)
        if name in {v.name for v in taken}:
            raise name_taken(name)
        new_dir = paths.vm_dir.with_name(name)
        await asyncio.to_thread(rename_noreplace, paths.vm_dir, new_dir)
        try:
            claimed: VmRecord = await service.ctx.db.run(
                repo.claim_vm, vm.name, name, vm_dir=str(new_dir)
            )
        except BaseException:
            await asyncio.to_thread(rename_noreplace, new_dir, paths.vm_dir)
            raise
        return claimed
