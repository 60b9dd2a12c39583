"""Helper mode: `banger vm run --rm -- true` on the tiny guest with the daemon run by a
normal user through banger-helper, as a ratio to the daemon run as root (in-process
privileged steps), both measured in the same run (SPEC §9; issue 11 asks for at most 1.1x).

Each mode gets its own network namespace and banger home (tests/vmenv.py for root,
tests/userenv.py for the user, which also creates and removes that user); the cached
kernel and tiny guest of tests/guests.py; runs alternate between the modes so that drift
of the machine's load hits both. One warm-up run per mode is not counted (it fills the TAP
pool and the page cache). Run: bench/run [--quick] (or `.venv/bin/python -m
bench.helper_mode --runs N`).
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="three runs of each (CI)")
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 7)
    root_s: list[float] = []
    helper_s: list[float] = []
    with vm_env() as root, user_env() as user:
        root.add_test_guests()
        user.start_daemon()
        add_tiny_guest(user)
        _timed(root.ok), _timed(user.ok)  # warm-up
        for _ in range(runs):
            root_s.append(_timed(root.ok))
            helper_s.append(_timed(user.ok))
    r, h = statistics.median(root_s), statistics.median(helper_s)
    print(f"bench helper_mode: `vm run --rm -- true`, tiny guest, median of {runs} run(s)")
    print(f"  root (in-process)   {r:6.2f} s   runs: {', '.join(f'{s:.2f}' for s in root_s)}")
    print(f"  helper (as a user)  {h:6.2f} s   runs: {', '.join(f'{s:.2f}' for s in helper_s)}")
    print(f"  ratio helper / root {h / r:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
