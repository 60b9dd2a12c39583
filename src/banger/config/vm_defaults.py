"""Host-aware VM defaults and where each came from (SPEC §3).

Owns: the facts about the host that the defaults depend on (CPU count, RAM), the rule
"config, else heuristic, else built-in floor" with its provenance, and the spec line that
create/run print before progress starts.

Must not: read the config file (it receives a loaded ``Config``), create VMs, or check a
requested size against the host; refusing an oversized ``--memory`` belongs to the caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Generic, TypeVar

from banger.config.settings import Config
from banger.model import units

T = TypeVar("T")

BUILTIN_VCPU = 1
BUILTIN_MEMORY_MIB = 1024
BUILTIN_DISK_SIZE_BYTES = 8 * units.GIB
AUTO_VCPU_CAP = 4
AUTO_MEMORY_CAP_MIB = 8 * 1024
# Guest RAM in whole 256 MiB steps keeps the sizes people read in `vm list` round.
MEMORY_STEP_MIB = 256

MEMINFO = Path("/proc/meminfo")


class Provenance(StrEnum):
    CONFIG = "config"
    AUTO = "auto"
    BUILTIN = "builtin"


@dataclass(frozen=True)
class Resolved(Generic[T]):
    value: T
    source: Provenance

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "source": str(self.source)}


@dataclass(frozen=True)
class HostFacts:
    cpu_count: int
    mem_total_bytes: int

    @classmethod
    def probe(cls, meminfo: Path = MEMINFO) -> HostFacts:
        """Read this host; an unreadable meminfo gives 0 bytes, so the floors apply."""
        return cls(cpu_count=os.cpu_count() or 1, mem_total_bytes=_mem_total_bytes(meminfo))


def _mem_total_bytes(meminfo: Path) -> int:
    try:
        text = meminfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        # The kernel writes "MemTotal:  16314512 kB" and the unit is always kB (KiB).
        if name == "MemTotal" and fields and fields[0].isascii() and fields[0].isdigit():
            return int(fields[0]) * units.KIB
    return 0


@dataclass(frozen=True)
class VmDefaults:
    vcpu: Resolved[int]
    memory_mib: Resolved[int]
    disk_size_bytes: Resolved[int]

    def as_dict(self) -> dict[str, dict[str, object]]:
        return {
            "vcpu": self.vcpu.as_dict(),
            "memory_mib": self.memory_mib.as_dict(),
            "disk_size_bytes": self.disk_size_bytes.as_dict(),
        }

    def spec_line(self) -> str:
        return spec_line(self.vcpu.value, self.memory_mib.value, self.disk_size_bytes.value)


def resolve_vm_defaults(config: Config, host: HostFacts) -> VmDefaults:
    """``[vm_defaults]`` wins; else vCPU = cpus/4 (max 4), memory = RAM/8 (max 8 GiB)."""
    wanted = config.vm_defaults
    auto_vcpu = min(host.cpu_count // 4, AUTO_VCPU_CAP)
    auto_memory_mib = min(host.mem_total_bytes // 8 // units.MIB, AUTO_MEMORY_CAP_MIB)
    auto_memory_mib -= auto_memory_mib % MEMORY_STEP_MIB
    return VmDefaults(
        vcpu=_pick(wanted.vcpu, auto_vcpu, BUILTIN_VCPU),
        memory_mib=_pick(wanted.memory_mib, auto_memory_mib, BUILTIN_MEMORY_MIB),
        disk_size_bytes=_pick(wanted.disk_size_bytes, None, BUILTIN_DISK_SIZE_BYTES),
    )


def _pick(configured: int | None, auto: int | None, floor: int) -> Resolved[int]:
    if configured is not None:
        return Resolved(configured, Provenance.CONFIG)
    # A small host gives a heuristic below the floor: the floor is then the honest answer.
    if auto is not None and auto >= floor:
        return Resolved(auto, Provenance.AUTO)
    return Resolved(floor, Provenance.BUILTIN)


def spec_line(vcpu: int, memory_mib: int, disk_size_bytes: int) -> str:
    """The line create/run print first: ``spec: 4 vcpu · 8192 MiB · 8G disk``."""
    return f"spec: {vcpu} vcpu · {memory_mib} MiB · {units.format_size(disk_size_bytes)} disk"
