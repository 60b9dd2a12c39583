"""What `vm run` and `vm create` do when they are interrupted: Ctrl-C, the terminal going
away (SIGHUP) or SIGTERM, while the VM is being created or used (issue 14 item 6).

Owns: turning SIGHUP and SIGTERM into the same ``KeyboardInterrupt`` as Ctrl-C while a
VM is made or used, following a create so that an interruption says what became of the
VM, and waiting (bounded) for a ``--rm`` VM to be gone. With ``--rm`` the create asked
the daemon for ``delete_on_disconnect``, so closing the stream is what deletes it, even
mid-boot and even if this process dies; without it the daemon finishes the create, and
the message names the VM, its state and how to delete it. A second interrupt while
waiting says what may be left and ends.
Must not: decide what happens to a VM (the daemon does, docs/explanation/interruption.md).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

import click

from banger.cli.output import follow_stream
from banger.errors import BangerError, NotFound
from banger.model.api_types import CreateVmRequest, StageEvent, VmInfo

if TYPE_CHECKING:
    from banger.client.facade import BangerClient, Progress

#: How long an interrupted ``--rm`` waits for the daemon to have deleted the VM.
GONE_WAIT_S = 60.0
_POLL_S = 0.25


#: The exit status of an interrupted command (128 + SIGINT), as ``banger.cli.main`` uses.
INTERRUPTED = 130


class Reported(click.exceptions.Exit):
    """An interruption whose consequences were already said: the command ends with
    status 130 and nothing more is printed (click would add its own lines)."""

    def __init__(self) -> None:
        super().__init__(INTERRUPTED)


def say(line: str) -> None:
    """A line on stderr, unless the terminal is gone (then there is no one to tell)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"banger: {line}\n")
        sys.stderr.flush()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def hangup_is_interrupt() -> Iterator[None]:
    """SIGHUP and SIGTERM end what runs inside like Ctrl-C does, so cleanup runs (their
    default would end the process on the spot)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGHUP, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Watched:
    """A create's stream that remembers the VM's name from its ``reserve`` stage."""

    def __init__(self, progress: Progress[VmInfo], name: str | None) -> None:
        self.progress = progress
        self.name = name

    def __iter__(self) -> Iterator[StageEvent]:
        for event in self.progress:
            if event.stage == "reserve" and event.state == "ok" and event.detail:
                # The reserve stage's detail is "NAME: IP on TAP".
                self.name = event.detail.split(":", 1)[0]
            yield event

    @property
    def result(self) -> VmInfo:
        return self.progress.result


def follow_create(client: BangerClient, request: CreateVmRequest, *, as_json: bool) -> VmInfo:
    """Follow a create's stream; interrupted, say what becomes of the VM and raise
    ``Reported``."""
    watched = _Watched(client.vms.create(request), request.name)
    try:
        return follow_stream(watched, as_json=as_json)
    except KeyboardInterrupt:
        watched.progress.close()
        if request.delete_on_disconnect is True:
            _removed_by_daemon(client, watched.name)
        else:
            _kept(client, watched.name)
        raise Reported from None


def _kept(client: BangerClient, name: str | None) -> None:
    if name is None:
        say(
            "interrupted: the daemon goes on creating the VM; `banger vm list` shows it, "
            "`banger vm delete --force NAME` removes it"
        )
        return
    state = _state(client, name) or "being created"
    say(
        f"interrupted: VM {name} is kept ({state}; the daemon finishes creating it); "
        f"`banger vm delete --force {name}` removes it"
    )


def _removed_by_daemon(client: BangerClient, name: str | None) -> None:
    if name is None:
        say("interrupted before a VM was reserved: the daemon stops there and keeps none")
        return
    say(f"interrupted: deleting VM {name} (the daemon stops creating it)…")
    wait_gone(client, name)


def remove_vm(client: BangerClient, name: str) -> None:
    """``--rm`` after the create: delete the VM; a second interrupt says what is left."""
    try:
        client.vms.delete(name, force=True)
    except KeyboardInterrupt:
        _left(client, name)
        raise Reported from None
    say(f"deleted {name}")


def wait_gone(client: BangerClient, name: str) -> None:
    deadline = time.monotonic() + GONE_WAIT_S
    try:
        while time.monotonic() < deadline:
            if _state(client, name) is None:
                say(f"deleted {name}")
                return
            time.sleep(_POLL_S)
    except KeyboardInterrupt:
        _left(client, name)
        return
    say(
        f"VM {name} still exists after {GONE_WAIT_S:g}s ({_state(client, name)}); "
        f"`banger vm delete --force {name}` removes it"
    )


def _left(client: BangerClient, name: str) -> None:
    state = _state(client, name)
    if state is None:
        say(f"interrupted again: VM {name} is already gone")
    else:
        say(
            f"interrupted again: VM {name} is left ({state}); "
            f"`banger vm delete --force {name}` removes it"
        )


def _state(client: BangerClient, name: str) -> str | None:
    """The VM's state, None once it is gone ("unknown" if the daemon cannot say)."""
    try:
        return client.vms.get(name).state
    except NotFound:
        return None
    except BangerError:
        return "state unknown"
