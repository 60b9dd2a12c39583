"""Starting, restarting and stopping the daemon from the CLI's side (SPEC §1).

Owns: auto-start when no daemon answers (one line says so), restart of a daemon of
another build, and waiting for a stop to finish. The daemon tells us it is ready by
writing to a pipe we pass it, so there is no polling on the happy path.
Must not: speak the API beyond ping and shutdown.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from banger.cli.client import Client
from banger.errors import DaemonStartFailed, DaemonUnavailable, PermissionDenied, Timeout
from banger.host import buildinfo
from banger.host.paths import Layout, ensure_private_dir
from banger.model.wire import EXIT_ALREADY_RUNNING

if TYPE_CHECKING:
    import subprocess

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0

Announce = Callable[[str], None]


def ensure_daemon(layout: Layout, *, announce: Announce) -> Client:
    client = Client(layout.socket_path)
    try:
        ping = client.get("/ping")
    except DaemonUnavailable:
        pid = start_daemon(layout)
        announce(f"started the banger daemon (pid {pid}, socket {layout.socket_path})")
        return client
    ours = buildinfo.current()
    if ping.get("build") != ours.as_dict():
        theirs = ping.get("build") or {}
        announce(
            f"restarting the banger daemon: it runs {theirs.get('commit', '?')} "
            f"built {theirs.get('build_time', '?')}, this CLI is {ours.commit} "
            f"built {ours.build_time}"
        )
        stop_daemon(client, int(ping["pid"]))
        start_daemon(layout)
    return client


def start_daemon(layout: Layout, *, timeout_s: float = START_TIMEOUT_S) -> int:
    """Start bangerd detached and wait until it serves; returns its pid."""
    import subprocess  # only here: every other CLI call finds the daemon running

    ensure_private_dir(layout.runtime_dir)
    read_fd, write_fd = os.pipe()
    try:
        with _open_private(layout.start_log_path) as errlog:
            proc = subprocess.Popen(
                [sys.executable, "-m", "banger.daemon", "--ready-fd", str(write_fd)],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=errlog,
                stderr=errlog,
                start_new_session=True,
            )
        os.close(write_fd)
        write_fd = -1
        if _wait_ready(read_fd, timeout_s):
            return proc.pid
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    return _after_failed_start(layout, proc, timeout_s)


def _after_failed_start(layout: Layout, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    import subprocess

    try:
        code = proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        raise Timeout(
            f"the daemon (pid {proc.pid}) did not become ready within {timeout_s:g}s",
            hint=f"`banger daemon logs` shows what it is doing; {layout.start_log_path}",
        ) from None
    if code == EXIT_ALREADY_RUNNING:
        # Another CLI started one at the same moment: use that one.
        return _wait_for_ping(layout, timeout_s)
    raise _start_error(layout.start_log_path, code)


def _start_error(log_path: Path, code: int) -> DaemonStartFailed:
    text = log_path.read_text(errors="replace").strip() if log_path.exists() else ""
    brief, hint, rest = None, None, []
    for line in text.splitlines():
        if line.startswith("error: ") and brief is None:
            brief = line.removeprefix("error: ")
        elif line.startswith("hint: "):
            hint = line.removeprefix("hint: ")
        else:
            rest.append(line)
    return DaemonStartFailed(
        f"the daemon could not start: {brief or f'exit status {code}'}",
        details="\n".join(rest[-20:]) or None,
        hint=hint,
    )


def _wait_ready(fd: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    buf = b""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            return False
        chunk = os.read(fd, 64)
        if not chunk:
            return False
        buf += chunk
        if b"ready" in buf:
            return True
    return False


def _wait_for_ping(layout: Layout, timeout_s: float) -> int:
    client = Client(layout.socket_path, timeout_s=5.0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(DaemonUnavailable):
            return int(client.get("/ping")["pid"])
        time.sleep(0.05)
    raise Timeout(f"no daemon answered on {layout.socket_path} within {timeout_s:g}s")


def stop_daemon(client: Client, pid: int, *, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Ask the daemon to stop and wait until its process is gone."""
    with contextlib.suppress(DaemonUnavailable):
        client.post("/daemon/shutdown")
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise Timeout(
                f"the daemon (pid {pid}) did not stop within {timeout_s:g}s",
                hint=f"`banger daemon logs` shows what it is waiting for; kill {pid} ends it",
            )
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def daemon_ping(layout: Layout) -> dict[str, Any] | None:
    """The running daemon's ping, or None; never starts one (for completion, version)."""
    try:
        ping: dict[str, Any] = Client(layout.socket_path, timeout_s=2.0).get("/ping")
    except DaemonUnavailable:
        return None
    return ping


def _open_private(path: Path) -> Any:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device is not our log
            os.close(fd)
            raise OSError(errno.EINVAL, "it is not a regular file")
    except OSError as exc:
        # A symlink or anything else at banger's own path: named, left alone (issue 14
        # item 21).
        why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise PermissionDenied(
            f"cannot use {path} as the daemon's start log: {why}",
            hint=f"banger did not make this; remove {path} if nothing of yours needs it",
        ) from exc
    return os.fdopen(fd, "wb")
