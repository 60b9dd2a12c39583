#!/usr/bin/env python3
"""banger's guest agent: a tiny HTTP/1.1 server inside the VM, for the host only.

Runs in the guest as ``python3 /usr/local/lib/banger/banger-agent`` (``banger-agent.service``)
on any Python >= 3.7 with nothing but what Debian's ``python3-minimal`` ships: there is no
``json``, ``http``, ``socketserver`` or ``dataclasses`` there, so this file speaks a small
HTTP/1.1 subset and writes its JSON itself.

Transports (docs/explanation/guest-agent.md):

- AF_VSOCK port 52 when ``/dev/vsock`` exists (Firecracker; QEMU with vhost-vsock): one
  connection per client, several at once (at most ``MAX_CONNECTIONS``).
- The virtio-serial port ``org.banger.agent`` (QEMU without vhost-vsock): a single byte
  stream. Requests are served one after another; when the host side closes, reads return
  EOF (and poll says POLLHUP) until a host connects again, so the agent drops any partial
  request and sleeps on an edge-triggered epoll (woken by the next connect or byte) rather
  than spinning. The stream resynchronises on ``GET /`` (leftovers of a host that left
  mid-request are dropped, see ``Session``). Replies go out non-blocking and are dropped
  when no host comes to take them (``write_all``).
- For tests on a host: ``--listen-unix PATH`` (like vsock), ``--connect-unix PATH`` (a
  serial-like stream the agent reopens after EOF), ``--stream-fd N`` (a serial-like
  stream on an inherited fd; EOF ends the agent) and ``--serial PATH`` (a pty, say).

Endpoints: ``GET /healthz`` and ``GET /ports``; every reply carries ``Content-Length`` and
echoes the client's ``X-Banger-Request`` id, so a host can tell a stale reply on the serial
stream from its own. Requests are bounded (head ``MAX_HEAD_BYTES``, body
``MAX_BODY_BYTES``, discarded), replies too (``MAX_LISTENERS`` entries, truncated names).

Owns: the wire protocol on the guest side and reading ``/proc/uptime``,
``/proc/net/{tcp,tcp6,udp,udp6}`` and ``/proc/<pid>/{fd,comm,cmdline}``.
Must not: read or write any path a request names, execute anything, or need a network.
"""

# os.* rather than pathlib on /proc: this runs under TCG emulation, every call counts.
# ruff: noqa: PTH110, PTH115, PTH123, PTH208

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import re
import select
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

AGENT_VERSION = "1"
VSOCK_PORT = 52
PORT_NAME = "org.banger.agent"
VIRTIO_PORTS_SYSFS = "/sys/class/virtio-ports"

MAX_HEAD_BYTES = 8 * 1024
MAX_BODY_BYTES = 4 * 1024
MAX_HEADERS = 64
MAX_TARGET_CHARS = 1024
MAX_REQUEST_ID_CHARS = 64
MAX_LISTENERS = 1024
MAX_COMMAND_CHARS = 256
MAX_NAME_CHARS = 64
MAX_PROC_NET_BYTES = 4 * 1024 * 1024
MAX_CMDLINE_BYTES = 4096
MAX_CONNECTIONS = 8
READ_CHUNK = 64 * 1024

IDLE_TIMEOUT_S = 60.0
WRITE_TIMEOUT_S = 10.0
#: serial: how long a reply waits for a host that is not (yet) known to be connected
AWAY_GRACE_S = 2.0
#: serial: the longest sleep while the host is away (edge-triggered wake-ups come first)
WAIT_S = 30.0
RETRY_S = 1.0
RETRY_MAX_S = 10.0

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}
_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + _ALNUM)
_ID_CHARS = frozenset("-_" + _ALNUM)
_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"  # TCP_CLOSE: a bound UDP socket with no peer


def log(message: str) -> None:
    sys.stderr.write("banger-agent: " + message + "\n")
    sys.stderr.flush()


# -- JSON (python3-minimal has no json module) -------------------------------------------

_JSON_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}


def _json_str(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    out.append('"')
    return "".join(out)


def to_json(value: object) -> str:  # noqa: PLR0911 - one return per JSON type
    """``value`` as ASCII JSON (None, bool, int, float, str, list, tuple, dict with str keys)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "null"
    if isinstance(value, str):
        return _json_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(item) for item in value) + "]"
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("JSON object keys must be strings")
            parts.append(_json_str(key) + ":" + to_json(item))
        return "{" + ",".join(parts) + "}"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


# -- HTTP ---------------------------------------------------------------------------------


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    __slots__ = ("headers", "method", "target")

    def __init__(self, method: str, target: str, headers: dict[str, str]) -> None:
        self.method = method
        self.target = target
        self.headers = headers

    @property
    def request_id(self) -> str | None:
        value = self.headers.get("x-banger-request", "")
        if 0 < len(value) <= MAX_REQUEST_ID_CHARS and set(value) <= _ID_CHARS:
            return value
        return None

    @property
    def wants_close(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


def parse_head(head: bytes) -> Request:
    """The request line and headers (``head`` without the blank line ending it)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not method or len(method) > 16 or not set(method) <= _TOKEN_CHARS:
        raise HttpError(400, "malformed method")
    if not target.startswith("/") or len(target) > MAX_TARGET_CHARS:
        raise HttpError(400, "malformed request target")
    if any(not 0x21 <= ord(ch) < 0x7F for ch in target):
        raise HttpError(400, "malformed request target")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            raise HttpError(400, "malformed header field")
        key = name.lower()
        value = value.strip(" \t")
        if key in headers and key in ("content-length", "transfer-encoding"):
            raise HttpError(400, f"repeated {name}")
        headers[key] = value
    return Request(method, target, headers)


def take_request(buf: bytearray) -> Request | None:
    """Remove one complete request from the front of ``buf``; None while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise HttpError(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
        return None
    if end + 4 > MAX_HEAD_BYTES:
        raise HttpError(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
    request = parse_head(bytes(buf[:end]))
    if "transfer-encoding" in request.headers:
        raise HttpError(400, "request bodies must have a Content-Length")
    raw_length = request.headers.get("content-length", "0")
    if not raw_length.isdigit() or len(raw_length) > 12:
        raise HttpError(400, "malformed Content-Length")
    length = int(raw_length)
    if length > MAX_BODY_BYTES:
        raise HttpError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    total = end + 4 + length
    if len(buf) < total:
        return None
    del buf[:total]  # the body, if any, is not used by any endpoint
    return request


def response(status: int, payload: object, request_id: str | None, *, close: bool) -> bytes:
    body = to_json(payload).encode("ascii")
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if request_id is not None:
        lines.append("X-Banger-Request: " + request_id)
    lines.append("Connection: close" if close else "Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


# -- endpoints ----------------------------------------------------------------------------


def uptime_s(proc: str = "/proc") -> float:
    try:
        with open(proc + "/uptime", "rb") as fh:
            return float(fh.read(64).split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def healthz() -> dict[str, object]:
    return {
        "ok": True,
        "uptime_s": round(uptime_s(), 3),
        "hostname": socket.gethostname(),
        "agent_version": AGENT_VERSION,
    }


def decode_address(hex_addr: str) -> str:
    """A ``/proc/net`` address: 32-bit words in host byte order, as hex."""
    raw = bytes.fromhex(hex_addr)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    raise ValueError(f"address of {len(raw)} bytes")


def parse_proc_net(text: str, proto: str) -> list[tuple[str, int, int]]:
    """Listening sockets in one ``/proc/net/{tcp,udp}[6]`` table: (address, port, inode)."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if proto == "tcp" and state != _TCP_LISTEN:
            continue
        if proto == "udp" and (state != _UDP_UNCONNECTED or not remote.endswith(":0000")):
            continue
        try:
            addr_hex, port_hex = local.rsplit(":", 1)
            found.append((decode_address(addr_hex), int(port_hex, 16), int(inode)))
        except ValueError:
            continue
    return found


def socket_owners(inodes: set[int], proc: str = "/proc") -> dict[int, int]:
    """Which process holds each socket inode (the lowest pid, when several share one)."""
    owners: dict[int, int] = {}
    if not inodes:
        return owners
    try:
        pids = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    except OSError:
        return owners
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd_dir + "/" + fd)
            except OSError:
                continue
            if link.startswith("socket:[") and link.endswith("]"):
                try:
                    inode = int(link[8:-1])
                except ValueError:
                    continue
                if inode in inodes and inode not in owners:
                    owners[inode] = pid
        if len(owners) == len(inodes):
            break
    return owners


def _read_bounded(path: str, limit: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(limit)


def process_info(pid: int, proc: str = "/proc") -> tuple[str | None, str | None]:
    """(name, command line) of a process, decoded leniently and truncated."""
    base = f"{proc}/{pid}/"
    name = command = None
    try:
        name = _read_bounded(base + "comm", 256).decode("utf-8", "replace").strip()
        name = name[:MAX_NAME_CHARS] or None
    except OSError:
        pass
    try:
        raw = _read_bounded(base + "cmdline", MAX_CMDLINE_BYTES)
        words = [w.decode("utf-8", "replace") for w in raw.split(b"\0") if w]
        command = " ".join(words)[:MAX_COMMAND_CHARS] or None
    except OSError:
        pass
    return name, command


def listeners(proc: str = "/proc") -> dict[str, object]:
    """Listening TCP sockets and unconnected bound UDP sockets, with their processes."""
    sockets = []
    for table, proto, family in (
        ("tcp", "tcp", 4),
        ("tcp6", "tcp", 6),
        ("udp", "udp", 4),
        ("udp6", "udp", 6),
    ):
        try:
            text = _read_bounded(proc + "/net/" + table, MAX_PROC_NET_BYTES).decode(
                "ascii", "replace"
            )
        except OSError:
            continue  # no IPv6 in this kernel, say
        for address, port, inode in parse_proc_net(text, proto):
            sockets.append((proto, family, address, port, inode))
    sockets.sort(key=lambda s: (s[0], s[3], s[1], s[2]))
    truncated = len(sockets) > MAX_LISTENERS
    sockets = sockets[:MAX_LISTENERS]
    owners = socket_owners({s[4] for s in sockets if s[4]}, proc)
    infos: dict[int, tuple[str | None, str | None]] = {}
    entries = []
    for proto, family, address, port, inode in sockets:
        pid = owners.get(inode)
        name = command = None
        if pid is not None:
            if pid not in infos:
                infos[pid] = process_info(pid, proc)
            name, command = infos[pid]
        entries.append(
            {
                "proto": proto,
                "family": family,
                "address": address,
                "port": port,
                "pid": pid,
                "process": name,
                "command": command,
            }
        )
    return {"ports": entries, "truncated": truncated}


ENDPOINTS: dict[str, Callable[[], object]] = {"/healthz": healthz, "/ports": listeners}


def route(request: Request) -> tuple[int, object]:
    path = request.target.split("?", 1)[0]
    handler = ENDPOINTS.get(path)
    if handler is None:
        return 404, {"error": "no such endpoint"}
    if request.method != "GET":
        return 405, {"error": "only GET is served"}
    try:
        return 200, handler()
    except Exception as exc:  # noqa: BLE001 - a failing endpoint must not end the agent
        log(f"{path} failed: {exc!r}")
        return 500, {"error": f"{path} failed: {type(exc).__name__}"}


_REQUEST_START = b"GET /"
_ID_IN_HEAD = re.compile(rb"\r\nX-Banger-Request: *([A-Za-z0-9_-]{1,64})\r\n", re.IGNORECASE)


class Session:
    """Requests in, replies out, for one byte stream (a connection or the serial port).

    A connection (``can_close``) is strict: a malformed request gets an error reply and
    the connection is closed. The serial stream cannot be closed, and bytes from a host
    that left mid-request can sit in front of the next host's request (the guest does not
    always see the host go: virtio-serial's control messages and data travel on different
    queues). So the serial stream resynchronises on ``GET /`` — the only method served,
    and never found inside a request banger sends — dropping whatever came before the last
    one in front of a blank line; junk with no request in it is dropped without a reply.
    """

    def __init__(self, *, can_close: bool) -> None:
        self.can_close = can_close
        self.buf = bytearray()
        self.closing = False  # a socket: close once these replies are out

    def reset(self) -> None:
        del self.buf[:]

    def feed(self, data: bytes) -> list[bytes]:
        if self.closing:
            return []
        self.buf += data
        return self._connection() if self.can_close else self._stream()

    def _connection(self) -> list[bytes]:
        replies: list[bytes] = []
        while not self.closing:
            try:
                request = take_request(self.buf)
            except HttpError as exc:
                replies.append(response(exc.status, {"error": exc.message}, None, close=True))
                del self.buf[:]
                self.closing = True
                break
            if request is None:
                break
            status, payload = route(request)
            self.closing = request.wants_close
            replies.append(response(status, payload, request.request_id, close=self.closing))
        return replies

    def _stream(self) -> list[bytes]:
        replies: list[bytes] = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                self._trim()
                return replies
            start = self.buf.rfind(_REQUEST_START, 0, end)
            if start < 0:
                del self.buf[: end + 4]  # junk that happens to hold a blank line
                continue
            del self.buf[:start]
            head = bytes(self.buf[: end - start + 4])
            try:
                request = take_request(self.buf)
            except HttpError as exc:
                del self.buf[: len(head)]
                found = _ID_IN_HEAD.search(head)
                if found is not None:  # tell the host that asked, and only that one
                    rid = found.group(1).decode()
                    replies.append(response(exc.status, {"error": exc.message}, rid, close=False))
                continue
            if request is None:
                return replies  # its body is still on the way
            status, payload = route(request)
            replies.append(response(status, payload, request.request_id, close=False))

    def _trim(self) -> None:
        """No blank line yet: keep at most one head's worth, from the last request start."""
        if len(self.buf) <= MAX_HEAD_BYTES:
            return
        start = self.buf.rfind(_REQUEST_START)
        if start >= 0 and len(self.buf) - start <= MAX_HEAD_BYTES:
            del self.buf[:start]
        else:
            del self.buf[: -(len(_REQUEST_START) - 1)]  # a request may be starting


# -- the serial-like stream ---------------------------------------------------------------


def write_all(
    fd: int, data: bytes, timeout_s: float = WRITE_TIMEOUT_S, away_s: float = AWAY_GRACE_S
) -> bool:
    """Write ``data`` to a non-blocking fd; False if the host left or it took too long.

    virtio-serial blocks writes while no host is connected (poll says POLLHUP, never
    POLLOUT). A host that just connected may not be known to the guest yet — the data it
    sent can overtake the control message saying it is there — so a reply waits up to
    ``away_s`` for a host before it is dropped. Waiting is on an edge-triggered epoll
    (woken when the host comes), re-checked every 0.25 s at most: never a spin.
    """
    view = memoryview(data)
    deadline = time.monotonic() + timeout_s
    away_since = None
    level = select.poll()
    level.register(fd, select.POLLOUT)
    edge = None
    try:
        while view:
            try:
                view = view[os.write(fd, view[:READ_CHUNK]) :]
                away_since = None
                continue
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                return False  # a socket whose peer is gone (tests)
            now = time.monotonic()
            if now >= deadline:
                return False
            ready = level.poll(0)
            events = ready[0][1] if ready else 0
            if events & select.POLLOUT:
                continue
            if events & (select.POLLHUP | select.POLLERR):
                away_since = now if away_since is None else away_since
                if now - away_since >= away_s:
                    return False
            if edge is None:
                edge = select.epoll()
                edge.register(fd, select.EPOLLOUT | select.EPOLLET)
            edge.poll(min(0.25, deadline - now))
        return True
    finally:
        if edge is not None:
            edge.close()


def serve_stream_fd(fd: int, *, eof_ends: bool) -> str:
    """Serve requests on a serial-like fd; returns "eof" (when ``eof_ends``), raises OSError.

    On the virtio-serial port EOF is not the end: it means no host is connected right now
    (and nothing is buffered). The partial request is dropped and the agent sleeps on an
    edge-triggered epoll, which the next host connect or byte wakes.
    """
    os.set_blocking(fd, False)
    epoll = select.epoll()
    try:
        epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        session = Session(can_close=False)
        while True:
            try:
                data: bytes | None = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                data = None
            if data is None:
                epoll.poll(WAIT_S)
                continue
            if not data:
                session.reset()
                if eof_ends:
                    return "eof"
                epoll.poll(WAIT_S)
                continue
            for reply in session.feed(data):
                if not write_all(fd, reply):
                    session.reset()  # the host left mid-reply: start clean for the next one
                    break
    finally:
        epoll.close()


def find_port(name: str = PORT_NAME, sysfs: str = VIRTIO_PORTS_SYSFS) -> str | None:
    """The device node of the virtio-serial port called ``name`` (no udev symlink needed)."""
    try:
        entries = sorted(os.listdir(sysfs))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(sysfs + "/" + entry + "/name", "rb") as fh:
                if fh.read(256).strip() == name.encode():
                    return "/dev/" + entry
        except OSError:
            continue
    return None


def _make_raw(fd: int) -> None:
    """A tty (a pty in tests, a serial line) must not echo or translate bytes."""
    if not os.isatty(fd):
        return
    try:
        import termios  # absent from python3-minimal; virtio ports are no ttys anyway
        import tty
    except ImportError:
        return
    with contextlib.suppress(termios.error):
        tty.setraw(fd, termios.TCSANOW)


class StreamSource:
    """Where a serial-like stream comes from and what its EOF means."""

    def __init__(self, describe: str, opener: Callable[[], int], *, eof: str) -> None:
        self.describe = describe
        self.opener = opener
        self.eof = eof  # "wait" (virtio-serial), "reopen" (a socket), "exit" (an fd)


def device_source(path: str | None) -> StreamSource:
    def opener() -> int:
        target = path or find_port()
        if target is None:
            raise OSError(errno.ENOENT, "no virtio-serial port named " + PORT_NAME)
        fd = os.open(target, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        _make_raw(fd)
        return fd

    return StreamSource(path or ("virtio-serial port " + PORT_NAME), opener, eof="wait")


def connect_unix_source(path: str) -> StreamSource:
    def opener() -> int:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock.detach()

    return StreamSource("unix:" + path + " (stream)", opener, eof="reopen")


def fd_source(fd: int) -> StreamSource:
    taken = [fd]

    def opener() -> int:
        if not taken:
            raise OSError(errno.EBADF, "the stream fd was used up")
        return taken.pop()

    return StreamSource(f"fd {fd}", opener, eof="exit")


def run_stream(source: StreamSource) -> None:
    backoff = RETRY_S
    quiet = False
    while True:
        try:
            fd = source.opener()
        except OSError as exc:
            if source.eof == "exit":
                return
            if not quiet:
                log(f"{source.describe} unavailable ({exc}); retrying")
                quiet = True
            time.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX_S)
            continue
        log("serving " + source.describe)
        backoff, quiet = RETRY_S, False
        why = "error"
        try:
            why = serve_stream_fd(fd, eof_ends=source.eof != "wait")
        except OSError as exc:
            log(f"{source.describe}: {exc}")
        finally:
            os.close(fd)
        if source.eof == "exit":
            return
        time.sleep(0.05 if why == "eof" else RETRY_S)


# -- listeners: vsock, unix --------------------------------------------------------------


def serve_connection(conn: socket.socket, slots: threading.BoundedSemaphore) -> None:
    try:
        session = Session(can_close=True)
        while not session.closing:
            conn.settimeout(IDLE_TIMEOUT_S)
            data = conn.recv(READ_CHUNK)
            if not data:
                break
            conn.settimeout(WRITE_TIMEOUT_S)
            for reply in session.feed(data):
                conn.sendall(reply)
    except OSError:
        pass  # timeouts and resets end the connection, nothing more
    finally:
        conn.close()
        slots.release()


def vsock_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        sock.bind((socket.VMADDR_CID_ANY, port))
        sock.listen(MAX_CONNECTIONS)
    except OSError:
        sock.close()
        raise
    return sock


def unix_listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(MAX_CONNECTIONS)
    except OSError:
        sock.close()
        raise
    return sock


def run_listener(describe: str, make: Callable[[], socket.socket]) -> None:
    backoff = RETRY_S
    quiet = False
    while True:
        try:
            listener = make()
        except OSError as exc:
            if not quiet:
                log(f"cannot listen on {describe} ({exc}); retrying")
                quiet = True
            time.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX_S)
            continue
        log("listening on " + describe)
        backoff, quiet = RETRY_S, False
        slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        with listener:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError as exc:
                    log(f"{describe}: accept failed: {exc}")
                    break
                if not slots.acquire(blocking=False):
                    conn.close()  # too many at once: the host retries
                    continue
                threading.Thread(target=serve_connection, args=(conn, slots), daemon=True).start()
        time.sleep(RETRY_S)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="banger-agent", description="banger's guest agent")
    parser.add_argument("--vsock-port", type=int, default=None, help="0 turns vsock off")
    parser.add_argument("--serial", default=None, help="'auto' (default), 'off' or a device")
    parser.add_argument("--listen-unix", default=None, help="(tests) serve a unix socket")
    parser.add_argument("--connect-unix", default=None, help="(tests) a serial-like stream")
    parser.add_argument("--stream-fd", type=int, default=None, help="(tests) an inherited fd")
    parser.add_argument("--version", action="version", version=AGENT_VERSION)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A test transport means "only what I asked for": never grab the host's vsock port.
    testing = any(v is not None for v in (args.listen_unix, args.connect_unix, args.stream_fd))
    testing = testing or args.serial not in (None, "auto", "off")
    vsock_port = args.vsock_port if args.vsock_port is not None else (0 if testing else VSOCK_PORT)
    serial = args.serial if args.serial is not None else ("off" if testing else "auto")
    jobs: list[tuple[Callable[..., None], tuple[object, ...]]] = []
    if vsock_port and os.path.exists("/dev/vsock"):
        port = vsock_port
        jobs.append((run_listener, (f"vsock port {port}", lambda: vsock_listener(port))))
    if serial != "off":
        jobs.append((run_stream, (device_source(None if serial == "auto" else serial),)))
    if args.listen_unix is not None:
        path = args.listen_unix
        jobs.append((run_listener, ("unix:" + path, lambda: unix_listener(path))))
    if args.connect_unix is not None:
        jobs.append((run_stream, (connect_unix_source(args.connect_unix),)))
    if args.stream_fd is not None:
        jobs.append((run_stream, (fd_source(args.stream_fd),)))
    if not jobs:
        log("nothing to serve: no /dev/vsock and the serial port is off")
        return 1
    log(f"version {AGENT_VERSION} starting")
    threads = [threading.Thread(target=job, args=job_args, daemon=True) for job, job_args in jobs]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
