"""The Debian agent guest booted under QEMU/TCG with banger's own command line, in a
network namespace of its own: shared by tests/e2e/test_agent.py, tests/e2e/test_exec.py and
bench/agent_exec.py (a test module is not a library: tests/unit/test_layers.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.vmm import qemu
from banger.vmm.base import Accel, Backend, DriveSpec, MachineSpec, NetSpec
from banger.vmm.channels import AgentChannel
from banger.vmm.table import agent_channel
from tests import guests
from tests.netns import Netns, bridge_with_taps, netns
from tests.qemuboot import (
    GATEWAY,
    GUEST_IP,
    GUEST_MAC,
    Prepared,
    kernel_cmdline,
    prepare,
    tail,
)

NEEDS_QEMU_GUEST = pytest.mark.skipif(
    os.geteuid() != 0
    or not os.path.exists("/dev/net/tun")
    or not all(shutil.which(t) for t in ("qemu-system-x86_64", "ip", "ssh", "debugfs")),
    reason="needs root, /dev/net/tun, qemu-system-x86_64, iproute2, ssh, debugfs",
)

STANDIN = Path(__file__).resolve().parent / "fcstandin" / "firecracker"
HOSTNAME = "agent-deb"
BOOT_TIMEOUT_S = 300.0


@dataclass
class Booted:
    ns: Netns
    proc: subprocess.Popen[bytes]
    channel: AgentChannel
    prepared: Prepared
    spec: MachineSpec
    started: float

    def ssh(self, command: str, *, stdin: str | None = None, timeout: float = 60) -> str:
        out = self.ns.run(
            [
                "ssh", "-i", str(self.prepared.key), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.prepared.known_hosts}",
                "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR",
                f"root@{GUEST_IP}", command,
            ],
            input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert out.returncode == 0, f"{command!r}: {out.stderr}"
        return str(out.stdout)

    def wait_ssh(self, within: float) -> float:
        while time.monotonic() - self.started < within:
            assert self.proc.poll() is None, "QEMU exited"
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.ssh("true", timeout=15)
                return time.monotonic() - self.started
            time.sleep(0.2)
        raise AssertionError(f"no SSH within {within}s")


@contextlib.contextmanager
def booted_debian(tmp: Path) -> Iterator[Booted]:
    """The Debian agent guest under QEMU/TCG in a namespace of its own (also bench/)."""
    run_dir = Path(tempfile.mkdtemp(prefix="bgag-"))  # short: sockets live here
    prepared = prepare(tmp, guests.debian_agent_rootfs(), HOSTNAME)
    spec = MachineSpec(
        name=HOSTNAME,
        vcpu=2,
        memory_mib=512,
        kernel=guests.cloud_kernel().vmlinuz,
        initrd=guests.mini_initrd(),
        cmdline=kernel_cmdline(HOSTNAME),
        drives=(DriveSpec("rootfs", prepared.rootfs), DriveSpec("work", prepared.workdisk)),
        net=NetSpec("tap0", GUEST_MAC, GUEST_IP, GATEWAY, 24),
        vm_dir=tmp,
        run_dir=run_dir,
        accel=Accel.TCG,
    )
    channel = agent_channel(spec, Backend.QEMU)
    binary = Path(shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    argv = qemu.build_argv(binary, spec)  # includes the agent channel
    try:
        with netns() as ns:
            bridge_with_taps(ns, "br0", f"{GATEWAY}/24", ["tap0"])
            with spec.vmm_log.open("wb") as log:
                started = time.monotonic()
                proc = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            try:
                yield Booted(ns, proc, channel, prepared, spec, started)
            except BaseException:
                print(f"--- QEMU\n{tail(spec.vmm_log)}\n--- console\n{tail(spec.console_log)}")
                raise
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
