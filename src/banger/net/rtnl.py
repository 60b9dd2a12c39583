"""Netlink work on the bridge and its TAP ports, through pyroute2 (root only).

Owns: creating and configuring the bridge, creating/attaching/deleting persistent TAPs,
listing TUN/TAP links with their owners, and turning pyroute2's NetlinkError/OSError into
banger errors. Everything acts in the network namespace of the calling thread.

Must not: be used from anywhere but ``banger.net.privileged`` (it trusts its arguments:
validation happens there, once, in the place the root helper will reuse), or be called on
an asyncio event loop thread (pyroute2's sync API runs a private loop of its own).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from banger.errors import (
    AlreadyExists,
    BangerError,
    CommandFailed,
    NotFound,
    PermissionDenied,
)

_IFF_TAP = 2  # IFLA_TUN_TYPE value of a TAP (IFF_TAP in <linux/if_tun.h>)


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    master: int | None
    #: True for a TUN/TAP link in TAP mode (IFLA_TUN_TYPE 2); TUN mode carries no
    #: Ethernet frames and is never one of ours.
    is_tap: bool
    #: IFLA_TUN_OWNER for TUN/TAP links (None when the TAP has no owner or is not one).
    tun_owner: int | None


@contextlib.contextmanager
def netlink(action: str) -> Iterator[Any]:
    """A fresh rtnetlink socket for one operation, with errors translated.

    One socket per call keeps threads from sharing pyroute2 state (the TAP pool runs
    several creations at once).
    """
    try:
        with IPRoute() as ipr:
            yield ipr
    except BangerError:
        raise
    except (NetlinkError, OSError) as exc:
        raise _translate(action, exc) from exc


def _translate(action: str, exc: NetlinkError | OSError) -> BangerError:
    code = exc.code if isinstance(exc, NetlinkError) else exc.errno
    text = f"{action} failed: {errno.errorcode.get(code or 0, '?')} ({exc})"
    if code in (errno.EPERM, errno.EACCES):
        return PermissionDenied(text, hint="bridge and TAP work needs root (CAP_NET_ADMIN)")
    if code == errno.EEXIST:
        return AlreadyExists(text)
    if code == errno.ENODEV:
        return NotFound(text)
    return CommandFailed(text)


def get_link(ipr: Any, name: str) -> Link | None:
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        return None
    return _link(ipr.get_links(indexes[0])[0])


def list_links(ipr: Any) -> list[Link]:
    return [_link(msg) for msg in ipr.get_links()]


def _link(msg: Any) -> Link:
    kind = msg.get(("linkinfo", "kind"))
    owner = msg.get(("linkinfo", "data", "IFLA_TUN_OWNER"))
    return Link(
        index=int(msg["index"]),
        name=str(msg.get("ifname")),
        kind=kind,
        master=msg.get("master"),
        is_tap=kind == "tun" and msg.get(("linkinfo", "data", "IFLA_TUN_TYPE")) == _IFF_TAP,
        # The kernel reports "no owner" as (uid_t)-1.
        tun_owner=None if owner is None or owner == 2**32 - 1 else int(owner),
    )


# -- bridge -------------------------------------------------------------------------------


def create_bridge(ipr: Any, name: str, *, mac: str) -> Link:
    # A bridge without an explicit MAC takes the lowest MAC of its ports and changes it as
    # TAPs come and go, which makes every guest's ARP entry for the gateway stale.
    ipr.link("add", ifname=name, kind="bridge", address=mac, br_forward_delay=0, br_stp_state=0)
    link = get_link(ipr, name)
    if link is None:
        raise CommandFailed(f"bridge {name} vanished right after it was created")
    return link


def tune_bridge(ipr: Any, link: Link) -> None:
    # No STP and no forward delay: a new TAP port must forward at once, not after 15 s of
    # listening/learning, or the guest's first DHCP-less packets are dropped.
    ipr.link("set", index=link.index, kind="bridge", br_forward_delay=0, br_stp_state=0)


def ensure_address(ipr: Any, link: Link, wanted: IPv4Interface, *, exclusive: bool) -> None:
    """Give ``link`` the address ``wanted``; with ``exclusive``, drop its other IPv4 ones.

    A stale address from an earlier ``cidr`` would keep routing the old network to our
    bridge, so on a bridge banger owns it goes. On a user's bridge only a clash with our
    own address (same IP, other prefix) matters, and that is the user's call.
    """
    present = [
        IPv4Interface(f"{msg.get('local') or msg.get('address')}/{msg['prefixlen']}")
        for msg in ipr.get_addr(family=socket.AF_INET, index=link.index)
    ]
    stale = [old for old in present if old != wanted and (exclusive or old.ip == wanted.ip)]
    if stale and not exclusive:
        raise AlreadyExists(
            f"{link.name} already has {stale[0]}, which clashes with {wanted}",
            hint="remove that address or change bridge_ip/cidr in config.toml",
        )
    for old in stale:
        ipr.addr("del", index=link.index, address=str(old.ip), prefixlen=old.network.prefixlen)
    if wanted not in present:
        ipr.addr(
            "add", index=link.index, address=str(wanted.ip), prefixlen=wanted.network.prefixlen
        )


def set_up(ipr: Any, link: Link) -> None:
    ipr.link("set", index=link.index, state="up")


# -- TAPs ---------------------------------------------------------------------------------


def create_tap(ipr: Any, name: str, *, owner_uid: int) -> Link:
    # no_pi/vnet_hdr match what Firecracker and QEMU ask for in TUNSETIFF; the kernel lets
    # only owner_uid (or CAP_NET_ADMIN) attach to a persistent TAP, so an unprivileged VMM
    # can open exactly the TAPs made for its user.
    ipr.link(
        "add",
        ifname=name,
        kind="tuntap",
        mode="tap",
        uid=owner_uid,
        ifr={"no_pi": True, "vnet_hdr": True},
    )
    link = get_link(ipr, name)
    if link is None:
        raise CommandFailed(f"TAP {name} vanished right after it was created")
    return link


def attach(ipr: Any, link: Link, bridge: Link) -> None:
    ipr.link("set", index=link.index, master=bridge.index, state="up")


def delete(ipr: Any, link: Link) -> None:
    try:
        ipr.link("del", index=link.index)
    except NetlinkError as exc:
        # Someone else deleted it between our lookup and now: the outcome we wanted.
        if exc.code != errno.ENODEV:
            raise
