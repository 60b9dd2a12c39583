"""The host side of VM networking, set up once per daemon when the first VM needs it.

Owns: making sure the bridge exists (once; later calls return at once), routing ``~vm``
to banger's DNS server through systemd-resolved when present, and NAT for ``--nat`` VMs.
Must not: talk netlink or nftables itself (``PrivilegedOps`` does), or block the loop.
"""

from __future__ import annotations

import asyncio
import logging

from banger.config.settings import Config
from banger.errors import BangerError
from banger.model.addressing import bridge_interface
from banger.net.privileged import PrivilegedOps
from banger.services.context import DnsPublisher

log = logging.getLogger("banger.vms")


class VmNetwork:
    def __init__(self, config: Config, ops: PrivilegedOps, dns: DnsPublisher | None) -> None:
        self.config = config
        self.ops = ops
        self.dns = dns
        self._lock = asyncio.Lock()
        self._ready = False

    async def ensure(self) -> None:
        """The bridge exists and ``~vm`` is routed (the first time it is asked)."""
        async with self._lock:
            if self._ready:
                return
            cfg = self.config
            await asyncio.to_thread(
                self.ops.ensure_bridge, cfg.bridge_name, bridge_interface(cfg.cidr, cfg.bridge_ip)
            )
            self._ready = True
            await self._route_dns()

    async def _route_dns(self) -> None:
        """``ssh <vm>.vm`` from any terminal: resolved sends ``~vm`` to our DNS server."""
        if self.dns is None:
            return
        try:
            routed = await asyncio.to_thread(
                self.ops.route_vm_domain, self.config.bridge_name, self.dns.port
            )
        except BangerError as exc:
            log.warning(
                "could not route ~vm to banger's DNS", extra={"fields": {"error": exc.brief}}
            )
            return
        log.info("~vm DNS routing", extra={"fields": {"systemd_resolved": routed}})

    async def ensure_nat(self) -> None:
        cfg = self.config
        await asyncio.to_thread(self.ops.enable_ip_forward)
        await asyncio.to_thread(self.ops.ensure_nat, cfg.bridge_name, cfg.cidr)
