"""One daemon per state dir and per socket: flocks held for the daemon's whole life.

Owns: the two lock files — ``<state dir>/bangerd.lock`` (one daemon per state dir, whatever
its runtime dir: issue 14 item 1) and ``<runtime dir>/bangerd.lock`` (one daemon per
socket) — and the check of what is found at a lock path before opening it (items 11, 21).
The kernel drops a lock when the process dies (even by SIGKILL), so a stale socket never
blocks the next start; a live daemon makes the second one refuse, naming its socket
(ADVERSARIAL 90). Each lock file holds the holder's pid and the socket it serves.
Must not: touch the socket itself (``banger.daemon.startup`` does), or remove a lock file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from banger.errors import DaemonAlreadyRunning, PermissionDenied, StateError

_Holder = tuple[int | None, str | None]
_Busy = Callable[[Path, _Holder], Exception]

#: How long a daemon whose socket vanished may take to notice (1 s) and stop (in-flight
#: requests get up to 10 s).
UNREACHABLE_WAIT_S = 15.0
#: How long to wait for a just-started holder to write its pid and socket into the file.
_HOLDER_WAIT_S = 1.0
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


class DaemonLock:
    """``acquire`` the state lock, then the socket lock; ``release`` both."""

    def __init__(self, state_lock: Path, runtime_lock: Path, socket_path: Path) -> None:
        self._state_lock = state_lock
        self._runtime_lock = runtime_lock
        self._socket_path = socket_path
        self._fds: list[int] = []

    def acquire(self, *, unreachable_wait_s: float = UNREACHABLE_WAIT_S) -> None:
        """Take both locks. A holder of the state lock that serves our socket path while
        no socket is there (its runtime dir was deleted) is on its way out: it notices
        within a second and stops, so it is waited for up to ``unreachable_wait_s``."""
        try:
            self._take(self._state_lock, self._state_busy, patience_s=unreachable_wait_s)
            self._take(self._runtime_lock, self._socket_busy)
        except BaseException:
            self.release()
            raise

    def _take(self, path: Path, busy: _Busy, *, patience_s: float = 0.0) -> None:
        fd = open_lock_file(path)
        deadline = time.monotonic() + patience_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = _read_holder(fd)
                    if not self._unreachable(holder) or time.monotonic() > deadline:
                        raise busy(path, holder) from None
                    time.sleep(0.1)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{self._socket_path}\n".encode(), 0)
        self._fds.append(fd)

    def _unreachable(self, holder: _Holder) -> bool:
        return holder[1] == str(self._socket_path) and not os.path.lexists(self._socket_path)

    def _state_busy(self, path: Path, holder: _Holder) -> Exception:
        pid, socket = holder
        who = f" (pid {pid})" if pid else ""
        if socket is None or socket == str(self._socket_path):
            return DaemonAlreadyRunning(
                f"another bangerd{who} is already running on {self._socket_path}"
            )
        # Same state, another socket: two daemons would share state.db and each other's
        # staging; the user's CLI is pointed at the wrong runtime dir.
        return StateError(
            f"the state dir {path.parent} is in use by another bangerd{who} serving {socket}",
            hint=f"use that daemon (XDG_RUNTIME_DIR={Path(socket).parent.parent}), or stop it "
            "first; one daemon per state dir",
        )

    def _socket_busy(self, path: Path, holder: _Holder) -> Exception:
        pid, _ = holder
        who = f" (pid {pid})" if pid else ""
        return DaemonAlreadyRunning(
            f"another bangerd{who} is already running on {self._socket_path}",
            hint="it uses another state dir (XDG_STATE_HOME); stop it or choose another "
            "XDG_RUNTIME_DIR",
        )

    def release(self) -> None:
        while self._fds:
            fd = self._fds.pop()
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


def open_lock_file(path: Path) -> int:
    """Open (creating) the lock file at ``path``, refusing anything but our own file.

    A symlink, a directory, a FIFO or a file of another user at a lock path is not
    banger's: it is named in the error and left alone.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _not_ours(path, exc.strerror or str(exc)) from exc
    else:
        if not stat.S_ISREG(st.st_mode):
            raise _not_ours(path, f"it is {describe_type(st.st_mode)}, not a lock file")
        if st.st_uid != os.geteuid():
            raise _not_ours(path, f"it belongs to uid {st.st_uid}, not to you")
    try:
        return os.open(path, _OPEN_FLAGS, 0o600)
    except OSError as exc:
        why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise _not_ours(path, why) from exc


def _not_ours(path: Path, why: str) -> PermissionDenied:
    return PermissionDenied(
        f"cannot use {path} as bangerd's lock: {why}",
        hint=f"banger did not make this; remove {path} if nothing of yours needs it",
    )


def describe_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return "a device"


def _read_holder(fd: int) -> _Holder:
    """The holder's pid and socket; waits briefly for a holder that has not written yet."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        try:
            text = os.pread(fd, 4096, 0).decode()
        except (OSError, UnicodeDecodeError):
            return None, None
        lines = text.splitlines()
        if len(lines) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    pid = int(lines[0]) if lines and lines[0].isascii() and lines[0].isdigit() else None
    socket = lines[1] if len(lines) >= 2 and lines[1] else None
    return pid, socket
