"""Workspace scripts through the guest agent's exec channel, SSH when there is none.

Owns: running a ``banger.workspace`` script (``sh -c SCRIPT``) as a ``vms.exec`` session
with the archive streamed to its stdin (``send``) or its stdout handed to a reader
(``receive``), and falling back to the VM's ssh ``GuestShell`` when the agent does not
answer (an image without banger's agent). Under TCG an ssh session costs the Debian
guest ~0.5 s of handshake; the agent starts the script in ~15 ms.
Must not: decide what is copied (``banger.workspace.plan``, ``send``, ``export``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

from banger.client.exec_session import STDOUT, ExecSession
from banger.errors import AgentUnavailable, Timeout
from banger.host.runner import STDERR_TAIL_CHARS, Result
from banger.model.api_types import exit_status
from banger.workspace import TRANSFER_TIMEOUT_S, GuestShell, ssh_shell

if TYPE_CHECKING:
    from banger.client.facade import BangerClient

log = logging.getLogger("banger.workspace")

T = TypeVar("T")

#: Writes to the guest's stdin are gathered into pieces of this size (a tar writer
#: writes 512-byte headers one by one).
WRITE_BUFFER = 1 << 16

#: How long after its time limit a script whose guest said nothing is hung up on.
WATCHDOG_GRACE_S = 10.0

#: Starts ``sh -c SCRIPT`` in the guest; a test passes a local stand-in.
Start = Callable[[list[str], float], ExecSession]


class _Stdin(io.RawIOBase):
    """The command's stdin as a file: what ``send``'s writer gets (buffered)."""

    def __init__(self, session: ExecSession) -> None:
        self._session = session

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._session.write(bytes(data))
        return len(data)


class _Output:
    """Takes the session's events in a thread of its own (so that output never waits
    behind the stdin being written): stdout to ``sink`` (or dropped), the tail of
    stderr kept."""

    def __init__(
        self,
        session: ExecSession,
        sink: Callable[[bytes], None] | None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self._session = session
        self._sink = sink
        self._on_end = on_end
        self.stderr = bytearray()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, name="banger-shell", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for kind, data in self._session.events():
                if kind == STDOUT:
                    if self._sink is not None:
                        self._sink(data)
                else:
                    self.stderr += data
                    del self.stderr[:-STDERR_TAIL_CHARS]
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller's thread
            self.error = exc
        finally:
            if self._on_end is not None:
                self._on_end()

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error


class AgentShell:
    """The ``banger.workspace`` shell of VM ``name``: its agent, or ssh without one.

    ``agent`` is None until the first script ran, then whether the agent took it.
    """

    def __init__(
        self,
        client: BangerClient,
        name: str,
        *,
        start: Start | None = None,
        ssh: Callable[[], GuestShell] | None = None,
    ) -> None:
        self.name = name
        self._start = start or (
            lambda argv, timeout_s: client.vms.exec_start(name, argv, timeout_s=timeout_s)
        )
        self._make_ssh = ssh or (lambda: ssh_shell(client.vms.ssh_info(name)))
        self._ssh: GuestShell | None = None
        self.agent: bool | None = None

    def send(
        self,
        script: str,
        write: Callable[[IO[bytes]], None],
        *,
        timeout_s: float = TRANSFER_TIMEOUT_S,
    ) -> Result:
        """Run ``script`` with whatever ``write`` produces streamed to its stdin; a guest
        that stops reading early (it refused) ends the writing quietly, as with ssh."""
        with self._session(script, timeout_s) as session:
            if session is None:
                return self._ssh_shell().send(script, write, timeout_s=timeout_s)
            output = _Output(session, None)
            stdin = io.BufferedWriter(cast(Any, _Stdin(session)), WRITE_BUFFER)
            write(stdin)
            stdin.flush()
            session.close_stdin()
            output.join()
            return self._result(script, session, output)

    def receive(
        self,
        script: str,
        read: Callable[[IO[bytes]], T],
        *,
        timeout_s: float = TRANSFER_TIMEOUT_S,
    ) -> tuple[T, Result]:
        """Run ``script`` and hand its stdout stream to ``read``; returns both results."""
        with self._session(script, timeout_s) as session:
            if session is None:
                return self._ssh_shell().receive(script, read, timeout_s=timeout_s)
            session.close_stdin()
            r, w = os.pipe()
            with os.fdopen(r, "rb") as stream:
                # The pump closes the write end when the output ends: ``read`` sees EOF.
                output = _Output(session, lambda data: _write_all(w, data), lambda: os.close(w))
                value = read(stream)
                while stream.read(1 << 16):  # what read() left: the guest finishes writing
                    pass
            output.join()
            return value, self._result(script, session, output)

    @contextlib.contextmanager
    def _session(self, script: str, timeout_s: float) -> Iterator[ExecSession | None]:
        if self.agent is False:
            yield None
            return
        try:
            session = self._start(["sh", "-c", script], timeout_s)
        except AgentUnavailable:
            log.info("no agent: workspace over ssh", extra={"fields": {"vm": self.name}})
            if self.agent:  # it answered before: this is a failure, not an agentless image
                raise
            self.agent = False
            yield None
            return
        self.agent = True
        # The guest ends the script at timeout_s; a guest that cannot even say so (wedged)
        # is hung up on a little later, which kills the script.
        watchdog = threading.Timer(timeout_s + WATCHDOG_GRACE_S, session.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            with session:
                yield session
        finally:
            watchdog.cancel()

    def _ssh_shell(self) -> GuestShell:
        if self._ssh is None:
            self._ssh = self._make_ssh()
        return self._ssh

    def _result(self, script: str, session: ExecSession, output: _Output) -> Result:
        ended = session.wait()
        if ended.timed_out:
            raise Timeout(f"the guest did not finish within the time limit ({self.name})")
        argv = ("banger", "vm", "exec", self.name, "--", "sh", "-c", script)
        return Result(argv, exit_status(ended, unknown=1), b"", bytes(output.stderr))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BrokenPipeError:
            return  # the reader is gone: the rest is dropped
