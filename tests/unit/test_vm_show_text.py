"""``vm show``'s text: the image by name, sizes in units, no internals (issue 14 item 19)."""

from __future__ import annotations

from typing import Any

from banger.cli.cmd_vm import show_rows
from banger.model.api_types import VmInfo

FIELDS: dict[str, Any] = {
    "id": 7,
    "name": "dev",
    "image_id": 1,
    "state": "running",
    "vcpu": 2,
    "memory_mib": 1024,
    "disk_size_bytes": 8 * 1024**3,
    "created_at": "2026-12-04T20:00:00+00:00",
    "updated_at": "2026-12-04T20:00:01+00:00",
    "vmm": "qemu",
    "ip": "10.213.7.5",
    "mac": "02:00:0a:d5:07:05",
    "tap": "bgr-tap3",
    "vm_dir": "/state/vms/7",
    "pid": 4242,
    "pid_start_ticks": 99,
    "boot_id": "b0",
}
VM = VmInfo(**FIELDS)


def test_show_names_the_image_and_gives_units_without_internals() -> None:
    rows = dict(show_rows(VM, "debian-12"))
    assert rows["image"] == "debian-12"
    assert rows["memory"] == "1024 MiB" and rows["disk"] == "8G"
    assert rows["address"] == "10.213.7.5" and rows["nat"] == "no"
    shown = " ".join(f"{k} {v}" for k, v in rows.items())
    for internal in ("image_id", "4242", "bgr-tap3", "02:00:0a", "/state/vms", "b0", "99"):
        assert internal not in shown, internal
    assert "8589934592" not in shown


def test_show_says_why_a_vm_failed_and_when_its_image_is_gone() -> None:
    failed = VmInfo(**{**FIELDS, "state": "error", "last_error": "QEMU exited with 1"})
    rows = dict(show_rows(failed, None))
    assert rows["last error"] == "QEMU exited with 1"
    assert rows["image"] == "(deleted)"
    rootless = VmInfo(**{**FIELDS, "ip": None, "ssh_port": 40022})
    assert dict(show_rows(rootless, "x"))["address"] == "127.0.0.1:40022 (ssh, rootless)"
