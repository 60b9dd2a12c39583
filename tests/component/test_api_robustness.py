"""Bad requests get clear errors and never take the daemon down (ADVERSARIAL 49, 50, 119)."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

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


def test_garbage_on_the_socket_gets_400_and_daemon_survives_e49(
    home: BangerHome, client: Client
) -> None:
    reply = _raw(home, b"\x00\x01\x02 this is not http\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
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
