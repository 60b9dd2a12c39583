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

Exec (docs/explanation/guest-exec.md): a second channel — vsock port 53 and the
virtio-serial port ``org.banger.exec`` — carries framed, multiplexed command sessions
(``ExecHost``): the host opens a channel per command (argv, cwd, env, timeout), the agent
runs it in its own session and streams stdout and stderr under per-channel credits, takes
stdin under its own window, forwards signals to the process group, and reports the exit.
A host's HELLO ends the commands of the host before it (the serial stream cannot tell).

File operations (docs/explanation/guest-files.md): ``--file OP ARG…`` runs one operation
(read, write, list, stat, remove, pack, unpack) as its own process; the host starts it
through the exec channel and streams the data as the command's stdin and stdout.

Owns: the wire protocols on the guest side, reading ``/proc/uptime``,
``/proc/net/{tcp,tcp6,udp,udp6}`` and ``/proc/<pid>/{fd,comm,cmdline}``, running the
commands the exec channel's host asks for, and the file operations of ``--file``.
Must not: read or write any path an HTTP request names, run anything but what the exec
channel's host asks for, or need a network.
"""

# os.* rather than pathlib on /proc: this runs under TCG emulation, every call counts.
# ruff: noqa: PTH103, PTH110, PTH112, PTH115, PTH116, PTH123, PTH208

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import math
import os
import re
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING

try:
    import subprocess
except ImportError:  # a Python without it still answers /healthz and /ports
    subprocess = None  # type: ignore[assignment]
NO_SUBPROCESS = subprocess is None

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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


def device_source(path: str | None, name: str = PORT_NAME) -> StreamSource:
    def opener() -> int:
        target = path or find_port(name)
        if target is None:
            raise OSError(errno.ENOENT, "no virtio-serial port named " + name)
        fd = os.open(target, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        _make_raw(fd)
        return fd

    return StreamSource(path or ("virtio-serial port " + name), opener, eof="wait")


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


def open_in_turn(source: StreamSource) -> Iterator[int]:
    """Each fd ``source`` opens, one after the other; an unavailable source is retried
    with backoff (quietly after the first message), except an inherited fd ("exit")."""
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
        backoff, quiet = RETRY_S, False
        yield fd


def run_stream(source: StreamSource) -> None:
    for fd in open_in_turn(source):
        log("serving " + source.describe)
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


def run_listener(
    describe: str,
    make: Callable[[], socket.socket],
    serve: Callable[[socket.socket, threading.BoundedSemaphore], None] = serve_connection,
) -> None:
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
                threading.Thread(target=serve, args=(conn, slots), daemon=True).start()
        time.sleep(RETRY_S)


# -- exec: commands over a framed, multiplexed channel (docs/explanation/guest-exec.md) --
#
# A copy of banger.guest.exec_frames (this file must stay one stdlib-only file); a unit
# test checks both encode and decode the same bytes.

EXEC_VSOCK_PORT = 53
EXEC_PORT_NAME = "org.banger.exec"
X_HEADER = struct.Struct(">BII")
X_MAX_PAYLOAD = 64 * 1024
X_MAGIC = b"BANGER-EXEC/1"
X_NONCE_BYTES = 16
X_WINDOW = 256 * 1024
X_MAX_CHANNELS = 64
X_MAX_ARGS = 4096
X_MAX_ENV = 1024
X_SIGNALS = frozenset({1, 2, 3, 9, 15})
#: Output still read from a command's pipes after it exited (a background child may hold them).
X_DRAIN_AFTER_EXIT = 1024 * 1024
#: Frames waiting for the host beyond which the agent stops reading the host's frames.
X_OUT_LIMIT = 4 * 1024 * 1024
X_READ = 64 * 1024
X_DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/sh",
    "LANG": "C.UTF-8",
}

K_PAD, K_HELLO, K_OPEN, K_STDIN, K_STDIN_EOF, K_SIGNAL, K_CREDIT = 0, 1, 2, 3, 4, 5, 6
K_HELLO_ACK, K_STARTED, K_FAILED, K_STDOUT, K_STDERR, K_STDIN_CREDIT, K_EXIT = (
    0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
)  # fmt: skip
X_KINDS = frozenset(range(K_HELLO, K_CREDIT + 1)) | frozenset(range(K_HELLO_ACK, K_EXIT + 1))
F_BAD_REQUEST, F_NOT_FOUND, F_PERMISSION, F_NO_CWD, F_TOO_MANY, F_IN_USE, F_OTHER = range(1, 8)
X_HELLO_PREFIX = X_HEADER.pack(K_HELLO, 0, len(X_MAGIC) + X_NONCE_BYTES) + X_MAGIC
_X_OPEN_HEAD = struct.Struct(">IHH")


class FrameError(ValueError):
    pass


def encode_frame(kind: int, channel: int, payload: bytes = b"") -> bytes:
    if len(payload) > X_MAX_PAYLOAD:
        raise ValueError("payload too large")
    return X_HEADER.pack(kind, channel, len(payload)) + payload


def take_frames(buf: bytearray) -> list[tuple[int, int, bytes]]:
    """Remove every complete frame from the front of ``buf`` (zero bytes between frames
    are padding); FrameError on an unknown kind or an oversized length."""
    frames = []
    pos = 0
    while True:
        while pos < len(buf) and buf[pos] == 0:
            pos += 1
        if len(buf) - pos < X_HEADER.size:
            break
        kind, channel, length = X_HEADER.unpack_from(buf, pos)
        if kind not in X_KINDS:
            del buf[:pos]
            raise FrameError(f"unknown frame kind {kind}")
        if length > X_MAX_PAYLOAD:
            del buf[:pos]
            raise FrameError(f"frame of {length} bytes")
        end = pos + X_HEADER.size + length
        if len(buf) < end:
            break
        frames.append((kind, channel, bytes(buf[pos + X_HEADER.size : end])))
        pos = end
    del buf[:pos]
    return frames


def decode_open(payload: bytes) -> tuple[list[bytes], bytes, list[bytes], int]:
    """(argv, cwd, env entries, timeout_ms) of an OPEN; ValueError when malformed."""
    if len(payload) < _X_OPEN_HEAD.size:
        raise ValueError("OPEN too short")
    timeout_ms, argc, envc = _X_OPEN_HEAD.unpack_from(payload)
    fields = payload[_X_OPEN_HEAD.size :].split(b"\0")
    if argc < 1 or argc > X_MAX_ARGS or envc > X_MAX_ENV or len(fields) != 1 + argc + envc:
        raise ValueError("OPEN field counts do not match")
    env = fields[1 + argc :]
    if any(b"=" not in e or e.startswith(b"=") for e in env):
        raise ValueError("an environment entry is not NAME=VALUE")
    if not fields[1]:
        raise ValueError("empty program name")
    return fields[1 : 1 + argc], fields[0], env, timeout_ms


def encode_exit(returncode: int, timed_out: bool) -> bytes:
    if returncode < 0:
        return bytes([1, -returncode & 0xFF, int(timed_out)])
    return bytes([0, returncode & 0xFF, int(timed_out)])


class Waker:
    """A pipe the reaper threads write to; safe against a write after close."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self.lock = threading.Lock()
        self.closed = False

    def wake(self) -> None:
        with self.lock:
            if not self.closed:
                with contextlib.suppress(OSError):
                    os.write(self.w, b"!")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self.r, 4096):
                pass

    def close(self) -> None:
        with self.lock:
            self.closed = True
            os.close(self.w)
            os.close(self.r)


class SpawnError(Exception):
    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Spawned:
    __slots__ = ("popen", "timeout_ms")

    def __init__(self, popen: subprocess.Popen[bytes], timeout_ms: int) -> None:
        self.popen = popen
        self.timeout_ms = timeout_ms


def spawn(argv: list[bytes], cwd: bytes, env_entries: list[bytes], timeout_ms: int) -> Spawned:
    """Start a command in its own session (so a signal reaches its whole process group),
    with the default environment plus ``env_entries``, in ``cwd`` (default: ``$HOME``)."""
    env = {k.encode(): v.encode() for k, v in X_DEFAULT_ENV.items()}
    for entry in env_entries:
        key, _, value = entry.partition(b"=")
        env[key] = value
    home = env.get(b"HOME", b"/")
    workdir = cwd or (home if os.path.isdir(home) else b"/")
    try:
        popen = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            bufsize=0,
        )
    except FileNotFoundError as exc:
        if exc.filename is not None and os.fsencode(exc.filename) == workdir:
            raise SpawnError(F_NO_CWD, "no such directory: " + os.fsdecode(workdir)) from exc
        raise SpawnError(F_NOT_FOUND, "command not found: " + os.fsdecode(argv[0])) from exc
    except NotADirectoryError as exc:
        raise SpawnError(F_NO_CWD, "not a directory: " + os.fsdecode(workdir)) from exc
    except PermissionError as exc:
        raise SpawnError(F_PERMISSION, "permission denied: " + str(exc.filename)) from exc
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise SpawnError(F_OTHER, type(exc).__name__ + ": " + str(exc)) from exc
    return Spawned(popen, timeout_ms)


class Command:
    """One channel: a process in its own session, its three pipes, its windows."""

    def __init__(self, channel: int, proc: subprocess.Popen[bytes], deadline: float | None) -> None:
        self.channel = channel
        self.proc = proc
        self.pid = proc.pid
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.pipes = {proc.stdout.fileno(): K_STDOUT, proc.stderr.fileno(): K_STDERR}
        self.files = {proc.stdout.fileno(): proc.stdout, proc.stderr.fileno(): proc.stderr}
        self.stdin = proc.stdin
        self.stdin_fd: int | None = proc.stdin.fileno()
        for fd in (*self.pipes, self.stdin_fd):
            os.set_blocking(fd, False)
        self.credit = X_WINDOW
        self.stdin_buf = bytearray()
        self.stdin_allowed = X_WINDOW  # what the host may still send
        self.stdin_written = 0  # written to the process, not yet granted back
        self.stdin_eof = False
        self.deadline = deadline
        self.timed_out = False
        self.returncode: int | None = None
        self.drain_left = X_DRAIN_AFTER_EXIT

    def killpg(self, sig: int) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.pid, sig)


def _reap(proc: subprocess.Popen[bytes], waker: Waker) -> None:
    proc.wait()
    waker.wake()


class ExecHost:
    """The exec protocol on one host stream: the serial port, or one socket connection.

    One thread, one epoll. The host fd is edge-triggered (a virtio-serial port with no
    host reports POLLHUP forever: a level-triggered loop would spin); the command pipes
    are level-triggered and only registered while they may be used (output while the
    channel has credit, stdin while bytes wait). Exits come from one reaper thread per
    process through a ``Waker`` pipe.
    """

    def __init__(self, fd: int, *, serial: bool) -> None:
        self.fd = fd
        self.serial = serial
        self.epoll = select.epoll()
        self.waker = Waker()
        self.epoll.register(fd, select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
        self.epoll.register(self.waker.r, select.EPOLLIN)
        self.commands: dict[int, Command] = {}
        self.owner: dict[int, Command] = {}  # pipe fd -> its command
        self.registered: dict[int, int] = {}  # pipe fd -> epoll mask
        self.inbuf = bytearray()
        self.hunting = True  # until a HELLO: skip everything
        self.out: collections.deque[bytes] = collections.deque()
        self.out_bytes = 0
        self.can_read = True
        self.can_write = True
        self.ended = False

    # -- the loop -------------------------------------------------------------------------

    def serve(self) -> None:
        try:
            while not self.ended:
                if self.can_read and self.out_bytes < X_OUT_LIMIT:
                    self._read_host()
                self._flush()
                if not self.running():
                    break
                for fd, events in self.epoll.poll(self._timeout()):
                    if fd == self.fd:
                        self.can_read = self.can_read or bool(events & ~select.EPOLLOUT)
                        self.can_write = self.can_write or bool(events & select.EPOLLOUT)
                    elif fd == self.waker.r:
                        self.waker.drain()
                        self._reaped()
                    elif fd in self.owner:
                        self._pipe_ready(self.owner[fd], fd)
                self._deadlines()
        finally:
            self._end_all()
            self.epoll.close()
            self.waker.close()

    def running(self) -> bool:
        return not self.ended

    def _timeout(self) -> float:
        if self.can_read and self.out_bytes < X_OUT_LIMIT:
            return 0
        deadlines = [c.deadline for c in self.commands.values() if c.deadline and not c.timed_out]
        if not deadlines:
            return WAIT_S
        return max(0.0, min(deadlines) - time.monotonic())

    def _read_host(self) -> None:
        try:
            data = os.read(self.fd, X_READ)
        except BlockingIOError:
            self.can_read = False
            return
        except OSError:
            self.ended = True
            return
        if not data:
            self.can_read = False
            if not self.serial:
                self.ended = True  # a socket: the host is gone, and its commands with it
            # The serial port: no host right now. Its commands live on until the next
            # host's HELLO ends them (the guest cannot tell a host leaving for good).
            return
        self.inbuf += data
        while not self.ended:
            if self.hunting:
                self._hunt()
                if self.hunting:
                    return
            try:
                frames = take_frames(self.inbuf)
            except FrameError as exc:
                self._protocol_error(str(exc))
                continue
            for kind, channel, payload in frames:
                try:
                    self._frame(kind, channel, payload)
                except FrameError as exc:
                    self._protocol_error(str(exc))
                    break
            else:
                return

    def _hunt(self) -> None:
        if not self.serial:  # a connection of its own: padding, then HELLO, or goodbye
            pads = len(self.inbuf) - len(self.inbuf.lstrip(b"\0"))
            del self.inbuf[:pads]
            seen = min(len(self.inbuf), len(X_HELLO_PREFIX))
            if self.inbuf[:seen] != X_HELLO_PREFIX[:seen]:
                log("exec: a connection that does not start with HELLO")
                del self.inbuf[:]
                self.ended = True
            elif seen == len(X_HELLO_PREFIX):
                self.hunting = False
            return
        start = self.inbuf.rfind(X_HELLO_PREFIX)
        if start < 0:
            del self.inbuf[: max(0, len(self.inbuf) - len(X_HELLO_PREFIX) + 1)]
            return
        del self.inbuf[:start]
        self.hunting = False

    def _protocol_error(self, why: str) -> None:
        log("exec: malformed frames from the host (" + why + ")")
        self._end_all()
        if self.serial:
            del self.inbuf[:1]  # then look for the next host's HELLO in what follows
            self.hunting = True
        else:
            del self.inbuf[:]
            self.ended = True

    def send(self, kind: int, channel: int, payload: bytes = b"") -> None:
        frame = encode_frame(kind, channel, payload)
        self.out.append(frame)
        self.out_bytes += len(frame)

    def _flush(self) -> None:
        while self.out and self.can_write:
            head = self.out[0]
            try:
                n = os.write(self.fd, head)
            except BlockingIOError:
                self.can_write = False
                return
            except OSError:
                if not self.serial:
                    self.ended = True
                self.can_write = False
                return
            self.out_bytes -= n
            if n == len(head):
                self.out.popleft()
            else:
                self.out[0] = head[n:]

    # -- host frames ----------------------------------------------------------------------

    def _frame(self, kind: int, channel: int, payload: bytes) -> None:
        if kind == K_HELLO:
            self._hello(channel, payload)
        elif kind == K_OPEN:
            self._open(channel, payload)
        elif kind == K_SIGNAL:
            if len(payload) != 1 or payload[0] not in X_SIGNALS:
                raise FrameError("bad SIGNAL")
            if channel in self.commands:
                self.commands[channel].killpg(payload[0])
        elif kind == K_CREDIT:
            if len(payload) != 4:
                raise FrameError("bad CREDIT")
            if channel in self.commands:
                self._credit(self.commands[channel], int.from_bytes(payload, "big"))
        elif kind in (K_STDIN, K_STDIN_EOF):
            if channel in self.commands:  # else it ended already: leftover stdin is dropped
                self._stdin(self.commands[channel], kind, payload)
        else:
            raise FrameError("a guest's frame kind from the host")

    def _hello(self, channel: int, payload: bytes) -> None:
        if channel != 0 or len(payload) != len(X_MAGIC) + X_NONCE_BYTES:
            raise FrameError("bad HELLO")
        if payload[: len(X_MAGIC)] != X_MAGIC:
            raise FrameError("bad HELLO")
        self._end_all()  # a new host: the previous one's commands end
        self.out.clear()
        self.out_bytes = 0
        self.send(K_HELLO_ACK, 0, payload + AGENT_VERSION.encode()[:1])

    def _stdin(self, command: Command, kind: int, payload: bytes) -> None:
        if kind == K_STDIN_EOF:
            command.stdin_eof = True
        elif len(payload) > command.stdin_allowed:
            raise FrameError("stdin beyond the window")
        else:
            command.stdin_allowed -= len(payload)
            if command.stdin_fd is None:
                command.stdin_written += len(payload)  # nobody reads it: grant it back
                self._grant_stdin(command)
                return
            command.stdin_buf += payload
        if command.stdin_fd is not None:
            self._watch(command, command.stdin_fd, select.EPOLLOUT)

    def _credit(self, command: Command, size: int) -> None:
        command.credit = min(command.credit + size, 2**31)
        for fd in command.pipes:
            self._watch(command, fd, select.EPOLLIN)
        if command.returncode is not None:
            self._drain(command)

    def _open(self, channel: int, payload: bytes) -> None:
        if channel in self.commands:
            self._failed(channel, F_IN_USE, "channel in use")
        elif len(self.commands) >= X_MAX_CHANNELS:
            self._failed(channel, F_TOO_MANY, f"more than {X_MAX_CHANNELS} commands at once")
        elif NO_SUBPROCESS:
            self._failed(channel, F_OTHER, "this Python has no subprocess module")
        else:
            try:
                proc = spawn(*decode_open(payload))
            except SpawnError as exc:
                self._failed(channel, exc.reason, exc.message)
                return
            except ValueError as exc:
                self._failed(channel, F_BAD_REQUEST, str(exc))
                return
            deadline = time.monotonic() + proc.timeout_ms / 1000 if proc.timeout_ms else None
            command = Command(channel, proc.popen, deadline)
            self.commands[channel] = command
            for fd in command.pipes:
                self.owner[fd] = command
                self._watch(command, fd, select.EPOLLIN)
            assert command.stdin_fd is not None
            self.owner[command.stdin_fd] = command
            self.send(K_STARTED, channel, proc.popen.pid.to_bytes(4, "big"))
            threading.Thread(target=_reap, args=(proc.popen, self.waker), daemon=True).start()

    def _failed(self, channel: int, reason: int, message: str) -> None:
        self.send(K_FAILED, channel, bytes([reason]) + message.encode("utf-8", "replace")[:1024])

    # -- commands -------------------------------------------------------------------------

    def _watch(self, command: Command, fd: int, mask: int) -> None:
        if fd not in self.owner or self.registered.get(fd) == mask:
            return
        if fd in self.registered:
            self.epoll.modify(fd, mask)
        else:
            self.epoll.register(fd, mask)
        self.registered[fd] = mask

    def _unwatch(self, fd: int) -> None:
        if self.registered.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def _pipe_ready(self, command: Command, fd: int) -> None:
        if fd == command.stdin_fd:
            self._write_stdin(command)
        else:
            self._read_output(command, fd)
            self._maybe_done(command)

    def _read_output(self, command: Command, fd: int) -> bool:
        """One read; False when nothing more is to be had now (empty, closed, no credit)."""
        if command.credit <= 0:
            self._unwatch(fd)
            return False
        want = min(command.credit, X_MAX_PAYLOAD)
        if command.returncode is not None:
            want = min(want, command.drain_left)
        try:
            data = os.read(fd, want) if want > 0 else b""
        except BlockingIOError:
            if command.returncode is not None:
                # exited and empty: later output would be a leftover background child's
                self._close_pipe(command, fd)
            return False
        except OSError:
            data = b""
        if not data:
            self._close_pipe(command, fd)
            return False
        command.credit -= len(data)
        if command.returncode is not None:
            command.drain_left -= len(data)
        self.send(command.pipes[fd], command.channel, data)
        return True

    def _close_pipe(self, command: Command, fd: int) -> None:
        self._unwatch(fd)
        self.owner.pop(fd, None)
        command.pipes.pop(fd, None)
        command.files.pop(fd).close()

    def _write_stdin(self, command: Command) -> None:
        fd = command.stdin_fd
        assert fd is not None
        try:
            while command.stdin_buf:
                n = os.write(fd, command.stdin_buf[:X_READ])
                del command.stdin_buf[:n]
                command.stdin_written += n
        except BlockingIOError:
            pass
        except OSError:  # the process closed its stdin: what is left is dropped
            command.stdin_written += len(command.stdin_buf)
            del command.stdin_buf[:]
            self._close_stdin(command)
        self._grant_stdin(command)
        if command.stdin_fd is not None and not command.stdin_buf:
            if command.stdin_eof:
                self._close_stdin(command)
            else:
                self._unwatch(fd)

    def _grant_stdin(self, command: Command) -> None:
        if command.stdin_written and (
            command.stdin_written >= X_WINDOW // 4 or not command.stdin_buf
        ):
            self.send(K_STDIN_CREDIT, command.channel, command.stdin_written.to_bytes(4, "big"))
            command.stdin_allowed += command.stdin_written
            command.stdin_written = 0

    def _close_stdin(self, command: Command) -> None:
        if command.stdin_fd is None:
            return
        self._unwatch(command.stdin_fd)
        self.owner.pop(command.stdin_fd, None)
        command.stdin_fd = None
        with contextlib.suppress(OSError):
            command.stdin.close()

    def _reaped(self) -> None:
        for command in list(self.commands.values()):
            if command.returncode is None and command.proc.returncode is not None:
                command.returncode = command.proc.returncode
                self._drain(command)

    def _drain(self, command: Command) -> None:
        for fd in list(command.pipes):
            while self._read_output(command, fd):
                pass
        self._maybe_done(command)

    def _maybe_done(self, command: Command) -> None:
        if command.returncode is None or command.pipes:
            return
        self._close_stdin(command)
        self.send(K_EXIT, command.channel, encode_exit(command.returncode, command.timed_out))
        del self.commands[command.channel]

    def _deadlines(self) -> None:
        now = time.monotonic()
        for command in self.commands.values():
            if command.deadline is not None and not command.timed_out and now >= command.deadline:
                command.timed_out = True
                command.killpg(signal.SIGKILL)

    def _end_all(self) -> None:
        """The host is gone (or a new one said HELLO): its commands end with it."""
        for command in list(self.commands.values()):
            command.killpg(signal.SIGKILL)
            for fd in list(command.pipes):
                self._close_pipe(command, fd)
            self._close_stdin(command)
        self.commands.clear()


def serve_exec_fd(fd: int, *, serial: bool) -> None:
    os.set_blocking(fd, False)
    ExecHost(fd, serial=serial).serve()


def exec_stream(source: StreamSource) -> None:
    """The exec protocol on a serial-like source (the virtio-serial port, a test fd)."""
    for fd in open_in_turn(source):
        log("exec: serving " + source.describe)
        try:
            # A test's stream fd stands for the serial port: hosts share it in turn.
            serve_exec_fd(fd, serial=source.eof != "reopen")
        except OSError as exc:
            log(f"exec: {source.describe}: {exc}")
        finally:
            os.close(fd)
        if source.eof == "exit":
            return
        time.sleep(RETRY_S)


def serve_exec_connection(conn: socket.socket, slots: threading.BoundedSemaphore) -> None:
    try:
        serve_exec_fd(conn.fileno(), serial=False)
    except OSError:
        pass
    finally:
        conn.close()
        slots.release()


# -- file operations (docs/explanation/guest-files.md) -------------------------------------
#
# Run as ``python3 -I -S banger-agent --file OP ARG…`` through the exec channel: the
# command's stdout carries the data, its stdin what is written, its exit code the outcome
# and its stderr (one line) the reason. Each operation is a short-lived process, so it
# shares nothing with the agent's serving threads and a host that goes away kills it.

FILE_EXIT = {
    "ok": 0,
    "other": 1,
    "bad-request": 2,
    "not-found": 3,
    "is-a-directory": 4,
    "not-a-directory": 5,
    "symlink": 6,
    "permission": 7,
    "not-empty": 8,
    "size-mismatch": 9,
    "not-regular": 10,
    "exists": 11,
}
FILE_MAX_PATH = 4096
FILE_MAX_NAME = 255
FILE_CHUNK = 64 * 1024
#: The archive of a directory tree: a record per entry, then ``FA_END``.
#: ``[type u8][mode u32][size u64][mtime_ns i64][name_len u16][link_len u16]`` name link data
FA_HEADER = struct.Struct(">BIQqHH")
FA_END, FA_DIR, FA_FILE, FA_SYMLINK = 0, 1, 2, 3
FA_MAX_DEPTH = 64
_FILE_ERRNO = {
    errno.ENOENT: "not-found",
    errno.EISDIR: "is-a-directory",
    errno.ENOTDIR: "not-a-directory",
    errno.ELOOP: "symlink",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "permission",
    errno.ENOTEMPTY: "not-empty",
    errno.EEXIST: "exists",
}


class FileOpError(Exception):
    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def check_guest_path(path: str) -> str:
    """An absolute, normalised path: no empty, ``.`` or ``..`` component, no NUL."""
    if not path.startswith("/") or "\0" in path or len(path.encode()) > FILE_MAX_PATH:
        raise FileOpError("bad-request", "the path must be absolute: " + path[:200])
    if path == "/":
        return path
    parts = path[1:].split("/")
    for part in parts:
        if part in ("", ".", "..") or len(part.encode()) > FILE_MAX_NAME:
            raise FileOpError("bad-request", "the path is not normalised: " + path[:200])
    return path


def check_relative_name(name: bytes) -> bytes:
    """An archive member's name: relative, no empty, ``.`` or ``..`` component."""
    if not name or name.startswith(b"/") or b"\0" in name or len(name) > FILE_MAX_PATH:
        raise FileOpError("bad-request", "bad name in the archive: " + repr(name[:200]))
    for part in name.split(b"/"):
        if part in (b"", b".", b"..") or len(part) > FILE_MAX_NAME:
            raise FileOpError("bad-request", "bad name in the archive: " + repr(name[:200]))
    return name


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def _os_error(exc: OSError, path: str) -> FileOpError:
    outcome = _FILE_ERRNO.get(exc.errno or 0, "other")
    return FileOpError(outcome, (exc.strerror or str(exc)) + ": " + path[:200])


def _kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return "o"


def _stat_record(st: os.stat_result, name: bytes) -> bytes:
    """``kind size mode mtime name`` then NUL: a name holds anything but NUL and '/'."""
    secs, nanos = divmod(st.st_mtime_ns, 10**9)
    mtime = f"{secs}.{nanos:09d}"
    head = f"{_kind_of(st.st_mode)} {st.st_size} {stat.S_IMODE(st.st_mode):o} {mtime} "
    return head.encode() + name + b"\0"


def _write_out(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def file_read(path: str, offset: int, limit: int) -> None:
    """A regular file (symlinks followed: reading changes nothing): a ``stat`` record,
    then at most ``limit`` bytes from ``offset``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise _os_error(exc, path) from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileOpError("is-a-directory", "is a directory: " + path[:200])
        if not stat.S_ISREG(st.st_mode):
            raise FileOpError("not-regular", "not a regular file: " + path[:200])
        _write_out(_stat_record(st, os.fsencode(_split(path)[1])))
        left = limit
        while left > 0:
            data = os.pread(fd, min(FILE_CHUNK, left), offset)
            if not data:
                break
            _write_out(data)
            offset += len(data)
            left -= len(data)
    finally:
        os.close(fd)


def _open_parent(path: str, *, parents: bool) -> tuple[int, str]:
    parent, name = _split(path)
    if not name:
        raise FileOpError("is-a-directory", "is a directory: /")
    if parents:
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, parent) from exc
    try:
        return os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), name
    except OSError as exc:
        raise _os_error(exc, parent) from exc


def _refuse_existing(dir_fd: int, name: str, path: str) -> None:
    """The final component may be absent or a non-directory; a symlink is never followed."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise FileOpError("symlink", "refusing to write through a symlink: " + path[:200])
    if stat.S_ISDIR(st.st_mode):
        raise FileOpError("is-a-directory", "is a directory: " + path[:200])


def _copy_stdin(fd: int, size: int) -> None:
    """Exactly ``size`` bytes of stdin into ``fd``; fewer or more is refused."""
    left = size
    while True:
        data = os.read(0, FILE_CHUNK)
        if not data:
            break
        if len(data) > left:
            raise FileOpError("size-mismatch", f"more data than announced ({size} bytes)")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        left -= len(data)
    if left:
        raise FileOpError("size-mismatch", f"the data ended {left} bytes short")


def file_write(path: str, mode: int, *, parents: bool, size: int) -> None:
    """Replace ``path`` atomically: a temporary file in the same directory, renamed over
    it once all ``size`` bytes arrived (a cut or killed copy leaves the old file)."""
    dir_fd, name = _open_parent(path, parents=parents)
    try:
        _refuse_existing(dir_fd, name, path)
        temp = f".{name[:200]}.banger-{os.urandom(6).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            raise _os_error(exc, path) from exc
        try:
            try:
                _copy_stdin(fd, size)
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            _refuse_existing(dir_fd, name, path)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
    except OSError as exc:
        raise _os_error(exc, path) from exc
    finally:
        os.close(dir_fd)


def file_list(path: str, limit: int) -> None:
    """A ``stat`` record (lstat: links are not followed) per entry, at most ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _os_error(exc, path) from exc
    try:
        out = bytearray()
        with os.scandir(fd) as entries:
            for count, entry in enumerate(entries):
                if count >= limit:
                    break
                try:
                    st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                out += _stat_record(st, os.fsencode(entry.name))
                if len(out) >= FILE_CHUNK:
                    _write_out(bytes(out))
                    out.clear()
        _write_out(bytes(out))
    finally:
        os.close(fd)


def file_stat(path: str) -> None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        raise _os_error(exc, path) from exc
    _write_out(_stat_record(st, os.fsencode(_split(path)[1] or "/")))


def _remove_tree(dir_fd: int, depth: int) -> None:
    """Empty the directory open as ``dir_fd``, never leaving it through a symlink."""
    if depth > FA_MAX_DEPTH * 4:
        raise FileOpError("other", "the tree is too deep")
    with os.scandir(dir_fd) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            sub = os.open(name, flags, dir_fd=dir_fd)
            try:
                _remove_tree(sub, depth + 1)
            finally:
                os.close(sub)
            os.rmdir(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)


def file_remove(path: str, *, recursive: bool) -> None:
    """A file, a symlink (the link itself, never its target) or a directory (empty, or
    its whole tree when ``recursive``)."""
    if path == "/":
        raise FileOpError("bad-request", "refusing to remove /")
    dir_fd, name = _open_parent(path, parents=False)
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            return
        if recursive:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            sub = os.open(name, flags, dir_fd=dir_fd)
            try:
                _remove_tree(sub, 0)
            finally:
                os.close(sub)
        os.rmdir(name, dir_fd=dir_fd)
    except OSError as exc:
        raise _os_error(exc, path) from exc
    finally:
        os.close(dir_fd)


def fa_record(
    kind: int, name: bytes, *, mode: int = 0, size: int = 0, mtime_ns: int = 0, link: bytes = b""
) -> bytes:
    return FA_HEADER.pack(kind, mode, size, mtime_ns, len(name), len(link)) + name + link


def _pack_file(dir_fd: int, name: str, rel: bytes, st: os.stat_result) -> None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        size = st.st_size
        mode = stat.S_IMODE(st.st_mode)
        _write_out(fa_record(FA_FILE, rel, mode=mode, size=size, mtime_ns=st.st_mtime_ns))
        left = size
        while left > 0:  # exactly the announced size: a file that shrank is padded
            data = os.read(fd, min(FILE_CHUNK, left)) or bytes(min(FILE_CHUNK, left))
            _write_out(data)
            left -= len(data)
    finally:
        os.close(fd)


def _pack_dir(dir_fd: int, prefix: bytes, depth: int) -> None:
    if depth > FA_MAX_DEPTH:
        raise FileOpError("other", f"the tree is deeper than {FA_MAX_DEPTH} levels")
    with os.scandir(dir_fd) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        rel = prefix + os.fsencode(name)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                _pack_file(dir_fd, name, rel, st)
            elif stat.S_ISLNK(st.st_mode):
                link = os.fsencode(os.readlink(name, dir_fd=dir_fd))
                _write_out(
                    fa_record(FA_SYMLINK, rel, mode=0o777, mtime_ns=st.st_mtime_ns, link=link)
                )
            elif stat.S_ISDIR(st.st_mode):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                sub = os.open(name, flags, dir_fd=dir_fd)
                try:
                    mode = stat.S_IMODE(st.st_mode)
                    _write_out(fa_record(FA_DIR, rel, mode=mode, mtime_ns=st.st_mtime_ns))
                    _pack_dir(sub, rel + b"/", depth + 1)
                finally:
                    os.close(sub)
            # devices, fifos and sockets are not copied
        except FileNotFoundError:
            continue  # gone meanwhile


def file_pack(path: str) -> None:
    """The tree under the directory ``path`` as an archive on stdout (links not followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _os_error(exc, path) from exc
    try:
        _pack_dir(fd, b"", 0)
        _write_out(fa_record(FA_END, b""))
    finally:
        os.close(fd)


def _read_exact(size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        data = os.read(0, min(FILE_CHUNK, size - len(buf)))
        if not data:
            raise FileOpError("size-mismatch", "the archive ends early")
        buf += data
    return bytes(buf)


def _walk_to_parent(root_fd: int, name: bytes) -> tuple[int, bytes]:
    """Open the parent of ``name`` under ``root_fd``, one component at a time, never
    through a symlink (an earlier member may have planted one)."""
    parts = name.split(b"/")
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            new = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = new
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _unpack_member(root_fd: int, head: tuple[int, int, int], name: bytes, link: bytes) -> None:
    kind, mode, size = head
    fd, leaf = _walk_to_parent(root_fd, name)
    try:
        try:
            st = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if kind == FA_DIR:
            if st is None:
                os.mkdir(leaf, 0o700, dir_fd=fd)
            elif not stat.S_ISDIR(st.st_mode):
                raise FileOpError("not-a-directory", "not a directory: " + os.fsdecode(name))
            os.chmod(leaf, mode, dir_fd=fd, follow_symlinks=False)
            return
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise FileOpError("is-a-directory", "is a directory: " + os.fsdecode(name))
            os.unlink(leaf, dir_fd=fd)
        if kind == FA_SYMLINK:
            os.symlink(link, leaf, dir_fd=fd)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(leaf, flags, 0o600, dir_fd=fd)
        try:
            left = size
            while left > 0:
                data = os.read(0, min(FILE_CHUNK, left))
                if not data:
                    raise FileOpError("size-mismatch", "the archive ends inside a file")
                _write_out_fd(out, data)
                left -= len(data)
            os.fchmod(out, mode)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _write_out_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def file_unpack(path: str, *, parents: bool) -> None:
    """Create the archive on stdin under the directory ``path`` (made if missing)."""
    if parents:
        try:
            os.makedirs(path, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, path) from exc
    try:
        root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _os_error(exc, path) from exc
    try:
        while True:
            kind, mode, size, _, name_len, link_len = FA_HEADER.unpack(_read_exact(FA_HEADER.size))
            if kind == FA_END:
                return
            if kind not in (FA_DIR, FA_FILE, FA_SYMLINK) or mode > 0o7777:
                raise FileOpError("bad-request", f"bad archive record (type {kind})")
            name = check_relative_name(_read_exact(name_len))
            link = _read_exact(link_len)
            try:
                _unpack_member(root, (kind, mode, size), name, link)
            except OSError as exc:
                raise _os_error(exc, os.fsdecode(name)) from exc
    finally:
        os.close(root)


def _file_op(op: str, args: list[str]) -> None:
    if op == "read" and len(args) == 3:
        file_read(check_guest_path(args[0]), int(args[1]), int(args[2]))
    elif op == "write" and len(args) == 4:
        path, mode, parents, size = check_guest_path(args[0]), int(args[1], 8), args[2], args[3]
        file_write(path, mode & 0o7777, parents=parents == "1", size=int(size))
    elif op == "list" and len(args) == 2:
        file_list(check_guest_path(args[0]), int(args[1]))
    elif op == "stat" and len(args) == 1:
        file_stat(check_guest_path(args[0]))
    elif op == "remove" and len(args) == 2:
        file_remove(check_guest_path(args[0]), recursive=args[1] == "1")
    elif op == "pack" and len(args) == 1:
        file_pack(check_guest_path(args[0]))
    elif op == "unpack" and len(args) == 2:
        file_unpack(check_guest_path(args[0]), parents=args[1] == "1")
    else:
        raise FileOpError("bad-request", "unknown file operation: " + op[:40])


def file_main(argv: list[str]) -> int:
    """``--file OP ARG…``: one operation; its outcome is the exit code (``FILE_EXIT``)."""
    try:
        if not argv:
            raise FileOpError("bad-request", "no file operation")
        _file_op(argv[0], argv[1:])
    except FileOpError as exc:
        os.write(2, exc.message.encode("utf-8", "replace")[:1000] + b"\n")
        return FILE_EXIT[exc.outcome]
    except ValueError as exc:
        os.write(2, f"bad request: {exc}\n".encode("utf-8", "replace")[:1000])
        return FILE_EXIT["bad-request"]
    except OSError as exc:
        os.write(2, f"{exc}\n".encode("utf-8", "replace")[:1000])
        return FILE_EXIT[_FILE_ERRNO.get(exc.errno or 0, "other")]
    return 0


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="banger-agent", description="banger's guest agent")
    parser.add_argument("--vsock-port", type=int, default=None, help="0 turns vsock off")
    parser.add_argument("--serial", default=None, help="'auto' (default), 'off' or a device")
    parser.add_argument("--listen-unix", default=None, help="(tests) serve a unix socket")
    parser.add_argument("--connect-unix", default=None, help="(tests) a serial-like stream")
    parser.add_argument("--stream-fd", type=int, default=None, help="(tests) an inherited fd")
    parser.add_argument("--exec-vsock-port", type=int, default=None, help="0 turns it off")
    parser.add_argument("--exec-serial", default=None, help="'auto', 'off' or a device")
    parser.add_argument("--exec-listen-unix", default=None, help="(tests) exec on a socket")
    parser.add_argument("--exec-stream-fd", type=int, default=None, help="(tests) exec on an fd")
    parser.add_argument("--version", action="version", version=AGENT_VERSION)
    return parser.parse_args(argv)


def exec_jobs(
    args: argparse.Namespace, *, testing: bool
) -> list[tuple[Callable[..., None], tuple[object, ...]]]:
    """The exec channel's transports: vsock port 53, the ``org.banger.exec`` port, tests'."""
    jobs: list[tuple[Callable[..., None], tuple[object, ...]]] = []
    port = args.exec_vsock_port
    port = port if port is not None else (0 if testing else EXEC_VSOCK_PORT)
    serial = args.exec_serial if args.exec_serial is not None else ("off" if testing else "auto")
    if port and os.path.exists("/dev/vsock"):
        jobs.append(
            (
                run_listener,
                (f"vsock port {port}", lambda: vsock_listener(port), serve_exec_connection),
            )
        )
    if serial != "off":
        device = None if serial == "auto" else serial
        jobs.append((exec_stream, (device_source(device, EXEC_PORT_NAME),)))
    if args.exec_listen_unix is not None:
        path = args.exec_listen_unix
        jobs.append(
            (run_listener, ("unix:" + path, lambda: unix_listener(path), serve_exec_connection))
        )
    if args.exec_stream_fd is not None:
        jobs.append((exec_stream, (fd_source(args.exec_stream_fd),)))
    return jobs


def _ignored_signal(signum: int, frame: object) -> None:
    """What the agent does with a signal it was started ignoring: nothing."""


def stop_passing_on_ignored_signals() -> None:
    """An ignored signal stays ignored across exec, and a shell cannot even trap a signal
    it was started ignoring. A shell without job control (a background job, ``nohup``)
    starts us ignoring SIGINT, SIGQUIT or SIGHUP; passed on, they would make a command deaf
    to ``vm exec``'s Ctrl-C. A handler of our own keeps the agent as immune as it was, and
    exec resets a handled signal to its default in the command."""
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, _ignored_signal)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--file"]:
        return file_main(argv[1:])
    args = parse_args(argv)
    stop_passing_on_ignored_signals()
    # A test transport means "only what I asked for": never grab the host's vsock port.
    test_args = [args.listen_unix, args.connect_unix, args.stream_fd]
    test_args += [args.exec_listen_unix, args.exec_stream_fd]
    testing = any(v is not None for v in test_args)
    testing = testing or args.serial not in (None, "auto", "off")
    testing = testing or args.exec_serial not in (None, "auto", "off")
    jobs: list[tuple[Callable[..., None], tuple[object, ...]]] = []
    vsock_port = args.vsock_port if args.vsock_port is not None else (0 if testing else VSOCK_PORT)
    serial = args.serial if args.serial is not None else ("off" if testing else "auto")
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
    jobs += exec_jobs(args, testing=testing)
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
