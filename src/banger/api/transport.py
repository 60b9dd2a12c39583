"""The daemon's listening socket and the per-connection peer check.

Owns: binding the Unix socket inside the private runtime dir with mode 0600 from the
first instant (umask, then chmod), and refusing connections whose peer uid (SO_PEERCRED)
is not the daemon's own (SPEC §1, ADVERSARIAL 121-123), and closing a connection whose
request has not fully arrived within ``REQUEST_READ_TIMEOUT_S`` — silent, or a head or
body sent in part (issue 14 item 7, ADVERSARIAL 49, 50); idle keep-alive connections are
closed by uvicorn's own keep-alive timeout; and handing a route the raw connection after
``101 Switching Protocols`` when the request asked for one of ``UPGRADE_PROTOCOLS``
(``vm exec``'s full-duplex stream, docs/explanation/guest-exec.md): the route finds a
``RawUpgrade`` in ``scope["extensions"][UPGRADE_EXTENSION]``; and answering bytes h11
cannot parse with banger's JSON error body instead of uvicorn's plain text (issue 14
item 16).
Must not: know about routes or services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11
from h11._state import MIGHT_SWITCH_PROTOCOL, SWITCHED_PROTOCOL
from uvicorn.protocols.http.h11_impl import H11Protocol

from banger.errors import MalformedHttp, PermissionDenied
from banger.model.wire import JSON, error_body

log = logging.getLogger("banger.api")

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
REFUSAL_LINGER_S = 1.0
#: A client gets this long to send a whole request (head and body: bodies are <= 1 MiB).
#: Once it has, a long streamed reply is not limited.
REQUEST_READ_TIMEOUT_S = 10.0
#: ``Upgrade:`` tokens a route may accept; anything else goes to uvicorn (and is refused).
UPGRADE_PROTOCOLS = frozenset({b"banger-exec/1"})
UPGRADE_EXTENSION = "banger.upgrade"
#: How much an upgraded connection's reader buffers before it stops reading the socket.
UPGRADED_READ_LIMIT = 64 * 1024


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


class RawUpgrade:
    """A request that asked to switch protocols: ``accept`` answers 101 and returns the
    connection as an asyncio stream pair; a route that raises instead gets its ordinary
    (JSON error) reply, which h11 sends as a refusal of the switch."""

    def __init__(self, protocol: PeerCheckedH11Protocol, token: bytes) -> None:
        self._protocol = protocol
        self.token = token
        self.accepted = False
        self._on_shutdown: Callable[[], None] | None = None

    def accept(
        self, headers: list[tuple[bytes, bytes]]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        proto = self._protocol
        if proto.conn.their_state is not MIGHT_SWITCH_PROTOCOL or proto.cycle is None:
            raise RuntimeError("the request cannot switch protocols (yet)")
        reply = h11.InformationalResponse(
            status_code=101,
            headers=[(b"connection", b"Upgrade"), (b"upgrade", self.token), *headers],
            reason=b"Switching Protocols",
        )
        head = proto.conn.send(reply)
        rest, closed = proto.conn.trailing_data
        # uvicorn's cycle must not write a reply of its own when the route returns.
        proto.cycle.disconnected = True
        proto._disarm_read_deadline()
        proto._unset_keepalive_if_required()
        proto.upgraded = self
        transport = proto.transport
        assert head is not None
        transport.write(head)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=UPGRADED_READ_LIMIT, loop=loop)
        stream = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(stream)
        stream.connection_made(transport)
        if rest:
            reader.feed_data(bytes(rest))
        if closed:
            reader.feed_eof()
        transport.resume_reading()  # h11 paused it at the end of the upgrade request
        self.accepted = True
        return reader, asyncio.StreamWriter(transport, stream, reader, loop)

    def on_shutdown(self, callback: Callable[[], None]) -> None:
        """Called once when the daemon shuts down while the connection is upgraded."""
        self._on_shutdown = callback

    def finished(self) -> None:
        """The route is done with the connection (it closed it): uvicorn forgets it."""
        self._protocol.connections.discard(self._protocol)

    def shutdown(self) -> None:
        callback, self._on_shutdown = self._on_shutdown, None
        if callback is not None:
            callback()


class PeerCheckedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, but a connection from another uid gets a 403 and is closed."""

    _refused = False
    _refused_transport: asyncio.Transport
    _read_deadline: asyncio.TimerHandle | None = None
    read_timeout_s = REQUEST_READ_TIMEOUT_S
    upgraded: RawUpgrade | None = None

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

    def _should_upgrade(self) -> bool:
        upgrade = self._get_upgrade()
        if upgrade in UPGRADE_PROTOCOLS:
            assert upgrade is not None
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[UPGRADE_EXTENSION] = RawUpgrade(self, upgrade)
            return False  # an ordinary request until the route accepts
        return super()._should_upgrade()

    def shutdown(self) -> None:
        if self.upgraded is not None:
            self.upgraded.shutdown()
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers a request h11 cannot parse in plain text; banger's callers get
        the same JSON error body as from every other refusal (issue 14 item 16)."""
        del msg  # uvicorn's one text, "Invalid HTTP request received."
        body = error_body(MalformedHttp("not an HTTP/1.1 request the daemon can parse"))
        headers = [
            (b"content-type", JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            output = self.conn.send(event)
            if output:
                self.transport.write(output)
        self.transport.close()

    def _request_read(self) -> bool:
        return self.conn.their_state in {
            h11.DONE,
            h11.MUST_CLOSE,
            h11.CLOSED,
            MIGHT_SWITCH_PROTOCOL,
            SWITCHED_PROTOCOL,
        }

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
