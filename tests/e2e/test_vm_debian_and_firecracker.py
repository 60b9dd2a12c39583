"""The two other boots issue 3 asks for: a debootstrap'd Debian guest with systemd, and the
Firecracker code path (the real ``FirecrackerVmm`` driving the stand-in of
tests/fcstandin, which boots the guest under QEMU/TCG)."""

from __future__ import annotations

from pathlib import Path

from tests import guests
from tests.vmenv import vm_env

STANDIN = Path(__file__).resolve().parents[1] / "fcstandin" / "firecracker"


def test_debian_guest_with_systemd_boots_and_accepts_ssh() -> None:
    with vm_env() as env:
        env.add_test_guests(tiny=False)
        env.ok(
            "image",
            "register",
            "debian",
            "--rootfs",
            str(guests.debian_rootfs()),
            "--kernel-ref",
            "cloud",
        )
        env.ok(
            "vm",
            "create",
            "--name",
            "deb",
            "--image",
            "debian",
            "--vcpu",
            "2",
            "--memory",
            "1024",
            "--disk-size",
            "2G",
        )
        out = env.ok(
            "vm",
            "ssh",
            "deb",
            "--",
            "sh",
            "-c",
            "cat /etc/os-release; systemctl is-system-running --wait || true; "
            "cat /etc/machine-id; findmnt -no SOURCE /root; "
            "sshd -T | grep -Ei '^(permitrootlogin|passwordauthentication)'",
        )
        assert "ID=debian" in out
        assert "running" in out or "degraded" in out
        assert "/dev/vdb" in out
        assert "permitrootlogin without-password" in out or "prohibit-password" in out
        assert "passwordauthentication no" in out
        assert env.ok("vm", "stop", "deb").strip() == "deb: stopped"
        env.ok("vm", "start", "deb")
        assert env.ok("vm", "ssh", "deb", "--", "hostname").strip() == "deb"
        env.ok("vm", "delete", "--force", "deb")


def test_firecracker_path_through_the_standin() -> None:
    config = f'firecracker_bin = "{STANDIN}"\nvmm = "firecracker"\n'
    with vm_env(config) as env:
        env.add_test_guests()
        env.ok(
            "vm",
            "create",
            "--name",
            "fc",
            "--image",
            "tiny",
            "--vcpu",
            "1",
            "--memory",
            "256",
            "--disk-size",
            "1G",
        )
        vm = env.json("vm", "show", "fc")
        assert vm["vmm"] == "firecracker" and vm["state"] == "running"
        assert (
            env.ok("vm", "ssh", "fc", "--", "uname", "-r").strip() == guests.cloud_kernel().version
        )
        assert env.ok("vm", "stop", "fc").strip() == "fc: stopped"
        env.ok("vm", "start", "fc")
        assert env.ok("vm", "ssh", "fc", "--", "hostname").strip() == "fc"
        env.ok("vm", "delete", "--force", "fc")
        # A bzImage is not something Firecracker can boot: refused before anything is made.
        env.ok(
            "image",
            "register",
            "bz",
            "--rootfs",
            str(guests.tiny_rootfs()),
            "--kernel",
            str(guests.cloud_kernel().vmlinuz),
        )
        out = env.banger("vm", "create", "--name", "bz", "--image", "bz")
        assert out.returncode == 1 and "ELF" in out.stderr
        assert env.json("vm", "list") == []
