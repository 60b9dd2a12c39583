"""The daemon's HTTP/1.1 client over its Unix socket, stdlib only (CLI, SDK, MCP server).

Owns: requests, reading replies (framed by Content-Length, chunked coding or the end of
the connection), NDJSON stream reading, raw uploads and downloads (guest files),
rebuilding typed errors from replies, and switching a connection to another protocol
(``upgrade``: ``vm exec``).
Must not: start or stop the daemon (``banger.client.launcher`` does) or print anything.

Its own small HTTP/1.1 rather than ``http.client``: importing that pulls in ``email``
and ``ssl``, about 20 ms of every CLI call (docs/explanation/cli-startup.md). It sends
one request per connection and reads one reply, strictly and with bounds on every line
and on the head; anything else is a ``BadResponse``. A connection the daemon ends before
its reply is complete is a ``DaemonUnavailable``, as is no daemon at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from banger.errors import (
    BadResponse,
    BangerError,
    DaemonUnavailable,
    PermissionDenied,
    Timeout,
    error_from_payload,
)
from banger.model.wire import API_PREFIX, JSON, OCTET_STREAM

DEFAULT_TIMEOUT_S = 30.0
#: A progress stream may go quiet between events, but the daemon sends a heartbeat at
#: least every 10 s (banger.services.operations); this bounds a dead daemon.
STREAM_IDLE_TIMEOUT_S = 120.0
#: Largest reply the client reads in one piece; streams are read line by line.
MAX_REPLY_BYTES = 64 << 20
MAX_EVENT_BYTES = 1 << 20
#: Bounds on a reply's head: any one line (status, header, chunk size) and the whole head.
MAX_LINE_BYTES = 8 << 10
MAX_HEAD_BYTES = 64 << 10
MAX_HEADERS = 100

#: Methods that always carry a Content-Length, 0 without a body (as http.client sends).
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_METHOD = re.compile(r"[A-Z]+")
_TARGET = re.compile(r"/[!-~]*")  # visible ASCII: no space, no control character
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?: [^\r\n]*)?\r\n")
#: name ":" OWS value OWS CRLF; no whitespace before the colon, no control characters.
_HEADER_LINE = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*\r\n"
)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?\r\n")
_READ_BYTES = 64 << 10
_UPLOAD_PIECE = 1 << 20


class _Closed(ConnectionError):
    """The daemon ended the connection before its reply was complete."""


class Client:
    def __init__(self, socket_path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        with self._exchange(method, path, body) as reply:
            raw = reply.read(MAX_REPLY_BYTES)
        payload = _decode(raw)
        if reply.status >= 400:
            raise error_from_payload(payload, status=reply.status)
        return payload

    def stream(self, method: str, path: str, body: Any = None) -> Iterator[dict[str, Any]]:
        """Yield progress events; an error event is raised as its typed error."""
        idle_s = max(self.timeout_s, STREAM_IDLE_TIMEOUT_S)
        with self._exchange(method, path, body, idle_timeout_s=idle_s) as reply:
            if reply.status >= 400:
                raise error_from_payload(_decode(reply.read(MAX_REPLY_BYTES)), status=reply.status)
            while True:
                line = reply.readline(MAX_EVENT_BYTES)
                if not line:
                    raise BadResponse("the daemon ended the progress stream without a result")
                event = _decode(line)
                if not isinstance(event, dict):
                    raise BadResponse("progress event is not a JSON object")
                if event.get("type") == "error":
                    raise error_from_payload(event, status=500)
                if event.get("type") == "heartbeat":
                    continue
                yield event
                if event.get("type") == "result":
                    return

    def upload(self, method: str, path: str, body: bytes | BinaryIO, size: int) -> Any:
        """Send ``size`` raw bytes (``application/octet-stream``) and read a JSON reply.

        A file object is streamed in pieces; one that ends before ``size`` bytes is a
        ValueError (the daemon would see a cut body and refuse it anyway).
        """
        head = _head(method, API_PREFIX + path, [f"Content-Type: {OCTET_STREAM}"], size)
        idle_s = max(self.timeout_s, STREAM_IDLE_TIMEOUT_S)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout_s)
                sock.connect(str(self.socket_path))
                sock.settimeout(idle_s)
                with sock.makefile("rb") as fp:
                    # The daemon may refuse before it reads the body (a VM that is not
                    # running): its reply is still there to read.
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        sock.sendall(head)
                        _send_body(sock, body, size)
                    reply = _Reply(fp)
                    raw = reply.read(MAX_REPLY_BYTES)
        except OSError as exc:
            raise self._transport_error(exc) from exc
        payload = _decode(raw)
        if reply.status >= 400:
            raise error_from_payload(payload, status=reply.status)
        return payload

    @contextlib.contextmanager
    def download(self, path: str) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        """A raw reply: its headers and its body in pieces. A body that ends early (the
        daemon cut it: the transfer failed mid-way) is a BadResponse."""
        idle_s = max(self.timeout_s, STREAM_IDLE_TIMEOUT_S)
        with self._exchange("GET", path, None, idle_timeout_s=idle_s) as reply:
            if reply.status >= 400:
                raise error_from_payload(_decode(reply.read(MAX_REPLY_BYTES)), status=reply.status)

            def pieces() -> Iterator[bytes]:
                try:
                    while data := reply._next():
                        yield data
                except _Closed as exc:
                    raise BadResponse(
                        "the transfer was cut short",
                        details=str(exc),
                        hint="`banger daemon logs` says why",
                    ) from exc

            yield reply.headers, pieces()

    @contextlib.contextmanager
    def _exchange(
        self, method: str, path: str, body: Any, *, idle_timeout_s: float | None = None
    ) -> Iterator[_Reply]:
        """One connection: send the request, read the reply's head, yield the reply.

        Any OSError inside (connect, send, a read of the body) becomes a typed error;
        ``idle_timeout_s`` replaces the timeout once the head has arrived.
        """
        data = None if body is None else json.dumps(body).encode()
        request = _request_bytes(method, API_PREFIX + path, data)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout_s)
                sock.connect(str(self.socket_path))
                with sock.makefile("rb") as fp:
                    # A daemon may answer and close before it reads the request (one
                    # that refuses this peer does): its reply is still there to read.
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        sock.sendall(request)
                    reply = _Reply(fp)
                    if idle_timeout_s is not None:
                        sock.settimeout(idle_timeout_s)
                    yield reply
        except OSError as exc:
            raise self._transport_error(exc) from exc

    def upgrade(
        self, path: str, body: Any, protocol: str
    ) -> tuple[socket.socket, io.BufferedReader, dict[str, str]]:
        """POST with ``Connection: Upgrade``; on ``101`` the connected socket, a buffered
        reader of it (it may already hold bytes after the head) and the 101's headers.
        Any other reply is raised as its typed error. The socket has no timeout left."""
        data = json.dumps(body).encode()
        request = _request_bytes("POST", API_PREFIX + path, data, upgrade=protocol)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout_s)
            sock.connect(str(self.socket_path))
            fp = sock.makefile("rb")
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            status, headers = _read_head(fp, switching=True)
            if status != 101:
                reply = _Reply(fp, status, headers)
                payload = _decode(reply.read(MAX_REPLY_BYTES))
                raise (
                    error_from_payload(payload, status=status)
                    if status >= 400
                    else BadResponse(
                        f"the daemon answered HTTP {status} instead of switching to {protocol}"
                    )
                )
            if headers.get("upgrade", "").lower() != protocol.lower():
                raise BadResponse(f"the daemon switched to {headers.get('upgrade')!r}")
            sock.settimeout(None)
            return sock, fp, headers
        except OSError as exc:
            sock.close()
            raise self._transport_error(exc) from exc
        except BaseException:
            sock.close()
            raise

    def _transport_error(self, exc: BaseException) -> BangerError:
        where = str(self.socket_path)
        if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            return DaemonUnavailable(f"no banger daemon is listening on {where}")
        if isinstance(exc, PermissionError):
            return PermissionDenied(
                f"cannot reach {where}: it belongs to another user",
                hint="each user runs their own banger daemon; check XDG_RUNTIME_DIR",
            )
        if isinstance(exc, TimeoutError):
            return Timeout(
                f"the daemon on {where} did not answer within {self.timeout_s:g}s",
                hint="`banger daemon logs` shows what it is busy with; `banger daemon stop` "
                "and the next command start a fresh one",
            )
        return DaemonUnavailable(f"lost the connection to the daemon on {where}: {exc}")


def _request_bytes(
    method: str, target: str, body: bytes | None, *, upgrade: str | None = None
) -> bytes:
    """One HTTP/1.1 request; ``target`` must already be percent-encoded."""
    if not _METHOD.fullmatch(method) or not _TARGET.fullmatch(target):
        raise ValueError(f"cannot send {method!r} {target!r}: not a method and an encoded path")
    head = [
        f"{method} {target} HTTP/1.1",
        "Host: bangerd",
        "Accept-Encoding: identity",
        f"Accept: {JSON}",
    ]
    if upgrade is None:
        head.append("Connection: close")
    else:
        head += ["Connection: Upgrade", f"Upgrade: {upgrade}"]
    if body is not None:
        head += [f"Content-Type: {JSON}", f"Content-Length: {len(body)}"]
    elif method in _METHODS_WITH_BODY:
        head.append("Content-Length: 0")
    return "\r\n".join([*head, "", ""]).encode("ascii") + (body or b"")


def _head(method: str, target: str, extra: list[str], size: int) -> bytes:
    if not _METHOD.fullmatch(method) or not _TARGET.fullmatch(target):
        raise ValueError(f"cannot send {method!r} {target!r}: not a method and an encoded path")
    head = [f"{method} {target} HTTP/1.1", "Host: bangerd", "Accept-Encoding: identity"]
    head += [f"Accept: {JSON}", "Connection: close", *extra, f"Content-Length: {size}"]
    return "\r\n".join([*head, "", ""]).encode("ascii")


def _send_body(sock: socket.socket, body: bytes | BinaryIO, size: int) -> None:
    if isinstance(body, bytes):
        if len(body) != size:
            raise ValueError(f"the body has {len(body)} bytes, not {size}")
        sock.sendall(body)
        return
    left = size
    while left > 0:
        piece = body.read(min(left, _UPLOAD_PIECE))
        if not piece:
            raise ValueError(f"the data ended {left} bytes before its size ({size})")
        sock.sendall(piece)
        left -= len(piece)


class _Reply:
    """One reply read from a buffered stream: status and headers at once, then the body,
    whole (``read``) or line by line (``readline``)."""

    def __init__(
        self,
        fp: io.BufferedReader,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._fp = fp
        self._buf = bytearray()
        if status is None or headers is None:
            status, headers = _read_head(fp)
        self.status, self.headers = status, headers
        self._left, self._chunked = _framing(self.status, self.headers)
        self._chunk_left = 0
        self._done = self._left == 0

    def read(self, limit: int) -> bytes:
        """The whole body; more than ``limit`` bytes is a BadResponse."""
        if self._left is not None and len(self._buf) + self._left > limit:
            raise BadResponse(f"daemon reply larger than {limit} bytes")
        parts, size = [bytes(self._buf)], len(self._buf)
        self._buf.clear()
        while data := self._next():
            size += len(data)
            if size > limit:
                raise BadResponse(f"daemon reply larger than {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    def readline(self, limit: int) -> bytes:
        """The body's next line with its newline; what is left (maybe b"") at its end."""
        start = 0
        while (end := self._buf.find(b"\n", start)) < 0:
            if len(self._buf) > limit:
                raise BadResponse(f"progress event longer than {limit} bytes")
            start = len(self._buf)
            data = self._next()
            if not data:
                line = bytes(self._buf)
                self._buf.clear()
                return line
            self._buf += data
        if end >= limit:
            raise BadResponse(f"progress event longer than {limit} bytes")
        line = bytes(self._buf[: end + 1])
        del self._buf[: end + 1]
        return line

    def _next(self) -> bytes:
        """The next piece of the body; b"" once all of it has been read."""
        if self._done:
            return b""
        if self._chunked:
            return self._next_chunk_piece()
        if self._left is None:  # delimited by the end of the connection
            data = self._fp.read1(_READ_BYTES)
            self._done = not data
            return data
        data = self._fp.read1(min(self._left, _READ_BYTES))
        if not data:
            raise _Closed(f"the reply ended {self._left} bytes short of its Content-Length")
        self._left -= len(data)
        self._done = self._left == 0
        return data

    def _next_chunk_piece(self) -> bytes:
        if self._chunk_left == 0:
            line = _read_line(self._fp, "chunk size")
            match = _CHUNK_LINE.fullmatch(line)
            if match is None:
                raise BadResponse("bad chunk size in the daemon's reply", details=repr(line))
            self._chunk_left = int(match[1], 16)
            if self._chunk_left == 0:
                _read_fields(self._fp, MAX_HEAD_BYTES)  # trailers: read, ignored
                self._done = True
                return b""
        data = self._fp.read1(min(self._chunk_left, _READ_BYTES))
        if not data:
            raise _Closed("the reply ended inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and _read_line(self._fp, "chunk end") != b"\r\n":
            raise BadResponse("a chunk of the daemon's reply is longer than its size")
        return data


def _read_head(fp: io.BufferedReader, *, switching: bool = False) -> tuple[int, dict[str, str]]:
    """Status and headers of the final reply (or of a 101 when ``switching``)."""
    budget = MAX_HEAD_BYTES
    while True:
        line = _read_line(fp, "status line", first=True)
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            raise BadResponse("the daemon's reply is not HTTP/1.1", details=repr(line[:200]))
        budget -= len(line)
        headers, budget = _read_fields(fp, budget)
        status = int(match[1])
        if status >= 200 or (switching and status == 101):
            return status, headers
        # An interim 1xx reply: the final one follows (RFC 9110 §15.2).


def _read_fields(fp: io.BufferedReader, budget: int) -> tuple[dict[str, str], int]:
    """Header (or trailer) fields up to the empty line; names lower-cased, repeats joined."""
    fields: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = _read_line(fp, "header")
        budget -= len(line)
        if budget < 0:
            raise BadResponse(f"the daemon's reply head is larger than {MAX_HEAD_BYTES} bytes")
        if line == b"\r\n":
            return fields, budget
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            raise BadResponse("bad header in the daemon's reply", details=repr(line[:200]))
        name, value = match[1].decode().lower(), match[2].decode("latin-1")
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    raise BadResponse(f"the daemon's reply has more than {MAX_HEADERS} headers")


def _read_line(fp: io.BufferedReader, what: str, *, first: bool = False) -> bytes:
    line = fp.readline(MAX_LINE_BYTES + 1)
    if len(line) > MAX_LINE_BYTES:
        raise BadResponse(f"a {what} in the daemon's reply is longer than {MAX_LINE_BYTES} bytes")
    if line.endswith(b"\r\n"):
        return line
    if line.endswith(b"\n"):
        raise BadResponse(f"a {what} in the daemon's reply ends without CR", details=repr(line))
    if first and not line:
        raise _Closed("it closed the connection without a reply")
    raise _Closed(f"the reply ended inside a {what}")


def _framing(status: int, headers: dict[str, str]) -> tuple[int | None, bool]:
    """(Content-Length or None, chunked?) by RFC 9112 §6.3; None and not chunked: to EOF."""
    if status in (204, 304):
        return 0, False
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.strip().lower() != "chunked" or "content-length" in headers:
            raise BadResponse(f"unsupported framing in the daemon's reply: {coding!r}")
        return None, True
    length = headers.get("content-length")
    if length is None:
        return None, False
    values = {v.strip() for v in length.split(",")}
    if len(values) != 1 or not (value := values.pop()).isdigit() or not value.isascii():
        raise BadResponse(f"bad Content-Length in the daemon's reply: {length!r}")
    return int(value), False


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadResponse("the daemon's reply is not JSON", details=repr(raw[:200])) from exc
