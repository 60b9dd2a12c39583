"""A small typed client of Firecracker's REST API over its Unix socket.

Owns: building the JSON bodies of the pre-boot configuration calls, the drive update
(``PATCH /drives``) and the two actions banger uses, one HTTP/1.1 exchange per call with
a connect/read timeout and a bounded reply, and turning Firecracker's replies into banger
errors: a rejected configuration call (HTTP 400 on a PUT other than ``/actions``) is
``InvalidArgument``, a failed action, update or any other status is ``CommandFailed``;
both name the call and carry Firecracker's ``fault_message``. Must not: start or stop
processes, or decide what to configure (``banger.vmm.firecracker`` does).

Firecracker facts relied on (``src/firecracker/swagger/firecracker.yaml``, v1.x):
successful PUTs answer 204 with no body; errors carry ``{"fault_message": …}``; a request
whose ``Content-Length`` exceeds the API payload limit (51200 bytes by default) is
refused by the HTTP layer with ``{ "error": "…" }`` instead, and that text holds a raw
newline, so replies are parsed with ``strict=False``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from banger.errors import BadResponse, BangerError, CommandFailed, InvalidArgument, Timeout

DEFAULT_TIMEOUT_S = 10.0
#: InstanceStart returns once the guest's vCPUs run; building the VM takes milliseconds
#: on KVM, but the answer waits for every device to be set up.
START_TIMEOUT_S = 30.0
#: Firecracker's replies are a few hundred bytes; anything bigger is not Firecracker.
MAX_REPLY_BYTES = 64 * 1024


class LogLevel(StrEnum):
    """Firecracker's logger levels (the API accepts them case-insensitively)."""

    ERROR = "Error"
    WARNING = "Warning"
    INFO = "Info"
    DEBUG = "Debug"
    TRACE = "Trace"
    OFF = "Off"


@dataclass(frozen=True)
class InstanceInfo:
    """``GET /``: who answers on the socket and whether its guest runs."""

    id: str
    state: str
    vmm_version: str
    app_name: str


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout_s: float) -> None:
        # The host name only fills the Host header; Firecracker ignores it.
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class FirecrackerApi:
    """One Firecracker process's API socket; every method is one blocking HTTP call."""

    def __init__(self, socket_path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    # -- configuration (pre-boot only) ----------------------------------------------------

    def put_boot_source(
        self, kernel_image_path: Path, boot_args: str, initrd_path: Path | None = None
    ) -> None:
        body: dict[str, Any] = {"kernel_image_path": str(kernel_image_path)}
        body["boot_args"] = boot_args
        if initrd_path is not None:
            body["initrd_path"] = str(initrd_path)
        self._put("/boot-source", body)

    def put_drive(
        self, drive_id: str, path_on_host: Path, *, is_root_device: bool, is_read_only: bool
    ) -> None:
        body = {
            "drive_id": drive_id,
            "path_on_host": str(path_on_host),
            "is_root_device": is_root_device,
            "is_read_only": is_read_only,
        }
        self._put(f"/drives/{drive_id}", body)

    def put_network_interface(self, iface_id: str, host_dev_name: str, guest_mac: str) -> None:
        body = {"iface_id": iface_id, "host_dev_name": host_dev_name, "guest_mac": guest_mac}
        self._put(f"/network-interfaces/{iface_id}", body)

    def put_machine_config(self, vcpu_count: int, mem_size_mib: int, *, smt: bool = False) -> None:
        body = {"vcpu_count": vcpu_count, "mem_size_mib": mem_size_mib, "smt": smt}
        self._put("/machine-config", body)

    def put_logger(self, log_path: Path, level: LogLevel) -> None:
        self._put("/logger", {"log_path": str(log_path), "level": str(level)})

    def put_vsock(self, guest_cid: int, uds_path: Path) -> None:
        self._put("/vsock", {"guest_cid": guest_cid, "uds_path": str(uds_path)})

    # -- updates (after boot) -----------------------------------------------------------

    def patch_drive(self, drive_id: str, path_on_host: Path) -> None:
        """``PATCH /drives/{id}``: Firecracker reopens the backing file and tells the
        guest its size (a path or size change is seen only after this call)."""
        body = {"drive_id": drive_id, "path_on_host": str(path_on_host)}
        self._request("PATCH", f"/drives/{drive_id}", body, timeout_s=self.timeout_s)

    # -- actions ------------------------------------------------------------------------

    def instance_start(self) -> None:
        self._action("InstanceStart", timeout_s=max(self.timeout_s, START_TIMEOUT_S))

    def send_ctrl_alt_del(self) -> None:
        self._action("SendCtrlAltDel", timeout_s=self.timeout_s)

    def describe_instance(self) -> InstanceInfo:
        reply = self._request("GET", "/", None, timeout_s=self.timeout_s)
        if not isinstance(reply, dict):
            raise BadResponse(f"Firecracker at {self.socket_path} answered GET / without a body")
        try:
            return InstanceInfo(
                id=str(reply["id"]),
                state=str(reply["state"]),
                vmm_version=str(reply["vmm_version"]),
                app_name=str(reply["app_name"]),
            )
        except KeyError as exc:
            raise BadResponse(
                f"Firecracker's GET / reply lacks {exc.args[0]!r}", details=repr(reply)[:500]
            ) from exc

    # -- transport ----------------------------------------------------------------------

    def _put(self, path: str, body: dict[str, Any]) -> None:
        self._request("PUT", path, body, timeout_s=self.timeout_s)

    def _action(self, action_type: str, *, timeout_s: float) -> None:
        self._request("PUT", "/actions", {"action_type": action_type}, timeout_s=timeout_s)

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, *, timeout_s: float
    ) -> object:
        call = f"{method} {path}"
        payload = None if body is None else json.dumps(body).encode()
        conn = _UnixConnection(self.socket_path, timeout_s)
        try:
            status, raw = self._exchange(conn, method, path, payload)
        except TimeoutError as exc:
            raise Timeout(
                f"Firecracker did not answer {call} within {timeout_s:g}s",
                details=f"API socket: {self.socket_path}",
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise CommandFailed(
                f"cannot reach Firecracker's API for {call}: {exc}",
                details=f"API socket: {self.socket_path}",
            ) from exc
        finally:
            conn.close()
        return _interpret(call, status, raw)

    @staticmethod
    def _exchange(
        conn: _UnixConnection, method: str, path: str, payload: bytes | None
    ) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        # Firecracker answers an oversized request before reading its body and stops
        # reading: sending fails, but its reply is waiting on the socket.
        with contextlib.suppress(BrokenPipeError):
            conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(MAX_REPLY_BYTES + 1)


def _interpret(call: str, status: int, raw: bytes) -> object:
    if len(raw) > MAX_REPLY_BYTES:
        raise BadResponse(f"Firecracker's reply to {call} is larger than {MAX_REPLY_BYTES} bytes")
    if 200 <= status < 300:
        return _decode(call, status, raw) if raw.strip() else None
    reply = _decode(call, status, raw)
    fault = _fault_text(reply)
    if fault is None:
        raise BadResponse(
            f"Firecracker answered {call} with HTTP {status} and no fault message",
            details=raw.decode(errors="replace")[:500] or None,
        )
    brief = f"Firecracker refused {call}: {fault}"
    error: BangerError
    if status == 400 and call.startswith("PUT ") and call != "PUT /actions":
        error = InvalidArgument(brief, details=f"HTTP {status}")
    else:
        error = CommandFailed(brief, details=f"HTTP {status}")
    raise error


def _decode(call: str, status: int, raw: bytes) -> object:
    try:
        return json.loads(raw.decode(), strict=False)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadResponse(
            f"Firecracker answered {call} with HTTP {status} and a body that is not JSON",
            details=raw.decode(errors="replace")[:500] or None,
        ) from exc


def _fault_text(reply: object) -> str | None:
    if not isinstance(reply, dict):
        return None
    for key in ("fault_message", "error"):
        value = reply.get(key)
        if isinstance(value, str) and value:
            return " ".join(value.split())
    return None
