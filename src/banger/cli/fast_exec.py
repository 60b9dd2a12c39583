"""``banger vm exec NAME -- CMD…`` with a few milliseconds of Python (issue 12).

Agents run commands in a sandbox one after another, and the click CLI costs ~90 ms of
imports per call: more than the command itself through the agent (~13 ms under TCG). This
module runs the plain form of ``vm exec`` with only the C modules ``_socket``, ``select``,
``_signal`` and ``_struct`` loaded on top of the interpreter's own: ``socket``, ``signal``
and ``json`` would pull in ``enum``, ``selectors`` and ``re``, ~14 ms of a ~25 ms call
(docs/explanation/cli-startup.md). Its JSON is written by ``_json`` (strings, lists,
dicts and a decimal number are all a request holds).

Owns: recognising the plain form — NAME, then any of ``--cwd DIR``, ``--env K=V`` and
``--timeout S``, then ``--`` and the command — and running it against a daemon that
already answers: ``POST /v1/vms/NAME/exec`` switched to ``banger-exec/1`` with a
``Banger-Build`` header, which a daemon of another build refuses (409) before running
anything (the check ``ensure_daemon`` makes with a ping, without its round trip), then
the link as
``banger.cli.cmd_exec`` runs it: output to fds 1 and 2 as it comes, granted back once
written (so at most one window is held); stdin from a pipe or a file within the daemon's
credit, EOF at once for a terminal; SIGINT forwarded (a second within 2 s sends SIGKILL),
SIGTERM and SIGHUP forwarded; the exit status (the command's, 128+N for a signal, 124
after ``--timeout``).

``run`` returns None, before any command started, for everything else: another form,
``--help``/``--debug``, no daemon, a daemon of another build, any reply but 101. The click
CLI then runs the same argv from the start, so usage errors, daemon start-up and every
error before the command stay in one place. A failure after 101 is rendered by
``banger.cli.render`` (imported only then).

Its frame constants and request bytes are a copy of ``banger.guest.exec_frames`` and
``banger.client.http``'s, as the guest agent keeps its own codec:
``tests/unit/test_fast_exec.py`` checks that they agree.

Must not: import banger modules, pathlib, re or typing before the command ended; start a
daemon; send a request other than the ping and the exec.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stubs; `signal` would load enum
import _socket
import os
import select
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

API_PREFIX = "/v1"
PROTOCOL = "banger-exec/1"
HEADER = struct.Struct(">BII")
CHANNEL = 1
WINDOW = 256 * 1024
MAX_PAYLOAD = 64 * 1024
READ_CHUNK = 64 * 1024
#: Kinds (banger.guest.exec_frames.Kind) used on the client's link.
STDIN, STDIN_EOF, SIGNAL, CREDIT = 3, 4, 5, 6
FAILED, STDOUT, STDERR, STDIN_CREDIT, EXIT = 0x83, 0x84, 0x85, 0x86, 0x87
KILL_AFTER_S = 2.0
EXIT_TIMED_OUT = 124
MAX_HEAD = 16 * 1024
#: Until the daemon switched protocols (it answers once the guest started the command).
CONNECT_TIMEOUT_S = 30.0
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
#: cmd_exec._PLAIN_WORD's characters: a single word made of others is a shell line.
_PLAIN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:+@%,=-")


class _Fallback(Exception):
    """Not for the fast path: the click CLI takes the same argv (nothing ran)."""


class LinkError(Exception):
    """The link failed after the command started (rendered as a banger error)."""


def parse(args: Sequence[str]) -> dict[str, object] | None:
    """The exec request for ``vm exec``'s arguments (after ``vm exec``), or None when they
    are not the plain form."""
    if "--" not in args:
        return None
    cut = args.index("--")
    head, words = list(args[:cut]), list(args[cut + 1 :])
    if not head or not words or not _is_name(head[0]):
        return None
    body: dict[str, object] = {}
    env: dict[str, str] = {}
    options = head[1:]
    while options:
        if len(options) < 2:
            return None
        flag, value = options[0], options[1]
        options = options[2:]
        if flag == "--cwd" and "cwd" not in body and value and not value.startswith("-"):
            body["cwd"] = value
        elif flag == "--env" and _is_pair(value):
            key, _, text = value.partition("=")
            env[key] = text
        elif flag == "--timeout" and "timeout_s" not in body and _is_decimal(value):
            body["timeout_s"] = float(value)  # its bounds are the daemon's to check
        else:
            return None
    if len(words) == 1 and not (words[0] and all(c in _PLAIN_CHARS for c in words[0])):
        words = ["/bin/sh", "-c", words[0]]
    return {"name": head[0], "argv": words, "env": env, **body}


def _is_name(text: str) -> bool:
    return 0 < len(text) <= 63 and text[0] not in "-." and all(c in _NAME_CHARS for c in text)


def _is_pair(text: str) -> bool:
    key, sep, _ = text.partition("=")
    return bool(sep and key) and not text.startswith("-")


def _is_decimal(text: str) -> bool:
    whole, _, fraction = text.partition(".")
    return (
        0 < len(text) <= 12
        and whole.isascii()
        and whole.isdigit()
        and (not fraction or (fraction.isascii() and fraction.isdigit()))
    )


def request_bytes(
    method: str, target: str, body: bytes | None, *, upgrade: bool, build: str | None = None
) -> bytes:
    """The request ``banger.client.http._request_bytes`` sends for these, plus the
    ``Banger-Build`` header when ``build`` is given."""
    head = [
        f"{method} {target} HTTP/1.1",
        "Host: bangerd",
        "Accept-Encoding: identity",
        "Accept: application/json",
    ]
    head += ["Connection: Upgrade", f"Upgrade: {PROTOCOL}"] if upgrade else ["Connection: close"]
    if build is not None:
        head.append(f"Banger-Build: {build}")
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return "\r\n".join([*head, "", ""]).encode("ascii") + (body or b"")


def own_build() -> str | None:
    """``BuildInfo.token()`` of this install, without importing dataclasses; None when
    the stamp is missing (a source tree never installed: the click CLI copes)."""
    try:
        from banger import _build_info  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        return None
    return f"{_build_info.VERSION} {_build_info.COMMIT} {_build_info.BUILD_TIME}"


def run(args: Sequence[str]) -> int | None:
    """Run ``vm exec`` ``args`` the fast way: its exit status, or None to take the click
    path (nothing was started)."""
    request = parse(args)
    home = os.environ.get("HOME", "")
    build = own_build()
    if request is None or not home.startswith("/") or build is None:
        return None
    from banger.host.runtime_dir import socket_path

    path = socket_path(os.environ, os.getuid(), home)
    try:
        sock, rest = _upgrade(path, request, build)
    except (_Fallback, OSError, ValueError):
        return None  # nothing was sent, or the daemon refused before running anything
    except LinkError as exc:
        return _failed(exc)
    try:
        return _Link(sock, rest).run()
    except BrokenPipeError:
        raise  # the reader of our output went away: banger.cli.entry exits 0, as main does
    except (LinkError, OSError) as exc:
        return _failed(exc)
    finally:
        sock.close()


def _failed(exc: Exception) -> int:
    """A failure once the request was sent, rendered as ``banger.cli.main`` renders
    errors (exit status 1)."""
    from banger.cli.render import format_error
    from banger.errors import DaemonUnavailable, error_from_payload

    err: Exception = exc
    if isinstance(exc, LinkError):
        payload = exc.args[0]
        err = (
            error_from_payload(payload, status=500)
            if isinstance(payload, dict)
            else DaemonUnavailable(str(payload))
        )
    sys.stderr.write(format_error(err, debug=os.environ.get("BANGER_DEBUG") == "1"))
    return 1


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _readable_fd(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _connect(path: str, timeout_s: float | None) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_head(sock: _socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk or len(data) + len(chunk) > MAX_HEAD:
            raise _Fallback
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] != "HTTP/1.1" or not parts[1].isdigit():
        raise _Fallback
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if not sep:
            raise _Fallback
        headers[key.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _json(value: object) -> str:
    """Compact JSON of str, float, list and dict values; every character outside printable
    ASCII escaped (as ``json.dumps`` does), surrogates included."""
    if isinstance(value, str):
        return '"' + "".join(_json_char(c) for c in value) + '"'
    if isinstance(value, float):
        return repr(value)  # finite: _is_decimal admitted it
    if isinstance(value, list):
        return "[" + ",".join(_json(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json(k)}:{_json(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no JSON for {type(value).__name__}")


def _json_char(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    code = ord(c)
    if 0x20 <= code < 0x7F:
        return c
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _upgrade(path: str, request: dict[str, object], build: str) -> tuple[_socket.socket, bytes]:
    """The exec request switched to the link. Not reaching the daemon, or a reply that is
    not 101 (nothing ran), is ``_Fallback``/``OSError``; once the request is sent, losing
    the daemon is a ``LinkError``: handing over then could run the command twice."""
    body = {key: value for key, value in request.items() if key != "name"}
    target = f"{API_PREFIX}/vms/{request['name']}/exec"
    data = request_bytes("POST", target, _json(body).encode(), upgrade=True, build=build)
    sock = _connect(path, CONNECT_TIMEOUT_S)
    try:
        try:
            sock.sendall(data)
            status, headers, rest = _read_head(sock)
        except (OSError, _Fallback) as exc:
            reason = f"lost the connection to the daemon on {path}: {exc or 'closed'}"
            raise LinkError(reason) from exc
        if status != 101 or headers.get("upgrade", "").lower() != PROTOCOL:
            raise _Fallback  # an error before the command: the click CLI renders it
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock, rest


class _Link:
    """The client's side of the exec link on one thread: poll the socket and stdin."""

    def __init__(self, sock: _socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.buffer = bytearray(rest)
        self.stdin_credit = WINDOW
        self.stdin_open = True
        self.last_interrupt = 0.0
        self.status: int | None = None
        #: Signals caught, sent from the loop: a handler must not write to the socket in
        #: the middle of another frame. The pipe wakes the loop's select.
        self.pending: list[int] = []
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def run(self) -> int:
        if not _readable_fd(0) or _isatty(0):
            self._close_stdin()
        previous = {
            sig: _signal.signal(sig, self._on_signal)
            for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)
        }
        try:
            self._drain()  # bytes that came with the 101
            while self.status is None:
                self._step()
        finally:
            for sig, handler in previous.items():
                _signal.signal(sig, handler)
            os.close(self.wake_r)
            os.close(self.wake_w)
        return self.status

    def _step(self) -> None:
        watched = [self.sock.fileno(), self.wake_r]
        if self.stdin_open and self.stdin_credit > 0:
            watched.append(0)
        ready, _, _ = select.select(watched, [], [])
        if self.wake_r in ready:
            try:  # noqa: SIM105 - contextlib costs start-up time on this path
                os.read(self.wake_r, 64)
            except BlockingIOError:
                pass
        while self.pending:
            self._send(SIGNAL, bytes([self.pending.pop(0)]))
        if 0 in ready:
            self._feed_stdin()
        if self.sock.fileno() in ready:
            try:
                data = self.sock.recv(READ_CHUNK)
            except OSError as exc:
                raise LinkError(f"lost the exec session: {exc}") from exc
            if not data:
                raise LinkError("the daemon ended the exec session without an exit")
            self.buffer += data
            self._drain()

    def _drain(self) -> None:
        while self.status is None and len(self.buffer) >= HEADER.size:
            kind, channel, size = HEADER.unpack_from(self.buffer)
            if channel != CHANNEL or size > MAX_PAYLOAD:
                raise LinkError("the daemon broke the exec protocol")
            if len(self.buffer) < HEADER.size + size:
                return
            payload = bytes(self.buffer[HEADER.size : HEADER.size + size])
            del self.buffer[: HEADER.size + size]
            self._on_frame(kind, payload)

    def _on_frame(self, kind: int, payload: bytes) -> None:
        if kind in (STDOUT, STDERR):
            view = memoryview(payload)
            while view:
                view = view[os.write(1 if kind == STDOUT else 2, view) :]
            if payload:
                self._send(CREDIT, len(payload).to_bytes(4, "big"))
        elif kind == STDIN_CREDIT and len(payload) == 4:
            self.stdin_credit += int.from_bytes(payload, "big")
            if self.stdin_credit > WINDOW:
                raise LinkError("the daemon granted more stdin than the window")
        elif kind == EXIT and len(payload) == 3 and payload[0] <= 1 and payload[2] <= 1:
            if payload[2]:
                self.status = EXIT_TIMED_OUT
            else:
                self.status = 128 + payload[1] if payload[0] == 1 else payload[1]
        elif kind == FAILED:
            import json  # an error only: json loads re

            try:
                error = json.loads(payload)
            except ValueError:
                error = None
            raise LinkError(error if isinstance(error, dict) else "the daemon's exec failed")
        else:
            raise LinkError(f"the daemon broke the exec protocol (frame of kind {kind})")

    def _feed_stdin(self) -> None:
        try:
            chunk = os.read(0, min(self.stdin_credit, MAX_PAYLOAD))
        except OSError:
            chunk = b""
        if chunk:
            self.stdin_credit -= len(chunk)
            self._send(STDIN, chunk)
        else:
            self._close_stdin()

    def _close_stdin(self) -> None:
        self.stdin_open = False
        self._send(STDIN_EOF)

    def _on_signal(self, sig: int, _frame: object) -> None:
        if sig == _signal.SIGINT:
            now = time.monotonic()
            if now - self.last_interrupt < KILL_AFTER_S:
                sig = _signal.SIGKILL
            self.last_interrupt = now
        self.pending.append(int(sig))
        try:  # noqa: SIM105 - contextlib costs start-up time on this path
            os.write(self.wake_w, b"!")
        except OSError:
            pass  # full: the loop wakes anyway

    def _send(self, kind: int, payload: bytes = b"") -> None:
        """A failed send is left for the read side to explain (the daemon may have
        closed after the EXIT still to be read, or died)."""
        try:  # noqa: SIM105 - contextlib costs start-up time on this path
            self.sock.sendall(HEADER.pack(kind, CHANNEL, len(payload)) + payload)
        except OSError:
            pass
