"""The /root work disk on real mkfs.ext4 / resize2fs / e2fsck (SPEC §3 Disks)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from banger.disks.ext4edit import Ext4Editor
from banger.disks.workdisk import (
    MIN_DISK_BYTES,
    WORK_LABEL,
    create_work_disk,
    grow_work_disk,
    make_blank_seed,
    mark_zeroed_inode_tables,
    read_geometry,
)
from banger.errors import AlreadyExists, InvalidArgument, StateError
from banger.host.runner import Runner

pytestmark = pytest.mark.component

MIB = 1024 * 1024
GIB = 1024 * MIB


@pytest.fixture
def runner() -> Runner:
    return Runner()


def _header(image: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"^([A-Za-z ]+):\s+(.*)$", out, re.MULTILINE))


def _fsck_clean(image: Path) -> None:
    proc = subprocess.run(
        ["e2fsck", "-fn", str(image)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _groups_without_zeroed_tables(image: Path) -> int:
    out = subprocess.run(
        ["dumpe2fs", str(image)], capture_output=True, text=True, check=True
    ).stdout
    groups = re.findall(r"^Group \d+: .*$", out, re.MULTILINE)
    assert groups
    return sum("ITABLE_ZEROED" not in g for g in groups)


def _stat(image: Path, path: str) -> tuple[str, int, int, int]:
    """(type, mode, uid, gid) as debugfs itself reports them."""
    out = subprocess.run(
        ["debugfs", "-R", f'stat "{path}"', str(image)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    kind = re.search(r"Type: (\w+)\s+Mode:\s+([0-7]+)", out)
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    assert kind and owner, out
    return kind[1], int(kind[2], 8), int(owner[1]), int(owner[2])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    """An image's work seed: a 128 MiB ext4 with a few files, made with mkfs -d."""
    tree = tmp_path / "seedtree"
    (tree / "projects").mkdir(parents=True)
    (tree / "projects" / "notes.txt").write_text("hello from the seed\n")
    (tree / ".bashrc").write_text("export PS1='$ '\n")
    image = tmp_path / "work-seed.ext4"
    image.touch()
    os.truncate(image, 128 * MIB)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-T", "default", "-d", str(tree), str(image)],
        check=True,
    )
    return image


# -- blank work disks ---------------------------------------------------------------------


def test_blank_disk_has_the_size_label_and_root_dir_asked_for(
    tmp_path: Path, runner: Runner
) -> None:
    disk = tmp_path / "work.ext4"
    create_work_disk(disk, 8 * GIB, seed=None, runner=runner)
    assert disk.stat().st_size == 8 * GIB
    assert disk.stat().st_mode & 0o777 == 0o600
    header = _header(disk)
    assert int(header["Block count"]) * int(header["Block size"]) == 8 * GIB
    assert header["Filesystem volume name"] == WORK_LABEL
    assert header["Reserved block count"] == "0"
    assert _stat(disk, "/") == ("directory", 0o755, 0, 0)
    _fsck_clean(disk)
    # Nothing left for the guest's ext4lazyinit to zero (it would write ~128 MiB here).
    assert _groups_without_zeroed_tables(disk) == 0
    assert disk.stat().st_blocks * 512 < 8 * MIB


def test_creation_time_and_space_do_not_follow_the_disk_size(
    tmp_path: Path, runner: Runner
) -> None:
    timings = {}
    for label, size in (("1G", GIB), ("256G", 256 * GIB)):
        disk = tmp_path / f"{label}.ext4"
        started = time.monotonic()
        create_work_disk(disk, size, seed=None, runner=runner)
        timings[label] = time.monotonic() - started
        assert disk.stat().st_size == size
        assert disk.stat().st_blocks * 512 < 32 * MIB  # 256 GiB costs a few MiB
        disk.unlink()
    # Measured ~6 ms and ~25 ms here; a copy or a zeroing pass would take minutes.
    assert timings["256G"] < 2.0, timings


def test_make_blank_seed_alone(tmp_path: Path, runner: Runner) -> None:
    geometry = make_blank_seed(tmp_path / "seed.ext4", runner)
    assert geometry == read_geometry(tmp_path / "seed.ext4", runner)
    assert geometry.fs_bytes == 256 * MIB
    with pytest.raises(AlreadyExists):
        make_blank_seed(tmp_path / "seed.ext4", runner)


def test_a_size_below_the_minimum_is_refused(tmp_path: Path, runner: Runner) -> None:
    with pytest.raises(InvalidArgument, match="smallest work disk"):
        create_work_disk(tmp_path / "w", MIN_DISK_BYTES - 1, seed=None, runner=runner)
    assert not (tmp_path / "w").exists()


def test_an_existing_destination_is_kept(tmp_path: Path, runner: Runner, seed: Path) -> None:
    disk = tmp_path / "work.ext4"
    disk.write_bytes(b"precious")
    for from_seed in (None, seed):
        with pytest.raises(AlreadyExists):
            create_work_disk(disk, GIB, seed=from_seed, runner=runner)
    assert disk.read_bytes() == b"precious"


# -- from an image's work seed ------------------------------------------------------------


def test_seed_is_cloned_and_grown_with_its_files(
    tmp_path: Path, runner: Runner, seed: Path
) -> None:
    before = _sha256(seed)
    disk = tmp_path / "work.ext4"
    started = time.monotonic()
    create_work_disk(disk, 256 * GIB, seed=seed, runner=runner)
    assert time.monotonic() - started < 5.0
    assert _sha256(seed) == before
    header = _header(disk)
    assert int(header["Block count"]) * int(header["Block size"]) == 256 * GIB
    assert disk.stat().st_blocks * 512 < 64 * MIB
    editor = Ext4Editor(disk, runner)
    assert editor.read_file("/projects/notes.txt") == b"hello from the seed\n"
    _fsck_clean(disk)
    # The 2,000-odd groups resize2fs added have their (hole) inode tables marked zeroed.
    assert _groups_without_zeroed_tables(disk) == 0


def test_a_size_below_the_seed_is_refused_before_anything_is_made(
    tmp_path: Path, runner: Runner, seed: Path
) -> None:
    with pytest.raises(InvalidArgument, match="smaller than the work seed") as info:
        create_work_disk(tmp_path / "w", 100 * MIB, seed=seed, runner=runner)
    assert info.value.hint == "ask for at least 128M"
    assert not (tmp_path / "w").exists()


def test_the_seed_size_itself_is_fine(tmp_path: Path, runner: Runner, seed: Path) -> None:
    create_work_disk(tmp_path / "w", 128 * MIB, seed=seed, runner=runner)
    assert read_geometry(tmp_path / "w", runner).fs_bytes == 128 * MIB


def test_a_seed_that_is_not_ext4_is_refused(tmp_path: Path, runner: Runner) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(1 << 20))
    with pytest.raises(InvalidArgument, match="not a usable ext4"):
        create_work_disk(tmp_path / "w", GIB, seed=junk, runner=runner)
    assert not (tmp_path / "w").exists()


def test_a_seed_not_cleanly_unmounted_is_checked_on_the_copy(
    tmp_path: Path, runner: Runner, seed: Path
) -> None:
    subprocess.run(["debugfs", "-w", "-R", "ssv state 0", str(seed)], check=True)
    before = _sha256(seed)
    assert not read_geometry(seed, runner).clean
    disk = tmp_path / "w"
    create_work_disk(disk, GIB, seed=seed, runner=runner)
    assert _sha256(seed) == before
    assert read_geometry(disk, runner).clean
    _fsck_clean(disk)


def test_a_broken_seed_fails_cleanly_and_leaves_no_disk(
    tmp_path: Path, runner: Runner, seed: Path
) -> None:
    # No root directory and marked unclean: e2fsck -p gives up ("RUN fsck MANUALLY").
    subprocess.run(["debugfs", "-w", "-R", "clri <2>", str(seed)], check=True)
    subprocess.run(["debugfs", "-w", "-R", "ssv state 0", str(seed)], check=True)
    with pytest.raises(StateError, match="cannot fix on its own"):
        create_work_disk(tmp_path / "w", GIB, seed=seed, runner=runner)
    assert not (tmp_path / "w").exists()


# -- growing later ------------------------------------------------------------------------


def test_grow_keeps_the_files_and_refuses_to_shrink(tmp_path: Path, runner: Runner) -> None:
    disk = tmp_path / "work.ext4"
    create_work_disk(disk, GIB, seed=None, runner=runner)
    editor = Ext4Editor(disk, runner)
    editor.write_file("/data.bin", b"x" * 10000, mode=0o644)
    editor.apply()
    grow_work_disk(disk, 64 * GIB, runner=runner)
    assert read_geometry(disk, runner).fs_bytes == 64 * GIB
    assert disk.stat().st_size == 64 * GIB
    assert editor.read_file("/data.bin") == b"x" * 10000
    assert _groups_without_zeroed_tables(disk) == 0
    _fsck_clean(disk)
    grow_work_disk(disk, 64 * GIB, runner=runner)  # same size: nothing to do
    with pytest.raises(InvalidArgument, match="smaller than the work disk"):
        grow_work_disk(disk, 8 * GIB, runner=runner)
    assert read_geometry(disk, runner).fs_bytes == 64 * GIB


def test_zeroed_marking_skips_tables_that_hold_data(tmp_path: Path, runner: Runner) -> None:
    disk = tmp_path / "work.ext4"
    create_work_disk(disk, GIB, seed=None, runner=runner)
    # Every table is flagged already, and group 0's holds the root inode: nothing to do,
    # and the used table is never claimed to be zero.
    assert mark_zeroed_inode_tables(disk, runner) == 7  # 8 groups, group 0 has data
    _fsck_clean(disk)
