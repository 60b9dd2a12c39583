"""A command running in a VM through the guest agent, seen from a client (sync, stdlib).

Owns: the client's side of ``vm exec``'s link (after ``POST /vms/{name}/exec`` switched
protocols, ``banger.client.http.Client.upgrade``): ``ExecSession`` — stdin within the
window the daemon granted, signals, output events, the exit — and ``run_exec``, which
streams stdin from bytes, a file or an iterable and output to callbacks.

One reader thread per session reads the socket; output it reads waits in the session
until ``events()`` takes it, and the daemon may send only as much as the client granted
(one window), so a session holds at most a window of output whatever the command
prints, and stdin credit is never stuck behind unread output. The reader keeps reading
whether or not the caller takes output, so a daemon that breaks the protocol is caught
and hung up on even while nobody calls ``events()``. Writes (stdin, signals,
credit) are serialised by a lock, so ``write`` may run in another thread than
``events``.

Must not: print, start the daemon, or read more than one frame past what it was granted.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from banger.errors import BadResponse, BangerError, DaemonUnavailable, error_from_payload
from banger.guest import exec_frames
from banger.guest.exec_frames import Kind
from banger.model.api_types import ExecRequest, ExecResult, to_body

PROTOCOL = "banger-exec/1"
CHANNEL = exec_frames.LINK_CHANNEL
WINDOW = exec_frames.WINDOW
READ_CHUNK = 64 * 1024
#: What ``events()`` yields as the kind of a piece of output.
STDOUT = "stdout"
STDERR = "stderr"
_KIND_NAMES = {Kind.STDOUT: STDOUT, Kind.STDERR: STDERR}

Stdin = bytes | BinaryIO | Iterable[bytes] | None
Sink = Callable[[bytes], None]


class ExecSession:
    """A started command. Iterate ``events()`` for its output, ``wait()`` for its end;
    ``close()`` (or leaving the ``with`` block) kills it if it still runs."""

    def __init__(self, sock: socket.socket, fp: io.BufferedReader, pid: int | None) -> None:
        self.pid = pid
        self._sock = sock
        self._fp = fp
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._events: collections.deque[tuple[str, bytes]] = collections.deque()
        self._consumed = 0  # taken by the caller, not yet granted back to the daemon
        self._stdin_credit = WINDOW
        self._stdin_closed = False
        self._result: ExecResult | None = None
        self._error: BangerError | None = None
        self._closed = False
        self._send_broken = False
        self._reader = threading.Thread(target=self._read_loop, name="banger-exec", daemon=True)
        self._reader.start()

    # -- the caller's side -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` to the command's stdin, waiting for the daemon's credit."""
        view = memoryview(data)
        while view:
            with self._cond:
                while self._stdin_credit <= 0 and self._running():
                    self._cond.wait()
                self._raise_if_failed()
                if self._result is not None:
                    return  # it ended: nobody reads
                size = min(len(view), self._stdin_credit, exec_frames.MAX_PAYLOAD)
                self._stdin_credit -= size
            self._send(Kind.STDIN, bytes(view[:size]))
            view = view[size:]

    def close_stdin(self) -> None:
        """End of stdin (the command reads EOF)."""
        with self._cond:
            if self._stdin_closed or not self._running():
                return
            self._stdin_closed = True
        self._send(Kind.STDIN_EOF)

    def signal(self, sig: int) -> None:
        """Forward ``sig`` (HUP, INT, QUIT, KILL or TERM) to the command's process group."""
        if sig not in exec_frames.SIGNALS:
            raise ValueError(f"signal {sig} is not forwarded (1, 2, 3, 9 or 15)")
        with self._cond:
            if not self._running():
                return
        self._send(Kind.SIGNAL, bytes([sig]))

    def events(self) -> Iterator[tuple[str, bytes]]:
        """``("stdout"|"stderr", data)`` as the command prints, until it ended."""
        while True:
            with self._cond:
                while not self._events and self._running():
                    self._cond.wait()
                if not self._events:
                    self._raise_if_failed()
                    return
                kind, data = self._events.popleft()
                empty = not self._events
            yield kind, data
            self._grant(len(data), empty)

    def wait(self) -> ExecResult:
        """How the command ended (output not taken by ``events()`` is discarded)."""
        for _ in self.events():
            pass
        with self._cond:
            self._raise_if_failed()
            assert self._result is not None
            return self._result

    @property
    def result(self) -> ExecResult | None:
        """How the command ended, once it has."""
        return self._result

    def close(self) -> None:
        """Hang up; a command still running is killed (SIGKILL to its process group)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            if self._error is None and self._result is None:
                self._error = DaemonUnavailable("the exec session was closed")
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __enter__(self) -> ExecSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the link --------------------------------------------------------------------------

    def _running(self) -> bool:
        return self._result is None and self._error is None

    def _raise_if_failed(self) -> None:
        if self._error is not None and self._result is None:
            raise self._error

    def _grant(self, size: int, empty: bool) -> None:
        with self._cond:
            self._consumed += size
            if not (self._consumed >= WINDOW // 4 or (empty and self._consumed)):
                return
            if not self._running():
                return
            grant, self._consumed = self._consumed, 0
        self._send(Kind.CREDIT, exec_frames.u32(grant))

    def _send(self, kind: int, payload: bytes = b"") -> None:
        """Send a frame; a failed send is left for the reader to explain: the daemon may
        have closed after the command's EXIT (still to be read), or it died (EOF)."""
        frame = exec_frames.encode(kind, CHANNEL, payload)
        with self._send_lock:
            if self._send_broken:
                return
            try:
                self._sock.sendall(frame)
            except OSError:
                self._send_broken = True

    def _fail(self, error: BangerError) -> None:
        with self._cond:
            if self._error is None and self._result is None:
                self._error = error
            self._cond.notify_all()

    def _read_loop(self) -> None:
        decoder = exec_frames.FrameDecoder()
        try:
            while True:
                data = self._fp.read1(READ_CHUNK)
                if not data:
                    raise DaemonUnavailable("the daemon ended the exec session without an exit")
                for frame in decoder.feed(data):
                    if self._on_frame(frame):
                        return
        except exec_frames.ProtocolError as exc:
            self._fail(BadResponse(f"the daemon broke the exec protocol: {exc}"))
        except BangerError as exc:
            self._fail(exc)
        except (OSError, ValueError) as exc:
            self._fail(DaemonUnavailable(f"lost the exec session: {exc}"))
        finally:
            with contextlib.suppress(OSError):
                self._fp.close()
            if self._result is None:
                # Hang up now, not when the caller next looks: a caller that stopped
                # taking output may never call close(), and the daemon (which broke the
                # protocol, or failed) must see the link end so the command is killed.
                # shutdown, not close: another thread may be sending on this socket.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def _on_frame(self, frame: exec_frames.Frame) -> bool:
        """Take one frame from the daemon; True once the session has ended."""
        if frame.channel != CHANNEL:
            raise BadResponse(f"the daemon sent a frame on channel {frame.channel}")
        with self._cond:
            if frame.kind in _KIND_NAMES:
                pending = sum(len(d) for _, d in self._events) + self._consumed
                if pending + len(frame.payload) > WINDOW:
                    raise BadResponse("the daemon sent output beyond the window granted")
                if frame.payload:
                    self._events.append((_KIND_NAMES[Kind(frame.kind)], frame.payload))
            elif frame.kind == Kind.STDIN_CREDIT:
                self._stdin_credit += exec_frames.decode_u32(frame.payload)
                if self._stdin_credit > WINDOW:
                    raise BadResponse("the daemon granted more stdin than the window")
            elif frame.kind == Kind.EXIT:
                status = exec_frames.decode_exit(frame.payload)
                self._result = ExecResult(
                    exit_code=status.code, signal=status.signal, timed_out=status.timed_out
                )
            elif frame.kind == Kind.FAILED:
                self._error = _error_of(frame.payload)
            else:
                raise BadResponse(f"the daemon sent a frame of kind {frame.kind}")
            self._cond.notify_all()
            return not self._running()


def _error_of(payload: bytes) -> BangerError:
    try:
        data: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return BadResponse("the daemon's exec error is not JSON", details=repr(payload[:200]))
    return error_from_payload(data, status=500)


def start_session(
    upgrade: Callable[[str, Any, str], tuple[socket.socket, io.BufferedReader, dict[str, str]]],
    path: str,
    argv: Sequence[str],
    *,
    cwd: str | None,
    env: Mapping[str, str] | None,
    timeout_s: float | None,
) -> ExecSession:
    """``POST path`` switched to the exec protocol, as a session."""
    if isinstance(argv, str):
        raise TypeError("argv is a sequence of words, not one string")
    request = ExecRequest(
        argv=list(argv),
        cwd=cwd,
        env=None if env is None else dict(env),
        timeout_s=None if timeout_s is None else float(timeout_s),
    )
    sock, fp, headers = upgrade(path, to_body(request), PROTOCOL)
    pid_text = headers.get("banger-exec-pid", "")
    return ExecSession(sock, fp, int(pid_text) if pid_text.isdigit() else None)


def run_exec(
    session: ExecSession,
    *,
    stdin: Stdin = None,
    on_stdout: Sink | None = None,
    on_stderr: Sink | None = None,
) -> ExecResult:
    """Feed ``stdin`` (then EOF), hand output to the callbacks, return how it ended.
    The session is closed afterwards; an exception (a callback's too) kills the command."""
    with session:
        feeder = None
        if stdin is None:
            session.close_stdin()
        elif isinstance(stdin, bytes | bytearray | memoryview):
            data = bytes(stdin)
            feeder = threading.Thread(target=_feed, args=(session, [data]), daemon=True)
        else:
            feeder = threading.Thread(target=_feed, args=(session, stdin), daemon=True)
        if feeder is not None:
            feeder.start()
        for kind, data in session.events():
            sink = on_stdout if kind == STDOUT else on_stderr
            if sink is not None:
                sink(data)
        return session.wait()


def _feed(session: ExecSession, source: BinaryIO | Iterable[bytes]) -> None:
    """Stdin from a file (read as it comes: ``read1`` when it has it) or an iterable."""
    try:
        if hasattr(source, "read"):
            read = getattr(source, "read1", None) or source.read
            while chunk := read(READ_CHUNK):
                session.write(chunk)
        else:
            for chunk in source:
                session.write(bytes(chunk))
        session.close_stdin()
    except (BangerError, OSError, ValueError):
        return  # the session ended or failed: events()/wait() report it
