"""The typed facade (banger.client.facade) and the launcher's ready pipe, against a real
HTTP server on a Unix socket and a real pipe: URLs and quoting, request bodies, typed
replies and progress streams, typed errors, and refusal of replies of the wrong shape.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from banger.client.facade import BangerClient, segment
from banger.client.http import Client
from banger.client.launcher import read_ready_pipe, start_error
from banger.errors import (
    BadResponse,
    DaemonStartFailed,
    ImageNotFound,
    InvalidArgument,
    InvalidState,
    VmNotFound,
)
from banger.model.api_types import (
    CreateVmRequest,
    ImagePullRequest,
    KernelDetail,
    KillRequest,
    SetVmRequest,
    StageEvent,
    VmInfo,
    to_json,
)
from banger.model.wire import READY_LINE, encode_event, error_body, result_event, stage_event
from banger.model.wire import StageState as S

VM = {
    "id": 1,
    "name": "box",
    "image_id": 2,
    "state": "running",
    "vcpu": 2,
    "memory_mib": 1024,
    "disk_size_bytes": 8 << 30,
    "created_at": "2026-01-01T00:00:00+00:00",
    "updated_at": "2026-01-01T00:00:00+00:00",
    "vmm": "qemu",
    "nat": False,
    "ip": "172.30.0.2",
    "mac": None,
    "tap": None,
    "vm_dir": None,
    "pid": 42,
    "pid_start_ticks": None,
    "boot_id": None,
    "last_error": None,
    "stopped_at": None,
    "ssh_port": None,
}


@dataclass
class Seen:
    method: str
    target: str
    body: object


@dataclass
class Daemon:
    """Serves each connection with the next canned (status, content type, body)."""

    path: Path
    replies: list[tuple[int, str, bytes]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def reply(self, status: int, data: object) -> Daemon:
        self.replies.append((status, "application/json", json.dumps(data).encode()))
        return self

    def stream(self, *events: dict[str, object]) -> Daemon:
        body = b"".join(encode_event(e) for e in events)
        self.replies.append((200, "application/x-ndjson", body))
        return self

    def serve(self, listener: socket.socket) -> None:
        for status, ctype, body in self.replies:
            conn, _ = listener.accept()
            with conn:
                head, _, rest = _read_head(conn)
                request_line, *headers = head.decode().split("\r\n")
                method, target, _ = request_line.split(" ")
                length = next(
                    (
                        int(h.split(":")[1])
                        for h in headers
                        if h.lower().startswith("content-length")
                    ),
                    0,
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.seen.append(Seen(method, target, json.loads(rest) if rest else None))
                conn.sendall(
                    f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\n"
                    f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )


def _read_head(conn: socket.socket) -> tuple[bytes, bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    return data.partition(b"\r\n\r\n")


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="bgr-facade-"))
    try:
        yield Daemon(root / "s.sock")
    finally:
        shutil.rmtree(root, ignore_errors=True)


Starter = Callable[[], BangerClient]


@pytest.fixture
def run(daemon: Daemon) -> Iterator[Starter]:
    """Start serving what the test queued; joins the server when the test ends."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(daemon.path))
    listener.listen(4)
    threads: list[threading.Thread] = []

    def start() -> BangerClient:
        thread = threading.Thread(target=daemon.serve, args=(listener,), daemon=True)
        thread.start()
        threads.append(thread)
        return BangerClient(Client(daemon.path, timeout_s=5.0))

    yield start
    for thread in threads:
        thread.join(timeout=10)
    listener.close()


def test_list_and_get_turn_replies_into_types_and_quote_the_name(
    daemon: Daemon, run: Starter
) -> None:
    daemon.reply(200, [VM]).reply(200, VM).reply(200, VM)
    client = run()
    vms = client.vms.list()
    one = client.vms.get("a/b?c#d %")
    client.vms.get("..")
    assert vms == [VmInfo(**VM)]  # type: ignore[arg-type]
    assert one.name == "box" and one.pid == 42
    assert [s.target for s in daemon.seen] == [
        "/v1/vms",
        "/v1/vms/a%2Fb%3Fc%23d%20%25",
        "/v1/vms/..",
    ]
    assert to_json(vms) == [VM]  # printed back, it is what the daemon sent


def test_segment_quotes_everything_but_unreserved_characters() -> None:
    assert segment("a/b") == "a%2Fb"
    assert segment("ü") == "%C3%BC"
    assert segment("x-y_z.1~") == "x-y_z.1~"


def test_create_sends_only_the_fields_given_and_follows_the_stream(
    daemon: Daemon, run: Starter
) -> None:
    daemon.stream(
        stage_event("kvm", S.RUNNING),
        {"type": "heartbeat"},
        stage_event("kvm", S.OK, detail="fine", elapsed_ms=3),
        result_event(VM),
    )
    client = run()
    progress = client.vms.create(CreateVmRequest(name="box", vcpu=2))
    events = list(progress)
    assert daemon.seen[0].method == "POST" and daemon.seen[0].target == "/v1/vms"
    assert daemon.seen[0].body == {"name": "box", "vcpu": 2, "nat": False, "boot_timeout_s": 300}
    assert [e.type for e in events] == ["stage", "stage", "result"]  # heartbeat skipped
    assert events[1] == StageEvent(
        type="stage", stage="kvm", state="ok", detail="fine", elapsed_ms=3
    )
    assert events[1].to_wire() == stage_event("kvm", S.OK, detail="fine", elapsed_ms=3)
    assert events[2].to_wire() == result_event(VM)
    assert progress.result == VmInfo(**VM)  # type: ignore[arg-type]


def test_an_error_event_is_raised_as_its_typed_error(daemon: Daemon, run: Starter) -> None:
    err = InvalidState("VM 'box' is running", hint="stop it first")
    daemon.stream(stage_event("stop", S.RUNNING), {"type": "error", **err.to_payload()})
    client = run()
    progress = client.vms.start("box")
    with pytest.raises(InvalidState) as info:
        progress.wait()
    assert info.value.brief == "VM 'box' is running" and info.value.hint == "stop it first"
    assert daemon.seen[0].target == "/v1/vms/box/start"


def test_an_error_reply_is_rebuilt_with_code_details_and_hint(daemon: Daemon, run: Starter) -> None:
    daemon.reply(404, json.loads(error_body(VmNotFound("VM 'x' not found", details="d", hint="h"))))
    daemon.reply(404, json.loads(error_body(ImageNotFound("no image 'y'"))))
    client = run()
    with pytest.raises(VmNotFound) as info:
        client.vms.delete("x", force=True)
    assert (info.value.brief, info.value.details, info.value.hint) == ("VM 'x' not found", "d", "h")
    with pytest.raises(ImageNotFound):
        client.images.get("y")
    assert [(s.method, s.target) for s in daemon.seen] == [
        ("DELETE", "/v1/vms/x?force=true"),
        ("GET", "/v1/images/y"),
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": None}, r"bad VmInfo\.name"),
        ({"vcpu": "2"}, r"bad VmInfo\.vcpu"),
        ({"vcpu": True}, r"bad VmInfo\.vcpu"),
        ({"state": "exploded"}, r"bad VmInfo\.state"),
    ],
)
def test_a_reply_of_the_wrong_shape_is_a_bad_response(
    daemon: Daemon, run: Starter, change: dict[str, object], message: str
) -> None:
    daemon.reply(200, {**VM, **change})
    client = run()
    with pytest.raises(BadResponse, match=message):
        client.vms.stop("box")


def test_a_missing_field_is_a_bad_response_and_unknown_ones_are_ignored(
    daemon: Daemon, run: Starter
) -> None:
    partial = {k: v for k, v in VM.items() if k != "vcpu"}
    daemon.reply(200, partial).reply(200, {**VM, "added_later": 1})
    client = run()
    with pytest.raises(BadResponse, match=r"no VmInfo\.vcpu"):
        client.vms.get("box")
    assert client.vms.get("box").name == "box"


def test_set_kill_logs_and_pull_send_the_right_requests(daemon: Daemon, run: Starter) -> None:
    chunk = {"source": "console", "path": "/p", "offset": 10, "size": 10, "data": "hi"}
    image = {
        "name": "deb",
        "managed": True,
        "rootfs_path": "/r",
        "source": "docker.io/library/debian:12",
        "created_at": "t",
    }
    daemon.reply(200, VM).reply(200, VM).reply(200, chunk).stream(result_event(image))
    client = run()
    client.vms.set("box", SetVmRequest(memory_mib=2048))
    client.vms.kill("box", KillRequest(signal="TERM"))
    assert client.vms.logs("box", source="vmm", offset=10).data == "hi"
    pulled = client.images.pull(ImagePullRequest(ref="debian:12", size_bytes=1 << 30)).wait()
    assert pulled.name == "deb" and pulled.id is None and pulled.kernel_name is None
    assert [(s.method, s.target, s.body) for s in daemon.seen] == [
        ("PATCH", "/v1/vms/box", {"memory_mib": 2048}),
        ("POST", "/v1/vms/box/kill", {"signal": "TERM"}),
        ("GET", "/v1/vms/box/logs?source=vmm&offset=10", None),
        ("POST", "/v1/images/pull", {"ref": "debian:12", "size_bytes": 1 << 30}),
    ]


def test_nested_replies_become_nested_types(daemon: Daemon, run: Starter) -> None:
    kernel = {
        "name": "k",
        "arch": "x86_64",
        "source": "import",
        "dir_path": "/k",
        "imported_at": "t",
        "manifest": {"files": {"vmlinux": {"origin": "extracted"}}},
    }
    build = {"version": "0.1", "commit": "abc", "build_time": "t"}
    resolved = {"value": 2, "source": "auto"}
    status = {
        "build": build,
        "pid": 9,
        "started_at": 1.5,
        "uptime_s": 3,
        "socket": "/s",
        "state_dir": "/d",
        "config_file": "/c",
        "log_file": "/l",
        "db": {"path": "/db", "schema_version": 3, "counts": {"vms": 1}},
        "vm_defaults": {
            "vcpu": resolved,
            "memory_mib": resolved,
            "disk_size_bytes": resolved,
            "spec_line": "spec: …",
        },
    }
    daemon.reply(200, kernel).reply(200, status)
    client = run()
    detail = client.kernels.get("k")
    assert isinstance(detail, KernelDetail) and detail.manifest == kernel["manifest"]
    got = client.daemon.status()
    assert got.build.commit == "abc" and got.db.counts == {"vms": 1}
    assert got.vm_defaults.vcpu.source == "auto" and got.dns is None
    assert to_json(got)["uptime_s"] == 3  # an int the daemon sent stays an int


# -- the launcher's ready pipe ------------------------------------------------------------


def _pipe_with(data: bytes, *, close: bool = True) -> int:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    if close:
        os.close(write_fd)
    return read_fd


def test_the_ready_pipe_gives_the_daemons_one_line() -> None:
    fd = _pipe_with(READY_LINE + b"\n", close=False)
    try:
        assert read_ready_pipe(fd, 5.0) == READY_LINE
    finally:
        os.close(fd)
    fd = _pipe_with(b"")
    try:
        assert read_ready_pipe(fd, 5.0) is None  # closed without a word
    finally:
        os.close(fd)


def test_a_start_failure_is_the_daemons_own_typed_error(tmp_path: Path) -> None:
    err = InvalidArgument("config key 'memroy' is unknown", details="line 1", hint="remove it")
    fd = _pipe_with(error_body(err) + b"\n")
    try:
        message = read_ready_pipe(fd, 5.0)
    finally:
        os.close(fd)
    log = tmp_path / "start.log"
    log.write_text("error: something people read\nhint: not parsed\n")
    failed = start_error(message, 1, log)
    assert isinstance(failed, DaemonStartFailed)
    assert failed.brief == "the daemon could not start: config key 'memroy' is unknown"
    assert (failed.details, failed.hint) == ("line 1", "remove it")


def test_a_daemon_that_died_without_a_word_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "start.log"
    log.write_text("Traceback (most recent call last):\nImportError: boom\n")
    for message in (None, b"not json"):
        failed = start_error(message, 1, log)
        assert failed.brief == "the daemon could not start: exit status 1"
        assert failed.details is not None and "ImportError: boom" in failed.details
        assert failed.hint is not None and str(log) in failed.hint


# -- weight -------------------------------------------------------------------------------


def test_the_client_package_loads_without_click_rich_pydantic_or_the_api() -> None:
    """The SDK and MCP server import it without the CLI; every CLI call imports it."""
    import subprocess
    import sys

    code = (
        "import sys, banger.client.facade, banger.client.launcher, banger.model.api_types\n"
        "heavy = ('click', 'rich', 'pydantic', 'fastapi', 'banger.api', 'banger.cli', "
        "'subprocess', 'http.client')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
