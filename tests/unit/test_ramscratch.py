"""RAM scratch directories for image builds: when one is made, and what the sweep removes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from banger.host import ramscratch

GIB = 1 << 30


def meminfo(tmp_path: Path, available_bytes: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(
        f"MemTotal: 99999999 kB\nMemFree: 1 kB\nMemAvailable: {available_bytes // 1024} kB\n"
    )
    return path


def test_a_tree_that_fits_gets_a_private_dir_named_for_its_owner(tmp_path: Path) -> None:
    base = tmp_path / "shm"
    base.mkdir()
    made = ramscratch.make_scratch(1 << 20, base, meminfo(tmp_path, 8 * GIB))
    assert made is not None and made.parent == base
    assert made.stat().st_mode & 0o777 == 0o700
    prefix, uid, pid, token = made.name.split(".")
    assert (prefix, int(uid), int(pid), len(token)) == (
        "banger-scratch",
        os.getuid(),
        os.getpid(),
        16,
    )


def test_no_scratch_when_memory_is_short_or_base_is_missing(tmp_path: Path) -> None:
    base = tmp_path / "shm"
    base.mkdir()
    # 1 GiB tree, 3 GiB available: under the 4x margin.
    assert ramscratch.make_scratch(GIB, base, meminfo(tmp_path, 3 * GIB)) is None
    assert ramscratch.make_scratch(1 << 20, base, tmp_path / "no-meminfo") is None
    assert ramscratch.make_scratch(1 << 20, tmp_path / "absent", meminfo(tmp_path, 8 * GIB)) is None
    # Free space on the base's filesystem is checked too: no filesystem has an exabyte free.
    assert ramscratch.make_scratch(1 << 60, base, meminfo(tmp_path, 1 << 63)) is None
    assert list(base.iterdir()) == []


def test_sweep_removes_only_our_uid_dead_owner_dirs(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    uid = os.getuid()
    token = "0123456789abcdef"
    gone = tmp_path / f"banger-scratch.{uid}.{dead_pid}.{token}"
    (gone / "tree" / "etc").mkdir(parents=True)
    (gone / "tree" / "etc" / "passwd").write_text("root")
    (gone / "tree" / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_text("kept")
    live = tmp_path / f"banger-scratch.{uid}.{os.getpid()}.{token}"
    other_uid = tmp_path / f"banger-scratch.{uid + 1}.{dead_pid}.{token}"
    not_ours = tmp_path / f"banger-scratch.{uid}.{dead_pid}.short"
    for path in (live, other_uid, not_ours):
        path.mkdir()
    file_not_dir = tmp_path / f"banger-scratch.{uid}.{dead_pid}.fedcba9876543210"
    file_not_dir.write_text("x")

    assert ramscratch.sweep_dead(tmp_path) == [gone]
    assert not gone.exists()
    assert (tmp_path / "outside" / "keep").read_text() == "kept"  # the link was not followed
    assert live.is_dir() and other_uid.is_dir() and not_ours.is_dir() and file_not_dir.is_file()


def test_sweep_of_a_missing_base_is_nothing(tmp_path: Path) -> None:
    assert ramscratch.sweep_dead(tmp_path / "absent") == []
