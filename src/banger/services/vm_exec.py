"""Commands in a running VM through its guest agent: one exec connection per VM.

Owns: the daemon's ``ExecConnection`` of each running VM — opened on the first command,
reopened when it died or the VM's VMM process changed, moved to a claimed pool VM's new
name (``VmService.on_renamed``), closed when the VM stops or is deleted
(``VmService.on_gone``) and at daemon shutdown — and starting a command on it,
with the request checked and every failure turned into an error a caller can act on
(VM not found / not running, no agent answering → ``vm ssh``, command not started).
Must not: speak HTTP or stream to a client (``banger.api.exec_relay`` does), or trust
anything the guest says (``banger.guest.exec_client`` bounds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from banger.errors import (
    AgentUnavailable,
    BadResponse,
    CommandFailed,
    CommandNotStarted,
    InvalidArgument,
    Timeout,
)
from banger.guest import exec_frames
from banger.guest.exec_client import ExecConnection, ExecProcess
from banger.host.procinfo import ProcessIdentity
from banger.services import vm_boot
from banger.services.readiness import ATTEMPT_TIMEOUT_S, Via
from banger.services.vms import VmService
from banger.vmm import table
from banger.vmm.channels import AgentChannel

log = logging.getLogger("banger.exec")

#: How a connection to a VM's exec channel is opened, within a timeout (tests pass a
#: fake guest).
Connect = Callable[[AgentChannel, float], Awaitable[ExecConnection]]
#: Connecting includes the agent's answer to HELLO: quick from a live agent, never from
#: an image without one. When the guest's readiness was SSH's answer (the agent, if any,
#: was slower than an ssh handshake: most likely there is none) the wait is one readiness
#: attempt's (a booted agent answers well within it, even under TCG), so that
#: `vm run -- CMD` falls back to SSH soon: 1.5 s cost every such run 1 s more.
CONNECT_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_NO_AGENT_S = ATTEMPT_TIMEOUT_S
_FAILURES = frozenset(f.name.lower() for f in exec_frames.Failure)


async def connect_channel(channel: AgentChannel, timeout_s: float) -> ExecConnection:
    return await channel.exec_connect(timeout_s=timeout_s)


@dataclass
class _Open:
    identity: ProcessIdentity
    conn: ExecConnection


class ExecService:
    def __init__(self, vms: VmService, *, connect: Connect = connect_channel) -> None:
        self.vms = vms
        self._connect = connect
        self._open: dict[str, _Open] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()
        vms.on_gone.append(self.forget)
        vms.on_renamed.append(self.renamed)

    async def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> ExecProcess:
        """Start ``argv`` in VM ``name``; it runs until it exits or is killed."""
        try:
            exec_frames.encode_open(
                list(argv), cwd=cwd or "", env=dict(env or {}), timeout_ms=_timeout_ms(timeout_s)
            )
        except ValueError as exc:
            raise InvalidArgument(f"cannot run this command: {exc}") from exc
        conn = await self.connection(name)
        try:
            return await conn.start(list(argv), cwd=cwd, env=dict(env or {}), timeout_s=timeout_s)
        except CommandFailed as exc:
            if exc.details in _FAILURES:
                raise CommandNotStarted(exc.brief, details=exc.details) from exc
            raise

    async def connection(self, name: str) -> ExecConnection:
        """VM ``name``'s exec connection, opened (or reopened) if need be."""
        vm = await self.vms.get(name)
        paths = self.vms.paths(vm)
        handle = vm_boot.running_handle(vm, paths)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            current = self._open.get(name)
            if current is not None and current.identity == handle.process and current.conn.alive:
                return current.conn
            if current is not None:
                self._close_later(self._open.pop(name).conn)
            channel = table.agent_channel_at(paths.run_dir, handle.backend)
            answered = self.vms.ready_via.get(handle.process)
            timeout_s = CONNECT_TIMEOUT_NO_AGENT_S if answered is Via.SSH else CONNECT_TIMEOUT_S
            try:
                conn = await self._connect(channel, timeout_s)
            except (CommandFailed, BadResponse, Timeout) as exc:
                raise AgentUnavailable(
                    f"the guest agent of VM {name!r} does not answer on its exec channel",
                    details=exc.brief,
                    hint=(
                        "the image may not carry banger-agent, or the guest is wedged; "
                        f"`banger vm ssh {name} -- …` works without it"
                    ),
                ) from exc
            self._open[name] = _Open(handle.process, conn)
            log.info("exec connection opened", extra={"fields": {"vm": name}})
            return conn

    def forget(self, name: str) -> None:
        """The VM stopped or is gone: close its connection (its commands end with it)."""
        entry = self._open.pop(name, None)
        self._locks.pop(name, None)
        if entry is not None:
            self._close_later(entry.conn)

    def renamed(self, old: str, new: str) -> None:
        """A claimed pool VM took a new name: its open connection (same VMM process, still
        checked on each use) now answers to that name; nothing of the old name is kept."""
        entry = self._open.pop(old, None)
        self._locks.pop(old, None)
        self.forget(new)  # a stale entry of an earlier VM of that name
        if entry is not None:
            self._open[new] = entry

    async def aclose(self) -> None:
        for name in list(self._open):
            self.forget(name)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _close_later(self, conn: ExecConnection) -> None:
        async def close() -> None:
            with contextlib.suppress(Exception):
                await conn.aclose()

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _timeout_ms(timeout_s: float | None) -> int:
    return 0 if timeout_s is None else max(1, round(timeout_s * 1000))
