"""One daemon per runtime dir: an flock held for the daemon's whole life.

Owns: the lock file beside the socket. The kernel drops the lock when the process
dies (even by SIGKILL), so a stale socket never blocks the next start; a live daemon
makes the second one refuse, naming the socket (ADVERSARIAL 90).
Must not: touch the socket itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from banger.errors import DaemonAlreadyRunning


class DaemonLock:
    def __init__(self, path: Path, socket_path: Path) -> None:
        self._path = path
        self._socket_path = socket_path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise DaemonAlreadyRunning(
                f"another bangerd{who} is already running on {self._socket_path}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isascii() and text.isdigit() else None
