"""Which VMM and which accelerator a VM gets (SPEC intro, DESIGN "VMM backends").

Owns: the automatic choice — Firecracker when its binary is present and /dev/kvm runs
guests; else QEMU with KVM; else QEMU with TCG (slow, said once) — and the ``vmm``
override. Whether /dev/kvm runs guests is ``banger.vmm.kvm_probe``'s verdict.
Must not: start VMs or processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from banger.config.settings import Config, VmmChoice
from banger.errors import InvalidArgument, UnsupportedHost
from banger.vmm.base import Accel, Backend
from banger.vmm.table import binary_for


@dataclass(frozen=True)
class Choice:
    backend: Backend
    accel: Accel
    binary: Path
    reason: str


TUN = Path("/dev/net/tun")


def choose(
    config: Config,
    *,
    kvm_usable: bool,
    override: Backend | None = None,
    rootless: bool = False,
    tun_openable: bool = True,
) -> Choice:
    """``rootless``: the VM uses user-mode networking, which only QEMU has.
    ``tun_openable``: this process may open /dev/net/tun. Firecracker opens its TAP by
    name, so it needs that; QEMU is handed the TAP open. Debian ships the node 0666; a
    host that made it 0600 cannot run Firecracker as a normal user."""
    wanted = override or (None if config.vmm is VmmChoice.AUTO else Backend(config.vmm.value))
    firecracker = binary_for(Backend.FIRECRACKER, config)
    qemu = binary_for(Backend.QEMU, config)
    if rootless and wanted is Backend.FIRECRACKER:
        raise InvalidArgument(
            "Firecracker has no user-mode networking, so it cannot run a rootless VM",
            hint='use QEMU (--vmm qemu, or vmm = "auto"), or set up banger-helper '
            "(docs/explanation/privilege.md) so that VMs join the bridge",
        )
    if wanted is Backend.FIRECRACKER and not tun_openable:
        raise UnsupportedHost(
            f"Firecracker opens its TAP by name, and this user cannot open {TUN}",
            hint=f'use QEMU (--vmm qemu, or vmm = "auto"), which is handed its TAP open; '
            f"or make {TUN} mode 0666 as Debian ships it (sudo chmod 0666 {TUN})",
        )
    if rootless or not tun_openable:
        firecracker = None
    if wanted is Backend.FIRECRACKER or (wanted is None and firecracker and kvm_usable):
        if firecracker is None:
            raise UnsupportedHost(
                "vmm is firecracker but no firecracker binary was found",
                hint='install firecracker or set firecracker_bin; or use vmm = "qemu"',
            )
        return Choice(Backend.FIRECRACKER, Accel.KVM, firecracker, "firecracker")
    if qemu is None:
        raise UnsupportedHost(
            "no qemu-system-x86_64 found (and Firecracker cannot run here)",
            hint="sudo apt-get install qemu-system-x86, or set qemu_bin in config.toml",
        )
    if kvm_usable:
        return Choice(Backend.QEMU, Accel.KVM, qemu, "QEMU with KVM")
    return Choice(
        Backend.QEMU,
        Accel.TCG,
        qemu,
        "QEMU with software emulation (TCG): slow, because /dev/kvm cannot run "
        "guests on this host (see `banger doctor`)",
    )
