"""Starting, restarting and stopping the daemon from a client's side (SPEC §1).

Owns: auto-start when no daemon answers (one line says so), restart of a daemon of
another build, and waiting for a stop to finish. The daemon answers on a pipe we pass
it: ``ready`` once it serves, or the JSON error body (``banger.model.wire.error_body``)
when it cannot start, which is rebuilt into the typed error; there is no polling on
the happy path and no parsing of text meant for people.
Must not: speak the API beyond ping and shutdown; print (``announce`` does, if given).
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

from banger.client.facade import BangerClient
from banger.client.http import Client
from banger.errors import (
    BangerError,
    DaemonStartFailed,
    DaemonUnavailable,
    PermissionDenied,
    Timeout,
    error_from_payload,
)
from banger.host import buildinfo
from banger.host.paths import Layout, ensure_private_dir
from banger.model.api_types import Ping, from_json
from banger.model.wire import EXIT_ALREADY_RUNNING, READY_LINE

if TYPE_CHECKING:
    import subprocess

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
#: Largest message the daemon writes on the ready pipe (an error body).
MAX_READY_BYTES = 64 << 10

Announce = Callable[[str], None]


def ensure_daemon(layout: Layout, *, announce: Announce) -> BangerClient:
    """A client of a running daemon of this build: started, or restarted, if need be."""
    client = Client(layout.socket_path)
    try:
        # Raw on purpose: a daemon of another build may answer a ping of another shape,
        # and it must still be recognised and restarted.
        ping = client.get("/ping")
    except DaemonUnavailable:
        pid = start_daemon(layout)
        announce(f"started the banger daemon (pid {pid}, socket {layout.socket_path})")
        return BangerClient(client)
    if not isinstance(ping, dict):
        ping = {}
    ours = buildinfo.current()
    if ping.get("build") != ours.as_dict():
        theirs = ping.get("build") or {}
        announce(
            f"restarting the banger daemon: it runs {theirs.get('commit', '?')} "
            f"built {theirs.get('build_time', '?')}, this CLI is {ours.commit} "
            f"built {ours.build_time}"
        )
        stop_daemon(client, int(ping.get("pid", 0)))
        start_daemon(layout)
    return BangerClient(client)


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
        message = read_ready_pipe(read_fd, timeout_s)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    if message == READY_LINE:
        return proc.pid
    return _after_failed_start(layout, proc, timeout_s, message)


def _after_failed_start(
    layout: Layout, proc: subprocess.Popen[bytes], timeout_s: float, message: bytes | None
) -> int:
    import subprocess

    # A daemon that said why it failed is on its way out (tearing down can take a
    # while on a busy host); one that said nothing has had its time already.
    try:
        code = proc.wait(timeout=timeout_s if message else 1.0)
    except subprocess.TimeoutExpired:
        raise Timeout(
            f"the daemon (pid {proc.pid}) did not become ready within {timeout_s:g}s",
            hint=f"`banger daemon logs` shows what it is doing; {layout.start_log_path}",
        ) from None
    if code == EXIT_ALREADY_RUNNING:
        # Another CLI started one at the same moment: use that one.
        return _wait_for_ping(layout, timeout_s)
    raise start_error(message, code, layout.start_log_path)


def start_error(message: bytes | None, code: int, log_path: Path) -> DaemonStartFailed:
    """The daemon's own error from the ready pipe, as a DaemonStartFailed; without one
    (it died before it could say, e.g. an import failed) its exit status and the end of
    its start log."""
    err: BangerError | None = None
    if message:
        import json

        try:
            err = error_from_payload(json.loads(message), status=500)
        except (UnicodeDecodeError, json.JSONDecodeError):
            err = None
    if err is not None:
        return DaemonStartFailed(
            f"the daemon could not start: {err.brief}", details=err.details, hint=err.hint
        )
    text = log_path.read_text(errors="replace").strip() if log_path.exists() else ""
    return DaemonStartFailed(
        f"the daemon could not start: exit status {code}",
        details="\n".join(text.splitlines()[-20:]) or None,
        hint=f"the whole start log: {log_path}",
    )


def read_ready_pipe(fd: int, timeout_s: float) -> bytes | None:
    """The daemon's one line on the ready pipe (without its newline); None when it
    closed the pipe without one or said nothing within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    buf = b""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buf += chunk
        line, newline, _ = buf.partition(b"\n")
        if newline:
            return line
        if len(buf) > MAX_READY_BYTES:
            return None
    return None


def _wait_for_ping(layout: Layout, timeout_s: float) -> int:
    client = Client(layout.socket_path, timeout_s=5.0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(DaemonUnavailable):
            return BangerClient(client).daemon.ping().pid
        time.sleep(0.05)
    raise Timeout(
        f"no daemon answered on {layout.socket_path} within {timeout_s:g}s",
        hint="`banger daemon logs` shows how far its start-up got",
    )


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


def daemon_ping(layout: Layout) -> Ping | None:
    """The running daemon's ping, or None; never starts one (for completion, version)."""
    try:
        return from_json(Ping, Client(layout.socket_path, timeout_s=2.0).get("/ping"))
    except DaemonUnavailable:
        return None


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
