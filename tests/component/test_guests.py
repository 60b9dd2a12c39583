"""The test guests really boot: tests/guests.py artifacts under QEMU/TCG in a netns of our own.

Each boot follows the guest boot contract of docs/dev/vm-plan.md the way banger does it:
a sparse copy of the cached rootfs (identity injected with debugfs: hostname, SSH host key,
the work-disk fstab line), a work disk (vdb) carrying /.ssh/authorized_keys, the contract's
kernel command line, key login over a bridge + TAP inside the namespace, then a stop by
ctrl-alt-del (QMP send-key on an i8042) that the guest must honour by ending QEMU itself.
At most one guest runs at a time.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import guests
from tests.netns import PREFIX, Netns, bridge_with_taps, netns
from tests.qemuboot import (
    GATEWAY,
    boot,
)

pytestmark = pytest.mark.component

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="netns, TAPs and mkfs -d need root")

# still running (a failed test): netns() terminates what ns.popen started


# --- the boots ----------------------------------------------------------------------------


@needs_root
def test_tiny_rootfs_boots_to_ssh_and_powers_off_on_ctrl_alt_del(tmp_path: Path) -> None:
    kernel = guests.cloud_kernel()
    with boot(tmp_path, guests.tiny_rootfs(), hostname="tiny-t") as guest:
        to_ssh = guest.wait_ssh(within=90)
        out = guest.ssh(
            "uname -r; hostname; grep ' /root ' /proc/mounts; stat -c '%a %u:%g' /root; "
            "cat /etc/resolv.conf"
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == kernel.version
        assert lines[1] == "tiny-t"
        assert lines[2].startswith("/dev/vdb /root ext4 ")
        assert lines[3] == "755 0:0"
        assert f"nameserver {GATEWAY}" in lines[4:]
        guest.qmp.ctrl_alt_del()
        to_exit = guest.wait_exit(within=15)
    print(f"tiny: ssh after {to_ssh:.1f} s, QEMU gone {to_exit:.1f} s after ctrl-alt-del")


@needs_root
def test_tiny_rootfs_reboot_ends_qemu(tmp_path: Path) -> None:
    with boot(tmp_path, guests.tiny_rootfs(), hostname="tiny-r") as guest:
        guest.wait_ssh(within=90)
        # the reply may or may not make it out before the guest goes down
        with contextlib.suppress(subprocess.TimeoutExpired):
            guest.ssh("reboot", timeout=10)
        to_exit = guest.wait_exit(within=15)
    print(f"tiny: QEMU gone {to_exit:.1f} s after `reboot`")


@needs_root
@pytest.mark.timeout(1200)  # the first debootstrap build takes 1-2 minutes
def test_debian_rootfs_boots_to_ssh_and_reboots_on_ctrl_alt_del(tmp_path: Path) -> None:
    kernel = guests.cloud_kernel()
    image = guests.debian_rootfs()
    with boot(tmp_path, image, hostname="deb-t", smp=2) as guest:
        to_ssh = guest.wait_ssh(within=180)
        out = guest.ssh(
            "uname -r; hostname; findmnt -n -o SOURCE /root; stat -c '%a %u:%g' /root; "
            "cat /etc/machine-id; grep -c . /etc/resolv.conf; "
            "systemctl is-active ssh-hostkey-gen.service systemd-networkd.service || true"
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == kernel.version
        assert lines[1] == "deb-t"
        assert lines[2] == "/dev/vdb"  # the fstab line banger adds is honoured
        assert lines[3] == "755 0:0"
        assert len(lines[4]) == 32  # a machine-id of its own, made at first boot
        assert lines[6:8] == ["inactive", "active"]  # injected host key: no generation
        guest.qmp.ctrl_alt_del()
        to_exit = guest.wait_exit(within=60)
    print(f"debian: ssh after {to_ssh:.1f} s, QEMU gone {to_exit:.1f} s after ctrl-alt-del")


# --- the artifacts and helpers themselves -------------------------------------------------


def test_artifacts_are_cached_and_shaped_as_documented() -> None:
    kernel = guests.cloud_kernel()
    assert kernel.vmlinuz == kernel.import_dir / "boot" / f"vmlinuz-{kernel.version}"
    assert kernel.modules_dir == kernel.import_dir / "lib" / "modules" / kernel.version
    assert (kernel.modules_dir / "modules.dep").is_file()
    assert guests.mini_initrd().stat().st_size > 100_000
    assert guests.cloud_kernel() == kernel  # cached: same answer, no rebuild
    key, pub = guests.test_ssh_keypair()
    assert key.stat().st_mode & 0o777 == 0o600
    assert pub.read_text().startswith("ssh-ed25519 ")
    tiny = guests.tiny_rootfs()
    assert tiny.stat().st_size == 64 << 20
    t0 = time.monotonic()
    assert guests.tiny_rootfs() == tiny
    assert time.monotonic() - t0 < 0.5


_BUILDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tests import guests
    def build(tmp: Path) -> None:
        with open(sys.argv[1], "a") as log:
            log.write("built\\n")
        time.sleep(1)
        (tmp / "thing").write_text("ok")
    print(guests._artifact("demo", "v1", build))
    """
)


def test_two_processes_build_an_artifact_once(tmp_path: Path) -> None:
    env = {**os.environ, "BANGER_TEST_CACHE": str(tmp_path / "cache")}
    root = Path(__file__).resolve().parents[2]
    log = tmp_path / "builds.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILDER, str(log)],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == str(tmp_path / "cache" / "demo" / "v1")
    assert log.read_text() == "built\n"


def test_a_failed_build_leaves_nothing_and_a_new_recipe_replaces_the_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANGER_TEST_CACHE", str(tmp_path))

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        guests._artifact("demo", "v1", broken)
    assert list((tmp_path / "demo").iterdir()) == []

    v1 = guests._artifact("demo", "v1", lambda tmp: (tmp / "a").write_text("1"))
    v2 = guests._artifact("demo", "v2", lambda tmp: (tmp / "a").write_text("2"))
    assert not v1.exists()
    assert (v2 / "a").read_text() == "2"
    assert guests.build_seconds(v2 / "a") is not None


def _namespaces() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout


@needs_root
def test_netns_is_deleted_even_on_failure_and_stops_its_children() -> None:
    with pytest.raises(RuntimeError, match="inside"), netns() as ns:
        assert ns.name.startswith(PREFIX)
        assert ns.name in _namespaces()
        bridge_with_taps(ns, "br0", "172.30.9.1/24", ["tap0", "tap1"])
        links = ns.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert "br0" in links and "tap1" in links
        sleeper = ns.popen(["sleep", "60"])
        raise RuntimeError("inside")
    assert ns.name not in _namespaces()
    assert sleeper.poll() is not None
    with pytest.raises(ValueError, match="netns"):
        bridge_with_taps(Netns("not-ours"), "br0", "172.30.9.1/24", [])
