"""The helper's own configuration: who may call it and which network it manages.

Owns: reading the root-owned ``/etc/banger/helper.toml`` (refusing a file that is not
root's or that others may write: whoever can edit it can name the owner), the ``--owner``
stand-in for it, and resolving owners to uids.

Must not: read the owner's ``config.toml`` or anything else the owner can write; the
helper's policy comes only from root.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tomllib
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from banger.errors import ConfigError, InvalidArgument
from banger.model.addressing import (
    validate_bridge_name,
    validate_interface_address,
    validate_private_cidr,
    validate_uid,
)

DEFAULT_CONFIG = Path("/etc/banger/helper.toml")
DEFAULT_SOCKET = Path("/run/banger/helper.sock")
#: The same defaults as the daemon's config.toml (a unit test keeps them equal).
DEFAULT_BRIDGE_NAME = "banger0"
DEFAULT_CIDR = "10.213.7.0/24"
DEFAULT_BRIDGE_IP = "10.213.7.1"
DEFAULT_GROUP = "banger"
KEYS = frozenset({"owners", "bridge_name", "bridge_ip", "cidr", "group"})
_HINT = "fix /etc/banger/helper.toml (docs/explanation/privilege.md describes it)"


@dataclass(frozen=True)
class HelperConfig:
    owners: tuple[int, ...]
    bridge_name: str
    bridge_address: IPv4Interface
    group: str

    @property
    def cidr(self) -> IPv4Network:
        return self.bridge_address.network


def load(path: Path | None, *, owners: list[str]) -> HelperConfig:
    """The config from ``path`` (if given and present), owners replaced by ``owners``.

    With no file and ``owners`` given, the daemon's defaults apply (``sudo banger-helper
    --owner USER`` in the foreground).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_root_owned(path)
    raw_owners: object = owners if owners else data.get("owners")
    if not raw_owners:
        raise ConfigError(
            "no owner: the helper must know whose daemon it serves",
            hint='name one: `sudo banger-helper --owner USER`, or owners = ["USER"] in '
            f"{DEFAULT_CONFIG}",
        )
    return build(
        raw_owners,
        bridge_name=data.get("bridge_name", DEFAULT_BRIDGE_NAME),
        bridge_ip=data.get("bridge_ip", DEFAULT_BRIDGE_IP),
        cidr=data.get("cidr", DEFAULT_CIDR),
        group=data.get("group", DEFAULT_GROUP),
    )


def read_root_owned(path: Path) -> dict[str, Any]:
    # O_NOFOLLOW + fstat: the file checked is the file read (no symlink, no swap between).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open helper config {path}: {exc.strerror}", hint=_HINT) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"helper config {path} is not a regular file", hint=_HINT)
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise ConfigError(
                f"helper config {path} must belong to root and be writable by root only "
                f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})",
                hint=f"sudo chown root:root {path} && sudo chmod 0644 {path}",
            )
        _check_parent(path)
        try:
            data = tomllib.loads(f.read(65536).decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"helper config {path} is not TOML: {exc}", hint=_HINT) from None
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {path}: {', '.join(unknown)} (known: {', '.join(sorted(KEYS))})",
            hint=_HINT,
        )
    return data


def _check_parent(path: Path) -> None:
    # Whoever may write the directory may replace the file.
    st = path.parent.stat()
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise ConfigError(
            f"the directory of the helper config, {path.parent}, must belong to root and be "
            f"writable by root only (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=_HINT,
        )


def build(
    raw_owners: object, *, bridge_name: object, bridge_ip: object, cidr: object, group: object
) -> HelperConfig:
    if not isinstance(raw_owners, list | tuple):
        raise ConfigError(f"owners must be a list of user names or uids, not {raw_owners!r}")
    if not isinstance(bridge_ip, str) or not isinstance(group, str) or not group:
        raise ConfigError("bridge_ip and group must be strings", hint=_HINT)
    try:
        name = validate_bridge_name(bridge_name)
        network = validate_private_cidr(cidr)
        address = validate_interface_address(f"{bridge_ip}/{network.prefixlen}")
    except InvalidArgument as exc:
        raise ConfigError(f"helper config: {exc}", hint=_HINT) from None
    if address.network != network:
        raise ConfigError(f"bridge_ip {bridge_ip} is not inside cidr {network}", hint=_HINT)
    owners = tuple(dict.fromkeys(_owner_uid(owner) for owner in raw_owners))
    return HelperConfig(owners=owners, bridge_name=name, bridge_address=address, group=group)


def _owner_uid(owner: object) -> int:
    if isinstance(owner, str) and owner.isascii() and owner.isdigit():
        owner = int(owner)
    if isinstance(owner, str):
        try:
            uid = pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise ConfigError(f"owner {owner!r} is not a user on this host") from None
    else:
        try:
            uid = validate_uid(owner)
        except InvalidArgument:
            raise ConfigError(f"owner {owner!r} is neither a user name nor a uid") from None
    if uid == 0:
        raise ConfigError(
            "root cannot be an owner: a daemon run as root needs no helper",
            hint="name the user whose daemon runs VMs: `sudo banger-helper --owner USER`",
        )
    return uid


def socket_group(config: HelperConfig) -> int:
    """The gid of the socket's directory: the configured group, else the owner's own.

    ``banger system install`` creates the group; a helper started by hand for one owner
    falls back to that owner's primary group (on Debian a group of its own).
    """
    try:
        return grp.getgrnam(config.group).gr_gid
    except KeyError:
        pass
    hint = f"sudo groupadd {config.group} and add the owner(s) to it"
    if len(config.owners) != 1:
        raise ConfigError(
            f"group {config.group!r} does not exist, and with several owners the helper needs it",
            hint=hint,
        )
    try:
        return pwd.getpwuid(config.owners[0]).pw_gid
    except KeyError:
        raise ConfigError(
            f"group {config.group!r} does not exist, and owner uid {config.owners[0]} has no "
            "user entry whose group could stand in",
            hint=hint,
        ) from None
