"""The ``Vmm`` seam of the VM service: which VMM boots a VM, and one for a recorded VM.

Owns: ``VmmFactory`` (what ``VmService`` asks for) and ``HostVmms``, the real one: the
(cached) KVM probe, the choice between backends from config, an override and what the
host has, and a ``Vmm`` for the backend a row records (to stop or adopt it).
Must not: change rows, or be used by anything but the VM service (tests pass a fake).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from banger.config.settings import Config
from banger.errors import InvalidState
from banger.host.paths import Layout
from banger.host.runner import Runner
from banger.vmm import select
from banger.vmm.base import Accel, Backend, Vmm
from banger.vmm.firecracker import FirecrackerVmm
from banger.vmm.qemu import QemuVmm


@dataclass(frozen=True)
class VmmPick:
    vmm: Vmm
    accel: Accel
    #: One line for the ``vmm`` progress note (why this backend and accelerator).
    reason: str


class VmmFactory(Protocol):
    async def choose(self, probe_kernel: Path, wanted: Backend | None) -> VmmPick:
        """The VMM a new boot uses; ``probe_kernel`` is what a KVM probe may boot."""

    def installed(self, backend: Backend) -> Vmm:
        """A ``Vmm`` for a VM recorded with ``backend``; fails if its binary is gone."""


class HostVmms:
    """The VMMs installed on this host."""

    def __init__(self, config: Config, layout: Layout, runner: Runner) -> None:
        self._config = config
        self._layout = layout
        self._runner = runner

    async def choose(self, probe_kernel: Path, wanted: Backend | None) -> VmmPick:
        qemu = select.find_binary(self._config.qemu_bin, "qemu-system-x86_64")
        cache = self._layout.runtime_dir / "kvm-probe.json"
        kvm = await select.kvm_runs_guests(qemu, probe_kernel, cache)
        choice = select.choose(self._config, kvm_usable=kvm, override=wanted)
        vmm: Vmm
        if choice.backend is Backend.FIRECRACKER:
            vmm = FirecrackerVmm(self._runner, choice.binary)
        else:
            vmm = QemuVmm(self._runner, choice.binary)
        return VmmPick(vmm, choice.accel, choice.reason)

    def installed(self, backend: Backend) -> Vmm:
        cfg = self._config
        if backend is Backend.FIRECRACKER:
            binary = select.find_binary(cfg.firecracker_bin, "firecracker")
            return FirecrackerVmm(self._runner, binary or _missing("firecracker"))
        binary = select.find_binary(cfg.qemu_bin, "qemu-system-x86_64")
        return QemuVmm(self._runner, binary or _missing("qemu-system-x86_64"))


def _missing(binary: str) -> Any:
    raise InvalidState(f"{binary} is no longer installed", hint="`banger doctor` checks VMMs")
