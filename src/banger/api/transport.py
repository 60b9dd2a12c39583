"""The daemon's listening socket and the per-connection peer check.

Owns: binding the Unix socket inside the private runtime dir with mode 0600 from the
first instant (umask, then chmod), and refusing connections whose peer uid (SO_PEERCRED)
is not the daemon's own (SPEC §1, ADVERSARIAL 121-123), and closing a connection whose
request has not fully arrived within ``REQUEST_READ_TIMEOUT_S`` — silent, or a head or
body sent in part (issue 14 item 7, ADVERSARIAL 49, 50); idle keep-alive connections are
closed by uvicorn's own keep-alive timeout.
Must not: know about routes or services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from banger.errors import PermissionDenied
from banger.model.wire import error_body

log = logging.getLogger("banger.api")

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
REFUSAL_LINGER_S = 1.0
#: A client gets this long to send a whole request (head and body: bodies are <= 1 MiB).
#: Once it has, a long streamed reply is not limited.
REQUEST_READ_TIMEOUT_S = 10.0


def bind_unix_socket(path: Path) -> socket.socket:
    """Bind a filesystem (never abstract) socket at ``path``, readable by the owner only."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    path.chmod(0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def _refusal(uid: int) -> bytes:
    err = PermissionDenied(
        f"this bangerd belongs to uid {os.geteuid()}; uid {uid} may not use it",
        hint="run banger as the user that owns the daemon, or start your own daemon",
    )
    body = error_body(err)
    head = (
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class PeerCheckedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, but a connection from another uid gets a 403 and is closed."""

    _refused = False
    _refused_transport: asyncio.Transport
    _read_deadline: asyncio.TimerHandle | None = None
    read_timeout_s = REQUEST_READ_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        try:
            pid, uid, _ = peer_credentials(sock)
        except OSError:
            pid, uid = -1, -1
        if uid != os.geteuid():
            self._refused = True
            log.warning("refused connection", extra={"fields": {"peer_uid": uid, "peer_pid": pid}})
            with contextlib.suppress(OSError):
                transport.write(_refusal(uid))
            # Closing at once would make the peer's request write fail (EPIPE) before it
            # reads the refusal: close once its request has arrived, or after a second.
            self._refused_transport = transport
            asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.close)
            return
        super().connection_made(transport)
        self._arm_read_deadline()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            if b"\r\n\r\n" in data:
                self._refused_transport.close()
            return
        super().data_received(data)
        if self._request_read():
            self._disarm_read_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request on this connection gets its own deadline (a pipelined one may
        # already be complete).
        if not self.transport.is_closing() and not self._request_read():
            self._arm_read_deadline()

    def _request_read(self) -> bool:
        return self.conn.their_state in {h11.DONE, h11.MUST_CLOSE, h11.CLOSED}

    def _arm_read_deadline(self) -> None:
        self._disarm_read_deadline()
        loop = asyncio.get_running_loop()
        self._read_deadline = loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing() or self._request_read():
            return
        log.info(
            "closed a connection whose request did not arrive in time",
            extra={
                "fields": {"timeout_s": self.read_timeout_s, "state": str(self.conn.their_state)}
            },
        )
        # A handler waiting for the rest of a body sees http.disconnect.
        self.transport.close()

    def eof_received(self) -> None:
        if not self._refused:
            super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._refused:
            self._disarm_read_deadline()
            super().connection_lost(exc)
