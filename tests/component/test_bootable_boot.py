"""banger-init really boots a container-like image: Debian minbase without systemd or sshd.

The image is ``debootstrap --variant=minbase bookworm`` (no init system, no sshd, no
python3, no iproute2: what a container image looks like) as one OCI layer, built into an
ext4 the way ``image pull`` does it (``build_rootfs_image`` in one fakeroot session, with
``banger.images.bootable.make_bootable`` as the inject hook) and booted under QEMU/TCG with
``init=`` banger-init, inside a network namespace of the test's own (TESTING.md network
rule). The packages come from a local apt repository (tests/aptrepo.py) served on the
bridge address, passed to the guest as ``banger.mirror=``: the path a NAT-less host takes
with a mirror or proxy.

One guest at a time. Each boot follows the guest boot contract of docs/dev/vm-plan.md the
way banger prepares a VM (``banger.disks.identity``: hostname, machine-id, host key, sshd
drop-in and the work-disk fstab line in the rootfs copy, authorized_keys on the work disk),
and stops by ctrl-alt-del over QMP. The guest agent answers over virtio-serial.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.disks.ext4edit import Ext4Editor
from banger.disks.identity import inject_rootfs, inject_workdisk, make_identity
from banger.disks.workdisk import create_work_disk
from banger.errors import BangerError
from banger.guest.agent_client import AgentClient, AgentHealth, GuestPorts
from banger.host.runner import Runner
from banger.images.bootable import AGENT_PATH, INIT_PATH, PACKAGES_PATH, STAMP_PATH
from banger.images.pull_steps import BOOTABLE
from banger.oci.ext4build import build_rootfs_image
from banger.oci.flatten import Layer
from tests import aptrepo, guests
from tests.netns import Netns, bridge_with_taps, netns
from tests.qemuboot import (
    GATEWAY,
    GUEST_IP,
    GUEST_MAC,
    Guest,
    Prepared,
    Qmp,
    kernel_cmdline,
    tail,
)

pytestmark = pytest.mark.component

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="netns, TAPs and mkfs -d need root")

MINBASE_RECIPE = "m2"
INIT_SCRIPT = Path(__file__).resolve().parents[2] / "src/banger/images/guest/banger-init"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


# --- the image ----------------------------------------------------------------------------


def minbase_layer() -> Path:
    """debootstrap'd bookworm minbase as one uncompressed OCI layer tar (cached)."""
    return guests._artifact("minbase-layer", MINBASE_RECIPE, _build_minbase) / "layer.tar"


def _build_minbase(tmp: Path) -> None:
    guests._need_tools("debootstrap", "tar")
    tree = tmp / "tree"
    try:
        guests._run(
            ["debootstrap", "--variant=minbase", guests.DEBIAN_SUITE, str(tree),
             guests.DEBIAN_MIRROR],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )  # fmt: skip
        for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        (tree / "etc/resolv.conf").write_text("")  # debootstrap copied the host's
        (tree / "etc/hostname").write_text("minbase\n")
        guests._run(
            ["tar", "-C", str(tree), "--numeric-owner", "-cpf", str(tmp / "layer.tar"), "."]
        )
    finally:
        guests._remove_tree(tree)  # also unmounts what a failed debootstrap left mounted


def bootable_image(tmp: Path) -> Path:
    """The minbase layer built into an ext4 the way ``image pull`` does it: flattened in
    one fakeroot session with ``make_bootable`` as the inject hook (banger.images.pull_steps)."""
    image, work = tmp / "image.ext4", tmp / "build"
    work.mkdir()
    layer = Layer(minbase_layer(), LAYER_TAR)
    runner = Runner()
    build_rootfs_image([layer], image, size_bytes=None, runner=runner, work_dir=work,
                       inject=BOOTABLE)  # fmt: skip
    # /sbin -> usr/sbin in a merged-/usr tree: the init is there, root's, 0755
    info = _debugfs_stat(image, "/usr/sbin/banger-init")
    assert re.search(r"Mode:\s+0755", info) and re.search(r"User:\s+0\s+Group:\s+0", info), info
    assert "Inode" in _debugfs_stat(image, AGENT_PATH)
    for absent in ("/usr/bin/systemctl", "/usr/sbin/sshd", "/usr/bin/python3"):
        assert "Inode" not in _debugfs_stat(image, absent)
    return image


def prepare(tmp: Path, image: Path, hostname: str) -> Prepared:
    """What banger does before a VM's first boot: a copy of the image with the VM's
    identity injected (banger.disks.identity), and a work disk with authorized_keys."""
    runner = Runner()
    key, pub = guests.test_ssh_keypair()
    rootfs = tmp / "rootfs.ext4"
    subprocess.run(["cp", "--sparse=always", str(image), str(rootfs)], check=True)
    identity = make_identity(hostname, pub.read_bytes(), runner, tmp)
    inject_rootfs(rootfs, identity, runner)
    workdisk = tmp / "work.ext4"
    create_work_disk(workdisk, 64 << 20, seed=None, runner=runner)
    inject_workdisk(workdisk, identity, runner)
    known_hosts = tmp / "known_hosts"
    kind, blob = identity.host_key_public.decode().split()[:2]
    known_hosts.write_text(f"{GUEST_IP} {kind} {blob}\n")
    return Prepared(rootfs, workdisk, known_hosts, key)


# --- booting ------------------------------------------------------------------------------


def cmdline(hostname: str, *extra: str, initrd_net: bool = True) -> str:
    parts = kernel_cmdline(hostname).split()
    if not initrd_net:
        parts.remove("initrd_net=1")
    return " ".join([*parts, f"init={INIT_PATH}", *extra])


class ConsoleWatch(threading.Thread):
    """Notes when each banger-init line reaches the console, by the host's clock: the
    guest's own uptime lags under TCG on a busy host (it falls back to refined-jiffies)."""

    def __init__(self, path: Path, started: float) -> None:
        super().__init__(daemon=True)
        self.path, self.started = path, started
        self.lines: list[tuple[float, str]] = []
        self._done = threading.Event()
        self._offset, self._partial = 0, b""

    def run(self) -> None:
        while not self._done.wait(0.1):
            self.poll()

    def poll(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        now = time.monotonic() - self.started
        for raw in complete:
            line = raw.decode(errors="replace").strip()
            if "banger-init:" in line:
                self.lines.append((now, line))

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)
        self.poll()

    def text(self) -> list[str]:
        return [line for _, line in self.lines]

    def at(self, needle: str) -> float:
        """Seconds from QEMU's start to the first banger-init line containing ``needle``."""
        for seconds, line in self.lines:
            if needle in line:
                return seconds
        raise AssertionError(f"no banger-init line with {needle!r} in:\n" + "\n".join(self.text()))


@dataclass
class Boot(Guest):
    console: ConsoleWatch


@contextlib.contextmanager
def booted(ns: Netns, run_dir: Path, prepared: Prepared, append: str) -> Iterator[Boot]:
    """QEMU on the prepared disks (they persist across boots); console in run_dir."""
    kernel, initrd = guests.cloud_kernel(), guests.mini_initrd()
    run_dir.mkdir()
    console, qemu_err, qmp_path = run_dir / "console.log", run_dir / "qemu.err", run_dir / "qmp"
    argv = [
        "qemu-system-x86_64", "-M", "microvm,acpi=on,rtc=on,isa-serial=on",
        "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1024",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}", "-monitor", "none",
        "-qmp", f"unix:{qmp_path},server=on,wait=off", "-device", "i8042",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", append,
        "-drive", f"file={prepared.rootfs},if=none,id=root,format=raw,cache=unsafe",
        "-device", "virtio-blk-device,drive=root",
        "-drive", f"file={prepared.workdisk},if=none,id=work,format=raw,cache=unsafe",
        "-device", "virtio-blk-device,drive=work",
        "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device", f"virtio-net-device,netdev=n0,mac={GUEST_MAC}",
        # the guest agent's channel without vhost-vsock (as banger.vmm.channels does it)
        "-chardev", f"socket,id=agent,path={run_dir / 'agent.sock'},server=on,wait=off",
        "-device", "virtio-serial-device",
        "-device", "virtserialport,chardev=agent,name=org.banger.agent",
    ]  # fmt: skip
    with qemu_err.open("wb") as err:
        started = time.monotonic()
        proc = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    watch = ConsoleWatch(console, started)
    watch.start()
    qmp = None
    try:
        qmp = Qmp(qmp_path)
        yield Boot(ns, proc, qmp, prepared, started, watch)
    except BaseException:
        print(f"--- QEMU stderr\n{tail(qemu_err)}\n--- console tail\n{tail(console, 80)}")
        raise
    finally:
        watch.stop()
        if qmp is not None:
            qmp.close()
        if proc.poll() is None:  # a failed test: stop this guest before the next one
            proc.kill()
            proc.wait(timeout=10)


def agent_answers(run_dir: Path, within: float) -> tuple[AgentHealth, GuestPorts]:
    """The guest agent (python3 installed at first boot) over its virtio-serial port."""
    client = AgentClient.over_unix(run_dir / "agent.sock", timeout_s=5)
    deadline = time.monotonic() + within
    while True:
        try:
            return client.health(), client.ports()
        except BangerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def stop(guest: Guest, within: float) -> float:
    guest.qmp.ctrl_alt_del()
    return guest.wait_exit(within=within)


# --- the boots ----------------------------------------------------------------------------


@needs_root
@pytest.mark.timeout(2400)  # builds minbase (~30 s) and the repo once; first boot installs
def test_first_boot_installs_from_the_local_mirror_and_later_boots_skip_it(
    tmp_path: Path,
) -> None:
    repo = aptrepo.apt_repo()
    prepared = prepare(tmp_path, bootable_image(tmp_path), "bb-deb")
    # what make_bootable(tree, packages=["iproute2"]) leaves (the inject hook takes no args)
    editor = Ext4Editor(prepared.rootfs, Runner())
    editor.mkdir("/etc/banger", mode=0o755)
    editor.write_file(PACKAGES_PATH, b"iproute2\n", mode=0o644)
    editor.apply()
    kernel = guests.cloud_kernel()
    timings: dict[str, float] = {}
    with netns() as ns:
        bridge_with_taps(ns, "br0", f"{GATEWAY}/24", ["tap0"])
        with aptrepo.serve(ns, repo, GATEWAY, log=tmp_path / "http.log") as url:
            mirror = (f"banger.mirror={url}", "banger.mirror_trusted=1", "banger.fail_delay=5")
            # Boot 1 without initrd_net=1: banger-init brings eth0 up itself, and minbase
            # has neither iproute2 nor busybox, so this is the perl ioctl path.
            first = cmdline("bb-deb", *mirror, initrd_net=False)
            with booted(ns, tmp_path / "boot1", prepared, first) as g:
                timings["first boot: ssh"] = g.wait_ssh(within=900)
                out = g.ssh(
                    f"cat {STAMP_PATH}; readlink /proc/1/exe; uname -r; hostname; "
                    "findmnt -n -o SOURCE /root; command -v sshd python3 ip; "
                    "systemctl is-active systemd-networkd ssh; "
                    "systemctl is-enabled systemd-udev-settle systemd-networkd-wait-online "
                    "getty@tty1 || true; cat /etc/resolv.conf; ls /etc/apt/sources.list.d/; "
                    "test -e /usr/sbin/policy-rc.d && echo policy-left-behind || true"
                )
                assert out.returncode == 0, out.stderr
                text = out.stdout
                assert "family=debian" in text
                assert (
                    "installed=systemd systemd-sysv udev openssh-server python3-minimal iproute2\n"
                ) in text
                assert "/lib/systemd/systemd\n" in text  # PID 1 is systemd now (/usr/lib/...)
                assert kernel.version in text and "\nbb-deb\n" in text
                assert "/dev/vdb\n" in text  # sshd came up with the work disk mounted
                assert re.search(r"^/usr/sbin/sshd\n/usr/bin/python3\n/usr/s?bin/ip$", text, re.M)
                assert "active\nactive\n" in text
                assert text.count("masked") == 3
                assert f"nameserver {GATEWAY}" in text
                assert "policy-left-behind" not in text
                blame = g.ssh("systemd-analyze critical-chain ssh.service; systemd-analyze time")
                blame = blame.stdout
                print(f"--- first boot, systemd-analyze:\n{blame}")
                timings["first boot: power-off"] = stop(g, within=60)
            lines = g.console.text()
            assert any("(perl)" in line and GUEST_IP in line for line in lines), lines
            timings["first boot: banger-init starts"] = g.console.at("starting")
            timings["first boot: installed"] = g.console.at("first-boot provisioning done")
            timings["first boot: exec systemd"] = g.console.at("exec /")
            requests = (tmp_path / "http.log").read_text()
            assert "/pool/main/openssh-server_" in requests and '" 200 ' in requests

            # Boot 2, the contract's command line: the stamp says done, nothing installed.
            with booted(ns, tmp_path / "boot2", prepared, cmdline("bb-deb", *mirror)) as g:
                timings["later boot: ssh"] = g.wait_ssh(within=300)
                assert g.ssh("systemctl is-active ssh").stdout.strip() == "active"
                blame = g.ssh("systemd-analyze critical-chain ssh.service").stdout
                print(f"--- later boot, systemd-analyze:\n{blame}")
                health, ports = agent_answers(tmp_path / "boot2", within=120)
                assert health.ok and health.hostname == "bb-deb"
                assert any(p.port == 22 and p.process == "sshd" for p in ports.listeners), ports
                timings["later boot: power-off"] = stop(g, within=60)
            lines = g.console.text()
            assert any("nothing to install" in line for line in lines), lines
            assert not any("installing" in line for line in lines), lines
            timings["later boot: banger-init starts"] = g.console.at("starting")
            timings["later boot: exec systemd"] = g.console.at("exec /")
            assert (tmp_path / "http.log").read_text() == requests  # no fetch at all

            # Boot 3, banger.systemd=0: sshd runs under banger-init (the Alpine path), and
            # ctrl-alt-del reaches banger-init's own power-off.
            sshd_only = cmdline("bb-deb", "banger.systemd=0")
            with booted(ns, tmp_path / "boot3", prepared, sshd_only) as g:
                timings["sshd-only boot: ssh"] = g.wait_ssh(within=180)
                out = g.ssh("cat /proc/1/comm; findmnt -n -o SOURCE /root")
                assert out.stdout.split() == ["banger-init", "/dev/vdb"], out
                health, _ = agent_answers(tmp_path / "boot3", within=120)
                assert health.ok
                timings["sshd-only boot: power-off"] = stop(g, within=30)
            lines = g.console.text()
            assert any("ctrl-alt-del: powering off" in line for line in lines), lines
    for name, seconds in timings.items():
        print(f"{name}: {seconds:.1f} s")


@needs_root
@pytest.mark.timeout(900)
def test_a_failed_installation_is_reported_and_the_vm_powers_off(tmp_path: Path) -> None:
    prepared = prepare(tmp_path, bootable_image(tmp_path), "bb-fail")
    unreachable = f"banger.mirror=http://{GATEWAY}:9/debian"  # nothing listens there
    with netns() as ns:
        bridge_with_taps(ns, "br0", f"{GATEWAY}/24", ["tap0"])
        append = cmdline("bb-fail", unreachable, "banger.mirror_trusted=1", "banger.fail_delay=3")
        with booted(ns, tmp_path / "boot", prepared, append) as g:
            seconds = g.wait_exit(within=300)  # nobody asked it to stop: it powers off
    lines = g.console.text()
    failed = [line for line in lines if "FAILED:" in line]
    assert failed and "could not install" in failed[0], lines
    assert any("powering off in 3 s" in line for line in lines), lines
    assert any("failure: powering off" in line for line in lines), lines
    # no stamp: the next boot tries again
    assert "Inode" not in _debugfs_stat(prepared.rootfs, STAMP_PATH)
    print(f"failed first boot: QEMU gone {seconds:.1f} s after start")


def _debugfs_stat(image: Path, path: str) -> str:
    out = subprocess.run(
        ["debugfs", "-R", f"stat {path}", str(image)], capture_output=True, text=True, check=False
    )
    return out.stdout


# --- the network helpers with each tool, on a real interface (no VM) --------------------


# What each PATH holds: {name in PATH: host tool}. "ifconfig/route" is how Alpine has them
# (busybox applet links); "busybox" is a lone busybox binary.
NET_TOOLS = {
    "iproute2": {"ip": "ip"},
    "ifconfig/route": {"ifconfig": "busybox", "route": "busybox"},
    "busybox ifconfig/route": {"busybox": "busybox"},
    "perl": {"perl": "perl"},
}


@needs_root
@pytest.mark.parametrize("via", sorted(NET_TOOLS))
def test_net_up_configures_the_interface_with_each_tool(tmp_path: Path, via: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, tool in {**NET_TOOLS[via], "cat": "cat", "sleep": "sleep"}.items():
        found = shutil.which(tool)
        assert found, f"host has no {tool}"
        (bin_dir / name).symlink_to(found)
    script = (
        f". {INIT_SCRIPT}; parse_ip 10.77.0.2::10.77.0.1:255.255.255.0:h:eth0:off; "
        "net_configured && echo before-yes; net_up || exit 3; echo via=$NET_VIA; "
        "net_configured && echo after-yes"
    )
    with netns() as ns:
        ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "eth0")
        ns.ip("link", "set", "v0", "up")  # carrier for eth0
        out = ns.run(
            ["env", "-i", f"PATH={bin_dir}", "BANGER_INIT_LIB=1", "/bin/sh", "-c", script],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        addr = ns.ip("-4", "-o", "addr", "show", "dev", "eth0").stdout
        route = ns.ip("route", "show", "default").stdout
        lo = ns.ip("-o", "link", "show", "lo").stdout
    assert "before-yes" not in out.stdout and "after-yes" in out.stdout
    assert "inet 10.77.0.2/24" in addr
    assert "default via 10.77.0.1 dev eth0" in route
    assert "LOOPBACK,UP" in lo
    assert f"via={via}\n" in out.stdout
