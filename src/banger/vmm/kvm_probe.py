"""The KVM probe: can /dev/kvm run a guest on this host? Measured once, kept on disk.

/dev/kvm can exist, open and answer ioctls and still be unable to run a guest (nested
PVM hosts hang right after the BIOS), so banger boots a kernel under KVM with QEMU's own
command line (``QemuVmm.kvm_probe_argv``, through the ``Runner``) and looks for the
kernel banner on its console. Where KVM does not work that costs the whole timeout
(6 s), so the verdict is stored in the state dir and kept while its ``ProbeKey`` holds:
the host boot, the host kernel release, the QEMU binary (path, size, mtime) and the
/dev/kvm node (device number, mode, owner). The daemon starts the probe in the
background; every caller awaits that one run, never a second.

No boot is needed, and nothing is stored, when QEMU is missing or /dev/kvm does not
open for us: the answer is then "no" and costs a syscall (and changes with group
membership, which no key could see).
Owns: the key, the stored verdict (one JSON file, replaced atomically), running the
probe once at a time. Must not: choose the backend (``banger.vmm.select``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from banger.config.settings import Config
from banger.errors import BangerError, Timeout
from banger.host import procinfo
from banger.host.publish import write_file_atomic
from banger.host.runner import Runner
from banger.vmm.base import Backend, console_log_path
from banger.vmm.qemu import QemuVmm
from banger.vmm.table import binary_for

log = logging.getLogger("banger.vmm.kvm_probe")

PROBE_TIMEOUT_S = 6.0
PROBE_MARKER = b"Linux version"
CACHE_NAME = "kvm-probe.json"
#: Bumped when what is stored, or how the probe decides, changes: old verdicts then lapse.
CACHE_FORMAT = 1
#: The backend that probes. Firecracker is only chosen once KVM is known to work, and it
#: cannot boot anything without a series of API calls; QEMU boots from one argv.
PROBER = Backend.QEMU
KVM_DEVICE = Path("/dev/kvm")


@dataclass(frozen=True)
class ProbeKey:
    """What a stored verdict depends on; any change means probing again."""

    boot_id: str
    kernel_release: str
    qemu: str
    qemu_size: int
    qemu_mtime_ns: int
    kvm_rdev: int
    kvm_mode: int
    kvm_uid: int
    kvm_gid: int


def current_key(
    qemu: Path,
    kvm_device: Path = KVM_DEVICE,
    *,
    boot_id: Callable[[], str] = procinfo.boot_id,
    kernel_release: Callable[[], str] = lambda: os.uname().release,
) -> ProbeKey | None:
    """The key for probing with ``qemu`` now; None when either file cannot be examined."""
    try:
        binary, node = qemu.stat(), kvm_device.stat()
    except OSError:
        return None
    return ProbeKey(
        boot_id=boot_id(),
        kernel_release=kernel_release(),
        qemu=str(qemu),
        qemu_size=binary.st_size,
        qemu_mtime_ns=binary.st_mtime_ns,
        kvm_rdev=node.st_rdev,
        kvm_mode=node.st_mode,
        kvm_uid=node.st_uid,
        kvm_gid=node.st_gid,
    )


@dataclass(frozen=True)
class Verdict:
    runs_guests: bool
    detail: str
    #: When the probe boot ran (ISO 8601, UTC); None for an answer that needed no boot.
    measured_at: str | None = None
    elapsed_s: float = 0.0


def read_stored(path: Path, key: ProbeKey) -> Verdict | None:
    """The verdict stored in ``path`` if it was measured under ``key``."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None
    if data.get("key") != asdict(key):
        return None
    try:
        return Verdict(
            runs_guests=bool(data["kvm_runs_guests"]),
            detail=str(data["detail"]),
            measured_at=str(data["measured_at"]),
            elapsed_s=float(data["elapsed_s"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def store(path: Path, key: ProbeKey, verdict: Verdict) -> None:
    record: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "key": asdict(key),
        "kvm_runs_guests": verdict.runs_guests,
        "detail": verdict.detail,
        "measured_at": verdict.measured_at,
        "elapsed_s": verdict.elapsed_s,
    }
    write_file_atomic(path, (json.dumps(record, indent=1) + "\n").encode())


def _opens(device: Path) -> bool:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


class KvmProbe:
    """One per daemon: the verdict, and the one probe boot that produces it."""

    def __init__(
        self,
        runner: Runner,
        cache_file: Path,
        *,
        find_qemu: Callable[[], Path | None],
        kvm_device: Path = KVM_DEVICE,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.runner = runner
        self.cache_file = cache_file
        self.find_qemu = find_qemu
        self.kvm_device = kvm_device
        self.timeout_s = timeout_s
        #: Probe boots this object ran (each costs up to ``timeout_s``).
        self.boots = 0
        self._memo: tuple[ProbeKey, Verdict] | None = None
        self._task: asyncio.Task[Verdict] | None = None

    @classmethod
    def for_config(cls, config: Config, runner: Runner, state_dir: Path) -> KvmProbe:
        return cls(runner, state_dir / CACHE_NAME, find_qemu=lambda: binary_for(PROBER, config))

    def known(self) -> Verdict | None:
        """The verdict without booting anything, or None when a probe boot must run."""
        qemu = self.find_qemu()
        if qemu is None:
            return Verdict(False, "no QEMU to probe /dev/kvm with")
        if not _opens(self.kvm_device):
            return Verdict(False, f"{self.kvm_device} does not open")
        key = current_key(qemu, self.kvm_device)
        if key is None:
            return None
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        stored = read_stored(self.cache_file, key)
        if stored is not None:
            self._memo = (key, stored)
            log.info(
                "kvm probe verdict kept",
                extra={"fields": {"runs_guests": stored.runs_guests, "since": stored.measured_at}},
            )
        return stored

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, kernel: Path) -> None:
        """Probe in the background with ``kernel`` unless a verdict is known or on its way."""
        if not self.running and self.known() is None:
            self._task = asyncio.create_task(self._measure(kernel))

    async def verdict(self, kernel: Path | None) -> Verdict | None:
        """The known verdict, else the running probe's, else one measured now with
        ``kernel``; None when there is neither a verdict nor a kernel to boot."""
        known = self.known()
        if known is not None:
            return known
        if not self.running:
            if kernel is None:
                return None
            self._task = asyncio.create_task(self._measure(kernel))
        assert self._task is not None
        # shield: a create cancelled while waiting must not cancel everyone's probe.
        return await asyncio.shield(self._task)

    async def _measure(self, kernel: Path) -> Verdict:
        qemu = self.find_qemu()
        if qemu is None:
            return Verdict(False, "no QEMU to probe /dev/kvm with")
        key = current_key(qemu, self.kvm_device)
        started = time.monotonic()
        self.boots += 1
        banner, how = await self._boot(QemuVmm(self.runner, qemu), kernel)
        elapsed = round(time.monotonic() - started, 3)
        detail = "kernel banner on the console" if banner else f"no kernel banner: {how}"
        verdict = Verdict(banner, detail, datetime.now(UTC).isoformat(timespec="seconds"), elapsed)
        log.info(
            "kvm probe booted",
            extra={
                "fields": {
                    "runs_guests": banner,
                    "elapsed_s": elapsed,
                    "kernel": str(kernel),
                    "qemu": str(qemu),
                    "outcome": how,
                }
            },
        )
        if key is not None:
            self._memo = (key, verdict)
            try:
                await asyncio.to_thread(store, self.cache_file, key, verdict)
            except BangerError as exc:
                log.warning("cannot keep the kvm probe verdict: %s", exc.brief)
        return verdict

    async def _boot(self, qemu: QemuVmm, kernel: Path) -> tuple[bool, str]:
        """Whether the kernel banner reached the console, and how QEMU ended."""
        scratch = Path(tempfile.mkdtemp(prefix="banger-kvm-probe."))
        try:
            argv = qemu.kvm_probe_argv(kernel, scratch)
            try:
                await self.runner.run_async(argv, timeout_s=self.timeout_s)
                how = "QEMU exited"
            except Timeout:
                # The usual end on a host where KVM cannot run guests.
                how = f"nothing within {self.timeout_s:g} s under KVM"
            except BangerError as exc:
                first = (exc.details or "").strip().splitlines()[:1]
                how = f"QEMU failed under KVM{': ' + first[0] if first else ''}"
            console = b""
            with contextlib.suppress(OSError):
                console = console_log_path(scratch).read_bytes()
            return PROBE_MARKER in console, how
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
