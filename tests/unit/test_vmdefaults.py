"""Host-aware VM defaults with provenance (SPEC §3)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from banger.config.settings import Config, VmDefaultsConfig
from banger.config.vm_defaults import (
    HostFacts,
    Provenance,
    Resolved,
    VmDefaults,
    resolve_vm_defaults,
    spec_line,
)

MIB = 1024**2
GIB = 1024**3


def configured(**values: object) -> Config:
    return Config(vm_defaults=VmDefaultsConfig.model_validate(values))


def test_spec_line_format() -> None:
    assert spec_line(4, 8192, 8 * GIB) == "spec: 4 vcpu · 8192 MiB · 8G disk"
    assert spec_line(1, 1024, 512 * MIB) == "spec: 1 vcpu · 1024 MiB · 512M disk"


def test_big_host_hits_the_caps() -> None:
    d = resolve_vm_defaults(Config(), HostFacts(cpu_count=64, mem_total_bytes=256 * GIB))
    assert d.vcpu == Resolved(4, Provenance.AUTO)
    assert d.memory_mib == Resolved(8192, Provenance.AUTO)
    assert d.disk_size_bytes == Resolved(8 * GIB, Provenance.BUILTIN)
    assert d.spec_line() == "spec: 4 vcpu · 8192 MiB · 8G disk"


def test_middle_host_uses_the_heuristic() -> None:
    d = resolve_vm_defaults(Config(), HostFacts(cpu_count=8, mem_total_bytes=20 * GIB))
    assert d.vcpu == Resolved(2, Provenance.AUTO)
    # 20 GiB / 8 = 2560 MiB, already a multiple of 256.
    assert d.memory_mib == Resolved(2560, Provenance.AUTO)


def test_memory_rounds_down_to_256_mib() -> None:
    d = resolve_vm_defaults(Config(), HostFacts(cpu_count=4, mem_total_bytes=15 * GIB))
    assert d.memory_mib == Resolved(1792, Provenance.AUTO)  # 1920 is 7.5 steps of 256
    d = resolve_vm_defaults(Config(), HostFacts(cpu_count=4, mem_total_bytes=11 * GIB))
    assert d.memory_mib == Resolved(1280, Provenance.AUTO)  # 1408 rounded down


def test_small_host_gets_the_builtin_floors() -> None:
    """This CI machine: 2 cores; a small laptop: 4 GiB."""
    d = resolve_vm_defaults(Config(), HostFacts(cpu_count=2, mem_total_bytes=4 * GIB))
    assert d.vcpu == Resolved(1, Provenance.BUILTIN)
    assert d.memory_mib == Resolved(1024, Provenance.BUILTIN)


def test_config_values_win() -> None:
    config = configured(vcpu=2, memory_mib=512, disk_size="20G")
    d = resolve_vm_defaults(config, HostFacts(cpu_count=64, mem_total_bytes=256 * GIB))
    assert d.vcpu == Resolved(2, Provenance.CONFIG)
    assert d.memory_mib == Resolved(512, Provenance.CONFIG)
    assert d.disk_size_bytes == Resolved(20 * GIB, Provenance.CONFIG)


def test_as_dict_is_json_shaped() -> None:
    d = resolve_vm_defaults(configured(vcpu=3), HostFacts(cpu_count=16, mem_total_bytes=64 * GIB))
    assert d.as_dict() == {
        "vcpu": {"value": 3, "source": "config"},
        "memory_mib": {"value": 8192, "source": "auto"},
        "disk_size_bytes": {"value": 8 * GIB, "source": "builtin"},
    }


@given(
    cpus=st.integers(min_value=1, max_value=512),
    ram=st.integers(min_value=256 * MIB, max_value=4 * 1024 * GIB),
)
def test_heuristics_stay_within_floors_and_caps(cpus: int, ram: int) -> None:
    d = resolve_vm_defaults(Config(), HostFacts(cpu_count=cpus, mem_total_bytes=ram))
    assert 1 <= d.vcpu.value <= 4
    assert d.vcpu.value <= max(cpus // 4, 1)
    assert 1024 <= d.memory_mib.value <= 8192
    assert d.memory_mib.value % 256 == 0
    if d.memory_mib.source is Provenance.AUTO:
        assert d.memory_mib.value * MIB <= ram // 8
    assert d.vcpu.source is (Provenance.AUTO if cpus >= 4 else Provenance.BUILTIN)
    assert d.memory_mib.source is (Provenance.AUTO if ram // 8 >= GIB else Provenance.BUILTIN)
    assert d.disk_size_bytes == Resolved(8 * GIB, Provenance.BUILTIN)


@given(
    cpus=st.integers(min_value=1, max_value=512),
    ram=st.integers(min_value=256 * MIB, max_value=4 * 1024 * GIB),
    vcpu=st.integers(min_value=1, max_value=64),
    memory_mib=st.integers(min_value=128, max_value=1048576),
)
def test_config_always_wins(cpus: int, ram: int, vcpu: int, memory_mib: int) -> None:
    config = configured(vcpu=vcpu, memory_mib=memory_mib)
    d = resolve_vm_defaults(config, HostFacts(cpu_count=cpus, mem_total_bytes=ram))
    assert d.vcpu == Resolved(vcpu, Provenance.CONFIG)
    assert d.memory_mib == Resolved(memory_mib, Provenance.CONFIG)


def test_probe_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemFree:  1000 kB\nMemTotal:       16314512 kB\n")
    facts = HostFacts.probe(meminfo)
    assert facts.mem_total_bytes == 16314512 * 1024
    assert facts.cpu_count >= 1


def test_probe_of_this_host_is_sane() -> None:
    facts = HostFacts.probe()
    assert facts.cpu_count >= 1
    assert facts.mem_total_bytes > 64 * MIB


def test_probe_without_meminfo_falls_back_to_floors(tmp_path: Path) -> None:
    facts = HostFacts.probe(tmp_path / "missing")
    assert facts.mem_total_bytes == 0
    d = resolve_vm_defaults(Config(), facts)
    assert d.memory_mib == Resolved(1024, Provenance.BUILTIN)


def test_garbled_meminfo_gives_zero(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: lots kB\nMemTotal:\n")
    assert HostFacts.probe(meminfo).mem_total_bytes == 0


def test_vm_defaults_is_frozen_data() -> None:
    d = VmDefaults(
        vcpu=Resolved(1, Provenance.BUILTIN),
        memory_mib=Resolved(1024, Provenance.BUILTIN),
        disk_size_bytes=Resolved(8 * GIB, Provenance.BUILTIN),
    )
    assert d.spec_line() == "spec: 1 vcpu · 1024 MiB · 8G disk"
