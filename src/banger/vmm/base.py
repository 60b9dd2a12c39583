"""What every VMM backend must do, and the machine description they all take.

Owns: the ``Vmm`` protocol, ``Backend``/``Accel`` choices, ``MachineSpec`` (everything a
backend needs to boot one VM, already resolved to host paths) and ``VmmHandle`` (what the
daemon records to find, re-adopt and stop a running VMM).
Must not: allocate names, IPs, TAPs or disks (services do) or touch the state database.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Protocol

from banger.host.procinfo import ProcessIdentity


class Backend(StrEnum):
    FIRECRACKER = "firecracker"
    QEMU = "qemu"


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class DriveSpec:
    """A virtio block device. Drives appear in the guest in order: vda, vdb, …"""

    drive_id: str
    path: Path
    read_only: bool = False


@dataclass(frozen=True)
class NetSpec:
    tap: str
    mac: str
    ip: str
    gateway: str
    prefix_len: int
    dns: tuple[str, ...] = ()


@dataclass(frozen=True)
class MachineSpec:
    name: str
    vcpu: int
    memory_mib: int
    kernel: Path
    initrd: Path | None
    #: The complete kernel command line (console, root, ip=, init=, …).
    cmdline: str
    drives: tuple[DriveSpec, ...]
    net: NetSpec | None
    #: Per-VM directory for logs (0700, under the state dir).
    vm_dir: Path
    #: Per-VM directory for sockets (0700, short path under the runtime dir).
    run_dir: Path
    accel: Accel = Accel.TCG

    @property
    def console_log(self) -> Path:
        return self.vm_dir / "console.log"

    @property
    def vmm_log(self) -> Path:
        return self.vm_dir / "vmm.log"


@dataclass(frozen=True)
class VmmHandle:
    """Enough to find a VMM again after a daemon restart."""

    backend: Backend
    process: ProcessIdentity
    #: QMP socket (QEMU) or API socket (Firecracker).
    control_socket: Path


class Vmm(Protocol):
    backend: ClassVar[Backend]

    def check_kernel(self, kernel: Path) -> None:
        """Raise InvalidArgument when this backend cannot boot ``kernel`` (SPEC §6)."""

    async def launch(self, spec: MachineSpec) -> VmmHandle:
        """Start the VMM and the guest; return once the guest is booting (not ready)."""

    async def shutdown(self, handle: VmmHandle, *, timeout_s: float) -> None:
        """Ask the guest to stop, then end the VMM if it has not exited in time."""

    async def kill(self, handle: VmmHandle, *, sig: int) -> None:
        """Send ``sig`` to the VMM process, only if it is still the one we started."""
