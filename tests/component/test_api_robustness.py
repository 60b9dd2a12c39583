"""Bad requests get clear errors and never take the daemon down (ADVERSARIAL 49, 50, 119),
and the API edges of issue 14 (items 7, 8, 9, 12, 13)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from banger.api.transport import REQUEST_READ_TIMEOUT_S
from banger.client.http import Client
from banger.errors import MethodNotAllowed, NotFound, PayloadTooLarge, VmNotFound
from tests.conftest import BangerHome


@pytest.fixture
def client(home: BangerHome) -> Client:
    assert home.banger("daemon", "start").returncode == 0
    return Client(home.socket, timeout_s=10)


def _raw(home: BangerHome, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(home.socket))
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_oversized_body_is_refused_and_daemon_survives_e49(
    home: BangerHome, client: Client
) -> None:
    with pytest.raises(PayloadTooLarge):
        client.post("/daemon/shutdown", {"pad": "x" * (2 << 20)})
    assert client.get("/ping")["pid"]


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01\x02 this is not http\r\n\r\n",
        b"GET /v1/ping HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n",
        b"POST /v1/ping HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /v1/ping HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    ],
    ids=["garbage", "bad-header-line", "bad-content-length", "no-host"],
)
def test_garbage_on_the_socket_gets_400_and_daemon_survives_e49(
    home: BangerHome, client: Client, data: bytes
) -> None:
    """Issue 14 item 16: malformed HTTP got uvicorn's plain text; now banger's JSON body."""
    reply = _raw(home, data)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    head, body = reply.split(b"\r\n\r\n", 1)
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "malformed_http"
    assert error["message"] and error["hint"]
    assert client.get("/ping")["pid"]


def test_a_stalled_client_does_not_block_others_e50(home: BangerHome, client: Client) -> None:
    with socket.socket(socket.AF_UNIX) as stalled:
        stalled.connect(str(home.socket))
        stalled.sendall(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert client.get("/ping")["pid"]


def test_unknown_route_method_and_name_have_codes(client: Client) -> None:
    with pytest.raises(NotFound):
        client.get("/no/such/thing")
    with pytest.raises(MethodNotAllowed):
        client.post("/ping")
    with pytest.raises(VmNotFound) as info:
        client.get("/vms/ghost")
    assert "ghost" in info.value.brief


def test_concurrent_requests_never_fail_e119(client: Client) -> None:
    errors: list[BaseException] = []
    lock = threading.Lock()

    def hammer(_: int) -> None:
        for _ in range(10):
            try:
                status = client.get("/daemon/status")
                assert status["db"]["schema_version"] >= 1
            except BaseException as exc:  # collected and asserted below
                with lock:
                    errors.append(exc)

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(hammer, range(32)))
    assert errors == []


# -- issue 14, API edges -------------------------------------------------------------


def _wait_closed(sock: socket.socket, within_s: float) -> float:
    """Seconds until the daemon closes ``sock`` (EOF or reset); fails after ``within_s``."""
    started = time.monotonic()
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"connection still open after {within_s} s")
    return time.monotonic() - started


def test_silent_and_half_sent_connections_are_closed_e49_e50(
    home: BangerHome, client: Client
) -> None:
    """Issue 14 item 7: 200 silent or half-sent connections used to stay open 60-90 s."""
    limit = REQUEST_READ_TIMEOUT_S + 5
    conns = []
    try:
        for i in range(60):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(home.socket))
            if i % 3 == 1:
                s.sendall(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n")  # head never finished
            elif i % 3 == 2:
                s.sendall(
                    b"POST /v1/daemon/shutdown HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
                )  # body never finished: the handler must not run (nor shut us down)
            conns.append(s)
        assert client.get("/ping")["pid"]  # others are served meanwhile
        started = time.monotonic()
        for s in conns:
            _wait_closed(s, limit - (time.monotonic() - started))
        assert time.monotonic() - started >= REQUEST_READ_TIMEOUT_S - 1
    finally:
        for s in conns:
            s.close()
    assert client.get("/ping")["pid"]


def test_chunked_body_over_the_limit_gets_413_e49(home: BangerHome, client: Client) -> None:
    """Issue 14 item 8: a chunked body over 1 MiB got 422 "error parsing the body"."""
    chunk = b"x" * 65536
    parts = [b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"]
    parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
    parts += [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 17
    parts.append(b"0\r\n\r\n")
    reply = _raw_until_reply(home, b"".join(parts))
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"payload_too_large" in reply
    # A small chunked body is still read normally.
    small = b'{"memory_mib": 256}'
    reply = _raw(
        home,
        b"PATCH /v1/vms/ghost HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n"
        % (len(small), small),
    )
    assert reply.startswith(b"HTTP/1.1 404") and b'"vm_not_found"' in reply, reply[:300]
    assert client.get("/ping")["pid"]


def _raw_until_reply(home: BangerHome, data: bytes) -> bytes:
    """Send ``data``, tolerating the daemon closing early (it may answer 413 mid-body)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(15)
        s.connect(str(home.socket))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"}" in chunk:
                    break
        return b"".join(chunks)


def test_duplicate_json_keys_are_refused(home: BangerHome, client: Client) -> None:
    """Issue 14 item 9: duplicate keys were accepted (last wins)."""
    body = b'{"signal": "TERM", "signal": "KILL"}'
    reply = _raw(
        home,
        b"POST /v1/vms/ghost/kill HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert reply.startswith(b"HTTP/1.1 422"), reply[:200]
    error = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == "the JSON body repeats the key 'signal'"
    assert error["hint"]
    nested = b'{"name": "a", "image": "b", "nat": false, "nat": true}'
    reply = _raw(
        home,
        b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(nested), nested),
    )
    assert reply.startswith(b"HTTP/1.1 422") and b"repeats the key 'nat'" in reply
    # ADVERSARIAL 49: NaN and Infinity are not JSON either (Python's parser takes them).
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"memory_mib": %s}' % constant
        reply = _raw(
            home,
            b"PATCH /v1/vms/ghost HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        assert reply.startswith(b"HTTP/1.1 422"), reply[:200]
        assert b"is not a JSON value" in reply


def test_start_of_an_unknown_vm_is_a_404_like_stop_and_restart(client: Client) -> None:
    """Issue 14 item 13: start answered 200 with an in-band vm_not_found."""
    for action in ("start", "stop", "restart"):
        with pytest.raises(VmNotFound) as info:
            client.post(f"/vms/nosuch/{action}")
        assert "nosuch" in info.value.brief, action


def test_whole_number_floats_are_integers_as_the_schema_says(
    home: BangerHome, client: Client
) -> None:
    """Issue 14 item 12: JSON Schema's "integer" includes 450.0, the service refused it."""

    def post(body: dict[str, object]) -> tuple[int, dict[str, object]]:
        data = json.dumps(body).encode()
        reply = _raw(
            home,
            b"PATCH /v1/vms/ghost HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data),
        )
        head, _, payload = reply.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)

    status, reply = post({"memory_mib": 450.0})
    assert status == 404 and reply["error"]["code"] == "vm_not_found"  # type: ignore[index]
    for bad in (450.5, "450", True):
        status, reply = post({"memory_mib": bad})
        assert status == 422, (bad, reply)
