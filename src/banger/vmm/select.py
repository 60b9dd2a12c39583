"""Which VMM and which accelerator a VM gets (SPEC intro, DESIGN "VMM backends").

Owns: the automatic choice — Firecracker when its binary is present and /dev/kvm runs
guests; else QEMU with KVM; else QEMU with TCG (slow, said once) — the ``vmm`` override,
and the KVM probe: /dev/kvm can exist and still be unable to run a guest (nested PVM
hosts hang right after the BIOS), so banger boots the kernel under KVM once per host boot
and checks that it prints. Must not: start VMs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from banger.config.settings import Config, VmmChoice
from banger.errors import UnsupportedHost
from banger.host import procinfo
from banger.vmm.base import Accel, Backend

PROBE_TIMEOUT_S = 6.0
PROBE_MARKER = b"Linux version"


@dataclass(frozen=True)
class Choice:
    backend: Backend
    accel: Accel
    binary: Path
    reason: str


def find_binary(configured: str | None, default: str) -> Path | None:
    if configured:
        return Path(configured) if os.access(configured, os.X_OK) else None
    found = shutil.which(default)
    return Path(found) if found else None


def choose(config: Config, *, kvm_usable: bool, override: Backend | None = None) -> Choice:
    wanted = override or (None if config.vmm is VmmChoice.AUTO else Backend(config.vmm.value))
    firecracker = find_binary(config.firecracker_bin, "firecracker")
    qemu = find_binary(config.qemu_bin, "qemu-system-x86_64")
    if wanted is Backend.FIRECRACKER or (wanted is None and firecracker and kvm_usable):
        if firecracker is None:
            raise UnsupportedHost(
                "vmm is firecracker but no firecracker binary was found",
                hint='install firecracker or set firecracker_bin; or use vmm = "qemu"',
            )
        return Choice(Backend.FIRECRACKER, Accel.KVM, firecracker, "firecracker")
    if qemu is None:
        raise UnsupportedHost(
            "no qemu-system-x86_64 found (and Firecracker cannot run here)",
            hint="sudo apt-get install qemu-system-x86, or set qemu_bin in config.toml",
        )
    if kvm_usable:
        return Choice(Backend.QEMU, Accel.KVM, qemu, "QEMU with KVM")
    return Choice(
        Backend.QEMU,
        Accel.TCG,
        qemu,
        "QEMU with software emulation (TCG): slow, because /dev/kvm cannot run "
        "guests on this host (see `banger doctor`)",
    )


def _cache_read(cache: Path) -> bool | None:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("boot_id") == procinfo.boot_id():
        return bool(data.get("kvm_runs_guests"))
    return None


async def kvm_runs_guests(qemu: Path | None, kernel: Path, cache: Path) -> bool:
    """Boot ``kernel`` under KVM for a few seconds; cached per host boot in ``cache``."""
    cached = _cache_read(cache)
    if cached is not None:
        return cached
    result = await _probe(qemu, kernel) if qemu else False
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps({"boot_id": procinfo.boot_id(), "kvm_runs_guests": result}))
    return result


async def _probe(qemu: Path, kernel: Path) -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    proc = await asyncio.create_subprocess_exec(
        str(qemu),
        "-M",
        "microvm,acpi=on,isa-serial=on",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    try:
        while PROBE_MARKER not in seen and (left := deadline - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(proc.stdout.read(4096), left)
            except TimeoutError:
                break
            if not chunk:
                break
            seen = (seen + chunk)[-65536:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    return PROBE_MARKER in seen
