"""`banger vm exec`: a command through the daemon and the guest agent, against `vm ssh`.

Boots the Debian test guest with banger's agent (QEMU/TCG, virtio-serial) through a real
daemon in a network namespace of its own (TESTING.md network rule), lets it settle
(`systemctl is-system-running --wait`), then in the same run, the two exec ways
alternating:

- `banger vm exec NAME -- true` through the CLI, N sequential: p50 and p95 (a CLI start,
  a request switched to the exec protocol, the agent starting `true`), the CLI started
  directly as a user would (not through `ip netns exec`) and with its bytecode compiled;
- `BangerClient().vms.exec(NAME, ["true"])`, the client API in this process (no CLI
  start-up): p50 and p95 — what the issue's "p50 ≤ 30 ms" is closest to;
- `banger vm ssh NAME -- true`: the baseline (a handshake each time), median; the ratios;
- `banger vm exec NAME -- head -c 100M /dev/zero` read from a pipe: seconds, MiB/s, the
  exact byte count, and the daemon's RSS growth (peak, sampled while it streams).

Run: bench/run [--quick] (or `.venv/bin/python -m bench.vm_exec --runs N`).
Needs root, /dev/net/tun and qemu-system-x86_64 (as tests/e2e/test_vm_exec.py).
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests import guests
from tests.conftest import BIN
from tests.vmenv import VmEnv, vm_env

import banger
from banger.client.facade import BangerClient
from banger.client.http import Client
from banger.host.paths import Layout

DEBIAN = ["--vcpu", "2", "--memory", "1024", "--disk-size", "1G"]
MIB = 1024 * 1024
NAME = "bx"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _timed(env: VmEnv, *args: str, direct: bool = False) -> float:
    """One CLI call's wall time. ``direct``: started as a user starts it, not through
    ``ip netns exec`` (which unshares and remounts for every call, several ms): the
    CLI reaches the daemon through its Unix socket, which needs no network namespace."""
    started = time.perf_counter()
    if direct:
        out = subprocess.run(
            [str(BIN / "banger"), *args],
            env=env.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    else:
        out = env.banger(*args)
    took = time.perf_counter() - started
    assert out.returncode == 0, f"banger {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return took


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _stream_100m(env: VmEnv) -> tuple[float, int, int]:
    """Seconds, bytes read, daemon RSS growth (peak) for `head -c 100M /dev/zero`."""
    assert env.daemon is not None
    pid = env.daemon.pid
    before = peak = _rss(pid)
    argv = [str(BIN / "banger"), "vm", "exec", NAME, "--", "head", "-c", "100M", "/dev/zero"]
    started = time.perf_counter()
    proc = env.ns.popen(argv, env=env.env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    total = 0
    while chunk := os.read(proc.stdout.fileno(), 1 << 20):
        total += len(chunk)
        peak = max(peak, _rss(pid))
    assert proc.wait(timeout=120) == 0
    return time.perf_counter() - started, total, peak - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer SSH runs (CI)")
    parser.add_argument("--runs", type=int, default=25, help="sequential exec runs")
    args = parser.parse_args()
    ssh_runs = 3 if args.quick else 5
    with vm_env() as env:
        env.ok("kernel", "import", "cloud", "--from", str(guests.cloud_kernel().import_dir))
        rootfs = str(guests.debian_agent_rootfs())
        env.ok("image", "register", "debagent", "--rootfs", rootfs, "--kernel-ref", "cloud")
        env.ok("vm", "create", "--name", NAME, "--image", "debagent", *DEBIAN)
        # An installed banger has its bytecode (pip compiles it); without it every CLI
        # run would compile its modules anew, as under PYTHONDONTWRITEBYTECODE.
        env.env.pop("PYTHONDONTWRITEBYTECODE", None)
        compileall.compile_dir(str(Path(banger.__file__).parent), quiet=1)
        # Timed once the guest has settled (what a pool VM is when handed out, and a VM a
        # user execs into has long been): right after `wait-ready` systemd is still
        # starting units, which weighs on whichever way is timed first.
        env.banger("vm", "exec", NAME, "--", "systemctl", "is-system-running", "--wait")
        _timed(env, "vm", "exec", NAME, "--", "true")  # the daemon opens its connection
        client = BangerClient(Client(Layout.from_env(env.env).socket_path))
        cli: list[float] = []
        api: list[float] = []
        for _ in range(args.runs):  # interleaved: load on the host weighs on both alike
            cli.append(_timed(env, "vm", "exec", NAME, "--", "true", direct=True))
            started = time.perf_counter()
            result = client.vms.exec(NAME, ["true"])
            api.append(time.perf_counter() - started)
            assert result.exit_code == 0, result
        ssh = [_timed(env, "vm", "ssh", NAME, "--", "true") for _ in range(ssh_runs)]
        seconds, total, growth = _stream_100m(env)
    ssh_med = statistics.median(ssh)
    print(f"bench vm_exec: Debian guest with banger's agent, QEMU/TCG, {args.runs} sequential")
    for label, values in (("vm exec -- true (CLI)", cli), ("client API vms.exec", api)):
        p50, p95 = _pct(values, 0.5), _pct(values, 0.95)
        print(
            f"  {label:<22} p50 {p50 * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   "
            f"(p50 = x{p50 / ssh_med:.3f} of vm ssh)"
        )
    print(f"  {'vm ssh -- true':<22} median {ssh_med * 1000:7.1f} ms over {ssh_runs} (baseline)")
    exact = "exact" if total == 100 * MIB else f"WRONG ({total} bytes)"
    print(
        f"  head -c 100M through the CLI: {seconds:.1f} s ({total / MIB / seconds:.1f} MiB/s), "
        f"{exact}; daemon RSS growth {growth / MIB:.1f} MiB (peak)"
    )
    return 0 if total == 100 * MIB else 1


if __name__ == "__main__":
    sys.exit(main())
