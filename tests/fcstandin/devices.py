"""Host-side checks Firecracker makes when a device is configured, with its messages.

Owns: opening a drive's backing file (read, plus write unless read-only), opening a TAP
with ``TUNSETIFF(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)`` and keeping the fd (as
Firecracker's ``Tap::open_named``; as root this creates the TAP if it is missing, as
Firecracker does), the vsock device's ``uds_path`` and its CONNECT protocol (bridged to the
guest agent's virtio-serial port), and linux-loader's ELF header checks.
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


#: Firecracker numbers host-initiated connections from 2^30 up (vsock/unix/muxer.rs).
FIRST_LOCAL_PORT = 1 << 30
#: Firecracker reads at most this much of the host's "CONNECT <port>\n" line.
MAX_CONNECT_LINE = 32
CONNECT_TIMEOUT_S = 10.0


class VsockMuxer:
    """The host side of Firecracker's vsock device: ``uds_path`` and its CONNECT protocol.

    Bound and listening from configuration time, as Firecracker's. A host connection
    sends ``CONNECT <port>\n`` (keyword case-insensitive, a u32 port); when a guest
    listener is reachable the muxer answers ``OK <local port>\n`` and from then on
    carries bytes both ways, otherwise it closes the connection (Firecracker's answer when
    the guest resets the connection request, and before boot).

    The guest has no vsock device under the stand-in (these hosts lack vhost-vsock): the
    one reachable "guest port" is the banger agent's, bridged to a virtio-serial port of
    the QEMU guest (``attach``). The difference from Firecracker: ``OK`` only says the
    bridge is up, not that the agent in the guest has accepted (a virtio-serial port has
    no connection handshake); a host that gets ``OK`` from a guest without the agent
    waits for a reply that never comes.
    """

    def __init__(self, uds_path: str) -> None:
        self.uds_path = uds_path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.listener.bind(uds_path)
            self.listener.listen(16)
        except OSError as exc:
            self.listener.close()
            raise DeviceError(
                "Cannot create backend for vsock device: Error binding to the host-side Unix "
                f"socket: {io_text(exc)}"
            ) from exc
        self._lock = threading.Lock()
        self._bridges: dict[int, bytes] = {}  # guest port -> abstract address of its bridge
        self._next_port = FIRST_LOCAL_PORT
        threading.Thread(target=self._accept, daemon=True).start()

    def attach(self, guest_port: int, address: bytes) -> None:
        """Route ``CONNECT guest_port`` to the stream socket at ``address`` (the guest's)."""
        with self._lock:
            self._bridges[guest_port] = address

    def close(self) -> None:
        """Drop the device and its socket file (a new ``PUT /vsock`` replaces it)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
        self.listener.close()
        with contextlib.suppress(OSError):
            os.unlink(self.uds_path)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # the device was replaced or the process is ending
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            port = _read_connect(conn)
            with self._lock:
                address = self._bridges.get(port) if port is not None else None
                local_port = self._next_port
                self._next_port += 1
            if address is None:
                return  # nobody listens on that port: the host's connection is closed
            guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with guest:
                try:
                    guest.connect(address)
                    conn.settimeout(None)
                    conn.sendall(f"OK {local_port}\n".encode())
                except OSError:
                    return
                _splice(conn, guest)


def _read_connect(conn: socket.socket) -> int | None:
    """The port of a ``CONNECT <port>\n`` line, or None for anything else."""
    line = b""
    conn.settimeout(CONNECT_TIMEOUT_S)
    with contextlib.suppress(OSError):
        while b"\n" not in line and len(line) < MAX_CONNECT_LINE:
            chunk = conn.recv(1)  # byte by byte: what follows the line is the guest's
            if not chunk:
                return None
            line += chunk
    words = line.decode(errors="replace").split()
    if b"\n" not in line or len(words) != 2 or words[0].lower() != "connect":
        return None
    try:
        port = int(words[1])
    except ValueError:
        return None
    return port if 0 <= port < 2**32 else None


def _splice(host: socket.socket, guest: socket.socket) -> None:
    """Copy both ways until either side ends; then end the other."""

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            src.shutdown(socket.SHUT_RDWR)

    back = threading.Thread(target=pump, args=(guest, host), daemon=True)
    back.start()
    pump(host, guest)
    back.join()


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
