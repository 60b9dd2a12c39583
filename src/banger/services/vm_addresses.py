"""How a VM is reached on the network: on the bridge, or rootless (SPEC §9).

Owns: which networking a new VM gets (asked of the privilege mode at each create: a
helper may have come or gone), handing it an address and a TAP, or — rootless — a
loopback port for its SSH forward; giving those back; checking, before a rootless VM
starts again, that its port is still free (else it gets another); where its SSH is; and
handing a VMM started by a daemon that is not root its TAP already open.
Callers hold the service's reservation lock around ``assign`` and ``refresh_port``, so
that two VMs never get the same address, TAP or port.
Must not: write rows (the VM service does, with what this returns), or create links
itself (``TapPool`` and ``PrivilegedOps`` do).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import replace

from banger.config.settings import Config
from banger.model.addressing import allocate_ip
from banger.model.records import VmRecord
from banger.net import user_net
from banger.net.privilege_mode import PrivilegeMode
from banger.net.privileged import PrivilegedOps
from banger.net.taps import TapPool
from banger.net.user_net import SshTarget
from banger.services.vm_create import NetAssignment
from banger.vmm.base import MachineSpec, Vmm, VmmHandle


class VmAddresses:
    def __init__(
        self,
        config: Config,
        taps: TapPool,
        mode: Callable[[], PrivilegeMode],
        *,
        port_free: Callable[[int], bool] = user_net.port_free,
    ) -> None:
        self._config = config
        self._taps = taps
        self._mode = mode
        self._port_free = port_free

    async def mode_now(self) -> PrivilegeMode:
        """The privilege mode in effect (asks the helper ``hello`` when not root)."""
        return await asyncio.to_thread(self._mode)

    async def assign(self, existing: Sequence[VmRecord], *, rootless: bool) -> NetAssignment:
        if rootless:
            return NetAssignment(ssh_port=await self._free_port(existing))
        cfg = self._config
        ip = allocate_ip(cfg.cidr, cfg.bridge_ip, {v.ip for v in existing if v.ip})
        tap = await asyncio.to_thread(self._taps.acquire, {v.tap for v in existing if v.tap})
        return NetAssignment(ip=ip, tap=tap)

    async def release(self, net: NetAssignment) -> None:
        if net.tap:
            await asyncio.to_thread(self._taps.release, net.tap)

    async def refresh_port(self, vm: VmRecord, existing: Sequence[VmRecord]) -> int | None:
        """A new port for a rootless VM whose recorded one someone else bound meanwhile
        (another user's VM, any program); ``None`` when it keeps its port."""
        if vm.ssh_port is None or await asyncio.to_thread(self._port_free, vm.ssh_port):
            return None
        return await self._free_port([v for v in existing if v.name != vm.name])

    async def _free_port(self, existing: Sequence[VmRecord]) -> int:
        taken = {v.ssh_port for v in existing if v.ssh_port is not None}
        return await asyncio.to_thread(user_net.allocate_ssh_port, taken, free=self._port_free)


async def launch(vmm: Vmm, spec: MachineSpec, ops: PrivilegedOps) -> VmmHandle:
    """``vmm.launch(spec)``; a daemon that is not root first has its TAP opened by
    banger-helper and hands QEMU the descriptor (``-netdev tap,fd=N``), so that its user
    needs no access to ``/dev/net/tun`` (a 0600 node on some hosts). Root's QEMU opens the
    TAP by name as before; Firecracker only can."""
    net = spec.net
    if net is None or net.tap is None or not vmm.takes_tap_fd or os.geteuid() == 0:
        return await vmm.launch(spec)
    fd = await asyncio.to_thread(ops.open_tap, net.tap, owner_uid=os.getuid())
    try:
        return await vmm.launch(replace(spec, net=replace(net, tap_fd=fd)))
    finally:
        os.close(fd)  # QEMU holds its own copy from here on


def ssh_target(vm: VmRecord) -> SshTarget | None:
    return user_net.ssh_target(vm.name, vm.ip, vm.ssh_port)


def describe(vm: VmRecord) -> str:
    """The reservation's progress detail."""
    if vm.ssh_port is not None:
        return (
            f"{vm.name}: rootless (user-mode networking), SSH on "
            f"{user_net.LOOPBACK}:{vm.ssh_port}; no {vm.name}.vm address"
        )
    return f"{vm.name}: {vm.ip} on {vm.tap}"
