"""Commands in a sandbox: what ``run`` returns, the argv a command becomes, and the
handle of a command left running in the background (``start``).

Owns: ``CommandResult`` (exit status and output, ``check()`` raising), the rule that a
string is a ``sh -c`` command line and a sequence an exact argv, the exit status a signal
or a timeout is reported as (128+N and 124, as the CLI's ``vm exec`` exits), and
``CommandHandle``: a thread drains the exec session's output into buffers (and the
caller's callbacks) so that a guest command never stalls on an unread pipe.
Must not: talk HTTP (``banger.client`` does), print, or hold a sandbox's lifetime.
"""

from __future__ import annotations

import signal as signals
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from banger.errors import CommandExitError, InvalidArgument, Timeout
from banger.model import api_types
from banger.model.api_types import EXIT_TIMED_OUT  # noqa: F401 - the SDK says `exit_code` 124 by it

if TYPE_CHECKING:
    from banger.client.exec_session import ExecSession
    from banger.model.api_types import ExecResult

#: How much of stderr the error of ``check()`` carries.
CHECK_DETAIL_CHARS = 2000

OutputCallback = Callable[[bytes], None]
Command = str | Sequence[str]


@dataclass(frozen=True)
class CommandResult:
    """How a command ended and what it printed (decoded as UTF-8, bad bytes replaced;
    the exact bytes are ``stdout_bytes``/``stderr_bytes``). ``run`` never raises for a
    command's own failure: ``check()`` does."""

    exit_code: int
    stdout: str
    stderr: str
    signal: int | None = None
    timed_out: bool = False
    stdout_bytes: bytes = field(default=b"", repr=False)
    stderr_bytes: bytes = field(default=b"", repr=False)
    #: Bytes left out of the middle of each stream by ``max_output_bytes`` (0: none).
    stdout_cut: int = 0
    stderr_cut: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self) -> CommandResult:
        """``self`` if the command exited 0; otherwise a ``CommandExitError``."""
        if self.ok:
            return self
        if self.timed_out:
            brief = "the command timed out"
        elif self.signal is not None:
            brief = f"the command was killed by signal {self.signal}"
        else:
            brief = f"the command exited with status {self.exit_code}"
        raise CommandExitError(brief, details=self.stderr[-CHECK_DETAIL_CHARS:] or None)


def to_argv(cmd: Command) -> list[str]:
    """A string runs through ``sh -c`` (pipes, ``&&``, globs); a sequence is the argv."""
    if isinstance(cmd, str):
        if not cmd.strip():
            raise InvalidArgument("the command is empty")
        return ["sh", "-c", cmd]
    argv = list(cmd)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidArgument("a command given as a list must hold at least one string")
    return argv


def exit_status(result: ExecResult) -> int:
    """The one number a caller checks: the exit code, 128+N for signal N, 124 timed out."""
    return api_types.exit_status(result, unknown=128 + signals.SIGKILL)


def command_result(result: ExecResult, out: Collector, err: Collector) -> CommandResult:
    return CommandResult(
        exit_code=exit_status(result),
        stdout=out.text(),
        stderr=err.text(),
        signal=result.signal,
        timed_out=result.timed_out,
        stdout_bytes=out.value(),
        stderr_bytes=err.value(),
        stdout_cut=out.cut,
        stderr_cut=err.cut,
    )


class Collector:
    """One output stream, handed to the caller's callback as it comes and kept: whole,
    or with ``limit`` its first and last ``limit/2`` bytes (the start of a build log and
    the error at its end), counting what was left out in ``cut``."""

    def __init__(self, callback: OutputCallback | None, limit: int | None = None) -> None:
        self._callback = callback
        self._limit = limit
        self._head = bytearray()
        self._tail = bytearray()
        self.cut = 0
        self._lock = threading.Lock()

    def __call__(self, chunk: bytes) -> None:
        with self._lock:
            self._keep(chunk)
        if self._callback is not None:
            self._callback(chunk)

    def _keep(self, chunk: bytes) -> None:
        if self._limit is None:
            self._head += chunk
            return
        half = self._limit // 2
        room = max(0, half - len(self._head))
        self._head += chunk[:room]
        self._tail += chunk[room:]
        if len(self._tail) > self._limit - half:
            extra = len(self._tail) - (self._limit - half)
            del self._tail[:extra]
            self.cut += extra

    def value(self) -> bytes:
        """What was kept (both ends joined, without a marker)."""
        with self._lock:
            return bytes(self._head + self._tail)

    def text(self) -> str:
        """What was kept as text, with a line saying how much was left out, if any."""
        with self._lock:
            if not self.cut:
                return bytes(self._head + self._tail).decode(errors="replace")
            head = bytes(self._head).decode(errors="replace")
            tail = bytes(self._tail).decode(errors="replace")
        return f"{head}\n[... {self.cut} bytes of output cut ...]\n{tail}"


class CommandHandle:
    """A command running in the background (``Sandbox.start``): read what it printed so
    far, feed its stdin, signal it, ``wait()`` for its ``CommandResult``. A context
    manager: leaving it kills the command if it still runs."""

    def __init__(
        self,
        session: ExecSession,
        *,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        max_output_bytes: int | None = None,
    ) -> None:
        self._session = session
        self._out = Collector(on_stdout, max_output_bytes)
        self._err = Collector(on_stderr, max_output_bytes)
        self._error: BaseException | None = None
        self._result: CommandResult | None = None
        self._pump = threading.Thread(target=self._drain, name="banger-sdk-output", daemon=True)
        self._pump.start()

    def _drain(self) -> None:
        try:
            for stream, chunk in self._session.events():
                (self._out if stream == "stdout" else self._err)(chunk)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
            self._error = exc

    @property
    def stdout(self) -> str:
        """Everything the command wrote to stdout so far."""
        return self._out.text()

    @property
    def stderr(self) -> str:
        return self._err.text()

    @property
    def running(self) -> bool:
        return self._pump.is_alive()

    def write(self, data: bytes | str) -> None:
        self._session.write(data.encode() if isinstance(data, str) else data)

    def close_stdin(self) -> None:
        self._session.close_stdin()

    def signal(self, signum: int) -> None:
        self._session.signal(int(signum))

    def kill(self) -> None:
        """SIGKILL to the command (its process group in the guest)."""
        self._session.signal(signals.SIGKILL)

    def wait(self, timeout: float | None = None) -> CommandResult:
        """Its result once it has ended; ``Timeout`` if it still runs after ``timeout`` s."""
        if self._result is not None:
            return self._result
        self._pump.join(timeout)
        if self._pump.is_alive():
            raise Timeout(f"the command still runs after {timeout:g}s")
        if self._error is not None:
            raise self._error
        self._result = command_result(self._session.wait(), self._out, self._err)
        return self._result

    def close(self) -> None:
        """End the exec session; a command still running is killed."""
        self._session.close()

    def __enter__(self) -> CommandHandle:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
