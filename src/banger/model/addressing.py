"""Guest addresses, MACs and interface names, and the validators for them (pure).

Owns: allocating a guest IPv4 address from the configured CIDR, the MAC derived from it,
TAP naming (``bgtap<N>``) and recognising our TAPs, and the argument validators that every
privileged operation re-runs (ADVERSARIAL 46, 52, 127). The future root helper imports
exactly these validators, so this module stays stdlib-only.

Must not: do any I/O (no sockets, files or subprocesses) or know about the database;
callers pass in the set of addresses and names already in use.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from banger.errors import Conflict, InvalidArgument

TAP_PREFIX = "bgtap"
#: A bridge whose name starts with this is one banger may create; any other configured
#: bridge must already exist (it belongs to the user, banger only adds its address).
BRIDGE_PREFIX = "banger"
#: IFNAMSIZ is 16 including the NUL, so a Linux interface name has at most 15 bytes.
IFNAME_MAX_BYTES = 15
#: The largest TAP index whose name still fits in IFNAME_MAX_BYTES.
MAX_TAP_INDEX = 10 ** (IFNAME_MAX_BYTES - len(TAP_PREFIX)) - 1
#: Locally administered (bit 1 of the first octet set), unicast (bit 0 clear); the second
#: octet marks banger's MACs, the last four are the IPv4 address, so distinct IPs never
#: share a MAC.
MAC_PREFIX = (0x02, 0xBA)
#: Same bounds as config's ``cidr``: a /29 still leaves 5 guests, a /16 is plenty.
MIN_PREFIX_LEN, MAX_PREFIX_LEN = 16, 29
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no owner" to TUNSETOWNER and chown

_RFC1918 = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
# ASCII only: str.isalnum() accepts 'ß' and friends. "%" is absent on purpose (the kernel
# expands it as an allocation pattern, dev_get_valid_name), so are "." and "/" (so "." and
# ".." cannot pass), and a leading "-" is refused so that no name reads as an option to
# `ip` or `nft`.
_IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,14}", re.ASCII)
_TAP_RE = re.compile(rf"{TAP_PREFIX}(0|[1-9][0-9]*)", re.ASCII)
IFNAME_RULE = "1-15 ASCII letters, digits, '_' or '-', not starting with '-'"


# -- interface names ----------------------------------------------------------------------


def validate_ifname(name: object) -> str:
    """Return ``name`` if it is a safe Linux interface name, else raise InvalidArgument."""
    if not isinstance(name, str) or not _IFNAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"interface name {name!r} is not allowed: it must be {IFNAME_RULE}",
            hint="'%', '.', '/', spaces and non-ASCII characters are never accepted",
        )
    return name


def tap_name(index: int) -> str:
    """The TAP name for pool slot ``index``; distinct indexes give distinct names."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_TAP_INDEX:
        raise InvalidArgument(f"TAP index {index!r} is outside 0..{MAX_TAP_INDEX}")
    return f"{TAP_PREFIX}{index}"


def tap_index(name: object) -> int | None:
    """The index ``tap_name`` was given for ``name``, or None if it is not one of ours."""
    if not isinstance(name, str) or len(name) > IFNAME_MAX_BYTES:
        return None
    match = _TAP_RE.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1))


def is_our_tap(name: str) -> bool:
    """True only for names ``tap_name`` can produce; a user's ``tap0`` is never ours."""
    return tap_index(name) is not None


def validate_tap_name(name: object) -> str:
    """Return ``name`` if it is a valid interface name that banger's TAP naming made."""
    text = validate_ifname(name)
    if not is_our_tap(text):
        raise InvalidArgument(
            f"{text!r} is not a banger TAP: banger only creates or deletes TAPs named "
            f"{TAP_PREFIX}<number>",
        )
    return text


def validate_bridge_name(name: object) -> str:
    """Return ``name`` if it may name a bridge (never one of our TAP names)."""
    text = validate_ifname(name)
    if is_our_tap(text):
        raise InvalidArgument(f"{text!r} is a TAP name and cannot be used for the bridge")
    return text


def is_our_bridge_name(name: str) -> bool:
    return name.startswith(BRIDGE_PREFIX)


def validate_uid(uid: object) -> int:
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= MAX_UID:
        raise InvalidArgument(f"owner uid {uid!r} is not a uid (0..{MAX_UID})")
    return uid


# -- networks -----------------------------------------------------------------------------


def validate_private_cidr(cidr: object) -> IPv4Network:
    """Parse a network that is inside RFC 1918 space with a /16 to /29 prefix."""
    rule = "must be an RFC 1918 network like 10.213.7.0/24 with a /16 to /29 prefix"
    if not isinstance(cidr, str) or "/" not in cidr:
        raise InvalidArgument(f"CIDR {cidr!r} {rule}")
    try:
        network = IPv4Network(cidr)
    except ValueError:
        raise InvalidArgument(f"CIDR {cidr!r} {rule} (and no host bits set)") from None
    if not MIN_PREFIX_LEN <= network.prefixlen <= MAX_PREFIX_LEN:
        raise InvalidArgument(f"CIDR {cidr!r} {rule}")
    if not any(network.subnet_of(private) for private in _RFC1918):
        raise InvalidArgument(
            f"CIDR {cidr!r} is not private: banger only routes and NATs RFC 1918 ranges "
            "(10/8, 172.16/12, 192.168/16)"
        )
    return network


def validate_interface_address(address_cidr: object) -> IPv4Interface:
    """Parse ``address/prefix`` for the bridge: a host address of a private network."""
    if not isinstance(address_cidr, str) or "/" not in address_cidr:
        raise InvalidArgument(f"bridge address {address_cidr!r} must look like 10.213.7.1/24")
    try:
        iface = IPv4Interface(address_cidr)
    except ValueError:
        raise InvalidArgument(
            f"bridge address {address_cidr!r} must look like 10.213.7.1/24"
        ) from None
    try:
        network = validate_private_cidr(str(iface.network))
    except InvalidArgument as exc:
        raise InvalidArgument(f"bridge address {address_cidr!r}: {exc.brief}") from None
    if iface.ip in (network.network_address, network.broadcast_address):
        raise InvalidArgument(
            f"bridge address {address_cidr!r} is the network or broadcast address of {network}"
        )
    return iface


def prefix_len(cidr: str) -> int:
    return IPv4Network(cidr).prefixlen


def netmask(cidr: str) -> str:
    return str(IPv4Network(cidr).netmask)


def bridge_interface(cidr: str, bridge_ip: str) -> str:
    """``bridge_ip/prefix`` as ``ensure_bridge`` takes it."""
    return f"{bridge_ip}/{prefix_len(cidr)}"


# -- allocation ---------------------------------------------------------------------------


def allocate_ip(cidr: str, bridge_ip: str, used: set[str]) -> str:
    """The lowest host address of ``cidr`` that is neither the bridge's nor in ``used``."""
    network = validate_private_cidr(cidr)
    gateway = _parse_ip(bridge_ip)
    if gateway not in network:
        raise InvalidArgument(f"bridge address {bridge_ip} is not inside {network}")
    taken = {_parse_ip(ip) for ip in used}
    taken.add(gateway)
    # hosts() already leaves out the network and broadcast addresses.
    for address in network.hosts():
        if address not in taken:
            return str(address)
    raise Conflict(
        f"no free guest address left in {network} ({network.num_addresses - 3} guests)",
        hint="delete VMs you no longer need, or set a larger `cidr` in config.toml",
    )


def mac_for_ip(ip: str) -> str:
    """The guest MAC for ``ip``: deterministic, locally administered, unicast."""
    octets = (*MAC_PREFIX, *_parse_ip(ip).packed)
    return ":".join(f"{octet:02x}" for octet in octets)


def _parse_ip(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not an IPv4 address") from None
