"""The ``Vmm`` seam of the VM service: the KVM verdict, which VMM boots a VM, and one
for a recorded VM.

Owns: ``VmmFactory`` (what ``VmService`` asks for) and ``HostVmms``, the real one: the
kept KVM verdict and its probe boot (``banger.vmm.kvm_probe``), the choice between
backends from config, an override and what the host has (``banger.vmm.select``), and a
``Vmm`` for a backend (``banger.vmm.table``).
Must not: change rows, branch on the backend, or be used by anything but the VM service
(tests pass a fake).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from banger.config.settings import Config
from banger.host.runner import Runner
from banger.vmm import select, table
from banger.vmm.base import Accel, Backend, Vmm
from banger.vmm.kvm_probe import KvmProbe, Verdict


@dataclass(frozen=True)
class VmmPick:
    vmm: Vmm
    accel: Accel
    #: One line for the ``vmm`` progress note (why this backend and accelerator).
    reason: str


class VmmFactory(Protocol):
    def kvm_known(self) -> Verdict | None:
        """Whether /dev/kvm runs guests, when known without a probe boot."""

    async def kvm_probe(self, kernel: Path) -> Verdict:
        """Boot ``kernel`` under KVM once (or wait for the probe already running)."""

    def choose(self, *, kvm_usable: bool, wanted: Backend | None, rootless: bool) -> VmmPick:
        """The VMM a new boot uses (QEMU for a rootless VM: user-mode networking)."""

    def installed(self, backend: Backend) -> Vmm:
        """A ``Vmm`` for a VM recorded with ``backend``; fails if its binary is gone."""


class HostVmms:
    """The VMMs installed on this host, and its one KVM probe."""

    def __init__(self, config: Config, runner: Runner, probe: KvmProbe) -> None:
        self._config = config
        self._runner = runner
        self._probe = probe

    def kvm_known(self) -> Verdict | None:
        return self._probe.known()

    async def kvm_probe(self, kernel: Path) -> Verdict:
        verdict = await self._probe.verdict(kernel)
        assert verdict is not None  # a kernel was given
        return verdict

    def choose(self, *, kvm_usable: bool, wanted: Backend | None, rootless: bool) -> VmmPick:
        tun_openable = os.geteuid() == 0 or os.access(select.TUN, os.R_OK | os.W_OK)
        choice = select.choose(
            self._config,
            kvm_usable=kvm_usable,
            override=wanted,
            rootless=rootless,
            tun_openable=tun_openable,
        )
        vmm = table.make_vmm(choice.backend, self._runner, choice.binary)
        return VmmPick(vmm, choice.accel, choice.reason)

    def installed(self, backend: Backend) -> Vmm:
        return table.installed_vmm(backend, self._config, self._runner)
