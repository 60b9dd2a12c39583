"""What ``doctor``'s checks read (``DoctorInputs``) and what each concludes (``CheckResult``).

Owns: those two values, and the privilege mode the network checks share (probed once per
run, since it may ask the helper). Must not: check anything (``doctor``, ``doctor_net``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from banger.config.settings import Config
from banger.config.vm_defaults import VmDefaults
from banger.host.paths import Layout
from banger.host.runner import Runner
from banger.model.wire import StageState
from banger.net import privilege_mode
from banger.vmm.kvm_probe import Verdict as KvmVerdict


@dataclass(frozen=True)
class CheckResult:
    state: StageState
    detail: str
    hint: str | None = None


@dataclass(frozen=True)
class DoctorInputs:
    layout: Layout
    config: Config
    vm_defaults: VmDefaults
    db_summary: Callable[[], str]
    #: The KVM probe's verdict (None: not probed, e.g. no kernel to boot yet).
    kvm_verdict: KvmVerdict | None = None
    runner: Runner = field(default_factory=Runner)
    #: "local" | "catalog" | "missing": where the default image would come from.
    default_image: str = "missing"
    #: banger-helper's socket (None: $BANGER_HELPER_SOCKET or the default).
    helper_socket: Path | None = None
    #: Published image/kernel dirs without a row: (path, size in bytes, command removing it).
    orphans: tuple[tuple[str, int, str], ...] = ()
    #: The port the daemon's DNS server is bound to (None: this daemon runs none).
    dns_port: int | None = None
    #: The privilege mode, when the caller probed it already (else each check probes).
    privilege: privilege_mode.PrivilegeReport | None = None

    def privilege_report(self) -> privilege_mode.PrivilegeReport:
        if self.privilege is not None:
            return self.privilege
        return privilege_mode.probe(self.helper_socket, setting=self.config.privilege_mode)


Check = Callable[[DoctorInputs], CheckResult]
