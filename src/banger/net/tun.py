"""Opening a TAP's queue through ``/dev/net/tun``, for a VMM that is handed the descriptor.

Owns: the ``TUNSETIFF`` call with the flags banger's TAPs are made with (``IFF_TAP``,
``IFF_NO_PI``, ``IFF_VNET_HDR``: ``banger.net.rtnl.create_tap``). Opening a TAP needs
either ``CAP_NET_ADMIN`` or to be its owner, and ``/dev/net/tun`` openable: the root
helper opens it for an owner daemon whose user cannot open ``/dev/net/tun`` (SPEC §9).
Must not: create or configure links (``rtnl`` does), or open anything but ``/dev/net/tun``.
"""

from __future__ import annotations

import fcntl
import os
import struct

from banger.errors import CommandFailed, NotFound

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
_IFREQ = struct.Struct("16sH22x")


def open_tap(name: str) -> int:
    """A close-on-exec descriptor attached to the existing TAP ``name`` (the caller has
    validated the name and that the TAP is the caller's to open)."""
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise CommandFailed(f"cannot open {TUN_DEVICE}: {exc.strerror}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError as exc:
        os.close(fd)
        raise CommandFailed(f"cannot attach to TAP {name}: {exc.strerror}") from None
    return fd


def require_tap(name: str, taps: list[str]) -> None:
    if name not in taps:
        raise NotFound(f"no TAP {name} of this owner", hint="it is made when the VM is created")
