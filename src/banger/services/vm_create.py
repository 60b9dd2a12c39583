"""The stages of ``vm create`` as plain values in, plain values out.

Owns: what a create request is once checked (``validate_request``: the name first, then
the host's limits, then the defaults), what a boot uses (``BootPlan``), the row a
reservation inserts (``new_vm_record``) and the machine a boot starts (``boot_spec``).
``VmService._create`` runs them in order: validate → resolve the image → plan →
reserve → disks → boot → ready.
Must not: do I/O (no rows, files or processes): the service does, between the stages.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

from banger.config.settings import Config, TcgAslrChoice
from banger.config.vm_defaults import HostFacts, VmDefaults
from banger.errors import AlreadyExists, InvalidArgument
from banger.model.addressing import mac_for_ip
from banger.model.naming import validate_vm_name
from banger.model.records import ImageRecord, KernelRecord, VmRecord, VmState, utc_now
from banger.services import vm_boot
from banger.services.vm_paths import VmPaths
from banger.vmm.base import Accel, Backend, MachineSpec, Vmm
from banger.vmm.kvm_probe import PROBER

MIB = 1024 * 1024


@dataclass(frozen=True)
class CreateOrder:
    """What a client asked for; ``None`` means "the default"."""

    name: str | None = None
    image: str | None = None
    vcpu: int | None = None
    memory_mib: int | None = None
    disk_size_bytes: int | None = None
    nat: bool = False
    vmm: Backend | None = None
    boot_timeout_s: float = 300.0
    delete_on_disconnect: bool = False


@dataclass(frozen=True)
class CreateRequest:
    """A checked order: every size known, the name valid and free when it was checked
    (the reservation checks again: another create may take it in between)."""

    name: str | None
    image: str
    vcpu: int
    memory_mib: int
    disk_size_bytes: int
    nat: bool = False
    vmm: Backend | None = None
    boot_timeout_s: float = 300.0
    #: The client (``vm run --rm``) wants no VM if it goes away before the result.
    delete_on_disconnect: bool = False
    #: Booted by the warm pool ahead of a create (``banger.services.pool``).
    pool: bool = False


@dataclass(frozen=True)
class NetAssignment:
    """What the reservation gave a VM: an address and a TAP on the bridge, or (rootless,
    user-mode networking) only the loopback port its SSH is forwarded from."""

    ip: str | None = None
    tap: str | None = None
    ssh_port: int | None = None


@dataclass(frozen=True)
class Artifacts:
    image: ImageRecord
    kernel: KernelRecord | None


@dataclass(frozen=True)
class BootPlan:
    """What a boot uses: the image, its kernel, the VMM and the accelerator."""

    image: ImageRecord
    kernel: KernelRecord | None
    vmm: Vmm
    accel: Accel


def validate_request(
    order: CreateOrder,
    *,
    taken: Container[str],
    defaults: VmDefaults,
    host: HostFacts,
    default_image: str,
) -> CreateRequest:
    """Everything refused before any work starts (ADVERSARIAL 46, 47; issue 14 item 10:
    the name before the image is resolved, downloaded or probed)."""
    name = None
    if order.name is not None:
        name = validate_vm_name(order.name)
        if name in taken:
            raise name_taken(name)
    check_host_limits(host, order.vcpu, order.memory_mib)
    return CreateRequest(
        name=name,
        image=order.image or default_image,
        vcpu=order.vcpu or defaults.vcpu.value,
        memory_mib=order.memory_mib or defaults.memory_mib.value,
        disk_size_bytes=order.disk_size_bytes or defaults.disk_size_bytes.value,
        nat=order.nat,
        vmm=order.vmm,
        boot_timeout_s=order.boot_timeout_s,
        delete_on_disconnect=order.delete_on_disconnect,
    )


def check_host_limits(host: HostFacts, vcpu: int | None, memory_mib: int | None) -> None:
    """More than the host has is an error with units, not a silent clamp (ADVERSARIAL 47)."""
    cpus = host.cpu_count or 1
    if vcpu is not None and vcpu > cpus:
        raise InvalidArgument(f"vcpu {vcpu} is more than this host's {cpus} CPUs")
    ram_mib = host.mem_total_bytes // MIB
    if memory_mib is not None and ram_mib and memory_mib > ram_mib:
        raise InvalidArgument(f"memory {memory_mib} MiB is more than this host's {ram_mib} MiB")


def name_taken(name: str) -> AlreadyExists:
    return AlreadyExists(
        f"a VM named {name!r} already exists",
        hint="pick another --name, or `banger vm delete` it",
    )


def probe_kernel(artifacts: Artifacts) -> Path:
    """The kernel file a KVM probe boots (the prober's choice from the image's kernel)."""
    return vm_boot.boot_files(artifacts.image, artifacts.kernel, PROBER).kernel


def plan_boot(artifacts: Artifacts, vmm: Vmm, accel: Accel) -> BootPlan:
    """The boot, once the VMM is chosen; refused when that VMM cannot boot the kernel."""
    vmm.check_kernel(vm_boot.boot_files(artifacts.image, artifacts.kernel, vmm.backend).kernel)
    return BootPlan(artifacts.image, artifacts.kernel, vmm, accel)


def new_vm_record(
    req: CreateRequest, name: str, plan: BootPlan, *, net: NetAssignment, vm_dir: Path
) -> VmRecord:
    now = utc_now()
    return VmRecord(
        name=name,
        image_id=plan.image.id,
        state=VmState.CREATING,
        vcpu=req.vcpu,
        memory_mib=req.memory_mib,
        disk_size_bytes=req.disk_size_bytes,
        created_at=now,
        updated_at=now,
        vmm=plan.vmm.backend.value,
        nat=req.nat,
        ip=net.ip,
        mac=mac_for_ip(net.ip) if net.ip else None,
        tap=net.tap,
        ssh_port=net.ssh_port,
        vm_dir=str(vm_dir),
        pool=req.pool,
    )


def boot_spec(vm: VmRecord, paths: VmPaths, plan: BootPlan, config: Config) -> MachineSpec:
    if vm.ssh_port is not None:
        net = vm_boot.USER_NET_FACTS  # rootless: slirp's addresses, whatever config says
    else:
        net = vm_boot.NetFacts(
            gateway=config.bridge_ip, cidr=config.cidr, dns=tuple(config.default_dns)
        )
    files = vm_boot.boot_files(plan.image, plan.kernel, plan.vmm.backend)
    return vm_boot.machine_spec(
        vm, paths, files, net, plan.accel, aslr_when_emulated=config.tcg_aslr is TcgAslrChoice.ON
    )
