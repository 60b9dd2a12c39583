"""The development image (issue 10): build time and size of the default `debian-bookworm`
next to `debian-bookworm-minimal`, and their boot-to-ready under QEMU/TCG as a ratio
measured in the same run (goal: dev <= 1.15 x minimal).

Both images are built from the host's Debian archive as a fresh host would (`image pull
<catalog name>`, kernel included for the first), in a fresh daemon home inside a network
namespace of its own whose only way out is the HTTP proxy to the host's apt hosts
(tests/netproxy.py, TESTING.md network rule). The kernel is pulled by the first build and
reused by the second, so the minimal image is built first and its time excludes nothing
the dev image's includes but the kernel (printed apart).

"Boot-to-ready" is the create stream's `boot` + `wait-ready` stages: QEMU spawned until
the guest's agent answers and sshd accepts. The images alternate, so load on the host
weighs on both alike.

Then the headline as a user types it, `vm run --rm ./repo -- make test` with no flags on
the default image (a C program and a Python unittest, tests/e2e/test_default_image.py's
repository): cold (no pool, as the suite's daemons run), and out of the box (pool_size
unset, so "auto": one VM of the default image kept ready, claimed by each run; the bench
waits for the refill before the next).

Run: bench/run [--quick] (or `.venv/bin/python -m bench.dev_image --runs N`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.test_default_image import make_repo
from tests.vmenv import VmEnv, events, vm_env

IMAGES = ("debian-bookworm-minimal", "debian-bookworm")
SPEC = ("--vcpu", "2", "--memory", "1536", "--disk-size", "2G")
BOOT_STAGES = ("boot", "wait-ready")


def _stage_seconds(out: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for event in events(out):
        if event.get("type") == "stage" and event.get("state") == "ok":
            found[event["stage"]] = found.get(event["stage"], 0) + event.get("elapsed_ms", 0) / 1000
    return found


def _build(env: VmEnv, image: str) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    out = env.ok("image", "pull", image, "--json", timeout=3600)
    return time.perf_counter() - started, _stage_seconds(out)


def _ext4_sizes(rootfs: Path) -> tuple[int, int]:
    """(ext4 size, bytes used inside it) from the superblock."""
    text = subprocess.run(
        ["dumpe2fs", "-h", str(rootfs)], capture_output=True, text=True, check=True
    ).stdout
    fields = {
        k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())
    }
    block = int(fields["Block size"])
    return int(fields["Block count"]) * block, (
        int(fields["Block count"]) - int(fields["Free blocks"])
    ) * block


def _boot_to_ready(env: VmEnv, image: str, name: str) -> float:
    out = env.ok("vm", "create", "--name", name, "--image", image, *SPEC, "--json")
    stages = _stage_seconds(out)
    env.ok("vm", "delete", "--force", name)
    return sum(stages.get(s, 0.0) for s in BOOT_STAGES)


def _headline(env: VmEnv, repo: Path) -> float:
    """`vm run --rm ./repo -- make test` as a user types it (no flags): wall seconds."""
    started = time.perf_counter()
    out = env.banger("vm", "run", "--rm", str(repo), "--", "make", "test", timeout=1800)
    took = time.perf_counter() - started
    assert out.returncode == 0, f"the headline failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
    claimed = any(line.startswith("✓ claim") for line in out.stdout.splitlines())
    assert claimed == (env.extra_env.get("BANGER_POOL_SIZE") == ""), out.stdout[-2000:]
    return took


def _pool_ready(env: VmEnv) -> None:
    deadline = time.monotonic() + 900
    while (image := env.json("pool", "status")["images"][0])["ready"] < 1:
        assert image["last_error"] is None, image
        assert time.monotonic() < deadline, f"the default pool did not fill: {image}"
        time.sleep(0.5)
    time.sleep(2)  # its settle is done; let the host's load of that boot pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one boot of each (CI)")
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    builds: dict[str, tuple[float, dict[str, float]]] = {}
    boots: dict[str, list[float]] = {i: [] for i in IMAGES}
    sizes: dict[str, tuple[int, int]] = {}
    with vm_env(apt_proxy=True) as env:
        for image in IMAGES:
            builds[image] = _build(env, image)
            row = next(i for i in env.json("image", "list") if i["name"] == image)
            sizes[image] = _ext4_sizes(Path(row["rootfs_path"]))
        for i in range(runs):
            for image in IMAGES if i % 2 == 0 else reversed(IMAGES):
                boots[image].append(_boot_to_ready(env, image, f"b{i}-{len(boots[image])}"))
        # The headline on the default image: cold (the suite's pool_size 0), then out of
        # the box (pool_size unset: "auto", 1 VM on a host with 2 CPUs and 8 GiB).
        repo = make_repo(env.home.root / "repo", passing=True)
        cold = [_headline(env, repo) for _ in range(runs)]
        env.stop_daemon()
        env.extra_env["BANGER_POOL_SIZE"] = ""  # empty counts as unset
        env.start_daemon()
        warm = []
        for _ in range(runs):
            _pool_ready(env)
            warm.append(_headline(env, repo))
    med = statistics.median
    print(f"bench dev_image: catalog images built here, boots under QEMU/TCG, median of {runs}")
    for image in IMAGES:
        wall, stages = builds[image]
        size, used = sizes[image]
        kernel = sum(stages.get(s, 0.0) for s in ("download", "extract", "modules", "initrd"))
        parts = ", ".join(
            f"{s} {stages[s]:.1f} s" for s in ("bootstrap", "packages", "ext4") if s in stages
        )
        print(
            f"  {image:<24} build {wall:6.1f} s ({parts}; kernel {kernel:.1f} s)   "
            f"ext4 {size >> 20} MiB, {used >> 20} MiB used   "
            f"boot-to-ready {med(boots[image]):5.2f} s"
        )
    ratio = med(boots["debian-bookworm"]) / med(boots["debian-bookworm-minimal"])
    verdict = "within" if ratio <= 1.15 else "OVER"
    print(f"  boot-to-ready dev / minimal: x{ratio:.2f} ({verdict} the x1.15 goal)")
    print(
        f"  vm run --rm ./repo -- make test (default image, no flags): cold {med(cold):.2f} s,"
        f" out of the box (the default pool's VM claimed) {med(warm):.2f} s"
        f" = x{med(warm) / med(cold):.2f} of cold"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
