"""SDK and MCP: what an agent pays per sandbox and per command, each against the CLI
doing the same in the same run (issue 13).

- **sandbox**: `Sandbox.create()` + `sb.run("true")` + `sb.delete()` through the SDK,
  against `banger vm run --rm -- true` through the CLI; p50 of the wall time each.
- **command**: the MCP round trip of `exec` with `true` (an MCP client of the MCP library
  talking to `banger mcp` over stdio, on one sandbox the server created), against
  `banger vm exec NAME -- true` (a CLI process per call) on the same VM; p50 and p95.
  MCP's command is a shell line (`sh -c true` in the guest), so the CLI running
  `sh -c true` is printed too.

The Debian test guest with banger's agent under QEMU/TCG, a daemon in a network
namespace of its own (TESTING.md network rule; tests/vmenv.py). The SDK runs in this
process (it needs only the daemon's socket); the CLI and `banger mcp` run in the
namespace. Run: bench/run [--quick] (or `.venv/bin/python -m bench.sdk --runs N`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from tests import guests
from tests.mcpclient import mcp_session, ok
from tests.vmenv import VmEnv, vm_env

from banger.host.paths import Layout
from banger.sdk.sandbox import Sandbox, connect

CONFIG = (
    'default_image_name = "deb-agent"\ntap_pool_size = 2\n'
    '[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = "1G"\n'
)


def _sdk_sandbox(env: VmEnv) -> float:
    client = connect(Layout.from_env(env.env))
    started = time.perf_counter()
    with Sandbox.create(client=client) as sb:
        sb.run("true").check()
    return time.perf_counter() - started


def _cli_sandbox(env: VmEnv) -> float:
    started = time.perf_counter()
    env.ok("vm", "run", "--rm", "--", "true")
    return time.perf_counter() - started


async def _mcp_execs(env: VmEnv, calls: int) -> tuple[list[float], str]:
    """``calls`` MCP exec round trips on a sandbox the server made (kept for the CLI)."""
    async with mcp_session(env.env, wrap=env.ns.argv([])) as session:
        name = (await ok(session, "create", ephemeral=False))["sandbox"]
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            result = await ok(session, "exec", sandbox=name, command="true")
            times.append(time.perf_counter() - started)
            assert result["exit_code"] == 0, result
    return times, name


def _cli_execs(env: VmEnv, name: str, calls: int, *argv: str) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        env.ok("vm", "exec", name, "--", *argv)
        times.append(time.perf_counter() - started)
    return times


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs (CI)")
    parser.add_argument("--runs", type=int, default=0, help="sandboxes made each way")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    calls = 5 if args.quick else 25
    sdk: list[float] = []
    cli: list[float] = []
    with vm_env(CONFIG) as env:
        env.ok("kernel", "import", "cloud", "--from", str(guests.cloud_kernel().import_dir))
        rootfs = str(guests.debian_agent_rootfs())
        env.ok("image", "register", "deb-agent", "--rootfs", rootfs, "--kernel-ref", "cloud")
        # Not counted: the fresh daemon's first create (bench/vm_run measures it) would
        # land on whichever way went first.
        _cli_sandbox(env)
        for run in range(runs):  # interleaved, first way alternating: same host load
            if run % 2:
                cli.append(_cli_sandbox(env))
                sdk.append(_sdk_sandbox(env))
            else:
                sdk.append(_sdk_sandbox(env))
                cli.append(_cli_sandbox(env))
        mcp, name = asyncio.run(_mcp_execs(env, calls))
        shell = _cli_execs(env, name, calls, "true")
        # MCP's `command` is a shell line: `sh -c true` in the guest, one exec more.
        shell_sh = _cli_execs(env, name, calls, "sh", "-c", "true")
        env.ok("vm", "delete", "--force", name)
    med = statistics.median
    print(f"bench sdk: the Debian agent guest under QEMU/TCG ({runs} sandbox(es) each way)")
    print(
        f"  SDK create + run('true') + delete  p50 {med(sdk):6.2f} s   vs CLI "
        f"`vm run --rm -- true` p50 {med(cli):6.2f} s   (SDK/CLI x{med(sdk) / med(cli):.2f})"
    )
    print(
        f"  MCP exec `true` round trip  p50 {_p(mcp, 0.5) * 1000:7.1f} ms  p95 "
        f"{_p(mcp, 0.95) * 1000:7.1f} ms   vs `banger vm exec NAME -- true` p50 "
        f"{_p(shell, 0.5) * 1000:7.1f} ms  p95 {_p(shell, 0.95) * 1000:7.1f} ms   "
        f"(MCP/CLI x{_p(mcp, 0.5) / _p(shell, 0.5):.2f}, {calls} calls each)"
    )
    print(
        f"  the same shell line through the CLI, `vm exec NAME -- sh -c true`  p50 "
        f"{_p(shell_sh, 0.5) * 1000:7.1f} ms   (MCP/CLI x{_p(mcp, 0.5) / _p(shell_sh, 0.5):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
