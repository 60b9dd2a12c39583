"""How many ready VMs the warm pool keeps, of which image and size (SPEC §3, issue 12).

Owns: turning ``pool_size`` / ``[[pool]]`` and the host's facts into one ``PoolTarget``
per pooled image, and the "auto" rule: one ready VM of the default image on a host with
room for it (at least ``AUTO_MIN_CPUS`` CPUs and ``AUTO_MIN_MEMORY_BYTES`` of RAM),
none otherwise. Must not: boot anything or read the state database
(``banger.services.pool`` does that).
"""

from __future__ import annotations

from dataclasses import dataclass

from banger.config.settings import Config
from banger.config.vm_defaults import HostFacts, resolve_vm_defaults, spec_line
from banger.model import units

#: A ready VM idles on a vCPU thread of its own; with one CPU it would slow every boot.
AUTO_MIN_CPUS = 2
#: A ready VM holds up to its memory (the VM default: RAM/8, at least 1 GiB) for as long
#: as it waits; on a host with less RAM than this that is too much to hold unasked.
AUTO_MIN_MEMORY_BYTES = 8 * units.GIB
AUTO_SIZE = 1


@dataclass(frozen=True)
class PoolTarget:
    """Keep ``size`` ready VMs of ``image`` with this spec; ``why`` says where it came from."""

    image: str
    size: int
    vcpu: int
    memory_mib: int
    disk_size_bytes: int
    why: str

    def spec_line(self) -> str:
        return spec_line(self.vcpu, self.memory_mib, self.disk_size_bytes)


def resolve_pools(config: Config, host: HostFacts) -> list[PoolTarget]:
    """``[[pool]]`` entries when there are any; else ``pool_size`` for the default image."""
    defaults = resolve_vm_defaults(config, host)
    if config.pool:
        return [
            PoolTarget(
                image=entry.image or config.default_image_name,
                size=entry.size,
                vcpu=entry.vcpu or defaults.vcpu.value,
                memory_mib=entry.memory_mib or defaults.memory_mib.value,
                disk_size_bytes=entry.disk_size_bytes or defaults.disk_size_bytes.value,
                why="[[pool]]",
            )
            for entry in config.pool
        ]
    if isinstance(config.pool_size, int):
        size, why = config.pool_size, "pool_size"
    else:
        size, why = auto_size(host)
    return [
        PoolTarget(
            image=config.default_image_name,
            size=size,
            vcpu=defaults.vcpu.value,
            memory_mib=defaults.memory_mib.value,
            disk_size_bytes=defaults.disk_size_bytes.value,
            why=why,
        )
    ]


def auto_size(host: HostFacts) -> tuple[int, str]:
    """``pool_size = "auto"``: the size and the reason, for ``pool status``."""
    cpus, ram = host.cpu_count, host.mem_total_bytes
    if cpus >= AUTO_MIN_CPUS and ram >= AUTO_MIN_MEMORY_BYTES:
        return AUTO_SIZE, f"auto: {cpus} CPUs, {units.format_size(ram)} RAM"
    return 0, (
        f"auto: off ({cpus} CPUs, {units.format_size(ram)} RAM; needs "
        f"{AUTO_MIN_CPUS} CPUs and {units.format_size(AUTO_MIN_MEMORY_BYTES)})"
    )
