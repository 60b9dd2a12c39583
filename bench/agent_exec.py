"""Exec through the guest agent: the round trip of `true` and a 100 MiB stream, against SSH.

Boots the Debian test guest with banger's agent under QEMU/TCG (banger's own QEMU command
line, so the exec channel is the virtio-serial port ``org.banger.exec``), in a network
namespace of its own (TESTING.md network rule), then in the same run:

- `true` through the agent, N sequential runs on one connection: p50 and p95;
- `true` over SSH (`ssh root@guest true`, a handshake each time): the baseline, median;
- `head -c 100M /dev/zero` through the agent: seconds, MiB/s, exact byte count, and the
  host's peak buffered output (bounded by one window) and RSS growth;
- the spawn floor inside the guest: `subprocess.Popen(['true'])` + wait, timed by the
  guest's own Python (what the agent pays per command before any protocol).

Run: bench/run [--quick] (or `.venv/bin/python -m bench.agent_exec --runs N`).
Needs root, /dev/net/tun, qemu-system-x86_64, ssh and debugfs (as tests/e2e/test_agent.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.agentguest import BOOT_TIMEOUT_S, Booted, booted_debian

from banger.guest.exec_client import ExecConnection
from banger.services.readiness import wait_for_agent

SPAWN_FLOOR = """
import subprocess, time
t = []
for i in range(25):
    s = time.perf_counter()
    p = subprocess.Popen(["true"], stdin=-1, stdout=-1, stderr=-1, start_new_session=True)
    p.wait()
    t.append(time.perf_counter() - s)
t.sort()
print(t[12] * 1000)
"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def _exec_figures(guest: Booted, runs: int) -> dict[str, float]:
    await wait_for_agent(
        guest.channel.client(),
        timeout_s=BOOT_TIMEOUT_S,
        alive=None,
        console_log=guest.spec.console_log,
    )
    figures: dict[str, float] = {}
    conn: ExecConnection = await guest.channel.exec_connect()
    async with conn:
        await conn.run(["true"])  # warm: the first exec maps the binaries in the guest
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            status = await conn.run(["true"])
            times.append(time.perf_counter() - started)
            assert status.code == 0
        figures["p50"] = statistics.median(times)
        figures["p95"] = _pct(times, 0.95)
        out = bytearray()
        await conn.run(["python3", "-c", SPAWN_FLOOR], on_stdout=out.extend)
        figures["spawn_floor"] = float(out) / 1000
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        total = 0
        peak = 0
        proc = await conn.start(["head", "-c", "100M", "/dev/zero"])
        started = time.perf_counter()
        async for _, chunk in proc.output():
            total += len(chunk)
            peak = max(peak, proc._buffered + len(chunk))
        figures["stream_s"] = time.perf_counter() - started
        assert total == 100 * 1024 * 1024, f"100M arrived as {total} bytes"
        figures["peak_kib"] = peak / 1024
        figures["rss_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="fewer SSH runs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("agent_exec: skipped (needs root: it boots a guest in a network namespace)")
        return 0
    with (
        tempfile.TemporaryDirectory(prefix="bgbench-") as scratch,
        booted_debian(Path(scratch)) as guest,
    ):
        figures = asyncio.run(_exec_figures(guest, args.runs))
        ssh = []
        for _ in range(3 if args.quick else 5):
            started = time.perf_counter()
            guest.ssh("true")
            ssh.append(time.perf_counter() - started)
    ssh_s = statistics.median(ssh)
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[0]
    print(f"agent exec (Debian guest, QEMU/TCG, virtio-serial; host load {load}):")
    print(
        f"  exec true      p50 {figures['p50'] * 1000:7.1f} ms"
        f"   p95 {figures['p95'] * 1000:7.1f} ms   ({args.runs} sequential)"
    )
    print(f"  ssh true       median {ssh_s * 1000:7.0f} ms   (baseline, {len(ssh)} runs)")
    print(f"  ratio          exec p50 / ssh = {figures['p50'] / ssh_s:.3f}")
    print(
        "  spawn floor    Popen(true)+wait in the guest: "
        f"p50 {figures['spawn_floor'] * 1000:.1f} ms"
    )
    print(
        f"  100 MiB        {figures['stream_s']:.1f} s ({100 / figures['stream_s']:.1f} MiB/s),"
        f" exact; host peak buffer {figures['peak_kib']:.0f} KiB, RSS growth"
        f" {figures['rss_mib']:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
