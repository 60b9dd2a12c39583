"""The pool's scripts in the guest, in the shells guests have: the claim's online grow
(``pool_grow.grow_script``, against a directory standing for /sys and a ``resize2fs``
that records its arguments) and the settle before ready (``pool.SETTLE_SCRIPT``, with a
fake ``systemctl``); and the grow's host side, ``extend_file`` (sparse, never shrinks,
never follows a symlink).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from banger.errors import StateError
from banger.services.pool import SETTLE_SCRIPT
from banger.services.pool_grow import CHECK_ARGV, extend_file, grow_argv, grow_script
from tests.localshell import SHELLS


def _guest(tmp_path: Path, sectors: int, *, resize_status: int = 0) -> dict[str, str]:
    (tmp_path / "sys/class/block/vdb").mkdir(parents=True)
    (tmp_path / "sys/class/block/vdb/size").write_text(f"{sectors}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "resize2fs"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/resized\nexit {resize_status}\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def _run(
    shell: list[str], tmp_path: Path, env: dict[str, str], want: int, wait_s: float = 5.0
) -> subprocess.CompletedProcess[str]:
    script = grow_script(str(tmp_path), wait_s=wait_s)
    return subprocess.run(
        [*shell, "-c", script, "sh", "/dev/vdb", str(want)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("shell", SHELLS)
def test_a_device_the_kernel_already_sees_grown_is_resized(
    tmp_path: Path, shell: list[str]
) -> None:
    env = _guest(tmp_path, 2097152)
    done = _run(shell, tmp_path, env, 2097152)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "resized").read_text() == "/dev/vdb\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_the_resize_waits_for_the_kernel_to_see_the_new_size(
    tmp_path: Path, shell: list[str]
) -> None:
    env = _guest(tmp_path, 524288)
    size = tmp_path / "sys/class/block/vdb/size"

    def later() -> None:
        time.sleep(0.3)
        size.write_text("2097152\n")

    writer = threading.Thread(target=later)
    writer.start()
    done = _run(shell, tmp_path, env, 2097152)
    writer.join()
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "resized").read_text() == "/dev/vdb\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_a_device_that_stays_small_is_not_resized_and_says_so(
    tmp_path: Path, shell: list[str]
) -> None:
    env = _guest(tmp_path, 524288)
    done = _run(shell, tmp_path, env, 2097152, wait_s=0.2)
    assert done.returncode != 0
    assert "sees 524288 sectors on /dev/vdb, not 2097152" in done.stderr
    assert not (tmp_path / "resized").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_failing_resize2fs_fails_the_script(tmp_path: Path, shell: list[str]) -> None:
    env = _guest(tmp_path, 2097152, resize_status=1)
    assert _run(shell, tmp_path, env, 2097152).returncode != 0


def test_the_argv_passes_device_and_sectors() -> None:
    argv = grow_argv(1 << 30)
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["sh", "/dev/vdb", str((1 << 30) // 512)]


def test_extend_file_grows_sparse_and_never_shrinks(tmp_path: Path) -> None:
    disk = tmp_path / "work.ext4"
    disk.write_bytes(b"data" * 1024)
    assert extend_file(disk, 1 << 30) is True
    assert disk.stat().st_size == 1 << 30
    assert disk.stat().st_blocks * 512 < 1 << 20, "sparse: no data written"
    assert disk.read_bytes()[:8] == b"datadata"
    assert extend_file(disk, 1 << 20) is False, "asked for less: left alone"
    assert disk.stat().st_size == 1 << 30


def test_extend_file_refuses_a_missing_file_and_a_symlink(tmp_path: Path) -> None:
    with pytest.raises(StateError):
        extend_file(tmp_path / "gone", 1 << 20)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    link = tmp_path / "link"
    os.symlink(target, link)
    with pytest.raises(StateError):
        extend_file(link, 1 << 20)
    assert target.stat().st_size == 0


def _systemctl(tmp_path: Path, body: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/asked\n{body}\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


@pytest.mark.parametrize("shell", SHELLS)
def test_settle_waits_for_systemd_whatever_state_it_ends_in(
    tmp_path: Path, shell: list[str]
) -> None:
    env = _systemctl(tmp_path, "sleep 0.3; echo degraded; exit 1")
    started = time.monotonic()
    done = subprocess.run([*shell, "-c", SETTLE_SCRIPT], env=env, check=False, timeout=30)
    assert done.returncode == 0, "degraded is settled too"
    assert time.monotonic() - started >= 0.3
    assert (tmp_path / "asked").read_text() == "is-system-running --wait\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_settle_skips_a_guest_without_systemd(tmp_path: Path, shell: list[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [*shell, "-c", SETTLE_SCRIPT], env={"PATH": str(empty)}, check=False, timeout=10
    )
    assert done.returncode == 0


@pytest.mark.parametrize("shell", SHELLS)
def test_the_check_finds_resize2fs_or_fails(tmp_path: Path, shell: list[str]) -> None:
    script = CHECK_ARGV[2]
    env = _guest(tmp_path, 0)
    assert subprocess.run([*shell, "-c", script], env=env, check=False).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = subprocess.run([*shell, "-c", script], env={"PATH": str(empty)}, check=False)
    assert missing.returncode == 3
