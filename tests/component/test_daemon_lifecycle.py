"""The real daemon on a real Unix socket, driven through the real CLI (issue 2).

Covers auto-start, stop, the single-instance lock, stale sockets after SIGKILL
(ADVERSARIAL 90), socket and directory modes (121-123) and the build-stamp restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from banger.client.http import Client
from banger.client.launcher import pid_alive
from tests.conftest import BIN, BangerHome


def _wait_gone(pid: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.02)


def test_status_autostarts_once_and_reports_the_cli_build(home: BangerHome) -> None:
    first = home.banger("daemon", "status", "--json")
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("started the banger daemon") == 1
    status = json.loads(first.stdout)
    version = json.loads(home.banger("version", "--json").stdout)
    assert status["build"] == version["cli"] == version["daemon"]["build"]
    assert status["pid"] == version["daemon"]["pid"] == home.daemon_pid()
    again = home.banger("daemon", "status")
    assert again.returncode == 0
    assert "started" not in again.stderr
    assert f"pid {status['pid']}" in again.stdout


def test_version_never_starts_a_daemon(home: BangerHome) -> None:
    out = home.banger("version")
    assert out.returncode == 0
    assert "daemon: not running" in out.stdout
    assert not home.socket.exists()
    bangerd = subprocess.run(
        [str(BIN / "bangerd"), "--version"], capture_output=True, text=True, check=True
    )
    cli_line = out.stdout.splitlines()[0].removeprefix("banger:").strip()
    assert bangerd.stdout.strip() == f"bangerd {cli_line}"


def test_stop_waits_for_exit_and_removes_the_socket(home: BangerHome) -> None:
    assert home.banger("daemon", "start").returncode == 0
    pid = home.daemon_pid()
    assert pid is not None and pid_alive(pid)
    out = home.banger("daemon", "stop", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"stopped": True, "pid": pid}
    assert not pid_alive(pid)
    assert not home.socket.exists()
    again = home.banger("daemon", "stop")
    assert again.returncode == 0
    assert "not running" in again.stdout


def test_second_daemon_refuses_naming_the_socket_e90(home: BangerHome) -> None:
    assert home.banger("daemon", "start").returncode == 0
    second = subprocess.run(
        [str(BIN / "bangerd")],
        env=home.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 75
    assert str(home.socket) in second.stderr
    assert "already running" in second.stderr
    assert home.banger("daemon", "status").returncode == 0


def test_stale_socket_after_sigkill_does_not_block_the_next_start_e90(home: BangerHome) -> None:
    assert home.banger("daemon", "start").returncode == 0
    pid = home.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    assert home.socket.exists(), "SIGKILL leaves the socket file behind"
    out = home.banger("daemon", "status", "--json")
    assert out.returncode == 0, out.stderr
    assert "started the banger daemon" in out.stderr
    assert json.loads(out.stdout)["pid"] != pid


def test_runtime_dir_is_private_and_socket_owner_only_e121(home: BangerHome) -> None:
    assert home.banger("daemon", "start").returncode == 0
    assert stat.S_IMODE(home.runtime_dir.stat().st_mode) == 0o700
    st = home.socket.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    # Not abstract (ADVERSARIAL 123): the socket is a file at that path.
    assert Path(home.socket).is_socket()


def test_loose_runtime_dir_is_tightened(home: BangerHome) -> None:
    home.runtime_dir.mkdir(parents=True)
    home.runtime_dir.chmod(0o777)
    assert home.banger("daemon", "start").returncode == 0
    assert stat.S_IMODE(home.runtime_dir.stat().st_mode) == 0o700


def test_daemon_of_another_build_is_restarted(home: BangerHome, tmp_path: Path) -> None:
    # A copy of the package whose build stamp differs, started as the daemon.
    import banger

    other = tmp_path / "other"
    shutil.copytree(Path(banger.__file__).parent, other / "banger")
    (other / "banger" / "_build_info.py").write_text(
        'VERSION = "0.0.1"\nCOMMIT = "feedfacecafe"\nBUILD_TIME = "2020-01-01T00:00:00Z"\n'
    )
    env = {**home.env, "PYTHONPATH": str(other)}
    old = subprocess.Popen(
        [sys.executable, "-m", "banger.daemon"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = Client(home.socket)
        deadline = time.monotonic() + 20
        while not home.socket.exists() or home.daemon_pid() != old.pid:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/ping")["build"]["commit"] == "feedfacecafe"
        out = home.banger("daemon", "status", "--json")
        assert out.returncode == 0, out.stderr
        assert "restarting the banger daemon" in out.stderr
        assert "feedfacecafe" in out.stderr
        assert old.wait(timeout=20) == 0
        new = json.loads(out.stdout)
        assert new["pid"] != old.pid
        assert new["build"]["commit"] != "feedfacecafe"
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()


def test_logs_are_json_lines_and_readable(home: BangerHome) -> None:
    assert home.banger("daemon", "status").returncode == 0
    raw = home.banger("daemon", "logs", "--json", "-n", "200")
    assert raw.returncode == 0
    entries = [json.loads(line) for line in raw.stdout.splitlines()]
    messages = [e["msg"] for e in entries]
    assert "daemon starting" in messages and "daemon ready" in messages
    assert all({"ts", "level", "logger", "msg"} <= e.keys() for e in entries)
    assert any(e.get("path") == "/v1/daemon/status" for e in entries)
    pretty = home.banger("daemon", "logs")
    assert "daemon ready" in pretty.stdout
    assert not pretty.stdout.lstrip().startswith("{")
