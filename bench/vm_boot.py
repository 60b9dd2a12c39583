"""VM boot: create-to-SSH through banger vs the same disks booted by a bare QEMU command
line, polled the same way (the difference is banger's overhead); create time with a
1G vs a 64G work disk (must be about equal: creation is not proportional to disk size);
and the first create of a freshly started daemon vs a later one (issue 12: the KVM probe's
verdict is kept, so a fresh daemon must not pay for it again; goal <= x1.05).

Runs inside a network namespace of its own (TESTING.md network rule), with the tiny
busybox/dropbear guest from tests/guests.py. Run: bench/run [--quick] (or
`.venv/bin/python -m bench.vm_boot --runs N`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests import guests
from tests.vmenv import VmEnv, events, vm_env

from banger.net.user_net import SshTarget
from banger.services.vm_boot import ssh_argv
from banger.vmm.base import Accel, DriveSpec, MachineSpec, NetSpec
from banger.vmm.qemu import build_argv

TINY = ["--image", "tiny", "--vcpu", "1", "--memory", "256"]


def _create(env: VmEnv, name: str, disk: str) -> tuple[float, int]:
    started = time.perf_counter()
    out = env.ok("vm", "create", "--name", name, *TINY, "--disk-size", disk, "--json")
    took = time.perf_counter() - started
    disks = next(e for e in events(out) if e.get("stage") == "disks" and e["state"] == "ok")
    return took, int(disks["elapsed_ms"])


def _create_split(env: VmEnv, name: str) -> tuple[float, float]:
    """Seconds for a whole create, and for its part before the guest boots (banger's own
    work: where a KVM probe would show, without the guest's boot-time noise)."""
    started = time.perf_counter()
    out = env.ok("vm", "create", "--name", name, *TINY, "--disk-size", "1G", "--json")
    took = time.perf_counter() - started
    guest_ms = sum(
        e["elapsed_ms"]
        for e in events(out)
        if e.get("stage") in ("boot", "wait-ready") and e["state"] == "ok"
    )
    return took, took - guest_ms / 1000


def _bare_boot(env: VmEnv, vm: dict[str, Any], key: Path) -> float:
    """Boot the stopped VM's own disks with QEMU directly; seconds until `ssh true` works."""
    vm_dir = Path(vm["vm_dir"])
    kernel_dir = env.home.state_dir / "kernels" / "cloud"
    tap = "bgbench0"
    env.ns.ip("tuntap", "add", "dev", tap, "mode", "tap")
    env.ns.ip("link", "set", tap, "master", "banger0", "up")
    spec = MachineSpec(
        name="bare",
        vcpu=1,
        memory_mib=256,
        kernel=kernel_dir / "vmlinuz",
        initrd=kernel_dir / "initrd.img",
        cmdline=_cmdline(vm),
        drives=(
            DriveSpec("rootfs", vm_dir / "rootfs.ext4"),
            DriveSpec("work", vm_dir / "work.ext4"),
        ),
        net=NetSpec(tap=tap, mac=vm["mac"], ip=vm["ip"], gateway="10.213.7.1", prefix_len=24),
        vm_dir=env.home.root,
        run_dir=env.home.root,
        accel=Accel.TCG,
    )
    argv = build_argv(Path("/usr/bin/qemu-system-x86_64"), spec)
    poll = ssh_argv(key, vm_dir / "known_hosts", SshTarget(vm["ip"]))
    started = time.perf_counter()
    qemu = env.ns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while env.ns.run([*poll, "true"], capture_output=True, check=False).returncode != 0:
            assert qemu.poll() is None, "bare qemu exited"
            time.sleep(0.2)
        return time.perf_counter() - started
    finally:
        qemu.kill()
        qemu.wait()
        env.ns.ip("link", "del", tap)


def _cmdline(vm: dict[str, Any]) -> str:
    from banger.model.cmdline import BootArgs, kernel_cmdline
    from banger.services.vm_boot import host_tsc_khz

    return kernel_cmdline(
        BootArgs(
            hostname=vm["name"],
            ip=vm["ip"],
            gateway="10.213.7.1",
            netmask="255.255.255.0",
            dns=("1.1.1.1", "9.9.9.9"),
            tsc_khz=host_tsc_khz(),
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run of each (CI)")
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    banger_s, restart_s, bare_s, small, large = [], [], [], [], []
    fresh_s, later_s, fresh_own, later_own = [], [], [], []
    with vm_env() as env:
        env.ok("kernel", "import", "cloud", "--from", str(guests.cloud_kernel().import_dir))
        env.ok(
            "image",
            "register",
            "tiny",
            "--rootfs",
            str(guests.tiny_rootfs()),
            "--kernel-ref",
            "cloud",
        )
        key = env.home.state_dir / "ssh" / "id_ed25519"  # the managed key (no ssh_key_path)
        for i in range(runs):
            took, disk_ms = _create(env, f"b{i}", "1G")
            banger_s.append(took)
            small.append(disk_ms)
            env.ok("vm", "stop", f"b{i}")
            started = time.perf_counter()
            env.ok("vm", "start", f"b{i}")
            restart_s.append(time.perf_counter() - started)
            env.ok("vm", "stop", f"b{i}")
            bare_s.append(_bare_boot(env, env.json("vm", "show", f"b{i}"), key))
            env.ok("vm", "delete", f"b{i}")
            _, disk64_ms = _create(env, f"l{i}", "64G")
            large.append(disk64_ms)
            env.ok("vm", "delete", "--force", f"l{i}")
        for i in range(runs):
            env.stop_daemon()
            env.start_daemon()
            # One VM at a time: a running TCG guest would slow the next create down.
            took, own = _create_split(env, f"f{i}")
            fresh_s.append(took)
            fresh_own.append(own)
            env.ok("vm", "delete", "--force", f"f{i}")
            took, own = _create_split(env, f"g{i}")
            later_s.append(took)
            later_own.append(own)
            env.ok("vm", "delete", "--force", f"g{i}")
    med = statistics.median
    print(f"bench vm_boot: tiny guest under QEMU/TCG, median of {runs} run(s)")
    print(f"  bare qemu start-to-SSH (baseline)   {med(bare_s):6.2f} s   x1.00")
    print(
        f"  banger vm create-to-SSH             {med(banger_s):6.2f} s   "
        f"x{med(banger_s) / med(bare_s):.2f} (overhead {med(banger_s) - med(bare_s):+.2f} s)"
    )
    print(
        f"  banger vm start-to-SSH (same disks) {med(restart_s):6.2f} s   "
        f"x{med(restart_s) / med(bare_s):.2f}"
    )
    print(f"  disks stage, --disk-size 1G         {med(small):6d} ms")
    print(
        f"  disks stage, --disk-size 64G        {med(large):6d} ms   "
        f"x{med(large) / max(1, med(small)):.2f} of 1G"
    )
    print(f"  vm create, later in the daemon       {med(later_s):6.2f} s   x1.00")
    print(
        f"  vm create, first of a fresh daemon  {med(fresh_s):6.2f} s   "
        f"x{med(fresh_s) / med(later_s):.2f} (goal <= x1.05)"
    )
    print(
        f"    of which before the guest boots   {med(fresh_own):6.2f} s   "
        f"x{med(fresh_own) / med(later_own):.2f} of {med(later_own):.2f} s later "
        "(a KVM probe would add ~6 s here)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
