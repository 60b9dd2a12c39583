"""HelperPrivilegedOps against a scripted fake helper: typed errors, bad replies, timeouts.

The real helper's replies are tested in tests/component/test_helper.py; here a one-shot
Unix-socket server answers whatever the test scripts, so that every way a reply can be
wrong is seen by the client exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
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


def _with_fds(reply: object, count: int, *, split: bool = False) -> Answer:
    """Send ``reply`` with ``count`` descriptors (of /dev/null) on its first bytes; with
    ``split``, the frame's rest arrives in a second write."""

    def answer(conn: socket.socket) -> None:
        frame = encode_frame(reply)  # type: ignore[arg-type]
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
        head = frame[:3] if split else frame
        try:
            socket.send_fds(conn, [head], fds)
        finally:  # before the client can have read the whole reply: not its leak to count
            for fd in fds:
                os.close(fd)
        if split:
            time.sleep(0.05)
            conn.sendall(frame[3:])

    return answer


def _settled_fds(expected: Callable[[set[int]], bool]) -> set[int]:
    """``_open_fds()`` once ``expected`` holds or 2 s passed: the fake helper's thread
    closes its own copies a moment after the client may have read the reply."""
    deadline = time.monotonic() + 2
    while not expected(found := _open_fds()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


def _open_fds() -> set[int]:
    """This process's descriptors of /dev/null (the fake helper's stand-in for a TAP)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == os.devnull:
                found.add(int(name))
    return found


@pytest.mark.parametrize(("count", "split"), [(1, False), (1, True), (3, False)])
def test_open_tap_returns_the_first_descriptor_close_on_exec_and_closes_extras(
    fake: Callable[[list[Answer]], Path], count: int, *, split: bool
) -> None:
    before = _open_fds()
    ops = HelperPrivilegedOps(
        fake([_frame(HELLO), _with_fds({"ok": True, "result": None}, count, split=split)])
    )
    fd = ops.open_tap("bgtap0", owner_uid=os.getuid())
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        after = _settled_fds(lambda now: now - before == {fd})
        assert after - before == {fd}, "extra descriptors were closed"
    finally:
        os.close(fd)


def _truncated_with_fd(conn: socket.socket) -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        socket.send_fds(conn, [b"\x00\x00\x01\x00{"], [fd])  # then closes: bytes missing
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            _with_fds({"ok": False, "error": {"code": "permission_denied", "message": "no"}}, 1),
            PermissionDenied,
        ),
        (_frame({"ok": True, "result": None}), BadResponse),  # no descriptor came
        (_with_fds({"ok": True, "result": 3}, 1), BadResponse),
        (_with_fds({"ok": True, "result": "fd"}, 1, split=True), BadResponse),
        (_truncated_with_fd, BadResponse),
    ],
)
def test_open_tap_failures_leave_no_descriptor_behind(
    fake: Callable[[list[Answer]], Path], answer: Answer, error: type[Exception]
) -> None:
    before = _open_fds()
    ops = HelperPrivilegedOps(fake([_frame(HELLO), answer]))
    with pytest.raises(error):
        ops.open_tap("bgtap0", owner_uid=os.getuid())
    assert _settled_fds(lambda now: now <= before) <= before
