"""Exec through the guest agent in a real guest: Debian under QEMU/TCG over virtio-serial.

The guest of tests/e2e/test_agent.py (``booted_debian``: banger's QEMU command line, which
now has the second virtio-serial port ``org.banger.exec`` on ``<run_dir>/exec.sock``).
Through ``banger.guest.exec_client``: exit codes, stderr apart from stdout, stdin, Ctrl-C
(SIGINT) to the process group, a guest-side timeout, ``head -c 100M /dev/zero`` streamed
exactly with the host's buffer bounded, several commands at once, a host reconnecting
while a command runs, and the round trip of ``true`` (printed, with the SSH baseline).
Everything runs inside a ``banger-t-<random>`` namespace; one guest.
"""

from __future__ import annotations

import asyncio
import hashlib
import resource
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.guest.exec_client import ExecConnection
from banger.guest.exec_frames import WINDOW, ExitStatus, Kind
from banger.services.readiness import wait_for_agent
from tests.agentguest import BOOT_TIMEOUT_S, NEEDS_QEMU_GUEST, Booted, booted_debian

pytestmark = NEEDS_QEMU_GUEST


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    with booted_debian(tmp_path_factory.mktemp("exec-deb")) as booted:
        asyncio.run(
            wait_for_agent(
                booted.channel.client(),
                timeout_s=BOOT_TIMEOUT_S,
                alive=None,
                console_log=booted.spec.console_log,
            )
        )
        yield booted


def exec_path(guest: Booted) -> Path:
    path = guest.channel.exec_socket_path
    assert path is not None and path.name == "exec.sock"
    return path


def test_exit_codes_stderr_stdin_and_ctrl_c(guest: Booted) -> None:
    """What `vm exec` promises (issue 12): the command's status, stderr apart, stdin from
    the host, Ctrl-C reaching the command; a timeout kills it (ADVERSARIAL 100: bounded)."""

    async def main() -> None:
        async with await guest.channel.exec_connect() as conn:
            out, err = bytearray(), bytearray()
            status = await conn.run(
                ["sh", "-c", "hostname; echo oops >&2; exit 5"],
                on_stdout=out.extend,
                on_stderr=err.extend,
            )
            assert (status, bytes(out), bytes(err)) == (
                ExitStatus(5, None, False),
                b"agent-deb\n",
                b"oops\n",
            )
            out.clear()
            data = bytes(range(256)) * 4096  # 1 MiB, every byte value
            status = await conn.run(["sha256sum"], stdin=data, on_stdout=out.extend)
            assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()
            script = "trap 'echo INT; exit 130' INT; echo ready; while :; do sleep 0.1; done"
            proc = await conn.start(["sh", "-c", script])
            async for kind, chunk in proc.output():
                assert (kind, chunk) == (Kind.STDOUT, b"ready\n")
                break
            proc.signal(2)
            got = bytearray()
            async for _, chunk in proc.output():
                got += chunk
            assert proc.exit == ExitStatus(130, None, False) and b"INT" in got
            status = await conn.run(["sleep", "60"], timeout_s=1)
            assert status == ExitStatus(None, 9, True)

    asyncio.run(main())


def test_concurrent_commands_and_a_reconnecting_host(guest: Booted) -> None:
    """Several commands at once on the one serial stream; a second host's HELLO ends the
    first host's commands (the guest cannot see the first one leave) and works at once."""

    async def main() -> None:
        first = await ExecConnection.over_unix(exec_path(guest))
        sleeper = await first.start(["sleep", "300"])
        results = await asyncio.gather(
            *(first.run(["sh", "-c", f"sleep 0.{i}; exit {i}"]) for i in range(1, 6))
        )
        assert [r.code for r in results] == [1, 2, 3, 4, 5]
        assert sleeper.pid is not None
        await first.aclose()  # QEMU's chardev takes the next host
        async with await ExecConnection.over_unix(exec_path(guest)) as second:
            out = bytearray()
            deadline = time.monotonic() + 10
            while True:
                out.clear()
                probe = f"kill -0 {sleeper.pid} && echo alive || echo gone"
                await second.run(["sh", "-c", probe], on_stdout=out.extend)
                if out == b"gone\n" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert out == b"gone\n"

    asyncio.run(main())


def test_100m_streamed_exactly_with_bounded_memory_and_round_trips(guest: Booted) -> None:
    """`head -c 100M /dev/zero` arrives exactly, the host holding at most one window of it
    (ADVERSARIAL 102); the round trip of `true` (25 sequential) against SSH's."""

    async def main() -> tuple[list[float], float, int]:
        async with await guest.channel.exec_connect() as conn:
            times = []
            for _ in range(25):
                started = time.perf_counter()
                status = await conn.run(["true"])
                times.append(time.perf_counter() - started)
                assert status.code == 0
            total = 0
            peak = 0
            proc = await conn.start(["head", "-c", "100M", "/dev/zero"])
            started = time.perf_counter()
            async for _, chunk in proc.output():
                total += len(chunk)
                peak = max(peak, proc._buffered + len(chunk))
            took = time.perf_counter() - started
            assert proc.exit == ExitStatus(0, None, False)
            assert total == 100 * 1024 * 1024
            assert peak <= WINDOW
            return times, took, peak

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, took, peak = asyncio.run(main())
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    ssh = []
    for _ in range(5):
        started = time.perf_counter()
        guest.ssh("true")
        ssh.append(time.perf_counter() - started)
    times.sort()
    p50, p95 = statistics.median(times), times[23]  # 24th of 25: the 95th percentile
    print(
        f"exec true: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms (25 runs); "
        f"ssh true: median {statistics.median(ssh) * 1000:.0f} ms (5 runs); "
        f"100M: {took:.1f} s ({100 / took:.1f} MiB/s), host peak buffer {peak // 1024} KiB, "
        f"max RSS growth {rss_growth_kib // 1024} MiB"
    )
    assert rss_growth_kib < 20 * 1024
    assert p50 < statistics.median(ssh)  # the point of exec through the agent


def test_no_busy_loop_after_exec_hosts_left(guest: Booted) -> None:
    """With no host on the exec port (after hosts came and went), the agent sleeps: the
    port then reports POLLHUP forever and only an edge-triggered wait keeps it idle."""

    async def come_and_go() -> None:
        for _ in range(3):
            async with await guest.channel.exec_connect() as conn:
                assert (await conn.run(["true"])).code == 0

    asyncio.run(come_and_go())
    guest.wait_ssh(within=BOOT_TIMEOUT_S)
    out = guest.ssh(
        "pid=$(systemctl show -p MainPID --value banger-agent); "
        "t() { awk '{print $14 + $15}' /proc/$pid/stat; }; "
        "a=$(t); sleep 5; b=$(t); echo $a $b $(getconf CLK_TCK)"
    )
    before, after, hz = (int(x) for x in out.split())
    cpu = (after - before) / hz
    print(f"agent CPU over 5 s after exec hosts left: {cpu:.2f} s")
    assert cpu < 0.5  # a spinning exec loop would burn ~5 s here
