"""The one seam for running host commands (DESIGN.md rule 2).

Owns: spawning a subprocess with a fixed, minimal environment, a timeout, the exit codes
the caller accepts, a ``+ argv`` debug log line, and turning any failure into one
``CommandFailed`` that carries the stderr tail. Also how long a child lives
(docs/explanation/subprocesses.md):

- Each child leads a new session. On a timeout, a cancellation or any exception the
  whole session is stopped (SIGTERM, ``TERM_GRACE_S``, SIGKILL), not just the child: a
  ``sh -c`` pipeline, mmdebstrap's apt and dpkg, fakeroot's worker. A session, not only
  a group: with no controlling terminal a child can neither be stopped by SIGTTIN nor
  prompt on ``/dev/tty`` (every command here is non-interactive; the CLI's interactive
  ``ssh`` does not use the Runner).
- With ``die_with_parent`` (the default) the child gets ``PR_SET_PDEATHSIG(SIGKILL)``
  and dies with a SIGKILLed daemon (ADVERSARIAL 94). The kernel fires it when the
  *thread* that forked the child exits (prctl(2)): ``run`` forks in the calling thread
  (often an ``asyncio.to_thread`` worker) and never returns before the child is gone;
  ``run_async`` forks in the event loop's thread and awaits the child or stops it. So
  the forking thread always outlives the child. A daemon that dies between the fork and
  the prctl is caught by the child checking its parent pid (``die_with_parent``).

Neither reaches a grandchild that starts its own session (faked) or outlives its parent
(PDEATHSIG is cleared on fork): a helper that forks such things stops them itself
(``banger.oci.flatten_worker``).
Must not: use a shell (every command is an argv list), or start anything that has to
outlive the daemon (VMMs: ``banger.vmm.spawn`` starts them, without PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from banger.errors import CommandFailed, Timeout
from banger.host import procinfo

log = logging.getLogger("banger.host.runner")

STDERR_TAIL_CHARS = 2000
DEFAULT_TIMEOUT_S = 120.0
#: How long a stopped command's session gets between SIGTERM and SIGKILL.
TERM_GRACE_S = 2.0
_POLL_S = 0.02
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: Only these variables reach child processes, so a command behaves the same whatever
#: the daemon's own environment holds (and no secrets leak into VMM processes).
PASSED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "USER",
    "LOGNAME",
    "TMPDIR",
    # A host behind a proxy reaches its distribution archive through it (the
    # default image build runs apt and mmdebstrap).
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)
#: A child started by ``Runner.streaming``.
Process = subprocess.Popen[bytes]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where Debian keeps tools banger runs as a normal user too (mkfs.ext4, debugfs, depmod,
#: nft): a normal user's login PATH lacks them, root's has them.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def search_path(path: str | None = None) -> str:
    """``path`` (default: this process's ``PATH``, else ``DEFAULT_PATH``) with the sbin
    directories it lacks appended: a user's own choices still come first."""
    if path is None:
        path = os.environ.get("PATH") or DEFAULT_PATH
    parts = [p for p in path.split(os.pathsep) if p]
    return os.pathsep.join([*parts, *(d for d in SBIN_DIRS if d not in parts)])


def find_tool(name: str) -> str | None:
    """Where the host tool ``name`` is, searched as ``Runner`` children find it."""
    return shutil.which(name, path=search_path())


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


@dataclass
class Runner:
    """Runs commands; construct one per daemon and pass it to whatever needs it."""

    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: Children get PR_SET_PDEATHSIG(SIGKILL) and die with this process (module docstring).
    die_with_parent: bool = field(default=True, kw_only=True)

    def env(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env["PATH"] = search_path(env.get("PATH"))
        env["LC_ALL"] = "C"
        env.update(self.extra_env)
        if overrides:
            env.update(overrides)
        return env

    def run(
        self,
        argv: Sequence[str | Path],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ok_codes: Sequence[int] = (0,),
        input_bytes: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result:
        args = tuple(str(a) for a in argv)
        log.debug("+ %s", shlex.join(args), extra={"fields": {"argv": list(args)}})
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env(env),
                cwd=cwd,
                start_new_session=True,
                # Safe with threads as written: no import, no lock (see _child_setup).
                preexec_fn=self._child_setup(),  # noqa: PLW1509
            )
        except FileNotFoundError as exc:
            raise _not_installed(args) from exc
        with proc:
            try:
                out, err = proc.communicate(input_bytes, timeout=timeout_s)
            except subprocess.TimeoutExpired as exc:
                stop_session(proc)
                raise _timeout(args, timeout_s) from exc
            except BaseException:  # KeyboardInterrupt in the CLI, say: nothing may linger
                stop_session(proc)
                raise
        result = Result(args, proc.returncode, out, err)
        if proc.returncode not in ok_codes:
            raise command_failed(result)
        return result

    async def run_async(
        self,
        argv: Sequence[str | Path],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ok_codes: Sequence[int] = (0,),
        input_bytes: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        args = tuple(str(a) for a in argv)
        log.debug("+ %s", shlex.join(args), extra={"fields": {"argv": list(args)}})
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                env=self.env(env),
                stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=self._child_setup(),
            )
        except FileNotFoundError as exc:
            raise _not_installed(args) from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(input_bytes), timeout_s)
        except TimeoutError as exc:
            await stop_session_async(proc)
            raise _timeout(args, timeout_s) from exc
        except BaseException:  # cancelled
            await stop_session_async(proc)
            raise
        result = Result(args, proc.returncode or 0, out, err)
        if result.returncode not in ok_codes:
            raise command_failed(result)
        return result

    @contextlib.contextmanager
    def streaming(
        self, argv: Sequence[str], *, feed: bool, stderr: IO[bytes], shown: str | None = None
    ) -> Iterator[Process]:
        """Start ``argv`` for the caller to stream: its stdin a pipe the caller writes
        (``feed``), else its stdout a pipe the caller reads; the other end is /dev/null and
        stderr goes to ``stderr`` (a file: a chatty child must not block on a full pipe).

        Used for a workspace archive over ssh from the CLI: the child stays in the
        caller's session (Ctrl-C reaches it) and is killed if still running on exit.
        ``shown`` replaces the argv in the log line (a long script as the last word).
        """
        log.debug("+ %s", shown if shown is not None else shlex.join(argv))
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if feed else subprocess.PIPE,
                stderr=stderr,
                env=self.env(),
            )
        except FileNotFoundError as exc:
            raise _not_installed(tuple(argv)) from exc
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _child_setup(self) -> Callable[[], None] | None:
        if not self.die_with_parent:
            return None
        # Resolved here, before the fork: the child of a threaded process must not load
        # libraries or import modules (their locks may be held by a thread it lacks).
        prctl, parent = _prctl(), os.getpid()
        return functools.partial(_die_with, prctl, parent, signal.SIGKILL)


def wait_for_exit(proc: Process, timeout_s: float) -> int | None:
    """The exit status of a ``streaming`` child, or None if it is still running after
    ``timeout_s``."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def die_with_parent(parent_pid: int, *, sig: int = signal.SIGKILL) -> None:
    """In a child: have the kernel send ``sig`` when the parent's forking thread exits.

    ``parent_pid`` is the parent this process expects. If it is no longer the parent, it
    died before the request took effect (ADVERSARIAL 94: the daemon dying right after the
    fork) and ``sig`` is sent now instead.
    """
    _die_with(_prctl(), parent_pid, sig)


def _die_with(prctl: Callable[..., int], parent_pid: int, sig: int) -> None:
    if prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


@functools.cache
def _prctl() -> Callable[..., int]:
    import ctypes  # only when a child is started: the CLI's start-up stays lean

    fn = ctypes.CDLL(None).prctl
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


def stop_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the session ``proc`` leads, wait up to ``TERM_GRACE_S``, SIGKILL the rest.

    ``proc`` stays unreaped until the end, so its pid (the group id) cannot be reused
    meanwhile and the signals cannot reach a stranger.
    """
    group = proc.pid  # a session leader's pid is its process group id
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    try:
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
    finally:
        if _group_alive(group):
            _signal_group(group, signal.SIGKILL)
        proc.wait()


async def stop_session_async(proc: asyncio.subprocess.Process) -> None:
    """``stop_session`` for an asyncio child.

    asyncio's child watcher reaps the leader as soon as it exits, so the group id is
    pinned only by members still alive; once none is, a signal gets ESRCH. (Another
    process would have to take that very pid as its group id within the grace period for
    a late SIGKILL to go astray: pids are handed out cyclically.)
    """
    group = proc.pid
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    try:
        while _group_alive(group) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
    finally:
        if _group_alive(group):
            _signal_group(group, signal.SIGKILL)
    await proc.wait()


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member we may not signal (a setuid program) is still there
    return procinfo.group_alive(group)  # killpg counts zombies; they are gone for us


def _not_installed(args: tuple[str, ...]) -> CommandFailed:
    return CommandFailed(
        f"{args[0]} is not installed", hint="`banger doctor` lists the host tools needed"
    )


def _timeout(args: tuple[str, ...], timeout_s: float) -> Timeout:
    return Timeout(f"{shlex.join(args[:3])} … did not finish within {timeout_s:g}s")


def command_failed(result: Result) -> CommandFailed:
    tail = result.stderr.decode(errors="replace").strip()[-STDERR_TAIL_CHARS:]
    return CommandFailed(
        f"{shlex.join(result.argv[:4])}{' …' if len(result.argv) > 4 else ''} "
        f"failed with exit status {result.returncode}",
        details=tail or None,
    )
