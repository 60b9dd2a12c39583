"""Warm pool: `banger vm run --rm -- true` claiming a ready VM, against the cold run.

The Debian guest with banger's agent (tests/guests.py ``debian_agent_rootfs``), under
QEMU/TCG in a network namespace of its own (TESTING.md network rule), with a pool of 4
ready VMs of it (``[[pool]]``: 1 vCPU, 512 MiB, 1G disk):

- cold: the pool drained (`banger pool drain`), `vm run --rm -- true` boots a VM;
- warm: the pool refilled (`banger pool fill`, waiting until 4 are ready before each
  run), `vm run --rm -- true` claims one: p50 of the runs, and its ratio to the cold p50;
- 4 at once: a full pool of 4, four `vm run --rm -- true` started together: the wall
  time until the last one exits.

Each warm run is also split by the daemon's access log: the create (the claim: exec
connection, guest rename, row and DNS), the exec of `true`, the delete; the rest of the
wall time is the CLI's (start, ping, printing) and the client's side of those requests.

Goals (issue 12): warm p50 ≤ 0.5 s and ≤ 0.06 x cold; 4 at once ≤ 1.0 s. How `-- true`
runs is `vm run`'s business (SSH, or the agent's exec channel once it uses that): this
bench measures whatever `vm run` does. Run: bench/run [--quick] (or
`.venv/bin/python -m bench.pool --runs N`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests import guests
from tests.vmenv import VmEnv, vm_env

POOL = 4
SPEC = ["--vcpu", "1", "--memory", "512", "--disk-size", "1G"]
CONFIG = (
    'default_image_name = "debagent"\ntap_pool_size = 8\n'
    f'[[pool]]\nsize = {POOL}\nvcpu = 1\nmemory_mib = 512\ndisk_size = "1G"\n'
)


def _ready(env: VmEnv) -> dict[str, Any]:
    status: dict[str, Any] = env.json("pool", "status")
    image: dict[str, Any] = status["images"][0]
    return image


def _wait_full(env: VmEnv, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while (image := _ready(env))["ready"] < POOL:
        assert image["last_error"] is None, image
        assert time.monotonic() < deadline, f"the pool did not fill: {image}"
        time.sleep(0.2)


def _run(env: VmEnv, results: list[tuple[float, str]], windows: list[Window] | None = None) -> None:
    started = time.perf_counter()
    since = datetime.now(UTC)
    out = env.banger("vm", "run", "--rm", *SPEC, "--", "true")
    wall = time.perf_counter() - started
    assert out.returncode == 0, f"vm run failed:\n{out.stdout}\n{out.stderr}"
    claimed = any(line.startswith("✓ claim") for line in out.stdout.splitlines())
    results.append((wall, "claim" if claimed else "boot"))
    if windows is not None:
        windows.append((since, datetime.now(UTC), wall))


#: One `vm run`: when it started and ended (UTC, as the daemon's log stamps), its wall time.
Window = tuple[datetime, datetime, float]
PARTS = (("create", "POST", "/v1/vms"), ("exec", "POST", "/exec"), ("delete", "DELETE", ""))


def _split(log: Path, windows: list[Window]) -> dict[str, float]:
    """Median seconds of each part of the runs, from the daemon's access log."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("logger") == "banger.api.access"]
    parts: dict[str, list[float]] = {name: [] for name, _, _ in PARTS}
    parts["CLI and client"] = []
    for since, until, wall in windows:
        found = dict.fromkeys(parts, 0.0)
        for e in access:
            if not since <= datetime.fromisoformat(e["ts"]) <= until:
                continue
            for name, method, path in PARTS:
                if e["method"] == method and (
                    e["path"] == path if name == "create" else e["path"].endswith(path)
                ):
                    found[name] += e["duration_ms"] / 1000
        found["CLI and client"] = wall - sum(found[name] for name, _, _ in PARTS)
        for name, seconds in found.items():
            parts[name].append(seconds)
    return {name: statistics.median(v) for name, v in parts.items() if v}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs (CI)")
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 7)
    cold_runs = 1 if args.quick else 3
    with vm_env(CONFIG) as env:  # [[pool]] replaces pool_size (0 in test homes)
        env.ok("kernel", "import", "cloud", "--from", str(guests.cloud_kernel().import_dir))
        # A copy of its own: the shared test cache may be rebuilt by another run meanwhile.
        rootfs = env.home.root / "debagent.ext4"
        subprocess.run(
            ["cp", "--sparse=always", str(guests.debian_agent_rootfs()), str(rootfs)], check=True
        )
        env.ok("image", "register", "debagent", "--rootfs", str(rootfs), "--kernel-ref", "cloud")
        env.ok("pool", "drain")
        cold: list[tuple[float, str]] = []
        for _ in range(cold_runs):
            _run(env, cold)
        env.ok("pool", "fill")
        warm: list[tuple[float, str]] = []
        windows: list[Window] = []
        for _ in range(runs):
            _wait_full(env)
            _run(env, warm, windows)
        split = _split(env.home.root / "state" / "banger" / "bangerd.log", windows)
        _wait_full(env)
        together: list[tuple[float, str]] = []
        threads = [threading.Thread(target=_run, args=(env, together)) for _ in range(POOL)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        concurrent_wall = time.perf_counter() - started
    cold_p50 = statistics.median(w for w, _ in cold)
    warm_p50 = statistics.median(w for w, _ in warm)
    claimed = sum(1 for _, how in warm if how == "claim")
    print(f"bench pool: `vm run --rm -- true`, Debian guest with the agent, QEMU/TCG, pool {POOL}")
    print(f"  cold (pool drained)  p50 {cold_p50:6.2f} s   of {len(cold)} run(s)")
    print(
        f"  warm (pool full)     p50 {warm_p50:6.2f} s   of {len(warm)} run(s), "
        f"{claimed} claimed   = x{warm_p50 / cold_p50:.3f} of cold (goal <= 0.5 s, x0.06)"
    )
    print(
        "  warm, median of each part: "
        + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in split.items())
    )
    print(
        f"  {POOL} at once (pool {POOL})  wall {concurrent_wall:6.2f} s   "
        f"({sum(1 for _, h in together if h == 'claim')} claimed; goal <= 1.0 s)   "
        f"= x{concurrent_wall / cold_p50:.3f} of one cold run"
    )
    print(f"  load average at the end: {os.getloadavg()[0]:.1f} (2 = both CPUs busy here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
