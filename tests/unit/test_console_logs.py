"""Capping one VM log on real files (ADVERSARIAL 102: a guest flooding its serial console
or its VMM's log must not fill the host's disk)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from banger.errors import StateError
from banger.services import console_logs
from banger.services.console_logs import cap_log, cap_logs, read_slice, rotated_path

CAP = 64 * 1024


def _lines(data: bytes) -> list[int]:
    return [int(line) for line in data.split(b"\n") if line]


def _consecutive(numbers: list[int]) -> bool:
    return all(b == a + 1 for a, b in itertools.pairwise(numbers))


def test_a_small_log_is_left_alone(tmp_path: Path) -> None:
    """ADVERSARIAL 102: under the cap nothing is copied, cut or created."""
    log = tmp_path / "console.log"
    log.write_bytes(b"a" * CAP)
    assert cap_log(log, cap_bytes=CAP) is None
    assert log.read_bytes() == b"a" * CAP
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console.log"]


def test_a_missing_log_is_skipped(tmp_path: Path) -> None:
    """ADVERSARIAL 102: a VM that has not booted yet has no log; nothing is created."""
    assert cap_logs([tmp_path / "console.log"], cap_bytes=CAP) == []
    assert list(tmp_path.iterdir()) == []


def test_an_oversized_log_keeps_its_tail_in_dot_1_which_is_replaced(tmp_path: Path) -> None:
    """ADVERSARIAL 102: the last CAP bytes replace the previous `.1`, the live file is cut."""
    log = tmp_path / "console.log"
    rotated_path(log).write_bytes(b"previous rotation\n")
    body = b"".join(b"%08d\n" % n for n in range(20_000))  # 180 000 bytes
    log.write_bytes(body)
    rotation = cap_log(log, cap_bytes=CAP)
    assert rotation is not None
    assert (rotation.kept_bytes, rotation.dropped_bytes) == (CAP, len(body) - CAP)
    assert rotated_path(log).read_bytes() == body[-CAP:]
    assert log.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console.log", "console.log.1"]
    assert cap_log(log, cap_bytes=CAP) is None  # nothing more to do


def test_an_append_writer_racing_the_cap_stays_bounded_without_holes(tmp_path: Path) -> None:
    """ADVERSARIAL 102: a process holding an O_APPEND fd (as QEMU's append=on chardev and
    Firecracker's stdout do) writes on while the log is capped: the file stays bounded, its
    next write lands at offset 0 (no hole), and no byte inside either file goes missing."""
    log = tmp_path / "console.log"
    total_lines = 1_000_000  # 9 MB: 140 times the cap
    writer = subprocess.Popen([sys.executable, "-c", APPEND_WRITER, str(log), str(total_lines)])
    largest = rotations = 0
    try:
        while writer.poll() is None:
            largest = max(largest, log.stat().st_size if log.exists() else 0)
            rotations += len(cap_logs([log], cap_bytes=CAP))
            time.sleep(0.002)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == 0
    assert rotations >= 20
    # bounded: the cap plus what the writer (~4 MB/s) manages between two checks
    assert largest <= CAP + 1024 * 1024, largest
    assert rotated_path(log).stat().st_size <= CAP + console_logs.LATE_BYTES_MAX
    live = log.read_bytes()
    st = log.stat()
    assert live[:1] != b"\0" and st.st_blocks * 512 >= st.st_size  # no hole at the start
    older = rotated_path(log).read_bytes().split(b"\n", 1)[1]  # the first line may be cut
    older_lines, live_lines = _lines(older), _lines(live)
    assert _consecutive(older_lines) and _consecutive(live_lines)
    # A cap can land after the writer's last line and before the loop sees it exit: the
    # live file is then empty and the last line is the newest one kept in .1.
    assert (live_lines or older_lines)[-1] == total_lines - 1
    if live_lines:
        assert older_lines[-1] < live_lines[0]


APPEND_WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
lines = int(sys.argv[2])
for first in range(0, lines, 455):
    os.write(fd, b"".join(b"%08d\n" % n for n in range(first, min(first + 455, lines))))
    time.sleep(0.001)
"""


def test_a_positional_writer_leaves_a_hole_that_costs_no_space(tmp_path: Path) -> None:
    """ADVERSARIAL 102: Firecracker opens its /logger file without O_APPEND, so after the cut
    it writes at its old offset. The cap counts stored bytes, not the apparent size, and
    reads skip the hole: no rotation churn, no NULs shown."""
    log = tmp_path / "vmm.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"old\n" * (CAP // 4 + 1))
        assert cap_log(log, cap_bytes=CAP) is not None
        os.write(fd, b"new line\n")  # at offset CAP + 4: a hole before it
        st = log.stat()
        assert st.st_size == CAP + 4 + 9 and st.st_blocks * 512 < CAP
        assert cap_log(log, cap_bytes=CAP) is None
        tail = read_slice(log, None, 32, limit=1 << 20)
        assert tail.data == (b"old\n" * 6)[-23:] + b"new line\n"  # `.1`, then past the hole
        follow = read_slice(log, 10, 0, limit=1 << 20)  # an offset inside the hole
        assert (follow.data, follow.offset) == (b"new line\n", st.st_size)
        for _ in range(3 * CAP // 9):
            os.write(fd, b"new line\n")
        assert cap_log(log, cap_bytes=CAP) is not None  # real data past the cap: rotated
        assert b"\0" not in rotated_path(log).read_bytes()
    finally:
        os.close(fd)


def test_the_tail_continues_in_dot_1_after_a_rotation(tmp_path: Path) -> None:
    """ADVERSARIAL 102: `vm logs` still shows the last N bytes right after a rotation."""
    log = tmp_path / "console.log"
    rotated_path(log).write_bytes(b"0123456789")
    log.write_bytes(b"abc")
    tail = read_slice(log, None, 8, limit=1 << 20)
    assert (tail.data, tail.offset, tail.size) == (b"56789abc", 3, 3)
    assert read_slice(log, None, 2, limit=1 << 20).data == b"bc"
    assert read_slice(log, None, 100, limit=1 << 20).data == b"0123456789abc"
    assert read_slice(log, None, 100, limit=5).data == b"89abc"  # the limit holds
    log.unlink()
    assert read_slice(log, None, 4, limit=1 << 20).data == b"6789"


def test_following_past_a_cut_starts_again_at_zero(tmp_path: Path) -> None:
    """ADVERSARIAL 102: `vm logs -f` asks from its last offset; after the cut that offset is
    past the end, and reading resumes at the start of the live file."""
    log = tmp_path / "console.log"
    log.write_bytes(b"x" * 100)
    assert read_slice(log, 100, 0, limit=1 << 20).data == b""
    log.write_bytes(b"fresh")
    chunk = read_slice(log, 100, 0, limit=1 << 20)
    assert (chunk.data, chunk.offset, chunk.size) == (b"fresh", 5, 5)
    assert read_slice(log, 2, 0, limit=2).data == b"es"


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    """ADVERSARIAL 102: a symlink for the log, its `.1` or the temp file: nothing outside
    the VM dir is read, cut or written."""
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    outside = tmp_path / "precious"
    outside.write_bytes(b"p" * (2 * CAP))
    log = vm_dir / "console.log"
    log.symlink_to(outside)
    with pytest.raises(StateError, match="symlink"):
        cap_log(log, cap_bytes=CAP)
    with pytest.raises(StateError, match="symlink"):
        read_slice(log, None, 10, limit=1 << 20)
    assert cap_logs([log], cap_bytes=CAP) == []  # the monitor warns and goes on
    log.unlink()

    log.write_bytes(b"l" * (2 * CAP))
    tmp = vm_dir / ".console.log.1.tmp"
    tmp.symlink_to(outside)
    with pytest.raises(StateError, match="symlink"):
        cap_log(log, cap_bytes=CAP)
    assert log.stat().st_size == 2 * CAP  # not cut: nothing was kept yet
    tmp.unlink()

    rotated_path(log).symlink_to(outside)
    assert cap_log(log, cap_bytes=CAP) is not None
    assert not rotated_path(log).is_symlink()  # the link itself was replaced
    assert rotated_path(log).read_bytes() == b"l" * CAP
    assert outside.read_bytes() == b"p" * (2 * CAP)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """ADVERSARIAL 102: only regular files are read or cut; a FIFO does not hang the monitor."""
    log = tmp_path / "console.log"
    os.mkfifo(log)
    with pytest.raises(StateError, match="not a regular file"):
        cap_log(log, cap_bytes=CAP)
    with pytest.raises(StateError, match="not a regular file"):
        read_slice(log, None, 10, limit=1 << 20)
