"""Starting a VMM process so that it outlives the daemon, and stopping it safely.

Owns: the detached spawn (new session, stdin closed, output to a log, minimal env, no
inherited fds but a TAP opened for it: ADVERSARIAL 104), waiting for a control socket to
appear, reaping our own children (and remembering how they ended), and signalling a
process only while it is provably the one we started.
Must not: know which VMM it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from banger.errors import CommandFailed
from banger.host import procinfo
from banger.host.procinfo import ProcessIdentity
from banger.host.runner import Runner

LOG_TAIL_BYTES = 4000
#: How many exit statuses of reaped children are remembered (oldest forgotten first).
ENDED_KEPT = 256

#: Our own VMM children, so exited ones are reaped instead of lingering as zombies.
_children: dict[int, tuple[subprocess.Popen[bytes], ProcessIdentity]] = {}
#: Exit statuses of reaped children (Popen's returncode: negative = killed by a signal).
_ended: dict[ProcessIdentity, int] = {}


def spawn_detached(
    argv: Sequence[str],
    *,
    log_path: Path,
    runner: Runner,
    stdout_path: Path | None = None,
    pass_fds: Sequence[int] = (),
) -> ProcessIdentity:
    """``pass_fds``: the only descriptors the VMM inherits, at the same numbers (a TAP
    opened for it); everything else is closed."""
    # O_APPEND: console_logs cuts these logs in place while we write (ADVERSARIAL 102); an
    # appending writer then goes on at offset 0 instead of behind a hole.
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    out_fd = log_fd
    if stdout_path is not None:
        out_fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=log_fd,
            env=runner.env(),
            close_fds=True,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
        )
    except OSError as exc:
        raise CommandFailed(f"cannot start {argv[0]}: {exc}") from exc
    finally:
        os.close(log_fd)
        if out_fd != log_fd:
            os.close(out_fd)
    identity = procinfo.identify(proc.pid)
    if identity is None:
        raise CommandFailed(f"{argv[0]} exited at once", details=log_tail(log_path))
    _children[proc.pid] = (proc, identity)
    return identity


def reap() -> None:
    """Collect exit statuses of our VMM children that have ended."""
    for pid, (proc, identity) in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]
            _ended[identity] = proc.returncode
            while len(_ended) > ENDED_KEPT:
                del _ended[next(iter(_ended))]


async def exit_status(identity: ProcessIdentity, *, timeout_s: float = 2.0) -> int | None:
    """How a VMM we started ended: its exit code, or minus the signal that killed it.

    None while it runs, and for a VMM this daemon did not start (after a restart we are
    not its parent: ``waitpid`` cannot tell). A killed multi-threaded VMM shows as a
    zombie while its other threads still exit, and cannot be reaped until they have:
    that short moment is waited for."""
    deadline = time.monotonic() + timeout_s
    while True:
        reap()
        pending = identity.pid in _children and _children[identity.pid][1] == identity
        if not pending or procinfo.is_running(identity) or time.monotonic() > deadline:
            return _ended.get(identity)
        await asyncio.sleep(0.01)


async def wait_for_socket(
    path: Path, identity: ProcessIdentity, *, timeout_s: float, log_path: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        reap()
        if not procinfo.is_running(identity):
            raise CommandFailed(
                "the VMM exited while starting",
                details=log_tail(log_path),
                hint=f"full log: {log_path}",
            )
        if time.monotonic() > deadline:
            raise CommandFailed(
                f"the VMM did not create {path} within {timeout_s:g}s", details=log_tail(log_path)
            )
        await asyncio.sleep(0.01)


async def wait_exit(identity: ProcessIdentity, *, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while procinfo.is_running(identity):
        reap()
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    reap()
    return True


def signal_if_ours(identity: ProcessIdentity, sig: int) -> bool:
    """Signal only the process we started; a reused pid is left alone."""
    if not procinfo.is_running(identity):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(identity.pid, sig)
    return True


def log_tail(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
            text = fh.read().decode(errors="replace").strip()
    except OSError:
        return None
    return text or None
