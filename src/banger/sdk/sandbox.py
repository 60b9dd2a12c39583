"""``Sandbox``: one banger VM as a Python object, for programs and coding agents (SPEC §11).

Owns: creating a VM for a caller (a repository copied in, as ``banger vm run PATH``
does), running commands in it through the daemon's exec route, its files, ports and
workspace patch, and its end: a sandbox made by ``create`` is deleted when its ``with``
block ends — by an exception or Ctrl-C too — and, failing that, when the Python process
exits (``atexit``), unless it was made with ``keep=True``.
Must not: print (the daemon's auto-start line goes to the ``banger.sdk`` logger), or
reach the daemon other than through ``banger.client``; errors stay the typed
``BangerError`` subclasses the client rebuilds from the daemon's codes.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from banger.client.facade import BangerClient
from banger.client.launcher import ensure_daemon
from banger.errors import BangerError, NotFound
from banger.host.paths import Layout
from banger.model import limits, units
from banger.model.api_types import CreateVmRequest, StageEvent, VmInfo, VmmName
from banger.sdk.commands import (
    Collector,
    Command,
    CommandHandle,
    CommandResult,
    OutputCallback,
    command_result,
    to_argv,
)
from banger.sdk.sandbox_parts import SandboxFiles, SandboxWorkspace
from banger.workspace.plan import Plan, make_plan

log = logging.getLogger("banger.sdk")

#: Names the SDK gives sandboxes it names itself (``banger vm list`` shows them so).
NAME_PREFIX = "sdk-"
#: A create that was interrupted may not have made its VM yet: how long to look for it.
ORPHAN_WAIT_S = 15.0

Stdin = bytes | str | IO[bytes] | None


def connect(layout: Layout | None = None) -> BangerClient:
    """A client of this user's daemon, started (as the CLI does) when none runs."""
    return ensure_daemon(layout or Layout.from_env(), announce=log.info)


def new_name(prefix: str = NAME_PREFIX) -> str:
    """A fresh VM name, chosen here so that an interrupted create can still be undone."""
    return f"{prefix}{secrets.token_hex(4)}"


def check_sizes(
    *,
    vcpu: int | None = None,
    memory_mib: int | None = None,
    disk_size_bytes: int | None = None,
    boot_timeout_s: int | None = None,
) -> None:
    """InvalidArgument naming the parameter and its bound in units ("memory_mib: must be
    at least 128 MiB") before any request: the daemon's bounds (``banger.model.limits``).
    Values that are not integers are left to the daemon, which refuses them by type."""
    for what, value, bound in (
        ("vcpu", vcpu, limits.VCPU),
        ("memory_mib", memory_mib, limits.MEMORY_MIB),
        ("disk_size_bytes", disk_size_bytes, limits.DISK_SIZE),
        ("boot_timeout_s", boot_timeout_s, limits.BOOT_TIMEOUT_S),
    ):
        if isinstance(value, int) and not isinstance(value, bool):
            units.check_bound(value, bound, what=what)


class Sandbox:
    """A banger VM. ``Sandbox.create(...)`` makes one (use it in a ``with`` block);
    ``Sandbox.get(name)`` and ``Sandbox.list()`` find existing ones (never deleted on exit)."""

    def __init__(
        self,
        client: BangerClient,
        info: VmInfo,
        *,
        keep: bool = True,
        repo: Path | None = None,
    ) -> None:
        self.client = client
        self.info = info
        self.keep = keep
        self.files = SandboxFiles(client, info.name)
        self.workspace = SandboxWorkspace(client, info.name, repo)
        self._deleted = False
        if not keep:
            _owned.add(self)

    # -- finding and making ------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        image: str | None = None,
        repo: str | Path | None = None,
        name: str | None = None,
        vcpu: int | None = None,
        memory_mib: int | None = None,
        disk_size_bytes: int | None = None,
        nat: bool = False,
        vmm: VmmName | None = None,
        boot_timeout_s: int = limits.BOOT_TIMEOUT_S_DEFAULT,
        include_untracked: bool = False,
        keep: bool = False,
        on_stage: Callable[[StageEvent], None] | None = None,
        client: BangerClient | None = None,
    ) -> Sandbox:
        """A new VM, running; with ``repo`` the git repository enclosing that path is
        copied to /root/repo, which becomes the default ``cwd`` of ``run``.

        The guest has no outbound network unless ``nat=True``. Image, vcpu, memory and
        disk default to the daemon's configuration (``banger config show``).
        """
        check_sizes(
            vcpu=vcpu,
            memory_mib=memory_mib,
            disk_size_bytes=disk_size_bytes,
            boot_timeout_s=boot_timeout_s,
        )
        # Planned before the VM exists, as `vm run PATH` does: a repository that cannot
        # be copied (no commits, submodules…) is refused before anything is made.
        plan = (
            make_plan(Path(repo).expanduser(), include_untracked=include_untracked)
            if repo
            else None
        )
        client = client or connect()
        request = CreateVmRequest(
            name=name or new_name(),
            image=image,
            vcpu=vcpu,
            memory_mib=memory_mib,
            disk_size_bytes=disk_size_bytes,
            nat=nat,
            vmm=vmm,
            boot_timeout_s=boot_timeout_s,
        )
        assert request.name is not None
        seen: builtins.list[StageEvent] = []
        try:
            return cls._make(client, request, plan, keep=keep, on_stage=on_stage, seen=seen)
        except BaseException as exc:
            if not keep and _made_by_this_create(exc, accepted=bool(seen), named=name is not None):
                # A failure the daemon reported ended its create (a VM in state error,
                # or none); after an interruption it may still be reserving one.
                ended = isinstance(exc, BangerError)
                discard(client, request.name, wait_s=0.0 if ended else ORPHAN_WAIT_S)
            raise

    @classmethod
    def _make(
        cls,
        client: BangerClient,
        request: CreateVmRequest,
        plan: Plan | None,
        *,
        keep: bool,
        on_stage: Callable[[StageEvent], None] | None,
        seen: builtins.list[StageEvent],
    ) -> Sandbox:
        progress = client.vms.create(request)
        for event in progress:
            seen.append(event)
            if on_stage is not None:
                on_stage(event)
        sandbox = cls(client, progress.result, keep=keep)
        if plan is not None:
            sandbox.workspace.send(plan)
        return sandbox

    @classmethod
    def get(cls, name: str, *, client: BangerClient | None = None) -> Sandbox:
        """An existing VM by name (``VmNotFound`` if there is none); not deleted on exit."""
        client = client or connect()
        return cls(client, client.vms.get(name))

    @classmethod
    def list(cls, *, client: BangerClient | None = None) -> builtins.list[Sandbox]:
        """Every VM of this user's daemon; none of them is deleted on exit."""
        client = client or connect()
        return [cls(client, info) for info in client.vms.list()]

    # -- what it is ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def ip(self) -> str | None:
        return self.info.ip

    @property
    def state(self) -> str:
        return self.info.state

    @property
    def workdir(self) -> str | None:
        """The guest path of the copied repository (the default ``cwd``), if any."""
        return self.workspace.path

    def refresh(self) -> VmInfo:
        self.info = self.client.vms.get(self.name)
        return self.info

    def ports(self) -> builtins.list[dict[str, Any]]:
        """What listens in the guest: ``{"proto", "port", "endpoint", "process", …}`` rows."""
        return self.client.vms.ports(self.name).ports

    # -- commands ------------------------------------------------------------------------

    def run(
        self,
        cmd: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: Stdin = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        max_output_bytes: int | None = None,
    ) -> CommandResult:
        """Run ``cmd`` (a string: through ``sh -c``; a list: that exact argv) to its end.

        Never raises for the command's own failure: look at ``exit_code`` or call
        ``.check()``. ``on_stdout``/``on_stderr`` get output as it arrives (it is kept
        in the result too: whole, or with ``max_output_bytes`` only the start and the
        end of each stream). ``cwd`` defaults to the copied repository, if any.
        """
        out = Collector(on_stdout, max_output_bytes)
        err = Collector(on_stderr, max_output_bytes)
        result = self.client.vms.exec(
            self.name,
            to_argv(cmd),
            cwd=cwd or self.workdir,
            env=env,
            timeout_s=timeout,
            stdin=stdin.encode() if isinstance(stdin, str) else stdin,
            on_stdout=out,
            on_stderr=err,
        )
        return command_result(result, out, err)

    def start(
        self,
        cmd: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        max_output_bytes: int | None = None,
        open_stdin: bool = False,
    ) -> CommandHandle:
        """Start ``cmd`` in the background; the handle reads, signals and waits. Its
        stdin is closed (a reader sees EOF) unless ``open_stdin``: then ``write`` feeds
        it and ``close_stdin`` ends it."""
        session = self.client.vms.exec_start(
            self.name, to_argv(cmd), cwd=cwd or self.workdir, env=env, timeout_s=timeout
        )
        if not open_stdin:
            session.close_stdin()
        return CommandHandle(
            session, on_stdout=on_stdout, on_stderr=on_stderr, max_output_bytes=max_output_bytes
        )

    # -- the end -------------------------------------------------------------------------

    def delete(self) -> None:
        """Delete the VM (stopped first if it runs); deleting one already gone is fine."""
        if not self._deleted:
            with contextlib.suppress(NotFound):
                self.client.vms.delete(self.name, force=True)
            self._deleted = True
        _owned.discard(self)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.keep:
            return
        if exc is None:
            self.delete()
            return
        # Leaving through an error or Ctrl-C: still delete, but never hide why we left.
        try:
            self.delete()
        except BangerError as err:
            log.warning("could not delete sandbox %s: %s", self.name, err)

    def __repr__(self) -> str:
        return f"Sandbox(name={self.name!r}, state={self.state!r}, ip={self.ip!r})"


def _made_by_this_create(exc: BaseException, *, accepted: bool, named: bool) -> bool:
    """Whether a create that failed with ``exc`` may have left a VM of its own to delete.

    Once the daemon accepted it (a first progress event), yes: the daemon finishes a
    create whose caller went away, and keeps one that failed in state ``error``. Before
    that, a refusal (a BangerError: a taken name, a bad request) made nothing — and the
    VM under that name, if any, is someone else's. An interruption (Ctrl-C) before any
    answer leaves it unknown: a name the SDK made up is ours to look for, never a name
    the caller chose (it may be an existing VM the daemon is refusing).
    """
    if accepted:
        return True
    if isinstance(exc, BangerError):
        return False
    return not named


def discard(client: BangerClient, name: str, *, wait_s: float = 0.0) -> bool:
    """Delete ``name`` if it exists; with ``wait_s``, keep looking for it that long (a
    create the daemon has not reserved yet). True if a VM was deleted. Never raises."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.vms.delete(name, force=True)
            return True
        except NotFound:
            if time.monotonic() >= deadline:
                return False
        except BangerError as err:
            log.warning("could not delete sandbox %s: %s", name, err)
            return False
        except KeyboardInterrupt:  # a second Ctrl-C while cleaning up: give up quietly
            return False
        time.sleep(0.5)


class _Owned:
    """Sandboxes made by ``create`` without ``keep``: deleted at interpreter exit if the
    program never deleted them (no ``with`` block, an exit without cleanup)."""

    def __init__(self) -> None:
        self._items: dict[int, Sandbox] = {}
        self._lock = threading.Lock()
        self._registered = False

    def add(self, sandbox: Sandbox) -> None:
        with self._lock:
            self._items[id(sandbox)] = sandbox
            if not self._registered:
                atexit.register(self.delete_all)
                self._registered = True

    def discard(self, sandbox: Sandbox) -> None:
        with self._lock:
            self._items.pop(id(sandbox), None)

    def delete_all(self) -> None:
        with self._lock:
            left = builtins.list(self._items.values())
        for sandbox in left:
            log.info("deleting sandbox %s at exit", sandbox.name)
            with contextlib.suppress(BangerError):
                sandbox.delete()


_owned = _Owned()
