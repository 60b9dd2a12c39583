"""When a booting VM counts as up (SPEC §3: "the guest answers — agent health, or SSH").

Owns: the two ways of asking, raced against each other, and which one answered.

- The agent way (images that carry ``banger-agent``): ``/healthz`` answers over the agent
  channel (virtio-serial or vsock: no network involved), then the guest's port 22 accepts
  a TCP connection from the host. No ssh handshake: under TCG that handshake alone costs
  the guest a noticeable share of a second.
- The SSH way (every image): port 22 accepts, then ``ssh … true`` succeeds with banger's
  key and the host key banger gave the guest.

Both run from the start; the first to succeed wins and the other is cancelled. An image
without the agent simply never answers the first way (its attempts are bounded and cost
the host a socket connect each), so nothing needs to know beforehand which images carry
it. A failure of one way waits for the other; when both fail, the SSH way's error is
raised (it names what a user would try next).
Must not: change rows, or trust anything the guest says beyond "I answered".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from banger.errors import BadResponse, BangerError, CommandFailed, Timeout
from banger.guest.agent_client import AgentClient
from banger.guest.agent_replies import AgentHealth
from banger.host import procinfo
from banger.host.procinfo import ProcessIdentity
from banger.host.runner import Runner

SSH_PORT = 22
SSH_PROBE_TIMEOUT_S = 15.0
PORT_PROBE_TIMEOUT_S = 1.0
POLL_S = 0.2
#: One agent attempt. A booted agent answers /healthz in well under this even under TCG;
#: a longer bound only delays noticing an agent that came up mid-attempt (2 s cost ~1 s).
ATTEMPT_TIMEOUT_S = 0.5


class Via(StrEnum):
    AGENT = "agent"
    SSH = "ssh"


@dataclass(frozen=True)
class Ready:
    via: Via
    seconds: float

    def describe(self) -> str:
        if self.via is Via.AGENT:
            return f"guest agent answered and sshd accepts connections after {self.seconds:.1f}s"
        return f"guest answered SSH after {self.seconds:.1f}s"


async def port_open(ip: str, port: int = SSH_PORT) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), PORT_PROBE_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def ssh_banner(host: str, port: int = SSH_PORT) -> bool:
    """An SSH server answers on ``host:port`` with its banner. For a forwarded port
    (rootless VMs): slirp accepts the host side before the guest has a listener, so a
    connection alone proves nothing; the first bytes must come from sshd itself."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), PORT_PROBE_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        return False
    try:
        first = await asyncio.wait_for(reader.read(4), PORT_PROBE_TIMEOUT_S)
    except (OSError, TimeoutError):
        first = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return first == b"SSH-"


#: Whether a guest's TCP port accepts a connection: ``port_open`` over the bridge, or a
#: test's stand-in (tests may not send traffic to guest addresses outside their netns).
PortProbe = Callable[[str, int], Awaitable[bool]]


@dataclass(frozen=True)
class Guest:
    """What the waiters need to know about the booting VM."""

    ip: str
    alive: ProcessIdentity | None
    console_log: Path
    ssh_port: int = SSH_PORT
    port_probe: PortProbe = port_open

    async def port_accepts(self) -> bool:
        return await self.port_probe(self.ip, self.ssh_port)

    def check_alive(self) -> None:
        if self.alive is not None and not procinfo.is_running(self.alive):
            hint = f"the guest's console log is {self.console_log}"
            raise CommandFailed("the VM stopped while booting", hint=hint)

    def timed_out(self, what: str, timeout_s: float) -> Timeout:
        return Timeout(
            f"the guest did not {what} within {timeout_s:g}s",
            hint=f"the guest's console log is {self.console_log}",
        )


async def wait_for_ssh(runner: Runner, argv: list[str], guest: Guest, *, timeout_s: float) -> float:
    """Poll until ``ssh … true`` succeeds; returns the seconds it took."""
    started = time.monotonic()
    while True:
        guest.check_alive()
        if await guest.port_accepts():
            with contextlib.suppress(CommandFailed, Timeout):
                await runner.run_async([*argv, "true"], timeout_s=SSH_PROBE_TIMEOUT_S)
                return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise guest.timed_out("accept SSH", timeout_s)
        await asyncio.sleep(POLL_S)


async def wait_for_agent(
    client: AgentClient,
    *,
    timeout_s: float,
    alive: ProcessIdentity | None,
    console_log: Path,
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
) -> tuple[float, AgentHealth]:
    """Ask ``/healthz`` until it answers; returns (seconds it took, the health reply)."""
    started = time.monotonic()
    last: BangerError | None = None
    while True:
        if alive is not None and not procinfo.is_running(alive):
            raise CommandFailed(
                "the VM stopped while booting", hint=f"the guest's console log is {console_log}"
            )
        left = timeout_s - (time.monotonic() - started)
        if left <= 0:
            raise Timeout(
                f"the guest agent did not answer within {timeout_s:g}s",
                details=f"last attempt: {last.brief}" if last is not None else None,
                hint=f"the guest's console log is {console_log}",
            )
        try:
            health = await asyncio.to_thread(
                client.health, timeout_s=min(attempt_timeout_s, max(left, 0.05))
            )
        except (BadResponse, CommandFailed, Timeout) as exc:
            last = exc
            await asyncio.sleep(0.1)
            continue
        return time.monotonic() - started, health


async def wait_for_agent_and_sshd(client: AgentClient, guest: Guest, *, timeout_s: float) -> float:
    """``/healthz`` answers, then port 22 accepts; returns the seconds it took."""
    started = time.monotonic()
    await wait_for_agent(
        client, timeout_s=timeout_s, alive=guest.alive, console_log=guest.console_log
    )
    while not await guest.port_accepts():
        guest.check_alive()
        if time.monotonic() - started > timeout_s:
            raise guest.timed_out("accept connections on port 22", timeout_s)
        await asyncio.sleep(POLL_S)
    return time.monotonic() - started


async def first_ready(ways: dict[Via, Callable[[], Awaitable[float]]]) -> Ready:
    """Run every way at once; the first to succeed wins, the others are cancelled."""
    tasks = {asyncio.ensure_future(way()): via for via, way in ways.items()}
    errors: dict[Via, BaseException] = {}
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is None:
                    return Ready(tasks[task], task.result())
                if not isinstance(exc, BangerError):
                    raise exc
                errors[tasks[task]] = exc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    raise errors.get(Via.SSH) or next(iter(errors.values()))


async def wait_until_ready(
    runner: Runner,
    ssh_argv: list[str],
    agent: AgentClient | None,
    guest: Guest,
    *,
    timeout_s: float,
) -> Ready:
    """The guest is up: the agent way or the SSH way, whichever answers first."""
    ways: dict[Via, Callable[[], Awaitable[float]]] = {
        Via.SSH: lambda: wait_for_ssh(runner, ssh_argv, guest, timeout_s=timeout_s)
    }
    if agent is not None:
        ways[Via.AGENT] = lambda: wait_for_agent_and_sshd(agent, guest, timeout_s=timeout_s)
    return await first_ready(ways)
