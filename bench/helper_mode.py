"""Helper and rootless modes: `banger vm run --rm -- true` on the tiny guest with the
daemon run by a normal user — through banger-helper, and with no helper at all (rootless:
QEMU's user-mode networking, SSH over a loopback forward) — each as a ratio to the daemon
run as root (in-process privileged steps), all measured in the same run (SPEC §9; issue 11
asks for at most 1.1x).

Each mode gets its own network namespace and banger home (tests/vmenv.py for root,
tests/userenv.py for the users, which also creates and removes them); the cached kernel
and tiny guest of tests/guests.py; runs go round the modes so that drift of the machine's
load hits all of them. One warm-up run per mode is not counted (it fills the TAP pool and
the page cache). Run: bench/run [--quick] (or `.venv/bin/python -m bench.helper_mode
--runs N`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from tests.userenv import add_tiny_guest, user_env
from tests.vmenv import vm_env

TINY = ("--image", "tiny", "--vcpu", "1", "--memory", "256", "--disk-size", "1G")


def _timed(run: Callable[..., object]) -> float:
    started = time.perf_counter()
    run("vm", "run", "--rm", *TINY, "--", "true")
    return time.perf_counter() - started


def _line(label: str, times: list[float]) -> str:
    runs = ", ".join(f"{s:.2f}" for s in times)
    return f"  {label:<22}{statistics.median(times):6.2f} s   runs: {runs}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="three runs of each (CI)")
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 7)
    times: dict[str, list[float]] = {"root": [], "helper": [], "rootless": []}
    with vm_env() as root, user_env() as user, user_env(helper=False) as rootless:
        root.add_test_guests()
        user.start_daemon()
        add_tiny_guest(user)
        rootless.start_daemon()
        add_tiny_guest(rootless)
        modes = {"root": root.ok, "helper": user.ok, "rootless": rootless.ok}
        for run in modes.values():
            _timed(run)  # warm-up
        for _ in range(runs):
            for mode, run in modes.items():
                times[mode].append(_timed(run))
    r = statistics.median(times["root"])
    print(f"bench helper_mode: `vm run --rm -- true`, tiny guest, median of {runs} run(s)")
    print(_line("root (in-process)", times["root"]))
    print(_line("helper (as a user)", times["helper"]))
    print(_line("rootless (as a user)", times["rootless"]))
    print(f"  ratio helper / root   {statistics.median(times['helper']) / r:6.2f}x")
    print(f"  ratio rootless / root {statistics.median(times['rootless']) / r:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
