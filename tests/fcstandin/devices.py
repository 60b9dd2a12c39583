"""Host-side checks Firecracker makes when a device is configured, with its messages.

Owns: opening a drive's backing file (read, plus write unless read-only), opening a TAP
with ``TUNSETIFF(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)`` and keeping the fd (as
Firecracker's ``Tap::open_named``; as root this creates the TAP if it is missing, as
Firecracker does), binding a vsock ``uds_path``, and linux-loader's ELF header checks.
Must not: keep state about the VM.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import threading

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16

ELF_LOADER = "Kernel Loader: failed to load ELF kernel image: Kernel Loader: "


class DeviceError(Exception):
    """The text Firecracker puts after its 'Drive config error: ' etc. prefix."""


def io_text(exc: OSError) -> str:
    """Rust's ``io::Error`` Display: '<strerror> (os error N)'."""
    if exc.errno is None:
        return str(exc)
    return f"{os.strerror(exc.errno)} (os error {exc.errno})"


def check_backing_file(path: str, *, read_only: bool) -> None:
    try:
        fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(
            "Unable to create the virtio block device: Virtio backend error: "
            f"Error manipulating the backing file: {io_text(exc)} {path}"
        ) from exc
    os.close(fd)


def open_tap(name: str) -> int:
    """An fd attached to TAP ``name`` (close it to let go)."""
    prefix = "Could not create the network device: Open tap device failed: "
    encoded = name.encode()
    if len(encoded) >= IFNAMSIZ:
        raise DeviceError(prefix + "Invalid interface name")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(prefix + f"Couldn't open /dev/net/tun: {io_text(exc)}") from exc
    ifreq = struct.pack("16sH22x", encoded, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, ifreq)
    except OSError as exc:
        os.close(fd)
        raise DeviceError(
            prefix + f"Error while creating ifreq structure: {io_text(exc)}. Invalid TUN/TAP "
            f"Backend provided by {name}. Check our documentation on setting up the network "
            "devices."
        ) from exc
    return fd


def bind_vsock(uds_path: str) -> socket.socket:
    """Bind and listen like Firecracker's vsock muxer; every host CONNECT is then closed.

    The guest has no vsock device under the stand-in (no vhost-vsock on these hosts), so
    no guest port ever listens: Firecracker answers that case by closing the host's
    connection, and so does this.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(uds_path)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise DeviceError(
            "Cannot create backend for vsock device: Error binding to the host-side Unix "
            f"socket: {io_text(exc)}"
        ) from exc
    threading.Thread(target=_refuse_vsock_connections, args=(sock,), daemon=True).start()
    return sock


def _refuse_vsock_connections(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # the device was replaced or the process is ending
        with conn, contextlib.suppress(OSError):
            conn.settimeout(1.0)
            conn.recv(64)  # "CONNECT <port>\n"; nobody listens on that port


def check_elf_kernel(path: str) -> None:
    """linux-loader's ``Elf::validate_header`` (it reads the header as Elf64 regardless)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise DeviceError(ELF_LOADER + "Unable to read elf header") from exc
    if len(head) < 64:
        raise DeviceError(ELF_LOADER + "Unable to read elf header")
    if head[:4] != b"\x7fELF":
        raise DeviceError(ELF_LOADER + "Invalid Elf magic number")
    if head[5] != 1:
        raise DeviceError(ELF_LOADER + "Trying to load big-endian binary on little-endian machine")
    (phoff,) = struct.unpack_from("<Q", head, 32)
    (phentsize,) = struct.unpack_from("<H", head, 54)
    if phentsize != 56:
        raise DeviceError(ELF_LOADER + "Invalid program header size")
    if phoff < 64:
        raise DeviceError(ELF_LOADER + "Invalid program header offset")
