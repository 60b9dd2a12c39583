"""VM run: `banger vm run --rm -- true` wall time for the tiny and the Debian guest, and
how much of it is banger's own work (everything but the guest's boot) as a share; and the
Debian guest again with banger's agent in it, whose readiness (`wait-ready`) is then the
agent's answer instead of an ssh handshake: the ratio of the two is printed.

"Guest boot" is the create stream's `boot` + `wait-ready` stages (QEMU spawned until the
guest answers); the rest of the wall time (CLI start, reserve, disks, the ssh exec of
`true`, the delete) is banger's. Two ways, each once per run:

- `vm run --rm`: its wall time, with the boot stages read from its progress lines
  (`✓ wait-ready: … (N ms)`; a stage under 100 ms prints no time and counts as 0);
- the same steps one by one: `vm create --json` (per-stage `elapsed_ms`), `vm ssh -- true`,
  `vm delete --force`, which splits banger's share into its parts.

Runs inside a network namespace of its own (TESTING.md network rule) with the cached
guests of tests/guests.py. Run: bench/run [--quick] (or `.venv/bin/python -m bench.vm_run
--runs N`).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time

from tests import guests
from tests.vmenv import VmEnv, events, vm_env

GUESTS = {
    "tiny": ["--vcpu", "1", "--memory", "256", "--disk-size", "1G"],
    "debian": ["--vcpu", "2", "--memory", "1024", "--disk-size", "1G"],
    # the same Debian guest carrying banger's agent: readiness is the agent's /healthz
    "debagent": ["--vcpu", "2", "--memory", "1024", "--disk-size", "1G"],
}
BOOT_STAGES = ("boot", "wait-ready")
# Once per state dir and host boot (the verdict is kept): the first create of this fresh
# home waits for it. Printed on its own, not counted as banger's work of every run.
PROBE_STAGE = "kvm-probe"
# _plain() in src/banger/cli/output.py: "<mark> <stage>: <detail>[ (<ms> ms)]"
_STAGE_LINE = re.compile(r"^\S+ (?P<stage>[\w-]+): .*?(?: \((?P<ms>\d+) ms\))?$")


def _run_once(env: VmEnv, image: str) -> tuple[float, float, float]:
    """`vm run --rm -- true`: wall seconds, guest boot seconds and KVM probe seconds (from
    its progress lines)."""
    started = time.perf_counter()
    out = env.banger("vm", "run", "--rm", "--image", image, *GUESTS[image], "--", "true")
    wall = time.perf_counter() - started
    assert out.returncode == 0, f"vm run --image {image} failed:\n{out.stdout}\n{out.stderr}"
    seen: dict[str, int] = {}
    for line in out.stdout.splitlines():
        m = _STAGE_LINE.match(line)
        if m and m["stage"] in (*BOOT_STAGES, PROBE_STAGE):
            seen[m["stage"]] = int(m["ms"] or 0)
    assert "wait-ready" in seen, f"vm run printed no wait-ready stage:\n{out.stdout}"
    probe = seen.pop(PROBE_STAGE, 0) / 1000
    return wall, sum(seen.values()) / 1000, probe


def _steps_once(env: VmEnv, image: str, name: str) -> dict[str, float]:
    """create --json, ssh -- true, delete: seconds per part (stages from elapsed_ms)."""
    parts: dict[str, float] = {}
    started = time.perf_counter()
    out = env.ok("vm", "create", "--name", name, "--image", image, *GUESTS[image], "--json")
    create = time.perf_counter() - started
    for event in events(out):
        if event.get("type") == "stage" and event.get("state") != "running":
            parts[event["stage"]] = parts.get(event["stage"], 0) + event.get("elapsed_ms", 0) / 1000
    parts["create: CLI + API"] = create - sum(parts.values())
    started = time.perf_counter()
    env.ok("vm", "ssh", name, "--", "true")
    parts["ssh -- true"] = time.perf_counter() - started
    started = time.perf_counter()
    env.ok("vm", "delete", "--force", name)
    parts["delete"] = time.perf_counter() - started
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run of each (CI)")
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    walls: dict[str, list[float]] = {g: [] for g in GUESTS}
    boots: dict[str, list[float]] = {g: [] for g in GUESTS}
    parts: dict[str, dict[str, list[float]]] = {g: {} for g in GUESTS}
    probed: tuple[str, float] | None = None
    with vm_env() as env:
        env.ok("kernel", "import", "cloud", "--from", str(guests.cloud_kernel().import_dir))
        rootfses = {
            "tiny": guests.tiny_rootfs(),
            "debian": guests.debian_rootfs(),
            "debagent": guests.debian_agent_rootfs(),
        }
        for image, rootfs in rootfses.items():
            env.ok("image", "register", image, "--rootfs", str(rootfs), "--kernel-ref", "cloud")
        for i in range(runs):
            for image in GUESTS:
                wall, boot, probe = _run_once(env, image)
                if probe:
                    probed = (image, probe)
                    wall -= probe
                walls[image].append(wall)
                boots[image].append(boot)
                for part, secs in _steps_once(env, image, f"{image}{i}").items():
                    parts[image].setdefault(part, []).append(secs)
    med = statistics.median
    print(f"bench vm_run: `vm run --rm -- true` under QEMU/TCG, median of {runs} run(s)")
    if probed is not None:
        print(
            f"  the first create of this fresh state dir waited {probed[1]:.2f} s for the KVM"
            f" probe ({probed[0]} run; kept after, until the host reboots): not in the walls"
        )
    for image in GUESTS:
        wall, boot = med(walls[image]), med(boots[image])
        own = wall - boot
        print(
            f"  {image:<8} vm run wall {wall:6.2f} s   guest boot {boot:6.2f} s   "
            f"banger's own work {own:5.2f} s = {own / wall:5.1%} of wall"
        )
        split = {p: med(v) for p, v in parts[image].items()}
        total = sum(split.values())
        guest = sum(split.get(s, 0.0) for s in BOOT_STAGES)
        mine = ", ".join(f"{p} {s:.2f} s" for p, s in split.items() if p not in BOOT_STAGES)
        print(
            f"  {'':<8} step by step {total:5.2f} s   guest boot {guest:6.2f} s   "
            f"banger's own work {total - guest:5.2f} s = {(total - guest) / total:5.1%}"
        )
        print(f"  {'':<8}   banger's parts: {mine}")
    ssh_way = med(parts["debian"]["wait-ready"])
    agent_way = med(parts["debagent"]["wait-ready"])
    print(
        f"  readiness on the Debian guest: wait-ready {agent_way:.2f} s with the agent vs "
        f"{ssh_way:.2f} s by SSH alone (x{agent_way / ssh_way:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
