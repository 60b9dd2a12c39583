"""Firecracker's HTTP layer (the ``micro_http`` crate) on the API Unix socket.

Owns: binding the socket (refused when the path exists, as ``UnixListener::bind``),
accepting at most ``MAX_CONNECTIONS`` clients, parsing HTTP/1.x requests with
micro_http's limits and wording, and writing its responses byte for byte
(``HTTP/1.1 204 \\r\\n``, ``Server: Firecracker API``, ``Connection: keep-alive``).
Must not: interpret paths or bodies (``routes`` does).

micro_http facts reproduced: methods GET/PUT/PATCH/DELETE only, HTTP/1.0 or 1.1, lines
end in CRLF and are at most 1024 bytes, ``Content-Length`` is a u32 checked against the
payload limit before the body is read; a parse failure is answered with 400 and
``{ "error": "<reason>\\nAll previous unanswered requests will be dropped." }`` (a raw
newline inside the JSON string, as Firecracker sends it). ``Expect: 100-continue`` gets
a 100 first. After a parse failure the stand-in also closes the connection.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from tests.fcstandin.fclog import FcLog

MAX_CONNECTIONS = 10
MAX_LINE = 1024
DEFAULT_PAYLOAD_LIMIT = 51200
METHODS = ("GET", "PUT", "PATCH", "DELETE")
#: A client silent this long mid-request (or idle between requests) is dropped.
IDLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None  # None when Content-Length is absent or 0, as micro_http


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes | None = None


class ParseError(Exception):
    """micro_http's RequestError text."""


class _Closed(Exception):
    pass


def fault(status: int, message: str) -> Response:
    """Firecracker's ``{"fault_message": …}`` body (serde_json, compact)."""
    body = json.dumps({"fault_message": message}, separators=(",", ":"), ensure_ascii=False)
    return Response(status, body.encode())


def json_response(value: object) -> Response:
    return Response(200, json.dumps(value, separators=(",", ":")).encode())


def render(response: Response) -> bytes:
    head = f"HTTP/1.1 {response.status} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
    if response.body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(response.body)}\r\n"
    return (head + "\r\n").encode() + (response.body or b"")


class ApiServer:
    """Serves ``handler`` on a Unix socket, one thread per connection."""

    def __init__(
        self,
        path: str,
        handler: Callable[[Request], Response],
        log: FcLog,
        *,
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
    ) -> None:
        self.handler = handler
        self.log = log
        self.payload_limit = payload_limit
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(path)  # EADDRINUSE when the path exists, as Firecracker
        except OSError:
            self.sock.close()
            raise
        self.sock.listen(MAX_CONNECTIONS)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def start(self) -> None:
        threading.Thread(target=self._accept_loop, name="fc_api", daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                self.log.error("API server full: dropping a new connection", thread="fc_api")
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="fc_api", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(IDLE_TIMEOUT_S)
        try:
            with conn, conn.makefile("rb") as reader:
                self._serve_requests(conn, reader)
        except (OSError, _Closed):
            pass
        finally:
            self._slots.release()

    def _serve_requests(self, conn: socket.socket, reader: BinaryIO) -> None:
        while True:
            try:
                request = self._read_request(conn, reader)
            except ParseError as exc:
                message = (
                    f'{{ "error": "{exc}\nAll previous unanswered requests will be dropped." }}'
                )
                conn.sendall(render(Response(400, message.encode())))
                _drain_and_close(conn)
                return
            conn.sendall(render(self.handler(request)))

    def _read_request(self, conn: socket.socket, reader: BinaryIO) -> Request:
        method, path = _request_line(_line(reader, first=True))
        length, expect = self._headers(reader)
        if length == 0:
            return Request(method, path, None)
        if length > self.payload_limit:
            raise ParseError(
                f"Request payload with size {length} is larger than the limit of "
                f"{self.payload_limit} allowed by server."
            )
        if expect:
            conn.sendall(render(Response(100)))
        body = reader.read(length)
        if len(body) < length:
            raise _Closed
        return Request(method, path, body)

    def _headers(self, reader: BinaryIO) -> tuple[int, bool]:
        length, expect = 0, False
        while line := _line(reader):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ParseError(
                    f"Invalid header. Reason: Header contains invalid characters. Key: {exc}"
                ) from exc
            key, sep, value = text.partition(":")
            if not sep:
                raise ParseError(
                    f"Invalid header. Reason: Header is incorrectly formatted. Key: {key}"
                )
            name = key.strip().lower()
            if name == "content-length":
                length = _content_length(key, value)
            elif name == "expect" and value.strip() == "100-continue":
                expect = True
        return length, expect


def _line(reader: BinaryIO, *, first: bool = False) -> bytes:
    raw = reader.readline(MAX_LINE + 2)
    if not raw:
        raise _Closed
    if not raw.endswith(b"\r\n"):
        if len(raw) > MAX_LINE:
            raise ParseError(
                "Invalid request." if first else "Invalid header. Reason: line too long"
            )
        raise _Closed  # the client went away mid-line
    return raw[:-2]


def _request_line(line: bytes) -> tuple[str, str]:
    parts = line.split(b" ", 2)
    if len(parts) != 3:
        raise ParseError("Invalid request.")
    method, uri, version = parts
    if method.decode(errors="replace") not in METHODS:
        raise ParseError("Invalid HTTP Method: Unsupported HTTP method.")
    if not uri:
        raise ParseError("Invalid URI: Empty URI not allowed.")
    try:
        uri_text = uri.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError("Invalid URI: Cannot parse URI as UTF-8.") from exc
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise ParseError("Invalid HTTP Version: Unsupported HTTP version.")
    return method.decode(), _abs_path(uri_text)


def _abs_path(uri: str) -> str:
    """micro_http's ``Uri::get_abs_path``: the path of an absolute or origin-form URI."""
    if uri.startswith("http://"):
        rest = uri[len("http://") :]
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else ""
    return uri if uri.startswith("/") else ""


def _content_length(key: str, value: str) -> int:
    text = value.strip()
    if not text.isdigit() or int(text) >= 1 << 32:
        raise ParseError(f"Invalid header. Reason: Invalid value. Key:{key}; Value:{value}")
    return int(text)


def _drain_and_close(conn: socket.socket) -> None:
    """Stop writing, swallow what the client still sends (briefly), then close."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1.0)
        for _ in range(256):
            if not conn.recv(65536):
                break
