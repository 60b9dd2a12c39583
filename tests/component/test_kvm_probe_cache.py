"""The KVM probe runs once per key, not once per daemon (issue 12: no first-run tax).

Real daemons on one state dir; the daemon's log says each time it boots the probe
("kvm probe booted") or takes the kept verdict ("kvm probe verdict kept").
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import BangerHome, stop_daemon_of
from tests.guests import cloud_kernel


def _kvm_opens() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not (_kvm_opens() and shutil.which("qemu-system-x86_64")),
    reason="the probe boots only where /dev/kvm opens and QEMU is installed",
)


def _log(home: BangerHome, msg: str) -> list[dict[str, object]]:
    path = home.state_dir / "bangerd.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e.get("msg") == msg]


def _wait_for(home: BangerHome, msg: str, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(_log(home, msg)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} {msg!r} in the daemon log"
        time.sleep(0.2)


def _restart(home: BangerHome) -> None:
    stop_daemon_of(home)
    out = home.banger("daemon", "start")
    assert out.returncode == 0, out.stderr


def _kvm_check(home: BangerHome) -> dict[str, object]:
    out = home.banger("doctor", "--json", timeout=120)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    [kvm] = [e for e in events if e.get("stage") == "kvm" and e["state"] != "running"]
    return kvm


def test_a_restarted_daemon_keeps_the_verdict_and_a_new_qemu_probes_again(
    home: BangerHome, tmp_path: Path
) -> None:
    kernel = cloud_kernel()
    out = home.banger("kernel", "import", "cloud", "--from", str(kernel.import_dir), timeout=300)
    assert out.returncode == 0, out.stderr
    # This daemon started before any kernel existed: doctor makes it probe (once).
    first = _kvm_check(home)
    assert "not probed yet" not in str(first["detail"])
    assert "probed 20" in str(first["detail"])  # when it was measured
    assert len(_log(home, "kvm probe booted")) == 1
    stored = json.loads((home.state_dir / "kvm-probe.json").read_text())

    _restart(home)  # a kernel is stored now, but the verdict is kept: no boot
    again = _kvm_check(home)
    assert again["detail"] == first["detail"]
    assert len(_log(home, "kvm probe booted")) == 1
    assert len(_log(home, "kvm probe verdict kept")) >= 1
    assert json.loads((home.state_dir / "kvm-probe.json").read_text()) == stored

    # Another QEMU binary (here: the same one by another path) changes the key: the new
    # daemon probes in the background, without being asked.
    other = tmp_path / "qemu-renamed"
    other.symlink_to(shutil.which("qemu-system-x86_64") or "")
    home.write_config(f'qemu_bin = "{other}"\n')
    _restart(home)
    _wait_for(home, "kvm probe booted", 2)
    assert _log(home, "kvm probe booted")[-1]["qemu"] == str(other)
    assert json.loads((home.state_dir / "kvm-probe.json").read_text())["key"]["qemu"] == str(other)
