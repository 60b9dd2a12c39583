"""``banger.vmm.spawn`` with real child processes: how a VMM the daemon started ended
(what ``vm stop`` reports as "forcefully terminated", ADVERSARIAL 96)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from banger.host import procinfo
from banger.host.runner import Runner
from banger.vmm import spawn

pytestmark = pytest.mark.component

#: Several threads, like QEMU: after SIGKILL the leader is a zombie a moment before the
#: process can be reaped.
THREADED = (
    "import threading, time\n"
    "for _ in range(16):\n"
    "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)


def _start(argv: list[str], tmp_path: Path) -> procinfo.ProcessIdentity:
    return spawn.spawn_detached(argv, log_path=tmp_path / "vmm.log", runner=Runner())


def test_a_killed_child_reports_the_signal_and_a_clean_one_zero(tmp_path: Path) -> None:
    killed = _start(["sleep", "60"], tmp_path)
    clean = _start(["sh", "-c", "sleep 0.2"], tmp_path)
    assert asyncio.run(spawn.exit_status(killed)) is None  # still running
    os.kill(killed.pid, signal.SIGKILL)
    assert asyncio.run(spawn.wait_exit(killed, timeout_s=5))
    assert asyncio.run(spawn.exit_status(killed)) == -signal.SIGKILL
    assert asyncio.run(spawn.wait_exit(clean, timeout_s=5))
    assert asyncio.run(spawn.exit_status(clean)) == 0


def test_a_killed_threaded_child_is_reaped_before_its_status_is_read(tmp_path: Path) -> None:
    for _ in range(5):
        ident = _start([sys.executable, "-c", THREADED], tmp_path)
        log = tmp_path / "vmm.log"
        while b"up" not in log.read_bytes():
            assert procinfo.is_running(ident)
            time.sleep(0.01)
        os.kill(ident.pid, signal.SIGKILL)
        assert asyncio.run(spawn.wait_exit(ident, timeout_s=5))
        assert asyncio.run(spawn.exit_status(ident)) == -signal.SIGKILL
        log.unlink()


def test_a_process_we_did_not_start_has_no_known_status() -> None:
    ours = procinfo.identify(os.getpid())
    assert ours is not None
    assert asyncio.run(spawn.exit_status(ours, timeout_s=0.1)) is None
