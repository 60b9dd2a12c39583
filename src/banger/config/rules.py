"""The rules a config value must follow, one function each (used by ``banger.config.settings``).

Owns: checking one scalar value (paths, modes, names, addresses, networks, sizes and
durations as written) and raising ``ValueError`` whose text is ``"<rule> (got <input>)"``,
which ``banger.config.messages`` shows as is. Must not: know keys, files or the environment.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from pydantic import AfterValidator, BeforeValidator

from banger.errors import InvalidArgument
from banger.model import limits, units

_IMAGE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.ASCII)
# IFNAMSIZ is 16 with the NUL; the kernel expands "%" in a name as an allocation pattern.
_IFNAME_RE = re.compile(r"[A-Za-z0-9_-]{1,15}", re.ASCII)
_MODE_RE = re.compile(r"[0-7]{3,5}", re.ASCII)
_RFC1918 = tuple(IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def fail(rule: str, value: object) -> ValueError:
    return ValueError(f"{rule} (got {units.describe_input(value)})")


def nonempty_text(value: object, rule: str) -> str:
    if not isinstance(value, str):
        raise fail(rule, value)
    if not value or "\x00" in value:
        raise fail(f"{rule}; it must not be empty or contain NUL", value)
    return value


def user_path(value: object) -> str:
    rule = "must be an absolute path or start with ~/"
    text = nonempty_text(value, rule)
    if text.startswith("~") and not text.startswith("~/"):
        raise fail("must start with ~/ or /; ~user paths are not supported", text)
    if not text.startswith(("/", "~/")):
        raise fail(f"{rule} (relative paths are ambiguous)", text)
    return text


def sync_host(value: object) -> str:
    return no_dotdot(user_path(value))


def sync_guest(value: object) -> str:
    text = nonempty_text(value, "must be a path under ~/ or /root/")
    rest = text.removeprefix("~/") if text.startswith("~/") else text.removeprefix("/root/")
    if rest == text or not rest.strip("/"):
        raise fail("must name a file or directory under ~/ or /root/", text)
    return no_dotdot(text)


def no_dotdot(text: str) -> str:
    if ".." in text.split("/"):
        raise fail("must not contain .. components", text)
    return text


def mode(value: object) -> str:
    rule = 'must be a quoted octal mode like "0600" or "0755"'
    if not isinstance(value, str) or not _MODE_RE.fullmatch(value):
        raise fail(rule, value)
    if int(value, 8) > 0o7777:
        raise fail("must be at most 07777", value)
    return value


def image_name(value: object) -> str:
    text = nonempty_text(value, "must be an image name")
    if not _IMAGE_NAME_RE.fullmatch(text):
        raise fail("must be 1-63 of a-z, 0-9, '.', '-', '_' starting with a letter or digit", text)
    return text


def ifname(value: object) -> str:
    text = nonempty_text(value, "must be an interface name")
    if not _IFNAME_RE.fullmatch(text):
        raise fail("must be 1-15 of A-Z, a-z, 0-9, '_', '-' (a Linux interface name)", text)
    return text


def ipv4(value: object) -> str:
    text = nonempty_text(value, "must be a quoted IPv4 address")
    try:
        address = IPv4Address(text)
    except ValueError:
        raise fail("must be an IPv4 address like 10.213.7.1", text) from None
    return str(address)


def dns_server(value: object) -> str:
    text = ipv4(value)
    address = IPv4Address(text)
    # The guest's own loopback, a multicast group or a broadcast address is no resolver.
    if address.is_unspecified or address.is_loopback or address.is_multicast:
        raise fail("must be a unicast IPv4 address the guest can reach", text)
    return text


def cidr(value: object) -> str:
    rule = "must be an IPv4 network like 10.213.7.0/24"
    text = nonempty_text(value, rule)
    try:
        network = IPv4Network(text, strict=False)
    except ValueError:
        raise fail(rule, text) from None
    if network.network_address != IPv4Address(text.partition("/")[0]):
        raise fail(f"must have no host bits set ({network} is the network)", text)
    if "/" not in text or not 16 <= network.prefixlen <= 29:
        raise fail("must have a prefix length from /16 to /29", text)
    if not any(network.subnet_of(private) for private in _RFC1918):
        raise fail("must be a private range (10/8, 172.16/12 or 192.168/16)", text)
    return str(network)


def pool_size(value: object) -> int | str:
    """``"auto"`` or a whole number of ready VMs (an env override arrives as text)."""
    rule = f'must be "auto" or a whole number from 0 to {limits.POOL_SIZE_MAX}'
    if value == "auto":
        return "auto"
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,3}", value, re.ASCII):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(rule, value)
    if not 0 <= value <= limits.POOL_SIZE_MAX:
        raise fail(rule, value)
    return value


def as_written(parse: Callable[..., int], **limits: int) -> BeforeValidator:
    """Keep a size or duration as the user wrote it, after checking that it parses."""

    def check(value: object) -> str:
        try:
            parse(value, **limits)
        except InvalidArgument as exc:
            raise ValueError(exc.brief) from None
        return typing.cast(str, value)

    return BeforeValidator(check)


def bounded(bound: limits.Bound) -> AfterValidator:
    """An integer within ``bound``, the bound said in its unit ("at least 128 MiB"): the
    same words as the CLI flag's and the SDK's check (``units.check_bound``)."""

    def check(value: int) -> int:
        try:
            return units.check_bound(value, bound)
        except InvalidArgument as exc:
            raise ValueError(exc.brief) from None

    return AfterValidator(check)
