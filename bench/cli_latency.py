"""CLI latency: `banger daemon status` against a running daemon vs `python3 -c pass`.

The ratio says how much of a CLI call is banger's own work on top of starting the
interpreter; `import click` is the floor any click CLI pays (what costs what:
docs/explanation/cli-startup.md). Run: bench/run [--quick] [--runs N].
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "BANGER_"))}
    # An installed banger has its bytecode; without it every run would compile anew.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for name in ("HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"):
        path = root / name.lower()
        path.mkdir()
        env[name] = str(path)
    return env


def _median_ms(argv: list[str], env: dict[str, str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs (CI)")
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    runs = args.runs or (10 if args.quick else 40)
    with tempfile.TemporaryDirectory(prefix="bgr-bench-") as tmp:
        env = _env(Path(tmp))
        banger = str(BIN / "banger")
        subprocess.run([banger, "daemon", "start"], env=env, check=True, capture_output=True)
        try:
            cases = {
                "python3 -c pass (baseline)": [sys.executable, "-c", "pass"],
                "python3 -c 'import click'": [sys.executable, "-c", "import click"],
                "banger version": [banger, "version"],
                "banger daemon status": [banger, "daemon", "status"],
                "banger vm list --json": [banger, "vm", "list", "--json"],
            }
            for argv in cases.values():
                _median_ms(argv, env, 2)  # warm caches, write bytecode
            figures = {name: _median_ms(argv, env, runs) for name, argv in cases.items()}
        finally:
            subprocess.run([banger, "daemon", "stop"], env=env, check=False, capture_output=True)
    base = figures["python3 -c pass (baseline)"]
    print(f"bench cli_latency: median of {runs} runs each")
    for name, ms in figures.items():
        print(f"  {name:<30} {ms:8.1f} ms   x{ms / base:5.2f} of baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
