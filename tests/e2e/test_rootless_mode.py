"""A normal user with no root and no helper runs VMs in rootless mode (SPEC §9, issue 11).

In a network namespace the test made (loopback only): a user the test creates runs
``bangerd`` and the CLI, with no ``banger-helper`` and no ``/dev/net/tun`` workaround
(tests/userenv.py). The daemon picks mode ``rootless`` by itself (``privilege_mode =
"auto"``): VMs get QEMU's user-mode networking, SSH through a 127.0.0.1 port the daemon
allocated, and no bridge or TAP appears in the namespace. ``--nat`` is slirp's outbound
access; without it slirp is ``restrict=on`` and the guest reaches nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.net.user_net import SSH_FORWARD_PORTS
from tests.gitrepos import make_repo
from tests.userenv import TOOLS, UserEnv, add_tiny_guest, user_env

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root and " + ", ".join(TOOLS),
)

TINY = ("--image", "tiny", "--vcpu", "1", "--memory", "256", "--disk-size", "1G")
#: A port on the namespace's loopback: what slirp's 10.0.2.2 leads to from the guest.
HOST_PORT = 18080


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # the real uid
    raise AssertionError(f"no Uid line for {pid}")


@pytest.fixture(scope="module")
def env() -> Iterator[UserEnv]:
    with user_env(helper=False) as e:
        e.start_daemon()
        add_tiny_guest(e)
        yield e


def test_doctor_json_names_rootless_mode(env: UserEnv) -> None:
    out = env.banger("doctor", "--json")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    done = [e for e in events if e["type"] == "stage" and e["state"] != "running"]
    network = next(e for e in done if e["stage"] == "network")
    assert network["state"] == "ok", network
    assert network["detail"].startswith("mode rootless (not root, and no banger-helper"), network
    assert "no <vm>.vm address" in network["detail"]
    nat = next(e for e in done if e["stage"] == "nat")
    assert "user-mode networking" in nat["detail"], nat
    dns = next(e for e in done if e["stage"] == "dns")
    assert "~vm is not routed: rootless VMs" in dns["detail"], dns


def test_vm_run_rm_true_in_rootless_mode(env: UserEnv) -> None:
    out = env.banger("vm", "run", "--rm", *TINY, "--", "true")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(env.ok("vm", "list", "--json")) == []


def test_create_ssh_stop_start_as_the_user_with_no_root_process(env: UserEnv) -> None:
    env.ok("vm", "create", "--name", "mine", *TINY)
    vm = json.loads(env.ok("vm", "show", "mine", "--json"))
    assert vm["ip"] is None and vm["tap"] is None, vm
    assert vm["ssh_port"] in SSH_FORWARD_PORTS, vm
    assert _uid_of(vm["pid"]) == env.uid
    root = [pid for pid in env.ns.pids() if _uid_of(pid) == 0]
    assert root == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:100] for p in root]
    links = [link["ifname"] for link in json.loads(env.ns.ip("-j", "link").stdout)]
    assert links == ["lo"], links  # no bridge, no TAP
    assert env.ok("vm", "ssh", "mine", "--", "hostname").strip() == "mine"
    listed = env.ok("vm", "list")
    assert f"127.0.0.1:{vm['ssh_port']}" in listed, listed

    env.ok("vm", "stop", "mine")
    env.ok("vm", "start", "mine")
    assert env.ok("vm", "ssh", "mine", "--", "hostname").strip() == "mine"
    env.ok("vm", "delete", "--force", "mine")


def test_nat_is_slirps_outbound_access_and_without_it_the_guest_reaches_nothing(
    env: UserEnv,
) -> None:
    server = env.ns.popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(HOST_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # busybox's nc (its static wget crashes in the tiny guest): an HTTP reply means reached.
    fetch = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.0.2.2 {HOST_PORT} | head -c 12"
    try:
        env.ok("vm", "create", "--name", "open", "--nat", *TINY)
        env.ok("vm", "create", "--name", "shut", *TINY)
        opened = env.banger("vm", "ssh", "open", "--", fetch)
        shut = env.banger("vm", "ssh", "shut", "--", fetch)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert opened.stdout.startswith("HTTP/1.0 200"), opened.stdout + opened.stderr
    assert "HTTP" not in shut.stdout, shut.stdout + shut.stderr
    env.ok("vm", "delete", "--force", "open", "shut")


def test_vm_run_copies_a_repository_through_the_forwarded_port(env: UserEnv) -> None:
    repo = make_repo(env.base / "home" / "project", {b"tracked": b"tracked\n"})
    for path in [repo, *repo.rglob("*")]:
        os.lchown(path, env.uid, env.uid)
    check = "pwd && test -f tracked"
    out = env.banger("vm", "run", "--rm", *TINY, str(repo), "--", "sh", "-c", check)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "/root/repo"


def test_firecracker_is_refused_for_a_rootless_vm(env: UserEnv) -> None:
    out = env.banger("vm", "create", "--name", "fc", "--vmm", "firecracker", *TINY)
    assert out.returncode != 0
    assert "Firecracker has no user-mode networking" in out.stderr, out.stderr
    assert json.loads(env.ok("vm", "list", "--json")) == []
