"""Daemon start-up never loses or tramples state (issue 14 items 1, 2, 3, 11, 21).

The real daemon and CLI on real sockets: two daemons on one state dir with different
runtime dirs, the runtime dir deleted under a running daemon, an empty / missing / damaged
``state.db`` next to published images, and foreign things at the socket and lock paths
(ADVERSARIAL 90, 93, 121).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from banger.cli.launcher import pid_alive
from tests.conftest import BIN, BangerHome, stop_daemon_of

pytestmark = pytest.mark.component

FAKE_STAGING = "app.0123456789abcdef.partial"


def _wait_gone(pid: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.05)


def _bangerd(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "bangerd")], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def _assert_clear_refusal(out: subprocess.CompletedProcess[str], path: Path) -> None:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    assert "error:" in out.stderr and "hint:" in out.stderr, out.stderr
    assert str(path) in out.stderr, out.stderr


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- item 1: one daemon per state dir ---------------------------------------------------


def test_second_daemon_with_another_runtime_dir_is_refused_and_touches_nothing(
    home: BangerHome,
) -> None:
    """Item 1: the lock lives with the state; the loser's start-up cleanup never runs."""
    assert home.banger("daemon", "start").returncode == 0
    first = home.daemon_pid()
    # An in-progress pull of the first daemon, as its staging area shows it.
    staging = home.state_dir / "images" / ".staging" / FAKE_STAGING
    staging.mkdir(parents=True)
    (staging / "rootfs.ext4").write_bytes(b"half a build")
    other_run = home.root / "run2"
    other_run.mkdir()
    env = {**home.env, "XDG_RUNTIME_DIR": str(other_run)}

    out = _bangerd(env)
    _assert_clear_refusal(out, home.state_dir)
    assert out.returncode == 1
    assert str(home.socket) in out.stderr  # names the daemon that serves this state
    assert staging.is_dir() and (staging / "rootfs.ext4").read_bytes() == b"half a build"
    assert not (other_run / "banger" / "bangerd.sock").exists()

    # Through the CLI's auto-start: the same clear error, at once (no 30 s wait for a
    # daemon that will never answer on the other socket).
    started = time.monotonic()
    cli = subprocess.run(
        [str(BIN / "banger"), "daemon", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 15
    _assert_clear_refusal(cli, home.state_dir)
    assert staging.is_dir()
    assert home.daemon_pid() == first and first is not None and pid_alive(first)


def test_second_daemon_on_the_same_runtime_dir_but_other_state_is_refused(
    home: BangerHome,
) -> None:
    """Item 1 (the other way round): one daemon per socket, whatever its state dir."""
    assert home.banger("daemon", "start").returncode == 0
    env = {**home.env, "XDG_STATE_HOME": str(home.root / "state2")}
    out = _bangerd(env)
    assert out.returncode == 75
    assert "already running" in out.stderr and str(home.socket) in out.stderr
    assert home.banger("daemon", "status").returncode == 0


# -- item 2: runtime dir deleted under a running daemon ---------------------------------


def test_runtime_dir_deleted_under_the_daemon_releases_the_dns_port(home: BangerHome) -> None:
    """Item 2: the daemon notices its socket is gone and stops, so the next start works."""
    port = _free_udp_port()
    home.env["BANGER_DNS_PORT"] = str(port)
    assert home.banger("daemon", "start").returncode == 0
    pid = home.daemon_pid()
    assert pid is not None
    subprocess.run(["rm", "-rf", str(home.runtime_dir)], check=True)
    try:
        _wait_gone(pid, timeout_s=15)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        raise
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # released
    stop = home.banger("daemon", "stop")
    assert stop.returncode == 0 and "not running" in stop.stdout
    again = home.banger("daemon", "status", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["dns"] == f"127.0.0.1:{port}"
    logs = home.banger("daemon", "logs", "--json", "-n", "400").stdout
    assert "socket gone: shutting down" in logs


def test_command_right_after_the_runtime_dir_is_deleted_gets_a_new_daemon(
    home: BangerHome,
) -> None:
    """Item 2, the race: the next command comes before the old daemon noticed; the new
    daemon waits for the old one to let go of the state instead of failing."""
    assert home.banger("daemon", "start").returncode == 0
    pid = home.daemon_pid()
    assert pid is not None
    subprocess.run(["rm", "-rf", str(home.runtime_dir)], check=True)
    out = home.banger("daemon", "status", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pid"] != pid
    _wait_gone(pid)


# -- item 3: a database that lost its rows is refused -----------------------------------


def _home_with_an_image(home: BangerHome) -> Path:
    """A started-then-stopped daemon, plus a published image dir (no row needed here)."""
    assert home.banger("daemon", "start").returncode == 0
    stop_daemon_of(home)
    image = home.state_dir / "images" / "app"
    image.mkdir(parents=True)
    (image / "rootfs.ext4").write_bytes(b"\0" * 4096)
    return image


def _drop_wal(db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def test_empty_state_db_next_to_images_is_refused_with_a_hint(home: BangerHome) -> None:
    """Item 3: a 0-byte state.db never starts as an empty database."""
    image = _home_with_an_image(home)
    db = home.state_dir / "state.db"
    db.write_bytes(b"")
    _drop_wal(db)
    out = home.banger("image", "list")
    _assert_clear_refusal(out, db)
    assert "empty (0 bytes)" in out.stderr and str(image) in out.stderr
    assert ".recover" in out.stderr
    assert db.stat().st_size == 0  # nothing written into it
    assert image.is_dir()
    doctor = home.banger("doctor")
    assert "0 images" not in doctor.stdout


def test_missing_state_db_next_to_kernels_is_refused(home: BangerHome) -> None:
    """Item 3: images/kernels dirs exist but there is no database at all."""
    assert home.banger("daemon", "start").returncode == 0
    stop_daemon_of(home)
    kernel = home.state_dir / "kernels" / "k1"
    kernel.mkdir(parents=True)
    db = home.state_dir / "state.db"
    db.unlink()
    _drop_wal(db)
    out = home.banger("kernel", "list")
    _assert_clear_refusal(out, db)
    assert "is missing" in out.stderr and str(kernel) in out.stderr
    assert not db.exists()


def test_damaged_state_db_is_refused_with_the_recover_hint(home: BangerHome) -> None:
    """Item 3: a file that is not a database, and one with a damaged page."""
    _home_with_an_image(home)
    db = home.state_dir / "state.db"
    good = db.read_bytes()
    db.write_bytes(b"this is not sqlite" * 100)
    out = home.banger("image", "list")
    _assert_clear_refusal(out, db)
    assert "damaged" in out.stderr and "sqlite3 state.db .recover" in out.stderr

    # A valid header but a damaged table page: only an integrity check finds it.
    db.write_bytes(good)
    with sqlite3.connect(db) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='images'").fetchone()[0]
    data = bytearray(good)
    start = (root - 1) * page_size
    data[start : start + page_size] = b"\xff" * page_size
    db.write_bytes(bytes(data))
    out = home.banger("image", "list")
    _assert_clear_refusal(out, db)
    assert "damaged" in out.stderr and ".recover" in out.stderr


def test_fresh_state_dir_still_starts(home: BangerHome) -> None:
    """Item 3's refusal needs evidence: a first start with nothing on disk just works."""
    out = home.banger("image", "list", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


# -- items 11, 21: what start-up finds at its runtime paths -----------------------------


def test_directory_at_the_socket_path_is_refused_and_kept(home: BangerHome) -> None:
    """Item 11 (ADVERSARIAL 90): a directory at bangerd.sock gave a traceback."""
    home.socket.mkdir(parents=True)
    (home.socket / "keep").write_text("mine")
    out = home.banger("daemon", "status")
    _assert_clear_refusal(out, home.socket)
    assert "is a directory, not bangerd's socket" in out.stderr
    assert (home.socket / "keep").read_text() == "mine"


def test_regular_file_at_the_socket_path_is_refused_and_kept(home: BangerHome) -> None:
    """Item 21: only banger's own stale socket is removed."""
    home.runtime_dir.mkdir(parents=True, mode=0o700)
    home.socket.write_text("not a socket")
    out = _bangerd(home.env)
    _assert_clear_refusal(out, home.socket)
    assert home.socket.read_text() == "not a socket"


def test_live_foreign_listener_at_the_socket_path_is_not_replaced(home: BangerHome) -> None:
    """Item 21: a socket someone still serves is not unlinked from under its clients."""
    home.runtime_dir.mkdir(parents=True, mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(home.socket))
        listener.listen(1)
        out = _bangerd(home.env)
        _assert_clear_refusal(out, home.socket)
        assert "still serving" in out.stderr
        assert home.socket.is_socket()
        ino = home.socket.stat().st_ino
    assert home.socket.stat().st_ino == ino


@pytest.mark.parametrize("where", ["runtime", "state"])
def test_symlink_at_the_lock_path_is_refused_and_kept(
    home: BangerHome, tmp_path: Path, where: str
) -> None:
    """Item 11: a symlink at bangerd.lock gave a traceback (ELOOP)."""
    base = home.runtime_dir if where == "runtime" else home.state_dir
    base.mkdir(parents=True, mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text("someone's file")
    lock = base / "bangerd.lock"
    lock.symlink_to(target)
    out = home.banger("daemon", "status")
    _assert_clear_refusal(out, lock)
    assert "symlink" in out.stderr
    assert lock.is_symlink() and target.read_text() == "someone's file"


def test_file_at_the_runtime_dir_path_is_refused(home: BangerHome) -> None:
    """Item 21: the runtime dir itself is checked before use."""
    home.runtime_dir.write_text("a file")
    out = _bangerd(home.env)
    _assert_clear_refusal(out, home.runtime_dir)
    assert home.runtime_dir.read_text() == "a file"


def test_symlink_at_the_start_log_is_refused_and_kept(home: BangerHome, tmp_path: Path) -> None:
    """Item 21: the CLI's own runtime path (``bangerd.start.log``) is checked too: it gave
    "unexpected OSError" (ELOOP)."""
    home.runtime_dir.mkdir(parents=True, mode=0o700)
    target = tmp_path / "not-yours"
    start_log = home.runtime_dir / "bangerd.start.log"
    start_log.symlink_to(target)
    out = home.banger("daemon", "status")
    _assert_clear_refusal(out, start_log)
    assert "it is a symlink" in out.stderr and "unexpected" not in out.stderr
    assert start_log.is_symlink() and not target.exists()
