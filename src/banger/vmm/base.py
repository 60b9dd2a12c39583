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
from typing import TYPE_CHECKING, ClassVar, Protocol

from banger.host.procinfo import ProcessIdentity

if TYPE_CHECKING:
    from banger.vmm.channels import AgentChannel


class Backend(StrEnum):
    FIRECRACKER = "firecracker"
    QEMU = "qemu"


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


def console_log_path(vm_dir: Path) -> Path:
    """The guest's serial console, whichever backend writes it."""
    return vm_dir / "console.log"


def vmm_log_path(vm_dir: Path) -> Path:
    """The VMM's own log (QEMU's stderr, Firecracker's logger)."""
    return vm_dir / "vmm.log"


@dataclass(frozen=True)
class DriveSpec:
    """A virtio block device. Drives appear in the guest in order: vda, vdb, …"""

    drive_id: str
    path: Path
    read_only: bool = False


@dataclass(frozen=True)
class UserNet:
    """User-mode networking (QEMU's slirp) instead of a TAP: rootless VMs (SPEC §9)."""

    #: The 127.0.0.1 port forwarded to the guest's port 22.
    ssh_port: int
    #: Whether the guest may open connections beyond itself (``--nat``); without it slirp
    #: is ``restrict=on``, as a bridged VM without NAT reaches nothing but the bridge.
    outbound: bool = False


@dataclass(frozen=True)
class NetSpec:
    #: The TAP a bridged VM attaches to; ``None`` with ``user`` set.
    tap: str | None
    mac: str
    ip: str
    gateway: str
    prefix_len: int
    dns: tuple[str, ...] = ()
    user: UserNet | None = None
    #: A descriptor already attached to ``tap`` (opened by banger-helper for a daemon that
    #: cannot open ``/dev/net/tun``), inherited by the VMM; the caller closes it after
    #: ``launch``. Only for backends with ``takes_tap_fd``.
    tap_fd: int | None = None


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
        return console_log_path(self.vm_dir)

    @property
    def vmm_log(self) -> Path:
        return vmm_log_path(self.vm_dir)


@dataclass(frozen=True)
class VmmHandle:
    """Enough to find a VMM again after a daemon restart."""

    backend: Backend
    process: ProcessIdentity
    #: QMP socket (QEMU) or API socket (Firecracker).
    control_socket: Path


class Vmm(Protocol):
    backend: ClassVar[Backend]
    #: The file name of the control socket in a VM's ``run_dir`` (QMP, Firecracker API).
    control_socket_name: ClassVar[str]
    #: Kernel files this backend boots, best first, as named in a kernel's directory.
    kernel_files: ClassVar[tuple[str, ...]]
    #: The ``config.toml`` key naming the binary, and the name looked up on PATH.
    binary_setting: ClassVar[str]
    binary_name: ClassVar[str]
    #: Whether the backend can be handed its TAP as an open descriptor (QEMU can;
    #: Firecracker opens the TAP by name itself).
    takes_tap_fd: ClassVar[bool]

    @classmethod
    def agent_channel(cls, run_dir: Path) -> AgentChannel:
        """Where the guest agent of a VM whose sockets live in ``run_dir`` is reached."""
        ...

    def check_kernel(self, kernel: Path) -> None:
        """Raise InvalidArgument when this backend cannot boot ``kernel`` (SPEC §6)."""

    async def launch(self, spec: MachineSpec) -> VmmHandle:
        """Start the VMM and the guest; return once the guest is booting (not ready)."""

    async def shutdown(self, handle: VmmHandle, *, timeout_s: float) -> None:
        """Ask the guest to stop, then end the VMM if it has not exited in time."""

    async def kill(self, handle: VmmHandle, *, sig: int) -> None:
        """Send ``sig`` to the VMM process, only if it is still the one we started."""

    async def grow_drive(self, handle: VmmHandle, drive: DriveSpec, size_bytes: int) -> None:
        """Tell the running VMM that ``drive``'s backing file is now ``size_bytes`` long,
        so that the guest sees a bigger disk (the caller grew the file; never a shrink).
        Raises ``BangerError`` when the VMM does not take it."""
