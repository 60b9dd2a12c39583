"""The CLI's client of the daemon: HTTP/1.1 over the Unix socket, stdlib only.

Owns: requests, NDJSON stream reading, and rebuilding typed errors from replies.
Must not: start or stop the daemon (``banger.launcher`` does) or print anything.
Kept on the stdlib (``http.client``) because CLI start-up time is a product figure.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from banger.errors import (
    BadResponse,
    BangerError,
    DaemonUnavailable,
    PermissionDenied,
    Timeout,
    error_from_payload,
)
from banger.wire import API_PREFIX, JSON

DEFAULT_TIMEOUT_S = 30.0
#: A progress stream may go quiet between events, but the daemon sends a heartbeat at
#: least every 10 s (banger.services.operations); this bounds a dead daemon.
STREAM_IDLE_TIMEOUT_S = 120.0
#: Largest reply the client reads in one piece; streams are read line by line.
MAX_REPLY_BYTES = 64 << 20
MAX_EVENT_BYTES = 1 << 20


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("bangerd", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(self, socket_path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        conn, resp = self._open(method, path, body)
        try:
            raw = resp.read(MAX_REPLY_BYTES + 1)
        except OSError as exc:
            raise self._transport_error(exc) from exc
        finally:
            conn.close()
        if len(raw) > MAX_REPLY_BYTES:
            raise BadResponse(f"daemon reply larger than {MAX_REPLY_BYTES} bytes")
        payload = _decode(raw)
        if resp.status >= 400:
            raise error_from_payload(payload, status=resp.status)
        return payload

    def stream(self, method: str, path: str, body: Any = None) -> Iterator[dict[str, Any]]:
        """Yield progress events; an error event is raised as its typed error."""
        conn, resp = self._open(method, path, body)
        if conn.sock is not None:
            conn.sock.settimeout(max(self.timeout_s, STREAM_IDLE_TIMEOUT_S))
        try:
            if resp.status >= 400:
                raise error_from_payload(_decode(resp.read(MAX_REPLY_BYTES)), status=resp.status)
            while True:
                try:
                    line = resp.readline(MAX_EVENT_BYTES)
                except OSError as exc:
                    raise self._transport_error(exc) from exc
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
        finally:
            conn.close()

    def _open(
        self, method: str, path: str, body: Any
    ) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        conn = _UnixConnection(self.socket_path, self.timeout_s)
        headers = {"Accept": JSON}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = JSON
        try:
            conn.request(method, API_PREFIX + path, body=data, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._transport_error(exc) from exc

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
            return Timeout(f"the daemon on {where} did not answer within {self.timeout_s:g}s")
        return DaemonUnavailable(f"lost the connection to the daemon on {where}: {exc}")


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadResponse("the daemon's reply is not JSON", details=repr(raw[:200])) from exc
