"""The helper's connection handling: who is calling, one bounded request, one reply.

Owns: the accept loop, the SO_PEERCRED check on every connection (uids other than the
configured owners get a clear error and nothing else, ADVERSARIAL 121, 127), reading one
size- and time-limited request per connection, turning every failure into an error reply,
and a cap on concurrent connections so that slow callers cannot pile up threads.

Must not: let one request end the helper (every exception becomes a reply and a log
line), read a request before the peer's uid passed, or decide what a verb may do
(``banger.helper.verbs`` does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time

from banger.errors import BangerError, InUse, PermissionDenied
from banger.helper.verbs import Verbs
from banger.net.helper_wire import (
    MAX_REQUEST_BYTES,
    PassFd,
    decode_object,
    encode_frame,
    error_reply,
    ok_reply,
    parse_request,
    read_frame,
)

log = logging.getLogger("banger.helper")

#: A whole request must arrive within this (a caller writes ~100 bytes at once).
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 16
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
ACCEPT_POLL_S = 0.5
DRAIN_S = 0.5


class HelperServer:
    def __init__(
        self,
        listener: socket.socket,
        verbs: Verbs,
        owners: tuple[int, ...],
        *,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self._listener = listener
        self._verbs = verbs
        self._owners = frozenset(owners)
        self._read_timeout_s = read_timeout_s
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.stop = threading.Event()

    def serve(self) -> None:
        """Accept until ``stop`` is set; each connection gets a thread of its own."""
        self._listener.settimeout(ACCEPT_POLL_S)
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:  # EMFILE and friends: keep serving the next one
                log.warning("accept failed: %s", exc)
                time.sleep(ACCEPT_POLL_S)
                continue
            if not self._slots.acquire(blocking=False):
                self._reply_and_close(
                    conn, error_reply(InUse("the helper is busy; try again in a moment"))
                )
                continue
            try:
                threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()
            except RuntimeError:  # no thread to be had (a limit): refuse this one, go on
                self._slots.release()
                self._reply_and_close(conn, error_reply(InUse("the helper is out of threads")))

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            reply = self._answer(conn)
            passed = reply.get("result")
            if isinstance(passed, PassFd):
                try:
                    self._reply_and_close(conn, ok_reply(None), fd=passed.fd)
                finally:
                    os.close(passed.fd)
            else:
                self._reply_and_close(conn, reply)
        except Exception:  # nothing may end the helper; the log says what happened
            log.exception("connection handling failed")
            conn.close()
        finally:
            self._slots.release()

    def _answer(self, conn: socket.socket) -> dict[str, object]:
        pid, uid, _ = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid not in self._owners:
            log.warning("refused uid %d (pid %d): not an owner", uid, pid)
            return error_reply(
                PermissionDenied(
                    f"uid {uid} may not use this banger-helper: it serves only uid(s) "
                    + ", ".join(str(o) for o in sorted(self._owners)),
                    hint="the helper's owners are set by `banger-helper --owner USER` or "
                    "owners in /etc/banger/helper.toml",
                )
            )
        verb = "?"
        try:
            deadline = time.monotonic() + self._read_timeout_s
            message = decode_object(read_frame(conn, limit=MAX_REQUEST_BYTES, deadline=deadline))
            parsed_verb, args = parse_request(message)
            verb = parsed_verb.value
            result = self._verbs.run(uid, parsed_verb, args)
        except BangerError as exc:
            log.info("uid %d %s: refused: %s [%s]", uid, verb, exc.brief, exc.code)
            return error_reply(exc)
        except Exception:
            log.exception("uid %d %s: unexpected failure", uid, verb)
            return error_reply(
                BangerError(
                    "internal error in banger-helper",
                    hint="the helper's log (its stderr, or journalctl) has the traceback",
                )
            )
        log.info("uid %d %s: ok", uid, verb)
        return ok_reply(result)

    def _reply_and_close(
        self, conn: socket.socket, reply: dict[str, object], *, fd: int = -1
    ) -> None:
        with conn:
            try:
                conn.settimeout(WRITE_TIMEOUT_S)
                frame = encode_frame(reply)
                if fd != -1:  # the descriptor rides on the frame's first bytes
                    sent = socket.send_fds(conn, [frame], [fd])
                    frame = frame[sent:]
                conn.sendall(frame)
                # Half-close, so a caller still writing gets our reply rather than a reset.
                conn.shutdown(socket.SHUT_WR)
            except OSError as exc:
                log.info("could not send a reply: %s", exc)
                return
            # Unread bytes at close make the kernel reset the connection: drain a little
            # of what an oversized caller still sends, so that it reads our reply first.
            deadline = time.monotonic() + DRAIN_S
            with contextlib.suppress(OSError):
                while (left := deadline - time.monotonic()) > 0:
                    conn.settimeout(left)
                    if not conn.recv(65536):
                        break
