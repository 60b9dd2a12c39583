"""Booting a test guest (tests/guests.py artifacts) under QEMU/TCG in a network namespace
of the test's own, the way banger does it: a sparse copy of the rootfs with identity
injected by debugfs, a work disk carrying the SSH key, the contract's kernel command line,
a bridge + TAP inside the namespace, and QMP to stop it.

Used by the guest-boot component tests and the agent e2e tests.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import guests
from tests.netns import Netns, bridge_with_taps, netns

GATEWAY, GUEST_IP, NETMASK = "172.30.0.1", "172.30.0.2", "255.255.255.0"
GUEST_MAC = "52:54:00:12:34:02"
WORK_FSTAB_LINE = "/dev/vdb /root ext4 defaults,nofail 0 0\n"  # what banger appends


def host_tsc_khz() -> int | None:
    """As banger.services.vm_boot: TCG guests get the host TSC rate (no calibration hang)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":", 1)[1]) * 1000)
    return None


def kernel_cmdline(hostname: str) -> str:
    """What banger's own command line gives a TCG guest (banger.model.cmdline)."""
    parts = [
        "console=ttyS0", "reboot=k", "panic=-1", "root=/dev/vda", "rw", "net.ifnames=0",
        f"ip={GUEST_IP}::{GATEWAY}:{NETMASK}:{hostname}:eth0:off", f"nameserver={GATEWAY}",
        "initrd_net=1",
    ]  # fmt: skip
    if khz := host_tsc_khz():
        parts += [f"tsc_early_khz={khz}", "tsc=reliable"]
    parts.append("norandmaps")
    return " ".join(parts)


# --- image preparation (what banger does to a VM's copies) ------------------------------


def debugfs_write(image: Path, files: dict[str, tuple[Path, int]]) -> None:
    """Put host files into an ext4 image without mounting it: {guest path: (src, mode)}."""
    script = []
    for dest, (src, mode) in files.items():
        script += [f"rm {dest}", f"write {src} {dest}", f"sif {dest} mode 0{0o100000 | mode:o}"]
        script += [f"sif {dest} uid 0", f"sif {dest} gid 0"]
    subprocess.run(
        ["debugfs", "-w", "-f", "-", str(image)],
        input="\n".join(script) + "\n",
        capture_output=True,
        text=True,
        check=True,
    )


def debugfs_cat(image: Path, path: str) -> str:
    out = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True, check=True
    )
    return out.stdout


@dataclass(frozen=True)
class Prepared:
    rootfs: Path
    workdisk: Path
    known_hosts: Path
    key: Path


def prepare(tmp: Path, image: Path, hostname: str) -> Prepared:
    key, pub = guests.test_ssh_keypair()
    rootfs = tmp / "rootfs.ext4"  # never boot the cached original read-write
    subprocess.run(["cp", "--sparse=always", str(image), str(rootfs)], check=True)

    hostkey = tmp / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", hostname, "-f", str(hostkey)],
        check=True,
    )
    (tmp / "hostname").write_text(hostname + "\n")
    fstab = tmp / "fstab"
    fstab.write_text(debugfs_cat(rootfs, "/etc/fstab") + WORK_FSTAB_LINE)
    debugfs_write(
        rootfs,
        {
            "/etc/hostname": (tmp / "hostname", 0o644),
            "/etc/fstab": (fstab, 0o644),
            "/etc/ssh/ssh_host_ed25519_key": (hostkey, 0o600),
            "/etc/ssh/ssh_host_ed25519_key.pub": (hostkey.with_suffix(".pub"), 0o644),
        },
    )
    assert debugfs_cat(rootfs, "/etc/fstab").endswith(WORK_FSTAB_LINE)

    tree = tmp / "work-tree"
    (tree / ".ssh").mkdir(parents=True)
    shutil.copyfile(pub, tree / ".ssh" / "authorized_keys")
    (tree / ".ssh" / "authorized_keys").chmod(0o600)
    (tree / ".ssh").chmod(0o700)
    tree.chmod(0o755)
    workdisk = tmp / "work.ext4"
    subprocess.run(["truncate", "-s", "32M", str(workdisk)], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", str(tree), str(workdisk)],
        check=True,
    )

    known_hosts = tmp / "known_hosts"
    hostpub = hostkey.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"{GUEST_IP} {hostpub[0]} {hostpub[1]}\n")
    return Prepared(rootfs, workdisk, known_hosts, key)


# --- QEMU + QMP ---------------------------------------------------------------------------


class Qmp:
    def __init__(self, path: Path, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rw")
        assert "QMP" in json.loads(self.file.readline())
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def ctrl_alt_del(self) -> None:
        keys = [{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]
        self.execute("send-key", keys=keys)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()


@dataclass
class Guest:
    ns: Netns
    proc: subprocess.Popen[bytes]
    qmp: Qmp
    prepared: Prepared
    started: float

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.ns.run(
            [
                "ssh", "-i", str(self.prepared.key), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.prepared.known_hosts}",
                "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR",
                f"root@{GUEST_IP}", command,
            ],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def wait_ssh(self, within: float) -> float:
        """Seconds from QEMU's start to the first successful key login."""
        last = ""
        while time.monotonic() - self.started < within:
            assert self.proc.poll() is None, f"QEMU exited early ({self.proc.returncode})"
            try:
                out = self.ssh("true", timeout=15)
            except subprocess.TimeoutExpired:
                continue
            if out.returncode == 0:
                return time.monotonic() - self.started
            last = out.stderr.strip()
            time.sleep(0.2)
        raise AssertionError(f"no SSH within {within} s; last ssh said: {last}")

    def wait_exit(self, within: float) -> float:
        t0 = time.monotonic()
        try:
            code = self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"QEMU still running {within} s after the stop request") from None
        assert code == 0, f"QEMU exit code {code}"
        return time.monotonic() - t0


def tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return f"({path.name} missing)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def boot(tmp: Path, image: Path, *, hostname: str, smp: int = 1) -> Iterator[Guest]:
    kernel, initrd = guests.cloud_kernel(), guests.mini_initrd()
    prepared = prepare(tmp, image, hostname)
    console, qemu_err, qmp_path = tmp / "console.log", tmp / "qemu.err", tmp / "qmp.sock"
    argv = [
        "qemu-system-x86_64", "-M", "microvm,acpi=on,rtc=on,isa-serial=on",
        "-accel", "tcg", "-cpu", "max", "-smp", str(smp), "-m", "512",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}", "-monitor", "none",
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
        # i8042: the keyboard controller that carries ctrl-alt-del (QEMU lists it in the
        # ACPI DSDT; the cloud kernel's built-in i8042/atkbd drivers bind it).
        "-device", "i8042",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
        "-append", kernel_cmdline(hostname),
        "-drive", f"file={prepared.rootfs},if=none,id=root,format=raw,cache=unsafe",
        "-device", "virtio-blk-device,drive=root",
        "-drive", f"file={prepared.workdisk},if=none,id=work,format=raw,cache=unsafe",
        "-device", "virtio-blk-device,drive=work",
        "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device", f"virtio-net-device,netdev=n0,mac={GUEST_MAC}",
    ]  # fmt: skip
    with netns() as ns:
        bridge_with_taps(ns, "br0", f"{GATEWAY}/24", ["tap0"])
        with qemu_err.open("wb") as err:
            started = time.monotonic()
            proc = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        qmp = None
        try:
            qmp = Qmp(qmp_path)
            yield Guest(ns, proc, qmp, prepared, started)
        except BaseException:
            print(f"--- QEMU stderr\n{tail(qemu_err)}\n--- console tail\n{tail(console)}")
            raise
        finally:
            if qmp is not None:
                qmp.close()
