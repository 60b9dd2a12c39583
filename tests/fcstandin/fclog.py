"""Firecracker's human-readable log, as its ``vmm::logger`` writes it.

Owns: the line format ``<local time> [<instance id>:<thread>[:<LEVEL>]] <message>``, the
level filter, and the target: stdout until ``--log-path`` or ``PUT /logger`` names a file.
Firecracker opens that file with create + write and neither append nor truncate
(``open_file_nonblock``); so does this. Must not: decide what to log.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

LEVELS = {"off": 0, "error": 1, "warn": 2, "info": 3, "debug": 4, "trace": 5}


class FcLog:
    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.level = LEVELS["info"]
        self.show_level = False
        self._fd = 1  # stdout, as Firecracker before its logger is configured
        self._lock = threading.Lock()

    def configure(
        self,
        *,
        log_path: str | None,
        level: str | None,
        show_level: bool | None = None,
    ) -> None:
        """Raises OSError when the file cannot be opened (Firecracker: 'Failed to open…')."""
        if log_path is not None:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
            with self._lock:
                old, self._fd = self._fd, fd
            if old > 2:
                os.close(old)
        self.level = LEVELS[level or "info"]
        if show_level is not None:
            self.show_level = show_level

    def error(self, message: str, thread: str = "fc_vmm") -> None:
        self._write("error", message, thread)

    def warn(self, message: str, thread: str = "fc_vmm") -> None:
        self._write("warn", message, thread)

    def info(self, message: str, thread: str = "fc_vmm") -> None:
        self._write("info", message, thread)

    def _write(self, level: str, message: str, thread: str) -> None:
        if LEVELS[level] > self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
        nanos = int((now % 1) * 1e9)
        tag = f":{level.upper()}" if self.show_level else ""
        line = f"{stamp}.{nanos:09d} [{self.instance_id}:{thread}{tag}] {message}\n"
        # Firecracker counts a line it could not write as missed and carries on.
        with self._lock, contextlib.suppress(OSError):
            os.write(self._fd, line.encode(errors="replace"))
