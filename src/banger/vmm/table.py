"""The one table from ``Backend`` to the class that runs it, and what callers ask of it.

Owns: ``VMM_CLASSES`` and the per-backend look-ups services need without branching on
the backend themselves — the binary, a ``Vmm`` object, the control socket of a recorded
VM, the kernel file to boot from a kernel's directory, the agent channel. Each answer
comes from the backend class (``QemuVmm``, ``FirecrackerVmm``); this module only picks
the class. Must not: start processes or hold per-backend facts of its own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from banger.config.settings import Config
from banger.errors import InvalidState
from banger.host.runner import Runner
from banger.vmm.base import Backend, MachineSpec, Vmm
from banger.vmm.channels import AgentChannel
from banger.vmm.firecracker import FirecrackerVmm
from banger.vmm.qemu import QemuVmm

VmmClass = type[QemuVmm] | type[FirecrackerVmm]

#: In the order banger lists them (``doctor``).
VMM_CLASSES: dict[Backend, VmmClass] = {
    Backend.QEMU: QemuVmm,
    Backend.FIRECRACKER: FirecrackerVmm,
}


def vmm_class(backend: Backend) -> VmmClass:
    return VMM_CLASSES[backend]


def find_binary(configured: str | None, default: str) -> Path | None:
    """``configured`` if it is executable; else ``default`` looked up on PATH."""
    if configured:
        return Path(configured) if os.access(configured, os.X_OK) else None
    found = shutil.which(default)
    return Path(found) if found else None


def binary_for(backend: Backend, config: Config) -> Path | None:
    """The backend's binary: the configured path (``qemu_bin``, …) or the one on PATH."""
    cls = vmm_class(backend)
    configured = getattr(config, cls.binary_setting)
    return find_binary(str(configured) if configured else None, cls.binary_name)


def make_vmm(backend: Backend, runner: Runner, binary: Path) -> Vmm:
    vmm: Vmm = vmm_class(backend)(runner, binary)
    return vmm


def installed_vmm(backend: Backend, config: Config, runner: Runner) -> Vmm:
    """A ``Vmm`` for ``backend`` (to stop or adopt a VM); fails if its binary is gone."""
    binary = binary_for(backend, config)
    if binary is None:
        raise InvalidState(
            f"{vmm_class(backend).binary_name} is no longer installed",
            hint="`banger doctor` checks VMMs",
        )
    return make_vmm(backend, runner, binary)


def control_socket(backend: Backend, run_dir: Path) -> Path:
    """Where the VMM of a VM with sockets in ``run_dir`` listens (QMP, Firecracker API)."""
    return run_dir / vmm_class(backend).control_socket_name


def boot_kernel(backend: Backend, kernel_dir: Path) -> Path:
    """The file of a kernel directory ``backend`` boots: its first preference present,
    else its last (the name a missing-kernel error then reports)."""
    names = vmm_class(backend).kernel_files
    for name in names:
        if (kernel_dir / name).exists():
            return kernel_dir / name
    return kernel_dir / names[-1]


def agent_channel_at(run_dir: Path, backend: Backend) -> AgentChannel:
    """The agent channel of a VM from its socket dir alone (what the API handlers have)."""
    return vmm_class(backend).agent_channel(run_dir)


def agent_channel(spec: MachineSpec, backend: Backend) -> AgentChannel:
    """The agent channel of the VM ``spec`` describes, when ``backend`` runs it."""
    return agent_channel_at(spec.run_dir, backend)
