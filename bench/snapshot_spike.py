#!/usr/bin/env python3
"""Spike (docs/explanation/snapshots.md): save a booted tiny guest with QEMU's `migrate`
to a file and restore it with `-incoming`, under TCG, timing both.

Not part of banger. Boots the tests' tiny guest (tests/guests.py cache) on banger's QEMU
microvm command line without a network device (nothing leaves the process), waits for
its console to show the guest is up, then:

  stop; migrate "exec:cat > STATE"         -> save time, file size
  qemu ... -incoming "exec:cat STATE"      -> restore time (process start to `running`)

Run as: .venv/bin/python -m bench.snapshot_spike [--memory 256] [--runs 3] (not in bench/run:
it measures QEMU, not banger)
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests import guests
from tests.qemuboot import host_tsc_khz

UP_MARK = b"dropbear"
# As banger does under TCG: the host's TSC rate, or the guest hangs calibrating it.
TSC = f" tsc_early_khz={khz}" if (khz := host_tsc_khz()) else ""


def qmp(path: Path) -> tuple[socket.socket, object]:
    s = socket.socket(socket.AF_UNIX)
    deadline = time.monotonic() + 30
    while True:
        try:
            s.connect(str(path))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    f = s.makefile("rwb")
    json.loads(f.readline())
    call(f, "qmp_capabilities")
    return s, f


def call(f, cmd: str, **args: object) -> dict:  # type: ignore[no-untyped-def]
    f.write(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
    f.flush()
    while True:
        reply = json.loads(f.readline())
        if "return" in reply or "error" in reply:
            return reply


def argv(work: Path, rootfs: Path, kernel: Path, memory: int, name: str) -> list[str]:
    return [
        "qemu-system-x86_64", "-M", "microvm,acpi=on,rtc=on,isa-serial=on",
        "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", str(memory),
        "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-monitor", "none", "-chardev", f"file,id=console,path={work / name}.console",
        "-serial", "chardev:console", "-qmp", f"unix:{work / name}.qmp,server=on,wait=off",
        "-kernel", str(kernel), "-initrd", str(guests.mini_initrd()), "-append",
        "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw net.ifnames=0" + TSC,
        "-drive", f"file={rootfs},if=none,id=root,format=raw",
        "-device", "virtio-blk-device,drive=root", "-device", "virtio-rng-device",
    ]  # fmt: skip


def main() -> None:  # noqa: PLR0915 - a spike, one straight sequence
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    kernel = guests.cloud_kernel().vmlinuz
    boots, saves, restores, sizes = [], [], [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="snap-spike-") as tmp:
            work = Path(tmp)
            rootfs = work / "rootfs.ext4"
            shutil.copyfile(guests.tiny_rootfs(), rootfs)
            started = time.monotonic()
            vm = subprocess.Popen(argv(work, rootfs, kernel, args.memory, "a"))
            try:
                console = work / "a.console"
                deadline = time.monotonic() + 120
                while not console.exists() or UP_MARK not in console.read_bytes():
                    if time.monotonic() > deadline:
                        tail = console.read_bytes()[-800:] if console.exists() else b""
                        raise SystemExit("guest not up:\n" + tail.decode(errors="replace"))
                    time.sleep(0.02)
                boots.append(time.monotonic() - started)
                _, f = qmp(work / "a.qmp")
                state = work / "state"
                t = time.monotonic()
                call(f, "stop")
                call(f, "migrate", uri=f"exec:cat > {state}")
                while call(f, "query-migrate")["return"].get("status") not in (
                    "completed",
                    "failed",
                ):
                    time.sleep(0.005)
                saves.append(time.monotonic() - t)
                sizes.append(state.stat().st_size)
            finally:
                vm.kill()
                vm.wait()
            t = time.monotonic()
            clone = subprocess.Popen(
                [*argv(work, rootfs, kernel, args.memory, "b"), "-incoming", f"exec:cat {state}"]
            )
            try:
                _, g = qmp(work / "b.qmp")
                while call(g, "query-migrate")["return"].get("status") != "completed":
                    time.sleep(0.005)
                call(g, "cont")
                while call(g, "query-status")["return"]["status"] != "running":
                    time.sleep(0.005)
                restores.append(time.monotonic() - t)
            finally:
                clone.kill()
                clone.wait()
        print(f"run {run}: boot {boots[-1]:.2f} s, save {saves[-1]:.3f} s "
              f"({sizes[-1] / 2**20:.1f} MiB), restore {restores[-1]:.3f} s")  # fmt: skip
    med = statistics.median
    print(
        f"median of {args.runs}: boot to console mark {med(boots):.2f} s, "
        f"save {med(saves):.3f} s ({med(sizes) / 2**20:.1f} MiB), "
        f"restore to running {med(restores):.3f} s (x{med(restores) / med(boots):.3f} of boot)"
    )


if __name__ == "__main__":
    main()
