"""What every service of the daemon shares, built once at start-up.

Owns: the wiring of layout, config, state database, build stamp, host facts, the runner
and the shutdown signal, and the ``DnsPublisher`` seam services publish ``<vm>.vm``
records through. Must not: hold per-request state or services (``daemon/main.py``
builds those and hands them to the API).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from banger.config.settings import Config
from banger.config.vm_defaults import HostFacts, VmDefaults, resolve_vm_defaults
from banger.host.buildinfo import BuildInfo
from banger.host.paths import Layout
from banger.host.runner import Runner
from banger.state.db import AsyncDatabase
from banger.vmm.kvm_probe import KvmProbe


class DnsPublisher(Protocol):
    """Where ``<vm>.vm`` answers come from (``banger.dns.server.DnsServer``)."""

    @property
    def port(self) -> int: ...

    def update(self, records: Mapping[str, str]) -> None: ...


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
    #: The DNS server, when the daemon runs one (tests of single services may not).
    dns: DnsPublisher | None = None
    #: Whether /dev/kvm runs guests: measured once, kept in the state dir.
    kvm_probe: KvmProbe = field(init=False)

    def __post_init__(self) -> None:
        self.kvm_probe = KvmProbe.for_config(self.config, self.runner, self.layout.state_dir)

    @property
    def vm_defaults(self) -> VmDefaults:
        return resolve_vm_defaults(self.config, self.host)

    def uptime_s(self) -> float:
        return round(time.time() - self.started_at, 3)
