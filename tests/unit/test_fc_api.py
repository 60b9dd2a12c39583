"""Firecracker's API rules, as the stand-in enforces them, and the client's error mapping.

The stand-in (tests/fcstandin) runs as a real process on a real Unix socket, but no guest
boots here: every request below is refused (or accepted) before ``InstanceStart`` would
start QEMU. Rules after InstanceStart are covered by tests/component/test_fcstandin.py.
Each fault text is Firecracker v1.16's (src/firecracker/src/api_server, src/vmm/src/
rpc_interface.rs, serde); ADVERSARIAL 49 (framing, unknown/missing fields, types).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.errors import BadResponse, CommandFailed, InvalidArgument, Timeout
from banger.vmm.fc_api import FirecrackerApi, InstanceInfo, LogLevel

STANDIN = Path(__file__).resolve().parents[1] / "fcstandin" / "firecracker"
SERDE = "An error occurred when deserializing the json body of a request: "


@dataclass
class Standin:
    dir: Path
    sock: Path
    proc: subprocess.Popen[bytes]
    api: FirecrackerApi

    def file(self, name: str, data: bytes = b"\0" * 4096) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path


def _start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(STANDIN), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@contextlib.contextmanager
def _short_dir() -> Iterator[Path]:
    # Unix socket paths must stay under 108 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="fcu-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _running_standin() -> Iterator[Standin]:
    with _short_dir() as path:
        sock = path / "fc.sock"
        proc = _start(["--api-sock", str(sock), "--id", "unit-vm"], path)
        try:
            deadline = time.monotonic() + 10
            while not _accepting(sock):  # bind() makes the path before listen() takes clients
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "stand-in did not open its API socket"
                time.sleep(0.02)
            yield Standin(path, sock, proc, FirecrackerApi(sock, timeout_s=5))
        finally:
            proc.kill()
            proc.communicate()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with _short_dir() as path:
        yield path


@pytest.fixture
def standin() -> Iterator[Standin]:
    """A fresh stand-in: for tests whose requests change its state."""
    with _running_standin() as running:
        yield running


@pytest.fixture(scope="module")
def shared() -> Iterator[Standin]:
    """One stand-in for tests whose requests are all refused (a refusal changes nothing)."""
    with _running_standin() as running:
        yield running


def _accepting(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(str(sock)) == 0


def raw_exchange(sock: Path, data: bytes, *, timeout_s: float = 5) -> tuple[int, bytes]:
    """Send ``data`` as is; read one HTTP response (status, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        conn.connect(str(sock))
        with contextlib.suppress(BrokenPipeError):  # the server answered early
            conn.sendall(data)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = conn.recv(65536)
            assert chunk, f"connection closed after {reply!r}"
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = conn.recv(65536)
            assert chunk
            body += chunk
        return int(head.split(b" ")[1]), body


def request(sock: Path, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return raw_exchange(sock, head.encode() + b"\r\n" + (body or b""))


def fault_of(body: bytes) -> str:
    reply = json.loads(body, strict=False)  # micro_http puts a raw newline in "error"
    return str(reply.get("fault_message") or reply.get("error"))


# -- serde: types, unknown/missing/duplicate fields, enums ----------------------------------

BAD_BODIES = [
    ("/machine-config", b'{"vcpu_count": true, "mem_size_mib": 128}',
     "invalid type: boolean `true`, expected u8"),
    ("/machine-config", b'{"vcpu_count": "2", "mem_size_mib": 128}',
     'invalid type: string "2", expected u8'),
    ("/machine-config", b'{"vcpu_count": 1.5, "mem_size_mib": 128}',
     "invalid type: floating point `1.5`, expected u8"),
    ("/machine-config", b'{"vcpu_count": 300, "mem_size_mib": 128}',
     "invalid value: integer `300`, expected u8"),
    ("/machine-config", b'{"vcpu_count": 2, "mem_size_mib": -1}',
     "invalid value: integer `-1`, expected usize"),
    ("/machine-config", b'{"vcpu_count": 2}', "missing field `mem_size_mib`"),
    ("/machine-config", b'{"vcpu_count": 2, "mem_size_mib": 128, "smt": 1}',
     "invalid type: integer `1`, expected a boolean"),
    ("/machine-config", b'{"vcpu_count": 2, "mem_size_mib": 128, "smt": null}',
     "invalid type: null, expected a boolean"),
    ("/machine-config", b'{"vcpu_count": 2, "vcpu_count": 4, "mem_size_mib": 128}',
     "duplicate field `vcpu_count`"),
    ("/machine-config", b'{"vcpu_count": 2, "mem_size_mib": 128, "memory": 1}',
     "unknown field `memory`, expected one of `vcpu_count`, `mem_size_mib`, `smt`, "
     "`cpu_template`, `track_dirty_pages`, `huge_pages`"),
    ("/machine-config", b'{"vcpu_count": NaN, "mem_size_mib": 128}', "expected value"),
    ("/machine-config", b"[2, 128]", "invalid type: sequence, expected struct MachineConfig"),
    ("/machine-config", b'"2 vcpus"',
     'invalid type: string "2 vcpus", expected struct MachineConfig'),
    ("/boot-source", b'{"boot_args": "console=ttyS0"}', "missing field `kernel_image_path`"),
    ("/boot-source", b'{"kernel_image_path": "/k", "kernel": "/k"}',
     "unknown field `kernel`, expected one of `kernel_image_path`, `initrd_path`, `boot_args`"),
    ("/boot-source", b'{"kernel_image_path": 7}', "invalid type: integer `7`, expected a string"),
    ("/drives/root", b'{"drive_id": "root", "path_on_host": "/x", "is_root_device": "yes"}',
     'invalid type: string "yes", expected a boolean'),
    ("/drives/root", b'{"drive_id": "root", "path_on_host": "/x"}',
     "missing field `is_root_device`"),
    ("/drives/root",
     b'{"drive_id": "root", "path_on_host": "/x", "is_root_device": true, "cache_type": "Fast"}',
     "unknown variant `Fast`, expected one of `Unsafe`, `Writeback`"),
    ("/network-interfaces/eth0",
     b'{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "52:54:00:12:34"}',
     "The provided MAC address is invalid."),
    ("/network-interfaces/eth0", b'{"iface_id": "eth0"}', "missing field `host_dev_name`"),
    ("/logger", b'{"level": "Loud"}', "Invalid LevelFilter"),
    ("/vsock", b'{"guest_cid": -3, "uds_path": "/x"}', "invalid value: integer `-3`, expected u32"),
    ("/actions", b'{"action_type": "Reboot"}',
     "unknown variant `Reboot`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`"),
    ("/actions", b'{"action_type": 1}', "expected value"),
    ("/actions", b"{}", "missing field `action_type`"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "serde"), BAD_BODIES)
def test_bodies_are_checked_like_serde(shared: Standin, path: str, body: bytes, serde: str) -> None:
    status, reply = request(shared.sock, "PUT", path, body)
    assert (status, fault_of(reply)) == (400, f"{SERDE}{serde}.")


def test_syntax_errors_and_bad_utf8_are_refused(shared: Standin) -> None:
    for body in (b'{"vcpu_count": 2,', b"\xff\xfe", b'{"a": 1} trailing'):
        status, reply = request(shared.sock, "PUT", "/machine-config", body)
        assert status == 400
        assert fault_of(reply).startswith(SERDE)


def test_option_fields_take_null_plain_fields_do_not(standin: Standin) -> None:
    kernel = standin.file("vmlinux")
    body = {"kernel_image_path": str(kernel), "initrd_path": None, "boot_args": None}
    assert request(standin.sock, "PUT", "/boot-source", json.dumps(body).encode())[0] == 204


# -- paths and ids --------------------------------------------------------------------------

ROUTE_FAULTS = [
    ("PUT", "/drives/", b'{"drive_id": "", "is_root_device": true}', "The ID cannot be empty."),
    ("PUT", "/drives/root-fs", b'{"drive_id": "root-fs", "is_root_device": true}',
     "API Resource IDs can only contain alphanumeric characters and underscores."),
    ("PUT", "/drives/one", b'{"drive_id": "two", "path_on_host": "/x", "is_root_device": true}',
     "The id from the path does not match the id from the body!"),
    ("PUT", "/network-interfaces/eth0", b'{"iface_id": "eth1", "host_dev_name": "tap0"}',
     "The id from the path [eth0] does not match the id from the body [eth1]!"),
    ("PUT", "/machine-config", None, "Empty PUT request."),
    ("GET", "/", b"{}", "GET request cannot have a body."),
    ("PUT", "/reboot", b"{}", "Invalid request method and/or path: PUT reboot."),
    ("GET", "/drives", None, "Invalid request method and/or path: GET drives."),
    ("PUT", "/balloon", b"{}", "The Firecracker stand-in does not emulate PUT /balloon."),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "message"), ROUTE_FAULTS)
def test_paths_and_ids_are_checked(
    shared: Standin, method: str, path: str, body: bytes | None, message: str
) -> None:
    status, reply = request(shared.sock, method, path, body)
    assert (status, fault_of(reply)) == (400, message)


# -- the HTTP layer (micro_http) ------------------------------------------------------------

DROPPED = "\nAll previous unanswered requests will be dropped."


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"POST / HTTP/1.1\r\n\r\n", "Invalid HTTP Method: Unsupported HTTP method."),
        (b"GET / HTTP/2.0\r\n\r\n", "Invalid HTTP Version: Unsupported HTTP version."),
        (b"GET /\r\n\r\n", "Invalid request."),
        (
            b"PUT /actions HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            "Invalid header. Reason: Invalid value. Key:Content-Length; Value: abc",
        ),
    ],
)
def test_malformed_http_is_refused_like_micro_http(
    shared: Standin, data: bytes, reason: str
) -> None:
    status, body = raw_exchange(shared.sock, data)
    assert (status, fault_of(body)) == (400, reason + DROPPED)


def test_oversized_body_is_refused_before_it_is_read(standin: Standin) -> None:
    """ADVERSARIAL 49: body over Firecracker's 51200-byte limit -> error, server alive."""
    body = b'{"kernel_image_path": "' + b"x" * 51200 + b'"}'
    status, reply = request(standin.sock, "PUT", "/boot-source", body)
    assert status == 400
    assert fault_of(reply) == (
        f"Request payload with size {len(body)} is larger than the limit of 51200 allowed "
        "by server." + DROPPED
    )
    assert standin.api.describe_instance().state == "Not started"


def test_client_reports_the_payload_limit(standin: Standin) -> None:
    kernel = standin.file("vmlinux")
    with pytest.raises(InvalidArgument, match="larger than the limit of 51200") as info:
        standin.api.put_boot_source(kernel, "console=ttyS0 " + "x" * 60000)
    assert "PUT /boot-source" in info.value.brief


def test_silent_client_does_not_block_others(standin: Standin) -> None:
    """Half a request then silence (ADVERSARIAL 49): other clients are still served."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
        stuck.connect(str(standin.sock))
        stuck.sendall(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 40\r\n\r\n{")
        assert standin.api.describe_instance().id == "unit-vm"


# -- configuration rules, through the client ------------------------------------------------


def test_describe_instance(standin: Standin) -> None:
    info = standin.api.describe_instance()
    assert info == InstanceInfo("unit-vm", "Not started", "1.16.1", "Firecracker")


def test_machine_config_limits(standin: Standin) -> None:
    vcpus = "The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even"
    for count, smt in ((0, False), (33, False), (3, True)):
        with pytest.raises(InvalidArgument, match=vcpus) as info:
            standin.api.put_machine_config(count, 128, smt=smt)
        assert info.value.brief.startswith("Firecracker refused PUT /machine-config: ")
    with pytest.raises(InvalidArgument, match=r"memory size \(MiB\) is either 0"):
        standin.api.put_machine_config(1, 0)
    standin.api.put_machine_config(2, 256, smt=True)
    _, body = request(standin.sock, "GET", "/machine-config")
    assert json.loads(body)["vcpu_count"] == 2
    assert json.loads(body)["mem_size_mib"] == 256


def test_boot_source_files_must_exist(standin: Standin) -> None:
    missing = standin.dir / "missing"
    with pytest.raises(InvalidArgument) as info:
        standin.api.put_boot_source(missing, "console=ttyS0")
    assert info.value.brief.endswith(
        "Boot source error: The kernel file cannot be opened: "
        "No such file or directory (os error 2)"
    )
    kernel = standin.file("vmlinux")
    with pytest.raises(InvalidArgument, match="The initrd file cannot be opened"):
        standin.api.put_boot_source(kernel, "console=ttyS0", missing)
    with pytest.raises(InvalidArgument, match="Invalid cmdline capacity provided"):
        standin.api.put_boot_source(kernel, "x" * 2048)
    standin.api.put_boot_source(kernel, "x" * 2047)


def test_drives(standin: Standin) -> None:
    missing = standin.dir / "nope.ext4"
    with pytest.raises(InvalidArgument) as info:
        standin.api.put_drive("root", missing, is_root_device=True, is_read_only=False)
    assert info.value.brief.endswith(
        "Drive config error: Unable to create the virtio block device: Virtio backend error: "
        f"Error manipulating the backing file: No such file or directory (os error 2) {missing}"
    )
    disk = standin.file("root.ext4")
    standin.api.put_drive("root", disk, is_root_device=True, is_read_only=False)
    standin.api.put_drive("root", disk, is_root_device=True, is_read_only=True)  # an update
    with pytest.raises(InvalidArgument, match="A root block device already exists!"):
        standin.api.put_drive("other", disk, is_root_device=True, is_read_only=False)
    standin.api.put_drive("work", disk, is_root_device=False, is_read_only=False)


def test_network_interface_name_is_checked_before_any_tap_is_touched(standin: Standin) -> None:
    # 16 bytes do not fit IFNAMSIZ: refused before TUNSETIFF, so no TAP can appear here.
    with pytest.raises(InvalidArgument) as info:
        standin.api.put_network_interface("eth0", "t" * 16, "52:54:00:12:34:56")
    assert info.value.brief.endswith(
        "Network config error: Could not create the network device: Open tap device failed: "
        "Invalid interface name"
    )


def test_logger(standin: Standin) -> None:
    with pytest.raises(InvalidArgument, match="Logger error: Failed to open target file: No such"):
        standin.api.put_logger(standin.dir / "no" / "such" / "dir.log", LogLevel.INFO)
    log = standin.dir / "fc.log"
    standin.api.put_logger(log, LogLevel.INFO)
    standin.api.describe_instance()
    assert "[unit-vm:fc_api] The API server received a GET request on '/'." in log.read_text()


def test_vsock_binds_its_socket_and_refuses_a_taken_path(standin: Standin) -> None:
    uds = standin.dir / "v.sock"
    standin.api.put_vsock(3, uds)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(uds))  # Firecracker listens from configuration time
        conn.sendall(b"CONNECT 52\n")
        assert conn.recv(64) == b""  # no guest listens on 52: the host side is closed
    standin.api.put_vsock(4, uds)  # replacing the device rebinds the same path
    taken = standin.file("taken")
    with pytest.raises(InvalidArgument) as info:
        standin.api.put_vsock(3, taken)
    assert info.value.brief.endswith(
        "Vsock config error: Cannot create backend for vsock device: Error binding to the "
        "host-side Unix socket: Address already in use (os error 98)"
    )


def test_actions_before_boot(standin: Standin) -> None:
    with pytest.raises(CommandFailed) as info:
        standin.api.instance_start()
    assert info.value.brief == (
        "Firecracker refused PUT /actions: Start microvm error: Cannot start microvm without "
        "kernel configuration."
    )
    with pytest.raises(CommandFailed, match="not supported before starting the microVM"):
        standin.api.send_ctrl_alt_del()


def test_non_elf_kernel_is_refused_at_instance_start(standin: Standin) -> None:
    bzimage_like = standin.file("vmlinuz", b"MZ" + b"\0" * 0x200 + b"HdrS" + b"\0" * 4096)
    standin.api.put_boot_source(bzimage_like, "console=ttyS0")  # opened, not parsed, here
    with pytest.raises(CommandFailed) as info:
        standin.api.instance_start()
    assert info.value.brief.endswith(
        "Start microvm error: System configuration error: Cannot load kernel due to invalid "
        "memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel "
        "image: Kernel Loader: Invalid Elf magic number"
    )
    assert standin.api.describe_instance().state == "Not started"


# -- the stand-in's command line ------------------------------------------------------------


def test_refuses_an_existing_socket_path(short_dir: Path) -> None:
    """Firecracker will not bind over an existing path (ADVERSARIAL 90's other half)."""
    taken = short_dir / "fc.sock"
    taken.write_text("someone else's")
    proc = _start(["--api-sock", str(taken)], short_dir)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert f"Failed to open the API socket at: {taken}. Check that it is not already used." in (
        out.decode()
    )
    assert err.decode().strip() == f'Error: RunWithApi(FailedToBindSocket("{taken}"))'
    assert taken.read_text() == "someone else's"


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["--version"], 0, "Firecracker v1.16.1"),
        (["--api-sock"], 153, "The argument 'api-sock' requires a value, but none was supplied."),
        (["--bogus"], 153, "Found argument 'bogus' which wasn't expected"),
        (["--api-sock", "a", "--api-sock", "b"], 153, "was provided more than once"),
        (["--no-api"], 153, "Argument 'config-file' required, but not found."),
        (["--id", "x"], 153, "Argument 'api-sock' required, but not found."),
        (["--level", "Loud", "--api-sock", "s"], 152, "Invalid value for logger level"),
        (["--config-file", "c.json", "--api-sock", "s"], 1, "does not support --config-file"),
    ],
)
def test_command_line(short_dir: Path, args: list[str], code: int, text: str) -> None:
    proc = _start(args, short_dir)
    out, _ = proc.communicate(timeout=10)
    assert (proc.returncode, text in out.decode()) == (code, True), out.decode()


# -- the client's own error mapping, against fake servers -----------------------------------


@pytest.fixture
def fake_server(short_dir: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A Unix socket answering every connection with the next canned reply (or silence)."""
    path = short_dir / "fake.sock"
    replies: list[bytes] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            if replies:
                conn.sendall(replies.pop(0))
                conn.close()
            else:
                held.append(conn)  # never answer

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield path, replies
    finally:
        listener.close()
        for conn in held:
            conn.close()


def _http(status: int, body: bytes) -> bytes:
    return f"HTTP/1.1 {status} \r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_unreachable_socket(short_dir: Path) -> None:
    with pytest.raises(CommandFailed, match="cannot reach Firecracker's API for GET /"):
        FirecrackerApi(short_dir / "absent.sock").describe_instance()


def test_silent_firecracker_times_out(fake_server: tuple[Path, list[bytes]]) -> None:
    path, _ = fake_server
    with pytest.raises(Timeout, match=r"did not answer PUT /actions within 0\.3s"):
        FirecrackerApi(path, timeout_s=0.3).send_ctrl_alt_del()


def test_reply_mapping(fake_server: tuple[Path, list[bytes]]) -> None:
    path, replies = fake_server
    api = FirecrackerApi(path, timeout_s=5)
    replies.append(_http(400, b"<html>oops</html>"))
    with pytest.raises(BadResponse, match="not JSON"):
        api.put_machine_config(1, 128)
    replies.append(_http(500, b'{"fault_message": "boom"}'))
    with pytest.raises(CommandFailed, match="Firecracker refused PUT /drives/x: boom") as info:
        api.put_drive("x", Path("/x"), is_root_device=True, is_read_only=False)
    assert not isinstance(info.value, InvalidArgument)
    replies.append(_http(400, b'{"something": "else"}'))
    with pytest.raises(BadResponse, match="no fault message"):
        api.put_logger(Path("/x"), LogLevel.INFO)
    replies.append(_http(200, b'{"id": "x"}'))
    with pytest.raises(BadResponse, match="lacks 'state'"):
        api.describe_instance()
    replies.append(_http(200, b"{" + b" " * (70 * 1024) + b"}"))
    with pytest.raises(BadResponse, match="larger than"):
        api.describe_instance()


def test_stand_in_runs_under_the_system_python(short_dir: Path) -> None:
    """The daemon spawns the stand-in by its shebang with a minimal env (no venv)."""
    proc = subprocess.run(
        [str(STANDIN), "--version"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=10,
        check=False,
        cwd=short_dir,
    )
    assert proc.returncode == 0 and proc.stdout.startswith(b"Firecracker v1.16.1")
    assert os.access(STANDIN, os.X_OK)
