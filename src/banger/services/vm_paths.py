"""Where one VM's files live: its published dir (disks, logs) and its socket dir.

Owns: the per-VM path names. The socket dir is keyed by the row id, not the name, so
socket paths stay far below the 108-byte sun_path limit whatever the name
(ADVERSARIAL 52). Must not: create anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from banger.host.paths import Layout
from banger.vmm.base import console_log_path, vmm_log_path


@dataclass(frozen=True)
class VmPaths:
    vm_dir: Path
    run_dir: Path

    @classmethod
    def of(cls, layout: Layout, name: str, vm_id: int) -> VmPaths:
        return cls(vm_dir=layout.vms_dir / name, run_dir=layout.runtime_dir / "vms" / str(vm_id))

    @property
    def rootfs(self) -> Path:
        return self.vm_dir / "rootfs.ext4"

    @property
    def work_disk(self) -> Path:
        return self.vm_dir / "work.ext4"

    @property
    def known_hosts(self) -> Path:
        return self.vm_dir / "known_hosts"

    @property
    def console_log(self) -> Path:
        return console_log_path(self.vm_dir)

    @property
    def vmm_log(self) -> Path:
        return vmm_log_path(self.vm_dir)
