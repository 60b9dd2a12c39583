"""A claim right after the pool called its VM ready: how long `vm run --rm -- true` takes.

The Debian guest with banger's agent under QEMU/TCG in a network namespace of its own,
a pool of 1 (1 vCPU, 512 MiB, 1G disk). Each run waits (polling `pool status` every
50 ms) until the pool has its VM ready, then at once runs `vm run --rm -- true`: the
claim meets a guest that has just become ready. Before the settle (issue 12), ready
meant "the agent answered", and the guest was still starting units; now ready means
systemd's boot is over. Prints the median wall time and the median create (the claim)
from the daemon's access log. ``--disk-size 3G`` makes each claim grow the work disk.

Not in bench/run: its baseline is older code. Compare by running it against another
source tree (`--src DIR`, e.g. `git archive main | tar -x -C DIR`): the daemon and the
CLI then import banger from DIR/src. Run: `.venv/bin/python -m bench.pool_settle
--runs N [--src DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime

from tests import guests
from tests.vmenv import VmEnv, vm_env

from bench.pool import _split

CONFIG = (
    'default_image_name = "debagent"\ntap_pool_size = 4\n'
    '[[pool]]\nsize = 1\nvcpu = 1\nmemory_mib = 512\ndisk_size = "1G"\n'
)
SPEC = ["--vcpu", "1", "--memory", "512"]


def _wait_ready(env: VmEnv, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        image = env.json("pool", "status")["images"][0]
        if image["ready"] >= 1:
            return
        assert image["last_error"] is None, image
        assert time.monotonic() < deadline, f"the pool did not fill: {image}"
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--src", help="a source tree whose src/ the daemon and CLI import")
    parser.add_argument(
        "--disk-size", default="1G", help="what each run asks (more than 1G: the claim grows)"
    )
    args = parser.parse_args()
    extra = {"PYTHONPATH": os.path.join(args.src, "src")} if args.src else {}
    walls: list[float] = []
    windows: list[tuple[datetime, datetime, float]] = []
    with vm_env(CONFIG, env_vars=extra) as env:
        env.ok("kernel", "import", "cloud", "--from", str(guests.cloud_kernel().import_dir))
        rootfs = env.home.root / "debagent.ext4"
        subprocess.run(
            ["cp", "--sparse=always", str(guests.debian_agent_rootfs()), str(rootfs)], check=True
        )
        env.ok("image", "register", "debagent", "--rootfs", str(rootfs), "--kernel-ref", "cloud")
        for _ in range(args.runs):
            _wait_ready(env)
            since = datetime.now(UTC)
            started = time.perf_counter()
            out = env.banger(
                "vm", "run", "--rm", *SPEC, "--disk-size", args.disk_size, "--", "true"
            )
            wall = time.perf_counter() - started
            assert out.returncode == 0, out.stdout + out.stderr
            assert any(line.startswith("✓ claim") for line in out.stdout.splitlines()), out.stdout
            walls.append(wall)
            windows.append((since, datetime.now(UTC), wall))
        log = env.home.root / "state" / "banger" / "bangerd.log"
        split = _split(log, windows)
        entries = [json.loads(line) for line in log.read_text().splitlines() if line[:1] == "{"]
        settles = [e["settle_s"] for e in entries if "settle_s" in e]
    print(
        f"bench pool_settle: claim right after ready, {args.src or 'this tree'}, "
        f"--disk-size {args.disk_size} (the pool's: 1G)"
    )
    print(f"  vm run --rm -- true  p50 {statistics.median(walls):.2f} s of {len(walls)} runs")
    print("  runs: " + ", ".join(f"{w:.2f}" for w in walls))
    print("  median of each part: " + ", ".join(f"{k} {v:.3f} s" for k, v in split.items()))
    if settles:
        print(
            f"  settle (agent answered -> ready) p50 {statistics.median(settles):.2f} s "
            f"of {len(settles)}: " + ", ".join(f"{x:.2f}" for x in settles)
        )
    print(f"  load average at the end: {os.getloadavg()[0]:.1f} (2 = both CPUs busy here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
