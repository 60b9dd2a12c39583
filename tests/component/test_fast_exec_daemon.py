"""The fast ``vm exec`` against a real daemon (no guest): a daemon of another build refuses
its request (409) before running anything, and every error before a command runs is
handed to the click CLI, which renders it as before (the fast path prints nothing)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from banger.cli import fast_exec
from banger.host import buildinfo
from tests.conftest import BangerHome

PROBE = "import sys; from banger.cli import fast_exec; print(fast_exec.run(sys.argv[1:]))"


def _fast(home: BangerHome, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=home.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _exec_reply(home: BangerHome, build: str) -> tuple[int, dict[str, object]]:
    body = json.dumps({"argv": ["true"], "env": {}}).encode()
    data = fast_exec.request_bytes("POST", "/v1/vms/nosuch/exec", body, upgrade=True, build=build)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(home.socket))
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_a_daemon_of_another_build_refuses_before_anything_runs(home: BangerHome) -> None:
    assert home.banger("daemon", "start").returncode == 0
    status, reply = _exec_reply(home, "0.0.0 othercommit 2000-01-01T00:00:00Z")
    assert status == 409, reply
    error = reply["error"]
    assert isinstance(error, dict) and error["code"] == "conflict"
    assert "restarts a daemon of another build" in str(error["hint"])
    # Its own build goes on to the VM lookup.
    status, reply = _exec_reply(home, buildinfo.current().token())
    assert status == 404, reply


def test_errors_before_the_command_are_the_click_clis(home: BangerHome) -> None:
    assert home.banger("daemon", "start").returncode == 0
    got = _fast(home, "nosuch", "--", "true")
    assert (got.returncode, got.stdout, got.stderr) == (0, "None\n", "")
    out = home.banger("vm", "exec", "nosuch", "--", "true")
    assert out.returncode == 1
    assert out.stderr.startswith("error: VM 'nosuch' not found\nhint: "), out.stderr
    # Bounds are the daemon's to refuse, then click's to word (exit 2, as with no daemon).
    got = _fast(home, "nosuch", "--timeout", "99999999", "--", "true")
    assert got.stdout == "None\n"
    out = home.banger("vm", "exec", "nosuch", "--timeout", "99999999", "--", "true")
    assert out.returncode == 2 and "--timeout" in out.stderr, out.stderr
