"""The units `banger system install` writes, run by a real systemd (SPEC §9, issue 11).

This host's PID 1 is not systemd, so the test boots one: a Debian tree
(``guests.systemd_host_rootfs``, from the host's apt sources) under ``systemd-nspawn
--boot`` with systemd as the container's PID 1, a throw-away overlay on the tree, and a
network namespace the test made (TESTING.md network rule: the helper's bridge, the TAPs
and the guest live only there). banger is installed in the container from wheels of this
source tree. In it, as root, ``banger system install --owner alice``; then, as alice
through the units' sandboxing (``ProtectSystem=strict``, ``ProtectHome=read-only``, no
capabilities for the daemon…), ``vm run`` and ``vm ssh`` on the tiny guest; QEMU and the
daemon run as alice and only banger-helper as root; ``system uninstall`` leaves /etc as
it found it.

nspawn needs ``--keep-unit --register=no`` where PID 1 is not systemd (no system bus to
ask for a scope), and ``--capability=CAP_NET_ADMIN``: with a network namespace given by
path, the container's bounding set lacks it, and the helper (whose unit keeps only
CAP_NET_ADMIN and what it needs beside) could not make the bridge.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import guests

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("systemd-nspawn", "mmdebstrap", "nsenter", "ip", "qemu-system-x86_64")
OWNER = "alice"  # a user of the container's own /etc/passwd, never the host's
BANGER = "/opt/banger/bin/banger"
TINY = ("--image", "tiny", "--vcpu", "1", "--memory", "256", "--disk-size", "1G")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root and " + ", ".join(TOOLS) + " (apt-get install systemd-container)",
)


@dataclass
class Container:
    nspawn: subprocess.Popen[bytes]
    init_pid: int
    log: Path
    #: Paths under /etc before `system install` (for the uninstall check).
    etc_before: set[str] = field(default_factory=set)

    def run(
        self, *argv: str, user: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` in every namespace of the container; as ``user`` through a login shell
        (``runuser -l``: the environment a user's terminal has)."""
        inner = ["runuser", "-l", user, "-c", shlex.join(argv)] if user else list(argv)
        return subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-a", *inner],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *argv: str, user: str | None = None, timeout: float = 300) -> str:
        out = self.run(*argv, user=user, timeout=timeout)
        assert out.returncode == 0, (
            f"{shlex.join(argv)} (as {user or 'root'}) exited {out.returncode}:\n"
            f"{out.stdout}\n{out.stderr}\n--- nspawn\n{self.log.read_text()[-2000:]}"
        )
        return out.stdout

    def etc_paths(self) -> set[str]:
        return set(self.ok("find", "/etc", "-xdev").split())


def _child_init(nspawn_pid: int, timeout_s: float) -> int:
    """The container's PID 1 as seen from here: nspawn's child running systemd."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if int(fields[1]) == nspawn_pid and comm == "systemd":
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError("systemd-nspawn started no systemd")


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    rootfs = guests.systemd_host_rootfs()
    kernel = guests.cloud_kernel().import_dir
    tiny = guests.tiny_rootfs()
    tmp = tmp_path_factory.mktemp("systemd-units")
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), str(ROOT)],
        check=True,
        timeout=600,
    )
    ns = f"bgr-sd-{os.getpid()}"
    machine = f"bgrsd{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    log = tmp / "nspawn.log"
    with log.open("wb") as out:
        nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--volatile=overlay",
                f"--directory={rootfs}",
                f"--machine={machine}",
                f"--network-namespace-path=/run/netns/{ns}",
                "--capability=CAP_NET_ADMIN",
                "--bind=/dev/net/tun",
                f"--bind-ro={wheels}:/opt/wheels",
                f"--bind-ro={kernel}:/opt/guest/kernel",
                f"--bind-ro={tiny.parent}:/opt/guest/tiny",
                "--console=passive",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    box = None
    try:
        box = Container(nspawn, _child_init(nspawn.pid, 60), log)
        deadline = time.monotonic() + 180
        while (state := box.run("systemctl", "is-system-running").stdout.strip()) not in {
            "running",
            "degraded",
        }:
            assert time.monotonic() < deadline, f"the container's systemd is {state!r}"
            time.sleep(0.5)
        box.ok("python3", "-m", "venv", "/opt/banger")
        box.ok(
            "/opt/banger/bin/pip",
            "install",
            "-q",
            "--no-index",
            "--find-links=/opt/wheels",
            "banger",
        )
        box.ok("useradd", "--create-home", "--shell", "/bin/bash", OWNER)
        # No warm pool: its default image would be fetched from the network (none here).
        box.ok(
            "sh",
            "-c",
            "mkdir -p ~/.config/banger && echo 'pool_size = 0' > ~/.config/banger/config.toml",
            user=OWNER,
        )
        yield box
    finally:
        if box is not None:
            box.run("systemctl", "poweroff", timeout=60)
        try:
            nspawn.wait(timeout=90)
        except subprocess.TimeoutExpired:
            if box is not None:  # the container's PID 1: its whole PID namespace goes
                os.kill(box.init_pid, signal.SIGKILL)
            nspawn.kill()
            nspawn.wait(timeout=30)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        propagate = Path("/run/systemd/nspawn/propagate") / machine
        shutil.rmtree(propagate, ignore_errors=True)


def test_install_starts_the_helper_and_the_owners_daemon(box: Container) -> None:
    box.etc_before = box.etc_paths()
    out = box.ok(BANGER, "system", "install", "--owner", OWNER)
    assert "enabled and started banger-helper.service" in out, out
    for unit in ("banger-helper.service", f"banger-daemon-{OWNER}.service"):
        assert box.ok("systemctl", "is-active", unit).strip() == "active"
    status = box.ok(BANGER, "system", "status", user=OWNER)
    mode = next(line for line in status.splitlines() if line.startswith("mode:"))
    assert mode.split()[1] == "helper", status
    assert "(same build)" in status, status


def test_vm_run_and_ssh_through_the_units(box: Container) -> None:
    box.ok(BANGER, "kernel", "import", "cloud", "--from", "/opt/guest/kernel", user=OWNER)
    tiny = "/opt/guest/tiny/rootfs.ext4"
    box.ok(
        BANGER, "image", "register", "tiny", "--rootfs", tiny, "--kernel-ref", "cloud", user=OWNER
    )
    out = box.ok(BANGER, "vm", "run", "--rm", "--name", "sd1", *TINY, "--", "hostname", user=OWNER)
    assert out.strip().splitlines()[-1] == "sd1", out
    box.ok(BANGER, "vm", "create", "--name", "sd2", *TINY, user=OWNER)
    try:
        assert box.ok(BANGER, "vm", "ssh", "sd2", "--", "echo", "hi", user=OWNER).strip() == "hi"
        rows = [line.split(None, 1) for line in box.ok("ps", "-eo", "user=,comm=").splitlines()]
        users: dict[str, set[str]] = {}
        for user, comm in rows:
            users.setdefault(comm, set()).add(user)
        # The VMM and the daemon are the owner's; of banger's programs only the helper is root.
        assert users.get("qemu-system-x86") == {OWNER}, rows
        assert users.get("bangerd") == {OWNER}, rows
        root_banger = {c for u, c in rows if u == "root" and ("banger" in c or "qemu" in c)}
        assert root_banger == {"banger-helper"}, rows
    finally:
        box.ok(BANGER, "vm", "delete", "--force", "sd2", user=OWNER)


def test_uninstall_leaves_etc_as_it_was(box: Container) -> None:
    assert box.etc_before, "the install test did not run"
    box.ok(BANGER, "system", "uninstall")
    assert box.etc_paths() == box.etc_before
    for unit in ("banger-helper.service", f"banger-daemon-{OWNER}.service"):
        assert box.run("systemctl", "is-active", unit).stdout.strip() != "active"
