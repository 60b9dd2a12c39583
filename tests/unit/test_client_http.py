"""The CLI's own HTTP/1.1 client (banger.client.http) against a real AF_UNIX server thread.

The server reads each request for real and answers with exact bytes, so these tests pin
what the client accepts, what it refuses as a bad reply, and which typed error each
transport failure becomes (the launcher's auto-start relies on DaemonUnavailable).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from banger.client import http as client_mod
from banger.client.http import Client
from banger.errors import (
    BadResponse,
    DaemonUnavailable,
    InvalidState,
    PermissionDenied,
    Timeout,
    VmNotFound,
)

Handler = Callable[[socket.socket], None]


def read_request(conn: socket.socket) -> bytes:
    """One whole request: the head, then as many body bytes as its Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


class Server:
    """Answers connection N with ``replies[N]``: bytes sent after reading the request
    (then the connection is closed), or a handler given the accepted connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[bytes] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._thread: threading.Thread | None = None

    def answer(self, *replies: bytes | Handler) -> Server:
        self._thread = threading.Thread(target=self._serve, args=(replies,), daemon=True)
        self._thread.start()
        return self

    def _serve(self, replies: tuple[bytes | Handler, ...]) -> None:
        for reply in replies:
            conn, _ = self._listener.accept()
            # The client may hang up first (it refuses a reply half-way): not our failure.
            with conn, contextlib.suppress(OSError):
                if callable(reply):
                    reply(conn)
                    continue
                self.requests.append(read_request(conn))
                conn.sendall(reply)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._listener.close()


@pytest.fixture
def server() -> Iterator[Server]:
    # A short directory: AF_UNIX paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="bgr-http-"))
    srv = Server(root / "s.sock")
    try:
        yield srv
    finally:
        srv.close()
        shutil.rmtree(root, ignore_errors=True)


def client(server: Server, timeout_s: float = 5.0) -> Client:
    return Client(server.path, timeout_s=timeout_s)


def reply(status: str, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", "content-type: application/json", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunked(*pieces: bytes, end: bytes = b"0\r\n\r\n") -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + end


def ndjson(*events: dict[str, object]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


STAGE = {"type": "stage", "stage": "kvm", "state": "ok"}
RESULT = {"type": "result", "data": {"ok": True}}


# -- requests -----------------------------------------------------------------------------


def test_get_sends_one_http11_request_and_decodes_the_json(server: Server) -> None:
    server.answer(reply("200 OK", b'{"pid": 7}'))
    assert client(server).get("/ping") == {"pid": 7}
    head = server.requests[0].decode()
    assert head.startswith("GET /v1/ping HTTP/1.1\r\n")
    assert "\r\nHost: bangerd\r\n" in head and "\r\nConnection: close\r\n" in head
    assert "Content-Length" not in head


def test_post_sends_the_json_body_or_an_empty_one(server: Server) -> None:
    server.answer(reply("200 OK", b"{}"), reply("200 OK", b"{}"))
    client(server).post("/vms/a%20b/kill", {"signal": "TERM"})
    client(server).post("/daemon/shutdown")
    first, second = server.requests
    assert first.startswith(b"POST /v1/vms/a%20b/kill HTTP/1.1\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in first
    assert first.split(b"\r\n\r\n", 1)[1] == b'{"signal": "TERM"}'
    assert second.endswith(b"\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("path", ["/vms/a b", "/vms/\x00", "/vms/\u00e9", "/vms/a\r\nX-Evil: 1"])
def test_a_path_that_is_not_percent_encoded_is_refused_before_connecting(path: str) -> None:
    with pytest.raises(ValueError, match="encoded path"):
        Client(Path("/nonexistent/s.sock")).get(path)


# -- replies ------------------------------------------------------------------------------


def test_error_reply_becomes_the_typed_error_with_its_hint(server: Server) -> None:
    body = {"error": {"code": "vm_not_found", "message": "VM 'x' not found", "hint": "look"}}
    server.answer(reply("404 Not Found", json.dumps(body).encode()))
    with pytest.raises(VmNotFound) as info:
        client(server).get("/vms/x")
    assert info.value.brief == "VM 'x' not found" and info.value.hint == "look"


def test_error_status_without_a_banger_body_is_a_bad_response(server: Server) -> None:
    server.answer(reply("502 Bad Gateway", b'{"detail": "nope"}'))
    with pytest.raises(BadResponse, match="HTTP 502"):
        client(server).get("/ping")


def test_interim_1xx_replies_are_skipped_and_headers_are_case_insensitive(
    server: Server,
) -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 \r\nCONTENT-LENGTH:   2  \r\n\r\n{}"
    server.answer(raw)
    assert client(server).get("/ping") == {}


def test_a_reply_without_length_runs_to_the_end_of_the_connection(server: Server) -> None:
    server.answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n[1, 2, 3]")
    assert client(server).get("/vms") == [1, 2, 3]


def test_a_chunked_reply_is_reassembled(server: Server) -> None:
    server.answer(chunked(b'{"a": ', b"[1,", b" 2]}"))
    assert client(server).get("/x") == {"a": [1, 2]}


def test_a_reply_that_is_not_json_is_a_bad_response(server: Server) -> None:
    server.answer(reply("200 OK", b"<html>"))
    with pytest.raises(BadResponse, match="not JSON"):
        client(server).get("/ping")


def test_a_reply_over_the_size_limit_is_refused(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_mod, "MAX_REPLY_BYTES", 100)
    server.answer(reply("200 OK", b"[" + b"1," * 60 + b"1]"), chunked(b"[" + b"1," * 60 + b"1]"))
    with pytest.raises(BadResponse, match="larger than 100 bytes"):
        client(server).get("/vms")  # Content-Length says so: refused before reading
    with pytest.raises(BadResponse, match="larger than 100 bytes"):
        client(server).get("/vms")  # chunked: refused once it has read that much


# -- malformed heads ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "status_line",
    [
        b"HTTP/1.1 OK\r\n",
        b"HTTP/2 200 OK\r\n",
        b"HTTP/1.1 99 Low\r\n",
        b"HTTP/1.1 2000 OK\r\n",
        b"http/1.1 200 OK\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ],
)
def test_a_bad_status_line_is_a_bad_response(server: Server, status_line: bytes) -> None:
    server.answer(status_line + b"content-length: 2\r\n\r\n{}")
    with pytest.raises(BadResponse, match=r"not HTTP/1\.1"):
        client(server).get("/ping")


def test_bare_lf_line_endings_are_refused(server: Server) -> None:
    server.answer(b"HTTP/1.1 200 OK\ncontent-length: 2\n\n{}")
    with pytest.raises(BadResponse, match="without CR"):
        client(server).get("/ping")


def test_an_oversized_header_line_is_refused(server: Server) -> None:
    long_header = b"x-pad: " + b"a" * (client_mod.MAX_LINE_BYTES + 10) + b"\r\n"
    server.answer(b"HTTP/1.1 200 OK\r\n" + long_header + b"content-length: 2\r\n\r\n{}")
    with pytest.raises(BadResponse, match="longer than"):
        client(server).get("/ping")


def test_an_oversized_head_is_refused(server: Server) -> None:
    line = b"x-pad: " + b"a" * 4000 + b"\r\n"
    count = client_mod.MAX_HEAD_BYTES // len(line) + 1
    server.answer(b"HTTP/1.1 200 OK\r\n" + line * count + b"content-length: 2\r\n\r\n{}")
    with pytest.raises(BadResponse, match="head is larger than"):
        client(server).get("/ping")


def test_too_many_headers_are_refused(server: Server) -> None:
    lines = b"".join(b"x-h%d: 1\r\n" % i for i in range(client_mod.MAX_HEADERS + 1))
    server.answer(b"HTTP/1.1 200 OK\r\n" + lines + b"content-length: 2\r\n\r\n{}")
    with pytest.raises(BadResponse, match="more than 100 headers"):
        client(server).get("/ping")


@pytest.mark.parametrize(
    "header",
    [
        b"content-length : 2",  # space before the colon
        b" folded: continuation",  # obsolete line folding
        b"x-ctl: a\x01b",  # control character
        b"no-colon",
    ],
)
def test_malformed_headers_are_refused(server: Server, header: bytes) -> None:
    server.answer(b"HTTP/1.1 200 OK\r\n" + header + b"\r\ncontent-length: 2\r\n\r\n{}")
    with pytest.raises(BadResponse, match="bad header"):
        client(server).get("/ping")


@pytest.mark.parametrize(
    "framing",
    [
        b"content-length: 2\r\ncontent-length: 3",
        b"content-length: -2",
        b"content-length: 0x2",
        b"transfer-encoding: gzip, chunked",
        b"transfer-encoding: chunked\r\ncontent-length: 2",
    ],
)
def test_ambiguous_or_unsupported_framing_is_refused(server: Server, framing: bytes) -> None:
    server.answer(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n{}")
    with pytest.raises(BadResponse, match=r"framing|Content-Length"):
        client(server).get("/ping")


def test_a_repeated_identical_content_length_is_accepted(server: Server) -> None:
    server.answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n{}")
    assert client(server).get("/ping") == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"zz\r\n{}\r\n0\r\n\r\n", "bad chunk size"),
        (b"1\r\n{}\r\n0\r\n\r\n", "longer than its size"),
    ],
)
def test_bad_chunk_framing_is_refused(server: Server, body: bytes, message: str) -> None:
    server.answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body)
    with pytest.raises(BadResponse, match=message):
        client(server).get("/ping")


# -- the daemon going away ----------------------------------------------------------------


def close_at_once(conn: socket.socket) -> None:
    read_request(conn)


def test_a_server_closing_without_a_reply_is_a_lost_connection(server: Server) -> None:
    server.answer(close_at_once)
    with pytest.raises(DaemonUnavailable, match=r"lost the connection.*without a reply"):
        client(server).get("/ping")


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"HTTP/1.1 200", "status line"),
        (b"HTTP/1.1 200 OK\r\ncontent-le", "header"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}", "8 bytes short"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{}", "inside a chunk"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n", "chunk size"),
    ],
)
def test_a_reply_cut_short_is_a_lost_connection(server: Server, raw: bytes, where: str) -> None:
    server.answer(raw)
    with pytest.raises(DaemonUnavailable, match=f"lost the connection.*{where}"):
        client(server).get("/ping")


def test_a_silent_server_is_a_timeout(server: Server) -> None:
    release = threading.Event()

    def silent(conn: socket.socket) -> None:
        read_request(conn)
        release.wait(10)

    server.answer(silent)
    started = time.monotonic()
    try:
        with pytest.raises(Timeout, match=r"did not answer within 0\.3s"):
            client(server, timeout_s=0.3).get("/ping")
    finally:
        release.set()
    assert time.monotonic() - started < 5


def test_a_reply_written_before_the_request_is_read_still_arrives(server: Server) -> None:
    # As bangerd does for another uid: answer 403 at once and close, request unread.
    body = {"error": {"code": "permission_denied", "message": "not yours", "hint": "h"}}

    def refuse(conn: socket.socket) -> None:
        conn.sendall(reply("403 Forbidden", json.dumps(body).encode(), "Connection: close"))
        conn.shutdown(socket.SHUT_WR)

    server.answer(refuse)
    with pytest.raises(PermissionDenied, match="not yours"):
        client(server).post("/vms", {"pad": "x" * 300_000})


def test_no_socket_and_a_stale_socket_are_daemon_unavailable(server: Server) -> None:
    with pytest.raises(DaemonUnavailable, match="no banger daemon is listening"):
        Client(server.path.with_name("absent.sock")).get("/ping")
    server.close()  # the socket file stays, nobody listens: ECONNREFUSED
    with pytest.raises(DaemonUnavailable, match="no banger daemon is listening"):
        Client(server.path).get("/ping")


# -- progress streams ---------------------------------------------------------------------


def test_a_stream_yields_events_across_and_within_chunks(server: Server) -> None:
    lines = ndjson(STAGE, {"type": "heartbeat"}, {**STAGE, "stage": "net"}, RESULT)
    server.answer(chunked(lines[:7], lines[7:60], lines[60:]))
    events = list(client(server).stream("GET", "/doctor"))
    assert events == [STAGE, {**STAGE, "stage": "net"}, RESULT]  # heartbeats are dropped
    assert server.requests[0].startswith(b"GET /v1/doctor HTTP/1.1\r\n")


def test_a_stream_error_event_is_raised_as_its_typed_error(server: Server) -> None:
    error = {"type": "error", "error": {"code": "invalid_state", "message": "VM is running"}}
    server.answer(chunked(ndjson(STAGE, error)))
    events = client(server).stream("POST", "/vms/a/start")
    assert next(events) == STAGE
    with pytest.raises(InvalidState, match="VM is running"):
        next(events)


def test_a_stream_refused_with_an_error_status_raises_it(server: Server) -> None:
    body = {"error": {"code": "vm_not_found", "message": "VM 'a' not found"}}
    server.answer(reply("404 Not Found", json.dumps(body).encode()))
    with pytest.raises(VmNotFound):
        list(client(server).stream("POST", "/vms/a/start"))


def test_a_stream_that_ends_without_a_result_is_a_bad_response(server: Server) -> None:
    server.answer(chunked(ndjson(STAGE)))
    with pytest.raises(BadResponse, match="without a result"):
        list(client(server).stream("GET", "/doctor"))


def test_a_stream_cut_mid_event_is_a_lost_connection(server: Server) -> None:
    server.answer(chunked(ndjson(STAGE), b'{"type": "sta', end=b""))
    events = client(server).stream("GET", "/doctor")
    assert next(events) == STAGE
    with pytest.raises(DaemonUnavailable, match="lost the connection"):
        next(events)


def test_a_stream_event_over_the_line_limit_is_refused(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_mod, "MAX_EVENT_BYTES", 64)
    big = {"type": "stage", "stage": "x" * 100, "state": "ok"}
    server.answer(chunked(ndjson(STAGE), ndjson(big)[:40], ndjson(big)[40:]))
    events = client(server).stream("GET", "/doctor")
    assert next(events) == STAGE
    with pytest.raises(BadResponse, match="longer than 64 bytes"):
        next(events)


def test_a_stream_that_is_not_json_objects_is_a_bad_response(server: Server) -> None:
    server.answer(chunked(b"[1]\n"))
    with pytest.raises(BadResponse, match="not a JSON object"):
        list(client(server).stream("GET", "/doctor"))


def test_a_close_delimited_stream_is_read_to_its_end(server: Server) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\r\n"
    server.answer(head + ndjson(STAGE, RESULT))
    assert list(client(server).stream("GET", "/doctor")) == [STAGE, RESULT]


def test_leaving_a_stream_early_closes_the_connection(server: Server) -> None:
    seen_eof = threading.Event()

    def slow_stream(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(chunked(ndjson(STAGE), end=b""))
        conn.settimeout(10)
        while conn.recv(1024):
            pass
        seen_eof.set()

    server.answer(slow_stream)
    events = client(server).stream("GET", "/doctor")
    assert next(events) == STAGE
    events.close()
    assert seen_eof.wait(10)
