"""The privileged-operations seam for VM networking (DESIGN.md rule 2, SPEC §9).

Owns: ``PrivilegedOps``, the complete list of root-only network steps banger takes, and
``InProcessPrivilegedOps``, which performs them in the calling process when the daemon
itself runs as root. Every method re-validates every argument with the validators in
``banger.model.addressing`` (ADVERSARIAL 127): the root helper of a later issue will sit
behind this same protocol, take its arguments from an unprivileged caller and run exactly
these checks before calling the same code.

Must not: trust its caller, act on an interface that is not provably banger's (our TAP
naming, the one configured bridge), or be bypassed: nothing else in banger creates links,
changes addresses, writes sysctls or runs nft.

All methods block; call them from a worker thread (``asyncio.to_thread``), never on the
daemon's event loop.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Protocol

from banger.errors import (
    AlreadyExists,
    CommandFailed,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from banger.host.runner import Runner
from banger.model.addressing import (
    BRIDGE_PREFIX,
    is_our_bridge_name,
    is_our_tap,
    mac_for_ip,
    validate_bridge_name,
    validate_interface_address,
    validate_private_cidr,
    validate_tap_name,
    validate_uid,
)
from banger.net import nat, rtnl, tun

log = logging.getLogger("banger.net")

IP_FORWARD_SYSCTL = Path("/proc/sys/net/ipv4/ip_forward")
NFT_TIMEOUT_S = 30.0


class PrivilegedOps(Protocol):
    """Root-only network steps. Implementations validate every argument themselves."""

    def ensure_bridge(self, name: str, address_cidr: str) -> None:
        """Create (if ours and missing) and configure the bridge; idempotent."""

    def create_tap(self, name: str, *, bridge: str, owner_uid: int) -> None:
        """A new persistent TAP openable by ``owner_uid``, attached to ``bridge``, up.

        Raises AlreadyExists if an interface of that name exists (it is never adopted).
        """

    def delete_tap(self, name: str) -> None:
        """Delete one of our TAPs; a TAP that is already gone is not an error."""

    def list_taps(self, *, owner_uid: int | None = None) -> list[str]:
        """Our TAPs (by name), optionally only those owned by ``owner_uid``."""

    def open_tap(self, name: str, *, owner_uid: int) -> int:
        """A descriptor attached to ``owner_uid``'s TAP ``name`` (the caller closes it),
        for a VMM that gets its TAP as an inherited fd (``-netdev tap,fd=N``)."""

    def ensure_nat(self, bridge: str, cidr: str) -> None:
        """Install (or replace) the ``inet banger`` table for ``cidr`` behind ``bridge``."""

    def remove_nat(self) -> None:
        """Delete the ``inet banger`` table if it exists."""

    def enable_ip_forward(self) -> None:
        """Turn on IPv4 forwarding, without which NAT cannot carry guest traffic."""

    def route_vm_domain(self, bridge: str, dns_port: int) -> bool:
        """Route ``~vm`` to banger's DNS on the bridge link when systemd-resolved runs."""


#: Present while systemd-resolved runs (its varlink socket).
RESOLVED_SOCKET = Path("/run/systemd/resolve/io.systemd.Resolve")


class InProcessPrivilegedOps:
    """``PrivilegedOps`` done by this process, which must be root (CAP_NET_ADMIN).

    ``bridge_name`` (from config) pins the one bridge these ops may touch, so that no call
    can name another; pass it. Without it any bridge name is accepted that is either ours
    (``banger*``) or already exists as a bridge, which is all a daemon trusting itself
    needs, and nothing a root helper facing other callers may settle for.
    """

    def __init__(self, runner: Runner, *, bridge_name: str | None = None) -> None:
        self._runner = runner
        self._bridge = None if bridge_name is None else validate_bridge_name(bridge_name)

    def _check_bridge(self, name: object) -> str:
        text = validate_bridge_name(name)
        if self._bridge is not None and text != self._bridge:
            raise PermissionDenied(
                f"bridge {text!r} is not the configured bridge {self._bridge!r}",
                hint="banger only touches the bridge named by `bridge_name` in config.toml",
            )
        return text

    def ensure_bridge(self, name: str, address_cidr: str) -> None:
        name = self._check_bridge(name)
        iface = validate_interface_address(address_cidr)
        ours = is_our_bridge_name(name)
        log.debug("ensuring bridge %s with %s", name, iface)
        with rtnl.netlink(f"setting up bridge {name}") as ipr:
            link = rtnl.get_link(ipr, name)
            if link is None and not ours:
                raise NotFound(
                    f"bridge {name} does not exist, and banger only creates bridges whose "
                    f"name starts with {BRIDGE_PREFIX!r}",
                    hint="create the bridge yourself, or set bridge_name = 'banger0'",
                )
            if link is None:
                link = rtnl.create_bridge(ipr, name, mac=mac_for_ip(str(iface.ip)))
            elif link.kind != "bridge":
                raise Conflict(f"{name} exists but is not a bridge (kind: {link.kind or 'none'})")
            elif ours:
                rtnl.tune_bridge(ipr, link)
            rtnl.ensure_address(ipr, link, iface, exclusive=ours)
            rtnl.set_up(ipr, link)

    def create_tap(self, name: str, *, bridge: str, owner_uid: int) -> None:
        name = validate_tap_name(name)
        bridge = self._check_bridge(bridge)
        uid = validate_uid(owner_uid)
        log.debug("creating TAP %s for uid %d on %s", name, uid, bridge)
        with rtnl.netlink(f"creating TAP {name}") as ipr:
            br = rtnl.get_link(ipr, bridge)
            if br is None or br.kind != "bridge":
                raise NotFound(f"bridge {bridge} is not set up", hint="restart the daemon")
            if rtnl.get_link(ipr, name) is not None:
                # Opening an existing TAP would re-own it (TUNSETOWNER) and could hand one
                # VM's TAP to another: creation never adopts, the pool picks another name.
                raise AlreadyExists(f"interface {name} already exists")
            link = rtnl.create_tap(ipr, name, owner_uid=uid)
            try:
                rtnl.attach(ipr, link, br)
            except BaseException:
                rtnl.delete(ipr, link)  # leave nothing half-made behind
                raise

    def delete_tap(self, name: str) -> None:
        name = validate_tap_name(name)
        log.debug("deleting TAP %s", name)
        with rtnl.netlink(f"deleting TAP {name}") as ipr:
            link = rtnl.get_link(ipr, name)
            if link is None:
                return
            if not link.is_tap:
                raise Conflict(f"{name} is not a TAP; banger leaves it alone")
            rtnl.delete(ipr, link)

    def list_taps(self, *, owner_uid: int | None = None) -> list[str]:
        return list_our_taps(owner_uid)

    def open_tap(self, name: str, *, owner_uid: int) -> int:
        name = validate_tap_name(name)
        tun.require_tap(name, list_our_taps(owner_uid))
        return tun.open_tap(name)

    def ensure_nat(self, bridge: str, cidr: str) -> None:
        bridge = self._check_bridge(bridge)
        network = validate_private_cidr(cidr)
        log.debug("ensuring NAT for %s behind %s", network, bridge)
        self._nft(nat.ensure_script(bridge, str(network)))

    def remove_nat(self) -> None:
        log.debug("removing NAT table %s", nat.TABLE)
        self._nft(nat.remove_script())

    def enable_ip_forward(self) -> None:
        try:
            if IP_FORWARD_SYSCTL.read_text().strip() != "1":
                IP_FORWARD_SYSCTL.write_text("1\n")
        except PermissionError as exc:
            raise PermissionDenied(
                "cannot enable IPv4 forwarding", hint="this needs root (CAP_NET_ADMIN)"
            ) from exc
        except OSError as exc:
            raise CommandFailed(f"cannot enable IPv4 forwarding: {exc}") from exc

    def route_vm_domain(self, bridge: str, dns_port: int) -> bool:
        # resolved >= 246 accepts address:port in per-link DNS (bookworm has 252).
        name = self._check_bridge(bridge)
        if not 0 < dns_port < 65536:
            raise InvalidArgument(f"invalid DNS port {dns_port}")
        if shutil.which("resolvectl") is None or not RESOLVED_SOCKET.exists():
            return False
        for argv in (
            ["resolvectl", "dns", name, f"127.0.0.1:{dns_port}"],
            ["resolvectl", "domain", name, "~vm"],
            ["resolvectl", "default-route", name, "false"],
        ):
            self._runner.run(argv, timeout_s=10)
        return True

    def _nft(self, script: str) -> None:
        # `-f -` makes nft apply the whole script as one transaction, or none of it.
        self._runner.run(["nft", "-f", "-"], input_bytes=script.encode(), timeout_s=NFT_TIMEOUT_S)


def list_our_taps(owner_uid: int | None = None) -> list[str]:
    """Our TAPs, optionally only ``owner_uid``'s; reading links needs no privilege."""
    uid = None if owner_uid is None else validate_uid(owner_uid)
    with rtnl.netlink("listing TAPs") as ipr:
        links = rtnl.list_links(ipr)
    return sorted(
        (link.name for link in links if _is_listed(link, uid)),
        key=lambda name: (len(name), name),
    )


def _is_listed(link: rtnl.Link, owner_uid: int | None) -> bool:
    if not (link.is_tap and is_our_tap(link.name)):
        return False
    return owner_uid is None or link.tun_owner == owner_uid
