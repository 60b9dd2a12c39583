"""The host side of the guest agent: one bounded HTTP/1.1 exchange per call.

Owns: reaching a VM's agent over its channel — QEMU's virtio-serial chardev socket
(``over_unix``), Firecracker's vsock Unix socket with its ``CONNECT <port>\\n`` /
``OK <hostport>\\n`` handshake (``over_firecracker_vsock``); one request at a time on
the serial channel (a lock per socket path, shared by every client in the process);
reading each reply under hard bounds (handshake line ≤ 32 bytes, head ≤ 16 KiB, body ≤
1 MiB, one deadline for the whole call, lock wait included). What ``/healthz`` and
``/ports`` say is checked by ``banger.guest.agent_replies``; waiting for a booting guest's agent is
``banger.services.readiness``; the web probe of ``vm ports`` is ``banger.guest.webprobe``.

Must not: use anything the guest says as a host path or command (ADVERSARIAL 64), block
past its deadline (ADVERSARIAL 100), or print: guest text is made printable here and the
CLI renders it. The guest is untrusted; the only host paths come from the caller.

Errors: ``CommandFailed`` when the channel cannot be reached (no socket, refused, or
Firecracker closed the connection because nothing listens on the port yet);
``BadResponse`` for anything malformed, oversized, cut short or of the wrong shape;
``Timeout`` when the deadline passes.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.errors import BadResponse, CommandFailed, Timeout
from banger.guest.agent_replies import AgentHealth, GuestPorts, parse_health, parse_ports
from banger.guest.ports import printable

DEFAULT_TIMEOUT_S = 5.0
AGENT_VSOCK_PORT = 52
MAX_HANDSHAKE_BYTES = 32  # "OK 4294967295\n" is 14
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_HEADERS = 100
#: Replies to earlier, abandoned requests that may still arrive on the serial stream.
MAX_STALE_REPLIES = 4
REQUEST_ID_HEADER = "X-Banger-Request"

_OK_LINE = re.compile(rb"OK ([0-9]{1,10})\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [\x20-\x7e\t]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PATH = re.compile(r"/[A-Za-z0-9._~/?=&%-]{0,255}")
_READ_CHUNK = 64 * 1024

_locks_guard = threading.Lock()
_channel_locks: dict[str, threading.Lock] = {}


def _channel_lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _channel_locks.setdefault(key, threading.Lock())


@dataclass(frozen=True)
class AgentReply:
    status: int
    headers: dict[str, str]
    body: bytes


class _Deadline:
    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise Timeout(f"{self.what} did not answer within {self.seconds:g}s")
        return left


class _Stream:
    """Bounded reads from one connected socket under a deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline, buffered: bytes = b"") -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = bytearray(buffered)

    def fill(self, want: int) -> bool:
        """Read more (at most ``want`` bytes); False on EOF."""
        self.sock.settimeout(self.deadline.left())
        try:
            chunk = self.sock.recv(max(1, min(want, _READ_CHUNK)))
        except TimeoutError:
            self.deadline.left()  # raises Timeout once the deadline has passed
            raise Timeout(f"{self.deadline.what} stalled") from None
        except OSError as exc:
            raise BadResponse(f"{self.deadline.what} broke the connection: {exc}") from exc
        self.buf += chunk
        return bool(chunk)

    def until(self, marker: bytes, limit: int, what: str) -> bytes | None:
        """Bytes up to and including ``marker`` (at most ``limit``); None on EOF before any."""
        while True:
            end = self.buf.find(marker)
            if 0 <= end <= limit - len(marker):
                data = bytes(self.buf[: end + len(marker)])
                del self.buf[: end + len(marker)]
                return data
            if len(self.buf) >= limit:
                raise BadResponse(
                    f"{self.deadline.what} sent {what} longer than {limit} bytes",
                    details=_excerpt(bytes(self.buf)),
                )
            if not self.fill(limit - len(self.buf)):
                if not self.buf:
                    return None
                raise BadResponse(
                    f"{self.deadline.what} closed the connection in the middle of {what}",
                    details=_excerpt(bytes(self.buf)),
                )

    def exactly(self, size: int, what: str) -> bytes:
        while len(self.buf) < size:
            if not self.fill(size - len(self.buf)):
                raise BadResponse(
                    f"{self.deadline.what} closed the connection in the middle of {what} "
                    f"({len(self.buf)} of {size} bytes)"
                )
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data


def _excerpt(raw: bytes, limit: int = 200) -> str:
    return printable(raw[:limit].decode("utf-8", "replace"), limit)


Connector = Callable[[_Deadline], tuple[socket.socket, bytes]]


def _connect_unix(path: Path, deadline: _Deadline, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(deadline.left())
    try:
        sock.connect(str(path))
    except TimeoutError:
        sock.close()
        raise Timeout(f"{what}: connecting to {path} timed out") from None
    except OSError as exc:
        sock.close()
        raise CommandFailed(f"cannot reach {what} at {path}: {exc.strerror or exc}") from exc
    return sock


def _send(sock: socket.socket, data: bytes, deadline: _Deadline) -> None:
    """Send it all; a peer that already hung up may have left a reply to read: go on."""
    sock.settimeout(deadline.left())
    try:
        sock.sendall(data)
    except TimeoutError:
        raise Timeout(f"{deadline.what} did not take the request in time") from None
    except (BrokenPipeError, ConnectionResetError):
        pass
    except OSError as exc:
        raise BadResponse(f"{deadline.what} broke the connection: {exc}") from exc


def firecracker_handshake(sock: socket.socket, port: int, deadline: _Deadline) -> bytes:
    """``CONNECT <port>\\n`` → ``OK <hostport>\\n``; returns bytes that came after the line."""
    _send(sock, f"CONNECT {port}\n".encode(), deadline)
    stream = _Stream(sock, deadline)
    line = stream.until(b"\n", MAX_HANDSHAKE_BYTES, "its CONNECT answer")
    if line is None:
        raise CommandFailed(
            f"nothing listens on vsock port {port} in the guest (yet): "
            "Firecracker closed the connection"
        )
    if _OK_LINE.fullmatch(line) is None:
        raise BadResponse(
            f"Firecracker's vsock answered CONNECT {port} with {_excerpt(line, 40)!r}, "
            "not OK <port>"
        )
    return bytes(stream.buf)


class AgentClient:
    """One VM's agent. Cheap to make; every call opens its own connection."""

    def __init__(
        self,
        describe: str,
        connect: Connector,
        *,
        lock_key: str | None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.describe = describe
        self._connect = connect
        self._lock = _channel_lock(lock_key) if lock_key is not None else None
        self.timeout_s = timeout_s

    @classmethod
    def over_unix(cls, path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> AgentClient:
        """QEMU's virtio-serial chardev socket: one byte stream, so one request at a time."""
        what = "the guest agent (virtio-serial)"

        def connect(deadline: _Deadline) -> tuple[socket.socket, bytes]:
            return _connect_unix(path, deadline, what), b""

        return cls(what, connect, lock_key=str(path), timeout_s=timeout_s)

    @classmethod
    def over_firecracker_vsock(
        cls, uds_path: Path, port: int = AGENT_VSOCK_PORT, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> AgentClient:
        """Firecracker's vsock device: its Unix socket, then ``CONNECT <port>``."""
        what = f"the guest agent (Firecracker vsock port {port})"

        def connect(deadline: _Deadline) -> tuple[socket.socket, bytes]:
            sock = _connect_unix(uds_path, deadline, what)
            try:
                return sock, firecracker_handshake(sock, port, deadline)
            except BaseException:
                sock.close()
                raise

        return cls(what, connect, lock_key=None, timeout_s=timeout_s)

    # -- the exchange ---------------------------------------------------------------------

    def request(self, path: str, *, timeout_s: float | None = None) -> AgentReply:
        """``GET path`` and its reply, within ``timeout_s`` (default: the client's) overall."""
        if _PATH.fullmatch(path) is None:
            raise ValueError(f"not an agent path: {path!r}")
        deadline = _Deadline(self.timeout_s if timeout_s is None else timeout_s, self.describe)
        lock = self._lock
        if lock is not None and not lock.acquire(timeout=deadline.left()):
            raise Timeout(
                f"{self.describe} is busy: another request did not finish "
                f"within {deadline.seconds:g}s"
            )
        try:
            sock, buffered = self._connect(deadline)
            try:
                return self._exchange(sock, buffered, path, deadline)
            finally:
                sock.close()
        finally:
            if lock is not None:
                lock.release()

    def _exchange(
        self, sock: socket.socket, buffered: bytes, path: str, deadline: _Deadline
    ) -> AgentReply:
        request_id = secrets.token_hex(8)
        head = (
            f"GET {path} HTTP/1.1\r\nHost: banger-agent\r\n{REQUEST_ID_HEADER}: {request_id}\r\n"
            "Connection: close\r\n\r\n"
        )
        _send(sock, head.encode("ascii"), deadline)
        stream = _Stream(sock, deadline, buffered)
        for _ in range(MAX_STALE_REPLIES + 1):
            reply = _read_reply(stream)
            echoed = reply.headers.get(REQUEST_ID_HEADER.lower())
            if echoed is None or echoed == request_id:
                return reply
            # A reply to an earlier request that was abandoned (serial stream): skip it.
        raise BadResponse(f"{self.describe} kept answering other requests than ours")

    def get_json(self, path: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        reply = self.request(path, timeout_s=timeout_s)
        if reply.status != 200:
            raise BadResponse(
                f"{self.describe} answered HTTP {reply.status} to GET {path}",
                details=_excerpt(reply.body) or None,
            )
        try:
            data = json.loads(reply.body)
        except (ValueError, RecursionError) as exc:
            raise BadResponse(
                f"{self.describe} answered GET {path} with a body that is not JSON",
                details=_excerpt(reply.body) or None,
            ) from exc
        if not isinstance(data, dict):
            raise BadResponse(f"{self.describe} answered GET {path} with JSON that is no object")
        return data

    # -- endpoints --------------------------------------------------------------------------

    def health(self, *, timeout_s: float | None = None) -> AgentHealth:
        data = self.get_json("/healthz", timeout_s=timeout_s)
        try:
            return parse_health(data)
        except ValueError as exc:
            raise BadResponse(f"{self.describe}'s /healthz reply is malformed: {exc}") from exc

    def ports(self, *, timeout_s: float | None = None) -> GuestPorts:
        data = self.get_json("/ports", timeout_s=timeout_s)
        try:
            return parse_ports(data)
        except ValueError as exc:
            raise BadResponse(f"{self.describe}'s /ports reply is malformed: {exc}") from exc


# -- reading a reply ----------------------------------------------------------------------


def _read_reply(stream: _Stream) -> AgentReply:
    what = stream.deadline.what
    head = stream.until(b"\r\n\r\n", MAX_HEAD_BYTES, "a reply header")
    if head is None:
        raise BadResponse(f"{what} closed the connection without answering")
    lines = head[:-4].split(b"\r\n")
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None:
        raise BadResponse(f"{what} did not answer with HTTP", details=_excerpt(lines[0]))
    if len(lines) - 1 > MAX_HEADERS:
        raise BadResponse(f"{what} sent more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or _TOKEN.fullmatch(name) is None:
            raise BadResponse(f"{what} sent a malformed header field", details=_excerpt(line))
        key = name.decode("ascii").lower()
        if key in headers and key in ("content-length", "transfer-encoding"):
            raise BadResponse(f"{what} sent {key} twice")
        headers[key] = value.decode("latin-1").strip(" \t")
    if "transfer-encoding" in headers:
        raise BadResponse(f"{what} sent a Transfer-Encoding body (only Content-Length is read)")
    length_text = headers.get("content-length")
    if length_text is None or not length_text.isdigit() or len(length_text) > 12:
        raise BadResponse(f"{what} sent no valid Content-Length")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise BadResponse(f"{what} announced a body of {length} bytes (at most {MAX_BODY_BYTES})")
    body = stream.exactly(length, "a reply body")
    return AgentReply(int(status.group(1)), headers, body)
