"""The one seam for running host commands (DESIGN.md rule 2).

Owns: spawning a subprocess with a fixed, minimal environment, a timeout, the exit codes
the caller accepts, a ``+ argv`` debug log line, and turning any failure into one
``CommandFailed`` that carries the stderr tail. Must not: use a shell; every command is
an argv list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from banger.errors import CommandFailed, Timeout

log = logging.getLogger("banger.runner")

STDERR_TAIL_CHARS = 2000
DEFAULT_TIMEOUT_S = 120.0
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
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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

    def env(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.setdefault("PATH", DEFAULT_PATH)
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
            proc = subprocess.run(
                args,
                input=input_bytes,
                capture_output=True,
                timeout=timeout_s,
                env=self.env(env),
                cwd=cwd,
                check=False,
                stdin=None if input_bytes is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            raise CommandFailed(
                f"{args[0]} is not installed", hint="`banger doctor` lists the host tools needed"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise Timeout(f"{shlex.join(args[:3])} … did not finish within {timeout_s:g}s") from exc
        result = Result(args, proc.returncode, proc.stdout, proc.stderr)
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
            )
        except FileNotFoundError as exc:
            raise CommandFailed(
                f"{args[0]} is not installed", hint="`banger doctor` lists the host tools needed"
            ) from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(input_bytes), timeout_s)
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise Timeout(f"{shlex.join(args[:3])} … did not finish within {timeout_s:g}s") from exc
        result = Result(args, proc.returncode or 0, out, err)
        if result.returncode not in ok_codes:
            raise command_failed(result)
        return result


def command_failed(result: Result) -> CommandFailed:
    tail = result.stderr.decode(errors="replace").strip()[-STDERR_TAIL_CHARS:]
    return CommandFailed(
        f"{shlex.join(result.argv[:4])}{' …' if len(result.argv) > 4 else ''} "
        f"failed with exit status {result.returncode}",
        details=tail or None,
    )
