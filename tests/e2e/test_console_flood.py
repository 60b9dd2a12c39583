"""A guest flooding its serial console, under QEMU/TCG in a netns (ADVERSARIAL 102).

The daemon's monitor cuts a log that outgrows ``LOG_CAP_BYTES`` and keeps the last part
in ``<log>.1``; that only works because QEMU writes the console with O_APPEND, which the
first tests check on QEMU itself, for both machine types banger can build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.services import console_logs, vm_boot
from banger.services.console_logs import LOG_CAP_BYTES
from banger.vmm import qemu
from banger.vmm.base import Accel, MachineSpec
from tests import guests
from tests.conftest import BIN
from tests.netns import netns
from tests.vmenv import VmEnv, vm_env

TINY = ("--image", "tiny", "--vcpu", "1", "--memory", "256", "--disk-size", "1G")
#: Measured here: the tiny guest pushes 0.25-0.5 MB/s through the emulated 16550 under
#: TCG, so this takes 16-32 s, and it is far more than the live file and `.1` may hold.
FLOOD_BYTES = 8_000_000
FLOOD = f"head -c {FLOOD_BYTES} /dev/zero | tr '\\0' x > /dev/ttyS0; echo flood-done > /dev/ttyS0"


@pytest.fixture
def spec(tmp_path: Path) -> Iterator[MachineSpec]:
    vm_dir = tmp_path / "vm,dir"  # a comma must survive QEMU's option syntax
    vm_dir.mkdir()
    run_dir = Path(tempfile.mkdtemp(prefix="bgcl-"))  # short: sockets live here
    khz = vm_boot.host_tsc_khz()
    yield MachineSpec(
        name="appender",
        vcpu=1,
        memory_mib=256,
        kernel=guests.cloud_kernel().vmlinuz,
        initrd=guests.mini_initrd(),
        cmdline="console=ttyS0 reboot=k panic=-1" + (f" tsc_early_khz={khz}" if khz else ""),
        drives=(),
        net=None,
        vm_dir=vm_dir,
        run_dir=run_dir,
        accel=Accel.TCG,
    )
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.parametrize("machine", ["microvm", "pc"])
def test_qemu_writes_the_console_with_o_append(spec: MachineSpec, machine: str) -> None:
    """ADVERSARIAL 102: with banger's command line QEMU opens console.log O_APPEND and adds
    to what is there (a cut file is then written from offset 0, without a hole)."""
    spec.console_log.write_bytes(b"from an earlier boot\n")
    binary = Path(shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    argv = qemu.build_argv(binary, spec, machine=machine)
    with netns() as ns, spec.vmm_log.open("wb") as vmm_log:
        proc = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=vmm_log, stderr=vmm_log)
        try:
            deadline = time.monotonic() + 60
            while b"Linux version" not in spec.console_log.read_bytes():
                assert proc.poll() is None, spec.vmm_log.read_text()
                assert time.monotonic() < deadline, "no kernel output on the console"
                time.sleep(0.1)
            flags = _open_flags(proc.pid, spec.console_log)  # `ip netns exec` execs QEMU
        finally:
            proc.kill()
            proc.wait()
    console = spec.console_log.read_bytes()
    assert console.startswith(b"from an earlier boot\n") and b"Linux version" in console
    assert flags & os.O_APPEND


def _open_flags(pid: int, path: Path) -> int:
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        if os.readlink(fd) == str(path):
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
            return int(info.split("flags:")[1].split()[0], 8)
    raise AssertionError(f"QEMU has no fd open on {path}")


@pytest.fixture(scope="module")
def env() -> Iterator[VmEnv]:
    with vm_env("tap_pool_size = 1\n") as e:
        e.add_test_guests()
        yield e


def test_a_console_flood_stays_bounded_and_logs_still_work(env: VmEnv) -> None:
    """ADVERSARIAL 102: the guest writes 8 MB to ttyS0; console.log + console.log.1 never
    hold more than two caps plus what arrives in two monitor passes (1 s each), the live
    file never starts with a hole, `vm logs` shows the end, and `vm delete` leaves nothing."""
    env.ok("vm", "create", "--name", "flood", *TINY)
    vm_dir = Path(env.json("vm", "show", "flood")["vm_dir"])
    live, older = vm_dir / "console.log", vm_dir / "console.log.1"
    flood = env.ns.popen(
        [str(BIN / "banger"), "vm", "ssh", "flood", "--", FLOOD],
        env=env.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    started = time.monotonic()
    largest_live = largest_older = largest_sum = 0
    while flood.poll() is None:
        assert time.monotonic() - started < 120, "the flood did not end"
        sizes = _size(live), _size(older)
        largest_live, largest_older = max(largest_live, sizes[0]), max(largest_older, sizes[1])
        largest_sum = max(largest_sum, sum(sizes))
        assert _first_byte(live) != b"\0", "a hole at the start of console.log"
        time.sleep(0.1)
    seconds = time.monotonic() - started
    assert flood.returncode == 0, flood.stderr.read() if flood.stderr else ""
    rate = FLOOD_BYTES / seconds
    print(f"flood: {FLOOD_BYTES} bytes in {seconds:.1f} s = {rate / 1000:.0f} KB/s; largest "
          f"console.log {largest_live}, .1 {largest_older}, both {largest_sum}")  # fmt: skip

    # Two monitor passes' worth of output is the slack; the flood must exceed the bound
    # by far, or this test could not fail.
    slack = max(512 * 1024, int(2 * rate))
    assert 2 * LOG_CAP_BYTES + slack < FLOOD_BYTES
    assert largest_live <= LOG_CAP_BYTES + slack
    assert largest_older <= LOG_CAP_BYTES + console_logs.LATE_BYTES_MAX
    assert largest_sum <= 2 * LOG_CAP_BYTES + slack
    assert older.stat().st_size >= LOG_CAP_BYTES  # rotated at least once
    assert older.read_bytes().count(b"x") >= LOG_CAP_BYTES - 4096

    shown = _logs_until(env, "flood", b"flood-done")
    assert "x" * 1000 + "flood-done" in shown, shown[-300:]
    # the default 16 KiB, taken from `.1` too when the live file holds less (a few \r\n
    # became \n on the way)
    assert len(shown) > 16384 - 100
    env.ok("vm", "delete", "--force", "flood")
    assert not vm_dir.exists()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _first_byte(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(1)
    except FileNotFoundError:
        return b""


def _logs_until(env: VmEnv, name: str, marker: bytes) -> str:
    """`vm logs` once the marker the guest wrote last has left the UART."""
    deadline = time.monotonic() + 10
    while True:
        shown = env.ok("vm", "logs", name)
        if marker.decode() in shown or time.monotonic() > deadline:
            return shown
        time.sleep(0.2)
