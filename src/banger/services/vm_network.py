"""The host side of VM networking, set up once per daemon, ahead of the first VM.

Owns: making sure the bridge exists (once; later calls return at once), routing ``~vm``
to banger's DNS server through systemd-resolved when present, and NAT for ``--nat`` VMs;
and ``warm_up``, run in the background at daemon start: the bridge, the routing and the
warm TAPs, when the bridge exists already, so that the first create of a restarted daemon
pays for them no more than later ones (issue 12: it cost the first create ~x1.08 of a
later one). A create that comes first still waits for the bridge (``ensure`` holds a
lock), never for the TAP pool.
Must not: talk netlink or nftables itself (``PrivilegedOps`` does), or block the loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from banger.config.settings import Config
from banger.errors import BangerError
from banger.model.addressing import bridge_interface
from banger.net.privilege_mode import PrivilegeMode
from banger.net.privileged import PrivilegedOps
from banger.net.taps import TapPool
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


async def warm_up(
    network: VmNetwork, taps: TapPool, mode_now: Callable[[], Awaitable[PrivilegeMode]]
) -> None:
    """Bridge, ``~vm`` routing and warm TAPs ahead of the first create (daemon start),
    only when the bridge exists already (an earlier daemon made it): a daemon that never
    made a VM changes nothing on the host network by starting.

    A failure is only logged: the first create then does the same and reports it.
    """
    try:
        socket.if_nametoindex(network.config.bridge_name)  # this netns, no privilege
    except OSError:
        return
    try:
        if await mode_now() is PrivilegeMode.ROOTLESS:  # its VMs use no bridge nor TAP
            return
        await network.ensure()
        await asyncio.to_thread(taps.fill)
    except BangerError as exc:
        log.info("network not warmed up at start", extra={"fields": {"error": exc.brief}})
    except Exception:  # only a head start: never take the daemon down for it
        log.exception("network warm-up failed")
