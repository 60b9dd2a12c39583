"""Workspaces: a host git repo copied into a guest, its changes exported back, and
``[[file_sync]]`` (SPEC §7).

Owns: the one seam through which this package reaches a guest, ``GuestShell`` — a shell
script run in the guest over banger's SSH (or, in tests, run locally), with an archive on
its stdin or read from its stdout — the ssh ``GuestShell`` of a running VM (``ssh_shell``,
from the daemon's ssh info) and the check of a guest path given by the user.
Modules: ``plan`` (what a copy takes), ``send`` (the copy into the guest), ``gitrepo``
(host-side git queries), ``archive`` (the tar stream and the safe host-side reads behind
it), ``export`` (guest changes back as a patch), ``filesync``.

Must not: trust the guest. Nothing the guest prints is used as a host path, and every
byte read from it is bounded (SPEC §8).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Protocol, TypeVar

from banger.errors import CommandFailed, InvalidArgument, InvalidState, Timeout
from banger.guest.ssh_argv import ssh_prefix
from banger.host.runner import STDERR_TAIL_CHARS, Process, Result, Runner, wait_for_exit
from banger.model.api_types import SshInfo
from banger.model.records import not_running

log = logging.getLogger("banger.workspace")

T = TypeVar("T")

#: Exit status the guest scripts of this package use for "the guest path is in the way".
EXIT_EXISTS = 17
#: Exit status for "git is not installed in the guest".
EXIT_NO_GIT = 18
#: Long enough for a large repository over a slow (TCG) guest; a hung ssh still ends.
TRANSFER_TIMEOUT_S = 3600.0


class Shell(Protocol):
    """How workspace scripts reach a guest: ``GuestShell`` (ssh), or the guest agent's
    exec channel (``banger.client.agent_shell.AgentShell``, ssh when there is none)."""

    def send(
        self, script: str, write: Callable[[IO[bytes]], None], *, timeout_s: float = ...
    ) -> Result: ...

    def receive(
        self, script: str, read: Callable[[IO[bytes]], T], *, timeout_s: float = ...
    ) -> tuple[T, Result]: ...


@dataclass(frozen=True)
class GuestShell:
    """Runs ``sh -c SCRIPT`` in a guest.

    ``prefix`` is the ssh command line up to and including the guest address (banger's
    key, the VM's known_hosts, ``-T``); ``remote=False`` runs the script on this host
    instead, with ``prefix`` as an optional wrapper (``env PATH=…``), which is how the
    unit tests run the very same scripts against a temp dir with busybox.
    """

    prefix: tuple[str, ...]
    remote: bool = True
    runner: Runner = field(default_factory=Runner)

    def argv(self, script: str) -> list[str]:
        if self.remote:
            # ssh joins its arguments into one string for the guest's login shell.
            return [*self.prefix, "--", shlex.join(["sh", "-c", script])]
        return [*self.prefix, "sh", "-c", script]

    def run(
        self,
        script: str,
        *,
        input_bytes: bytes | None = None,
        ok_codes: tuple[int, ...] = (0,),
        timeout_s: float = 120.0,
    ) -> Result:
        """Run a short script; stdout and stderr are captured whole (keep them small)."""
        return self.runner.run(
            self.argv(script), input_bytes=input_bytes, ok_codes=ok_codes, timeout_s=timeout_s
        )

    def send(
        self,
        script: str,
        write: Callable[[IO[bytes]], None],
        *,
        timeout_s: float = TRANSFER_TIMEOUT_S,
    ) -> Result:
        """Run ``script`` with whatever ``write`` produces streamed to its stdin.

        The guest may stop reading early (it refused, or its disk is full); the broken
        pipe is then ignored and the exit status and stderr tell why.
        """
        with _spawn(self, script, stdin=True) as (proc, err):
            assert proc.stdin is not None
            watchdog = threading.Timer(timeout_s, proc.kill)
            watchdog.start()
            try:
                write(proc.stdin)
                proc.stdin.close()
            except BrokenPipeError:
                log.debug("the guest stopped reading the archive early")
            finally:
                watchdog.cancel()
            return _finish(proc, err, timeout_s)

    def receive(
        self,
        script: str,
        read: Callable[[IO[bytes]], T],
        *,
        timeout_s: float = TRANSFER_TIMEOUT_S,
    ) -> tuple[T, Result]:
        """Run ``script`` and hand its stdout stream to ``read``; returns both results."""
        with _spawn(self, script, stdin=False) as (proc, err):
            assert proc.stdout is not None
            watchdog = threading.Timer(timeout_s, proc.kill)
            watchdog.start()
            try:
                value = read(proc.stdout)
                # Let the guest finish writing what read() left, without keeping it.
                while proc.stdout.read(1 << 16):
                    pass
            finally:
                watchdog.cancel()
            return value, _finish(proc, err, timeout_s)


def ssh_shell(info: SshInfo) -> GuestShell:
    """banger's ssh to a running VM, non-interactive (no tty: archives are binary): the
    shell the CLI, the SDK and the MCP server copy workspaces and export patches through."""
    host = info.host or info.ip  # a rootless VM: 127.0.0.1 and a forwarded port
    if info.state != "running" or not host:
        brief, hint = not_running(info.name, info.state)
        raise InvalidState(brief, hint=hint)
    prefix = ssh_prefix(
        info.key,
        info.known_hosts,
        user=info.user,
        batch=True,
        port=info.port,
        host_key_alias=info.host_key_alias,
    )
    return GuestShell((*prefix, "-T", host))


@contextlib.contextmanager
def _spawn(shell: GuestShell, script: str, *, stdin: bool) -> Iterator[tuple[Process, IO[bytes]]]:
    argv = shell.argv(script)
    with (
        tempfile.TemporaryFile() as err,
        shell.runner.streaming(
            argv, feed=stdin, stderr=err, shown=shlex.join(argv[:-1]) + " …"
        ) as proc,
    ):
        yield proc, err


def _finish(proc: Process, err: IO[bytes], timeout_s: float) -> Result:
    code = wait_for_exit(proc, timeout_s)
    if code is None:
        raise Timeout(f"the guest did not finish within {timeout_s:g}s")
    err.seek(0)
    tail = err.read()[-STDERR_TAIL_CHARS:]
    argv = proc.args if isinstance(proc.args, list) else [proc.args]
    return Result(tuple(str(a) for a in argv), code, b"", tail)


def guest_failure(what: str, result: Result) -> CommandFailed:
    """One error for a guest step that failed: ssh's own failure (255) is named as such."""
    tail = result.stderr.decode(errors="replace").strip() or None
    if result.returncode == 255:
        return CommandFailed(
            f"{what}: could not reach the guest over SSH",
            details=tail,
            hint="`banger vm show VM` shows its state; `banger vm ssh VM` tests the connection",
        )
    return CommandFailed(
        f"{what} failed in the guest (exit status {result.returncode})", details=tail
    )


def check_guest_path(text: str) -> str:
    """A guest directory the user named: absolute, normalized, at least two components.

    It is only ever interpreted by the guest's own shell (quoted); the rules keep a typo
    from replacing something like ``/root`` or ``/usr`` wholesale.
    """
    path = PurePosixPath(text)
    parts = text.split("/")
    if not text.startswith("/") or any(p in (".", "..") for p in parts):
        raise InvalidArgument(
            f"guest path {text!r} must be absolute and must not contain . or .. components"
        )
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise InvalidArgument(f"guest path {text!r} contains control characters")
    if len(path.parts) < 3 or text.endswith("/"):
        raise InvalidArgument(
            f"guest path {text!r} must name a directory below a top-level one, like /root/repo"
        )
    return str(path)
