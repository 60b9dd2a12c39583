"""What every request handler of the daemon may use, built once at start-up.

Owns: the wiring of layout, config, state database, build stamp and the shutdown
signal. Must not: hold per-request state.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from banger.config.settings import Config
from banger.config.vm_defaults import HostFacts, VmDefaults, resolve_vm_defaults
from banger.host.buildinfo import BuildInfo
from banger.host.paths import Layout
from banger.host.runner import Runner
from banger.state.db import AsyncDatabase
from banger.vmm.kvm_probe import KvmProbe


@dataclass
class DaemonContext:
    layout: Layout
    config: Config
    db: AsyncDatabase
    build: BuildInfo
    host: HostFacts
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    shutdown_requested: asyncio.Event = field(default_factory=asyncio.Event)
    runner: Runner = field(default_factory=Runner)
    #: The VM service (``banger.services.vms.VmService``), attached once the daemon has
    #: built it; typed loosely to keep this module free of service imports.
    vms: Any = None
    #: The DNS server for ``<vm>.vm`` names (``banger.dns.server.DnsServer``).
    dns: Any = None
    #: Whether /dev/kvm runs guests: measured once, kept in the state dir.
    kvm_probe: KvmProbe = field(init=False)

    def __post_init__(self) -> None:
        self.kvm_probe = KvmProbe.for_config(self.config, self.runner, self.layout.state_dir)

    @property
    def vm_defaults(self) -> VmDefaults:
        return resolve_vm_defaults(self.config, self.host)

    def uptime_s(self) -> float:
        return round(time.time() - self.started_at, 3)
