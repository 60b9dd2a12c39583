"""Booting one VM: which kernel, which VMM, the machine spec, and the ssh command line.

Owns: resolving an image's kernel files for a backend, building the ``MachineSpec`` from
a VM row, and the ``ssh`` argv banger uses for a VM (managed key, the VM's known_hosts).
Waiting for the guest is ``banger.services.readiness``. Must not: change rows or allocate
resources.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from banger.errors import InvalidArgument, InvalidState
from banger.guest.ssh_argv import ssh_prefix
from banger.host.procinfo import ProcessIdentity, is_running
from banger.model.addressing import netmask, prefix_len
from banger.model.cmdline import BootArgs, kernel_cmdline
from banger.model.records import ImageRecord, KernelRecord, VmRecord, not_running
from banger.net import user_net
from banger.net.user_net import SshTarget
from banger.services.vm_paths import VmPaths
from banger.vmm import table
from banger.vmm.base import Accel, Backend, DriveSpec, MachineSpec, NetSpec, UserNet, VmmHandle


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path | None
    init: str | None = None


def boot_files(image: ImageRecord, kernel: KernelRecord | None, backend: Backend) -> BootFiles:
    """The kernel and initrd a backend boots for ``image`` (SPEC §6: kernels must suit)."""
    if kernel is not None:
        kdir = Path(kernel.dir_path)
        initrd = kdir / "initrd.img" if kernel.has_initrd else None
        return BootFiles(table.boot_kernel(backend, kdir), initrd, image.init_path)
    if not image.kernel_path:
        raise InvalidArgument(
            f"image {image.name!r} has no kernel", hint="register it with --kernel or --kernel-ref"
        )
    initrd_path = Path(image.initrd_path) if image.initrd_path else None
    return BootFiles(Path(image.kernel_path), initrd_path, image.init_path)


def host_tsc_khz() -> int | None:
    """The host TSC frequency, handed to TCG guests so they need not calibrate it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("cpu MHz"):
            with contextlib.suppress(ValueError):
                return int(float(line.split(":", 1)[1]) * 1000)
    return None


@dataclass(frozen=True)
class NetFacts:
    gateway: str
    cidr: str
    dns: tuple[str, ...]


#: The work disk's drive id: the second drive, ``/dev/vdb`` (``/root``) in the guest.
WORK_DRIVE_ID = "work"
#: A rootless VM's network: QEMU's slirp (banger.net.user_net).
USER_NET_FACTS = NetFacts(gateway=user_net.GATEWAY, cidr=user_net.CIDR, dns=(user_net.DNS,))


def _net_spec(vm: VmRecord, net: NetFacts) -> tuple[str, NetSpec]:
    """The guest's own address, and its NIC: a TAP on the bridge, or slirp."""
    if vm.ssh_port is not None:
        user = UserNet(ssh_port=vm.ssh_port, outbound=vm.nat)
        ip, mac, tap = user_net.GUEST_IP, user_net.GUEST_MAC, None
    else:
        assert vm.ip and vm.mac and vm.tap
        user, ip, mac, tap = None, vm.ip, vm.mac, vm.tap
    spec = NetSpec(
        tap=tap,
        mac=mac,
        ip=ip,
        gateway=net.gateway,
        prefix_len=prefix_len(net.cidr),
        dns=net.dns,
        user=user,
    )
    return ip, spec


def machine_spec(
    vm: VmRecord,
    paths: VmPaths,
    files: BootFiles,
    net: NetFacts,
    accel: Accel,
    *,
    aslr_when_emulated: bool = False,
) -> MachineSpec:
    """What the VMM boots. Under TCG the guest's address space is not randomized unless
    ``aslr_when_emulated`` (config ``tcg_aslr = "on"``)."""
    ip, net_spec = _net_spec(vm, net)
    args = BootArgs(
        hostname=vm.name,
        ip=ip,
        gateway=net.gateway,
        netmask=netmask(net.cidr),
        dns=net.dns,
        tsc_khz=host_tsc_khz() if accel is Accel.TCG else None,
        initrd_net=files.initrd is not None,
        init=files.init,
        norandmaps=accel is Accel.TCG and not aslr_when_emulated,
    )
    return MachineSpec(
        name=vm.name,
        vcpu=vm.vcpu,
        memory_mib=vm.memory_mib,
        kernel=files.kernel,
        initrd=files.initrd,
        cmdline=kernel_cmdline(args),
        drives=(DriveSpec("rootfs", paths.rootfs), DriveSpec(WORK_DRIVE_ID, paths.work_disk)),
        net=net_spec,
        vm_dir=paths.vm_dir,
        run_dir=paths.run_dir,
        accel=accel,
    )


def handle_of(vm: VmRecord, paths: VmPaths) -> VmmHandle | None:
    if vm.pid is None or vm.pid_start_ticks is None or vm.boot_id is None or vm.vmm is None:
        return None
    backend = Backend(vm.vmm)
    identity = ProcessIdentity(vm.pid, vm.pid_start_ticks, vm.boot_id)
    return VmmHandle(backend, identity, table.control_socket(backend, paths.run_dir))


def running_handle(vm: VmRecord, paths: VmPaths) -> VmmHandle:
    """The handle of ``vm``'s VMM while that very process runs; else the one "not
    running" error every command that needs a running VM gives."""
    handle = handle_of(vm, paths)
    if handle is None or not is_running(handle.process):
        brief, hint = not_running(vm.name, vm.state.value)
        raise InvalidState(brief, hint=hint)
    return handle


def ssh_argv(
    key: Path, known_hosts: Path, target: SshTarget, *, connect_timeout_s: int = 2
) -> list[str]:
    prefix = ssh_prefix(
        key,
        known_hosts,
        batch=True,
        connect_timeout_s=connect_timeout_s,
        port=target.port,
        host_key_alias=target.host_key_alias,
    )
    return [*prefix, target.host]
