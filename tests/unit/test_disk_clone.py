"""clone_file on real files (SPEC §3 Disks; ADVERSARIAL 106): fast, sparse, exclusive."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from banger.disks.clone import CloneMethod, clone_file, sparse_copy
from banger.errors import AlreadyExists, InvalidArgument, StateError

MIB = 1024 * 1024
GIB = 1024 * MIB


def _data_ranges(path: Path) -> list[tuple[int, int]]:
    """(start, end) of every data range SEEK_DATA/SEEK_HOLE report."""
    ranges = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, end))
            offset = end
    finally:
        os.close(fd)
    return ranges


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _sparse_image(path: Path, size: int, chunks: dict[int, bytes]) -> None:
    path.touch()
    os.truncate(path, size)
    for offset, data in chunks.items():
        _write_at(path, offset, data)


def _assert_same(src: Path, dst: Path) -> None:
    """Same size, same data ranges, same bytes in them (holes read as zeros on both)."""
    assert dst.stat().st_size == src.stat().st_size
    src_ranges, dst_ranges = _data_ranges(src), _data_ranges(dst)
    assert dst_ranges == src_ranges
    with src.open("rb") as a, dst.open("rb") as b:
        for start, end in src_ranges:
            a.seek(start)
            b.seek(start)
            assert a.read(end - start) == b.read(end - start)


@pytest.fixture
def big_sparse(tmp_path: Path) -> Path:
    """1 GiB apparent, ~5 MiB of data at the start, the middle and the very end."""
    src = tmp_path / "rootfs.ext4"
    _sparse_image(
        src,
        GIB,
        {
            0: os.urandom(2 * MIB),
            300 * MIB + 123: os.urandom(2 * MIB),  # unaligned start and end
            GIB - MIB: os.urandom(MIB),
        },
    )
    return src


def test_one_gib_sparse_file_clones_fast_and_stays_sparse(tmp_path: Path, big_sparse: Path) -> None:
    dst = tmp_path / "vm-rootfs.ext4"
    started = time.monotonic()
    method = clone_file(big_sparse, dst)
    elapsed = time.monotonic() - started
    assert method in set(CloneMethod)
    assert elapsed < 2.0, f"clone took {elapsed:.2f}s"
    # ~5 MiB of data (plus block rounding); a byte copy of the holes would be 1 GiB.
    assert dst.stat().st_blocks * 512 < 16 * MIB
    _assert_same(big_sparse, dst)


def test_holes_are_kept_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _sparse_image(src, 64 * MIB, {4 * MIB: b"a" * 4096, 40 * MIB: b"b" * 8192})
    dst = tmp_path / "dst"
    clone_file(src, dst)
    _assert_same(src, dst)
    assert _data_ranges(dst) == [(4 * MIB, 4 * MIB + 4096), (40 * MIB, 40 * MIB + 8192)]


def test_trailing_hole_and_unaligned_size_keep_the_apparent_size(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _sparse_image(src, 10 * MIB + 7, {0: b"head"})
    dst = tmp_path / "dst"
    clone_file(src, dst)
    assert dst.stat().st_size == 10 * MIB + 7
    assert dst.read_bytes()[:4] == b"head"


def test_read_write_fallback_copies_the_same(tmp_path: Path, big_sparse: Path) -> None:
    dst = tmp_path / "dst"
    src_fd = os.open(big_sparse, os.O_RDONLY)
    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        sparse_copy(src_fd, dst_fd, use_copy_range=False)
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    _assert_same(big_sparse, dst)
    assert dst.stat().st_blocks * 512 < 16 * MIB


def test_empty_and_fully_dense_files(tmp_path: Path) -> None:
    empty, dense = tmp_path / "empty", tmp_path / "dense"
    empty.touch()
    dense.write_bytes(os.urandom(3 * MIB + 5))
    clone_file(empty, tmp_path / "empty.copy")
    clone_file(dense, tmp_path / "dense.copy")
    assert (tmp_path / "empty.copy").read_bytes() == b""
    assert (tmp_path / "dense.copy").read_bytes() == dense.read_bytes()


def test_destination_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    src.chmod(0o644)
    old = os.umask(0o000)
    try:
        clone_file(src, tmp_path / "dst")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "dst").stat().st_mode) == 0o600


def test_an_existing_destination_is_refused_and_kept(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"new")
    dst = tmp_path / "dst"
    dst.write_bytes(b"precious")
    with pytest.raises(AlreadyExists):
        clone_file(src, dst)
    assert dst.read_bytes() == b"precious"


def test_a_symlink_at_the_destination_is_not_followed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"new")
    target = tmp_path / "victim"
    (tmp_path / "dst").symlink_to(target)
    with pytest.raises(AlreadyExists):
        clone_file(src, tmp_path / "dst")
    assert not target.exists()


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo"])
def test_a_source_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    if kind == "directory":
        src.mkdir()
    elif kind == "fifo":
        os.mkfifo(src)  # must not block the caller waiting for a writer
    with pytest.raises(InvalidArgument if kind != "missing" else StateError):
        clone_file(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


_FULL_DISK_CHILD = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from banger.disks.clone import clone_file
    from banger.errors import StateError
    # Writes beyond 1 MiB fail with EFBIG, the way a full disk fails with ENOSPC.
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))
    try:
        clone_file(Path(sys.argv[1]), Path(sys.argv[2]))
    except StateError as exc:
        print("StateError", exc.brief, "|", exc.hint)
        sys.exit(3)
    sys.exit(0)
    """
)


def test_a_write_failure_midway_leaves_no_destination(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _sparse_image(src, 64 * MIB, {0: os.urandom(4 * MIB), 32 * MIB: b"tail"})
    dst = tmp_path / "dst"
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, str(src), str(dst)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert "File too large" in proc.stdout
    assert "free space" in proc.stdout
    assert not dst.exists()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mkfs.xfs") is None, reason="needs root and mkfs.xfs"
)
def test_reflink_on_xfs(tmp_path: Path) -> None:
    """Only where an XFS loop mount is possible; proves the FICLONE path end to end."""
    backing, mnt = tmp_path / "xfs.img", tmp_path / "mnt"
    backing.touch()
    os.truncate(backing, 512 * MIB)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(backing)], check=True)
    mnt.mkdir()
    if subprocess.run(["mount", "-o", "loop", str(backing), str(mnt)], check=False).returncode:
        pytest.skip("loop mount not permitted here")
    try:
        src = mnt / "src"
        _sparse_image(src, 256 * MIB, {0: os.urandom(MIB), 100 * MIB: b"x" * 4096})
        assert clone_file(src, mnt / "dst") is CloneMethod.REFLINK
        _assert_same(src, mnt / "dst")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
