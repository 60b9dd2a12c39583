"""Only the daemon's owner may use its socket (SPEC §1, ADVERSARIAL 121).

Two real cases: another uid cannot even reach root's socket (0700 runtime dir), and
when the directory does not stop it (root reaching a `nobody` daemon), the daemon's
SO_PEERCRED check refuses the connection with a clear error.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.client.http import Client
from banger.errors import PermissionDenied
from tests.conftest import BangerHome, make_home

NOBODY = pwd.getpwnam("nobody")

CONNECT_AS_OTHER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES")
else:
    print("CONNECTED")
"""


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests switch users and must run as root (CI does)")


def test_other_uid_cannot_reach_the_socket_e121(home: BangerHome) -> None:
    _require_root()
    assert home.banger("daemon", "start").returncode == 0
    out = subprocess.run(
        [sys.executable, "-c", CONNECT_AS_OTHER, str(home.socket)],
        user=NOBODY.pw_uid,
        group=NOBODY.pw_gid,
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert out.stdout.strip() == "EACCES"


@pytest.fixture
def nobody_daemon() -> Iterator[BangerHome]:
    _require_root()
    root = Path(tempfile.mkdtemp(prefix="bgr-nobody-"))
    proc = None
    try:
        home = make_home(root)
        for path in [root, *root.rglob("*")]:
            os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
        proc = subprocess.Popen(
            [sys.executable, "-m", "banger.daemon"],
            env=home.env,
            cwd="/",
            user=NOBODY.pw_uid,
            group=NOBODY.pw_gid,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not home.socket.exists():
            if proc.poll() is not None:
                pytest.fail(f"daemon as nobody exited: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "daemon as nobody did not start"
            time.sleep(0.05)
        yield home
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
        shutil.rmtree(root, ignore_errors=True)


def test_peer_uid_check_refuses_another_user_e121(nobody_daemon: BangerHome) -> None:
    # root passes the 0700 directory, so only the SO_PEERCRED check stands in the way.
    with pytest.raises(PermissionDenied) as info:
        Client(nobody_daemon.socket, timeout_s=5).get("/ping")
    assert f"uid {NOBODY.pw_uid}" in info.value.brief
    assert "uid 0 may not use it" in info.value.brief
    assert info.value.hint
