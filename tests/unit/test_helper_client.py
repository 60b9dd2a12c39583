"""HelperPrivilegedOps against a scripted fake helper: typed errors, bad replies, timeouts.

The real helper's replies are tested in tests/component/test_helper.py; here a one-shot
Unix-socket server answers whatever the test scripts, so that every way a reply can be
wrong is seen by the client exactly once.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from banger.errors import (
    AlreadyExists,
    BadResponse,
    BangerError,
    HelperUnavailable,
    PermissionDenied,
    Timeout,
)
from banger.net.helper_client import HelperPrivilegedOps
from banger.net.helper_wire import PROTOCOL_VERSION, encode_frame

HELLO = {
    "ok": True,
    "result": {
        "protocol": PROTOCOL_VERSION,
        "build": {"version": "1", "commit": "c", "build_time": "t"},
        "uid": 1000,
        "bridge_name": "banger0",
        "bridge_address": "10.213.7.1/24",
        "cidr": "10.213.7.0/24",
    },
}

Answer = Callable[[socket.socket], None]


def _frame(reply: object) -> Answer:
    return lambda conn: conn.sendall(encode_frame(reply))  # type: ignore[arg-type]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[list[Answer]], Path]]:
    """A server that answers its connections, one scripted answer each, in order."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(answers: list[Answer]) -> Path:
        path = tmp_path / "helper.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(8)
        listeners.append(listener)

        def serve() -> None:
            for answer in answers:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(4096)
                    answer(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    for listener in listeners:
        listener.close()


def test_errors_are_rebuilt_as_the_same_types(fake: Callable[[list[Answer]], Path]) -> None:
    denied = {"ok": False, "error": {"code": "permission_denied", "message": "no", "hint": "h"}}
    exists = {"ok": False, "error": {"code": "already_exists", "message": "bgtap0 exists"}}
    ops = HelperPrivilegedOps(fake([_frame(HELLO), _frame(denied), _frame(exists)]))
    with pytest.raises(PermissionDenied) as info:
        ops.ensure_bridge("banger0", "10.213.7.1/24")
    assert info.value.hint == "h"
    with pytest.raises(AlreadyExists, match="bgtap0 exists"):
        ops.create_tap("bgtap0", bridge="banger0", owner_uid=1000)


def test_an_unknown_error_code_keeps_the_helpers_words(
    fake: Callable[[list[Answer]], Path],
) -> None:
    future = {"ok": False, "error": {"code": "from_the_future", "message": "new thing"}}
    ops = HelperPrivilegedOps(fake([_frame(HELLO), _frame(future)]))
    with pytest.raises(BangerError, match="new thing") as info:
        ops.remove_nat()
    assert type(info.value) is BangerError and "from_the_future" in (info.value.details or "")


@pytest.mark.parametrize(
    "answer",
    [
        _frame({"ok": "yes"}),
        _frame({"ok": False, "error": "boom"}),
        _frame({"ok": False, "error": {"code": "x"}}),
        lambda conn: conn.sendall(b"\x00\x00\x00\x03abc"),
        lambda conn: conn.sendall(b"\x00\x00"),
        lambda conn: conn.sendall(b"\x7f\xff\xff\xff"),
        lambda conn: None,
    ],
)
def test_malformed_replies_are_bad_responses(
    fake: Callable[[list[Answer]], Path], answer: Answer
) -> None:
    ops = HelperPrivilegedOps(fake([_frame(HELLO), answer]))
    with pytest.raises(BadResponse):
        ops.enable_ip_forward()


def test_malformed_results_are_bad_responses(fake: Callable[[list[Answer]], Path]) -> None:
    ops = HelperPrivilegedOps(
        fake([_frame(HELLO), _frame({"ok": True, "result": [1]}), _frame({"ok": True})])
    )
    with pytest.raises(BadResponse):
        ops.list_taps()
    with pytest.raises(BadResponse):
        ops.route_vm_domain("banger0", 42069)


def test_another_protocol_is_refused(fake: Callable[[list[Answer]], Path]) -> None:
    old = {"ok": True, "result": {**HELLO["result"], "protocol": PROTOCOL_VERSION + 1}}  # type: ignore[dict-item]
    ops = HelperPrivilegedOps(fake([_frame(old)]))
    with pytest.raises(HelperUnavailable, match="protocol"):
        ops.ensure_bridge("banger0", "10.213.7.1/24")


def test_a_silent_helper_is_a_timeout(fake: Callable[[list[Answer]], Path]) -> None:
    ops = HelperPrivilegedOps(fake([_frame(HELLO), lambda conn: time.sleep(2)]), timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(Timeout, match="did not answer"):
        ops.remove_nat()
    assert time.monotonic() - started < 1.5


def test_no_helper_names_mode_none_and_the_fix(tmp_path: Path) -> None:
    ops = HelperPrivilegedOps(tmp_path / "absent.sock")
    with pytest.raises(HelperUnavailable) as info:
        ops.ensure_bridge("banger0", "10.213.7.1/24")
    assert "privilege mode: none" in info.value.brief
    assert info.value.hint is not None and "banger-helper --owner" in info.value.hint
    assert "rootless mode" in info.value.hint
