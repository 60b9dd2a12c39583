"""Identity of host processes: is the process behind a pid still the one we started?

Owns: reading ``/proc/<pid>/stat`` start ticks and the host boot id. A pid alone is not
an identity: pids are reused, and after a host reboot every pid means something else.
(pid, start ticks, boot id) is. Also whether a process group still has a live member
(``banger.host.runner`` stopping a command's session). Must not: signal anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start_ticks: int
    boot_id: str


def boot_id() -> str:
    return BOOT_ID_PATH.read_text().strip()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw.rsplit(")", 1)[-1].split()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped: a PID 1 that reaps late
    keeps a killed daemon one for a while) counts as gone. Another uid's process counts."""
    fields = _stat_fields(pid)
    if fields is None:
        return Path(f"/proc/{pid}").exists()  # unreadable stat: there, but not ours to read
    return bool(fields) and fields[0] not in ("Z", "X")


def group_alive(pgid: int) -> bool:
    """True if a process that is not a zombie is in process group ``pgid``."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # After comm: state, ppid, pgrp.
        if fields and len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    # After comm: field 3 (state) is index 0, so field 22 (starttime) is index 19.
    return int(fields[19]) if fields and len(fields) > 19 else None


def identify(pid: int) -> ProcessIdentity | None:
    ticks = start_ticks(pid)
    return None if ticks is None else ProcessIdentity(pid, ticks, boot_id())


def is_running(identity: ProcessIdentity) -> bool:
    """True only if the very process we recorded still runs (not a zombie, not a reuse)."""
    if identity.boot_id != boot_id():
        return False
    fields = _stat_fields(identity.pid)
    if not fields or len(fields) <= 19:
        return False
    if fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == identity.start_ticks
