"""The Firecracker code path end to end: ``FirecrackerVmm`` drives the stand-in, a guest boots.

The stand-in (tests/fcstandin/firecracker) serves Firecracker's API and runs the guest
under QEMU/TCG. The network rule holds: the bridge, the TAP and the guest address exist
only in a ``banger-t-<random>`` namespace; the backend runs in a forked worker that has
joined it (so the stand-in it spawns opens the TAP there), and SSH runs through
``ip netns exec``. At most one guest runs at a time.
ADVERSARIAL 95-97 (stop, kill, no reused pid signalled), 103 (fatal signals), 104 (fds, env).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from banger.errors import CommandFailed, InvalidArgument
from banger.host import procinfo
from banger.host.procinfo import ProcessIdentity
from banger.host.runner import PASSED_ENV, Runner
from banger.kernels.vmlinux import extract_vmlinux
from banger.vmm.base import Backend, DriveSpec, MachineSpec, NetSpec, VmmHandle
from banger.vmm.fc_api import FirecrackerApi, LogLevel
from banger.vmm.firecracker import FirecrackerVmm
from tests import guests
from tests.netns import Netns, bridge_with_taps, netns

STANDIN = Path(__file__).resolve().parents[1] / "fcstandin" / "firecracker"
GUEST_IP = "172.30.0.2"
CMDLINE = (
    "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw net.ifnames=0 "
    f"ip={GUEST_IP}::172.30.0.1:255.255.255.0:fcguest:eth0:off nameserver=172.30.0.1 initrd_net=1"
)
SSH_DEADLINE_S = 120.0
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

pytestmark = [
    pytest.mark.component,
    pytest.mark.skipif(
        os.geteuid() != 0
        or not os.path.exists("/dev/net/tun")
        or not all(shutil.which(t) for t in ("qemu-system-x86_64", "ip", "ssh", "mkfs.ext4")),
        reason="needs root, /dev/net/tun, qemu-system-x86_64, iproute2, ssh, e2fsprogs",
    ),
]


@dataclass(frozen=True)
class GuestFiles:
    vmlinux: Path
    bzimage: Path
    initrd: Path
    rootfs: Path
    key: Path
    pubkey: Path


@pytest.fixture(scope="module")
def guest_files(tmp_path_factory: pytest.TempPathFactory) -> GuestFiles:
    kernel = guests.cloud_kernel()
    vmlinux = tmp_path_factory.mktemp("kernel") / "vmlinux"
    extract_vmlinux(kernel.vmlinuz, vmlinux, Runner())  # Firecracker needs the ELF
    key, pubkey = guests.test_ssh_keypair()
    return GuestFiles(
        vmlinux, kernel.vmlinuz, guests.mini_initrd(), guests.tiny_rootfs(), key, pubkey
    )


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # The API socket lives in run_dir: keep it far below the 108-byte sun_path limit.
    path = Path(tempfile.mkdtemp(prefix="fcc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def machine_spec(files: GuestFiles, root: Path, *, net: bool = True) -> MachineSpec:
    """A VM as the daemon would describe it: CoW rootfs copy (vda) + work disk (vdb)."""
    (root / "vm").mkdir(mode=0o700)
    (root / "run").mkdir(mode=0o700)
    rootfs = root / "rootfs.ext4"
    subprocess.run(["cp", "--sparse=always", str(files.rootfs), str(rootfs)], check=True)
    work = root / "work.ext4"
    tree = root / "work-tree"
    (tree / ".ssh").mkdir(parents=True, mode=0o700)
    shutil.copyfile(files.pubkey, tree / ".ssh" / "authorized_keys")
    (tree / ".ssh" / "authorized_keys").chmod(0o600)
    tree.chmod(0o755)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(work), "16M"],
        check=True,
        capture_output=True,
    )
    return MachineSpec(
        name="fc-standin",
        vcpu=1,
        memory_mib=512,
        kernel=files.vmlinux,
        initrd=files.initrd,
        cmdline=CMDLINE,
        drives=(DriveSpec("rootfs", rootfs), DriveSpec("work", work)),
        net=NetSpec("tap0", "52:54:00:12:34:02", GUEST_IP, "172.30.0.1", 24) if net else None,
        vm_dir=root / "vm",
        run_dir=root / "run",
    )


# -- running the backend inside the namespace ----------------------------------------------


def _join_netns(name: str) -> None:
    """Worker initializer: move this single-threaded process into the test namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
        if os.stat("/proc/self/ns/net").st_ino != os.fstat(fd).st_ino:
            raise RuntimeError(f"not inside netns {name}; refusing to touch the network")
    finally:
        os.close(fd)


@dataclass
class Worker:
    pool: ProcessPoolExecutor

    def call(self, fn: Any, *args: Any) -> Any:
        return self.pool.submit(fn, *args).result(timeout=180)


@contextlib.contextmanager
def worker_in(ns: Netns) -> Iterator[Worker]:
    pool = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_join_netns,
        initargs=(ns.name,),
    )
    with pool:
        yield Worker(pool)


def _launch(spec: MachineSpec, sentinel: Path) -> tuple[VmmHandle, float]:
    # An fd the daemon might hold without O_CLOEXEC: the VMM must not inherit it (104).
    leak = os.open(sentinel, os.O_RDONLY)
    os.set_inheritable(leak, True)
    try:
        started = time.monotonic()
        handle = asyncio.run(FirecrackerVmm(Runner(), STANDIN).launch(spec))
        return handle, time.monotonic() - started
    finally:
        os.close(leak)


def _shutdown(handle: VmmHandle, timeout_s: float) -> float:
    started = time.monotonic()
    asyncio.run(FirecrackerVmm(Runner(), STANDIN).shutdown(handle, timeout_s=timeout_s))
    return time.monotonic() - started


def _kill(handle: VmmHandle) -> None:
    asyncio.run(FirecrackerVmm(Runner(), STANDIN).kill(handle, sig=signal.SIGKILL))


# -- helpers ----------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found += [int(p) for p in text.split()]
    return found


def wait_gone(identity: ProcessIdentity, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while procinfo.is_running(identity):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_accepting(sock: Path, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(str(sock)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"nothing accepts connections on {sock}")


def ssh_until_up(ns: Netns, key: Path) -> float:
    started = time.monotonic()
    argv = [
        "ssh", "-q", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR",
        f"root@{GUEST_IP}", "true",
    ]  # fmt: skip
    while time.monotonic() - started < SSH_DEADLINE_S:
        if ns.run(argv, capture_output=True, timeout=15, check=False).returncode == 0:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"no SSH to {GUEST_IP} within {SSH_DEADLINE_S:g}s")


def check_fd_and_env_hygiene(pid: int, spec: MachineSpec, sentinel: Path) -> None:
    """ADVERSARIAL 104: only its own fds and a minimal environment reach the VMM."""
    targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    files = {t for t in targets if not t.startswith(("socket:", "pipe:", "anon_inode:"))}
    assert str(sentinel) not in files
    assert files <= {"/dev/null", str(spec.console_log), str(spec.vmm_log), "/dev/net/tun"}
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert names <= set(PASSED_ENV)


def check_post_boot_rules(api: FirecrackerApi, spec: MachineSpec) -> None:
    """Firecracker's runtime controller: configuration is pre-boot only."""
    assert api.describe_instance().state == "Running"
    after = "not supported after starting the microVM"
    with pytest.raises(InvalidArgument, match=after):
        api.put_machine_config(2, 256)
    with pytest.raises(InvalidArgument, match=after):
        api.put_boot_source(spec.kernel, "console=ttyS0")
    with pytest.raises(InvalidArgument, match=after):
        api.put_logger(spec.vmm_log, LogLevel.DEBUG)
    with pytest.raises(CommandFailed, match=after):
        api.instance_start()
    with pytest.raises(InvalidArgument, match="PCI is not enabled"):
        api.put_drive("extra", spec.drives[1].path, is_root_device=False, is_read_only=True)


def check_drive_grow(ns: Netns, key: Path, handle: VmmHandle, spec: MachineSpec) -> None:
    """``PATCH /drives`` after the backing file grew: the guest sees the new size."""
    work = spec.drives[1]
    with open(work.path, "r+b") as disk:
        disk.truncate(32 * 1024 * 1024)
    asyncio.run(FirecrackerVmm(Runner(), STANDIN).grow_drive(handle, work, 32 * 1024 * 1024))
    argv = [
        "ssh", "-q", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        f"root@{GUEST_IP}", "cat /sys/class/block/vdb/size",
    ]  # fmt: skip
    deadline = time.monotonic() + 10
    seen = ""
    while time.monotonic() < deadline:
        seen = ns.run(argv, capture_output=True, text=True, timeout=15, check=False).stdout
        if seen.strip() == str(32 * 1024 * 1024 // 512):
            break
        time.sleep(0.2)
    assert seen.strip() == str(32 * 1024 * 1024 // 512), seen
    api = FirecrackerApi(handle.control_socket)
    with pytest.raises(CommandFailed, match="Unable to patch the block device"):
        api.patch_drive("nope", work.path)


# -- the tests ------------------------------------------------------------------------------


def test_firecracker_vmm_boots_a_guest_reachable_over_ssh(
    guest_files: GuestFiles, short_dir: Path
) -> None:
    spec = machine_spec(guest_files, short_dir)
    sentinel = short_dir / "daemon-secret.db"
    sentinel.write_text("not for the VMM")
    with netns() as ns, worker_in(ns) as worker:
        bridge_with_taps(ns, "br0", "172.30.0.1/24", ["tap0"])
        handle, launch_s = worker.call(_launch, spec, sentinel)
        try:
            assert handle.backend is Backend.FIRECRACKER
            assert handle.control_socket == spec.run_dir / "fc.sock"
            qemu = [procinfo.identify(p) for p in children_of(handle.process.pid)]
            check_fd_and_env_hygiene(handle.process.pid, spec, sentinel)
            ssh_s = ssh_until_up(ns, guest_files.key)
            print(f"\nfirecracker stand-in: launch {launch_s:.2f}s, boot to SSH {ssh_s:.2f}s")
            check_post_boot_rules(FirecrackerApi(handle.control_socket), spec)
            check_drive_grow(ns, guest_files.key, handle, spec)
            stop_s = worker.call(_shutdown, handle, 30.0)
            print(f"firecracker stand-in: SendCtrlAltDel shutdown {stop_s:.2f}s")
        finally:
            worker.call(_kill, handle)
    assert not procinfo.is_running(handle.process)
    assert qemu and all(q is not None and not procinfo.is_running(q) for q in qemu)
    assert stop_s < 30  # the guest stopped; no SIGKILL after the timeout
    assert "tiny-init: shutting down" in spec.console_log.read_text()
    assert "Firecracker exiting successfully. exit_code=0" in spec.vmm_log.read_text()


def test_launch_failure_kills_the_vmm_and_names_the_logs(
    guest_files: GuestFiles, short_dir: Path
) -> None:
    spec = machine_spec(guest_files, short_dir, net=False)
    missing = replace(spec.drives[1], path=short_dir / "gone.ext4")
    spec = replace(spec, drives=(spec.drives[0], missing))
    with pytest.raises(InvalidArgument) as info:
        asyncio.run(FirecrackerVmm(Runner(), STANDIN).launch(spec))
    assert "Firecracker refused PUT /drives/work" in info.value.brief
    assert "No such file or directory" in info.value.brief
    details = info.value.details or ""
    assert f"Firecracker log: {spec.vmm_log}" in details
    assert f"console log: {spec.console_log}" in details
    assert _pids_with_arg(str(spec.run_dir / "fc.sock")) == []


def _pids_with_arg(arg: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if arg.encode() in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry))
    return found


def test_check_kernel_wants_an_elf_vmlinux(guest_files: GuestFiles) -> None:
    vmm = FirecrackerVmm(Runner(), STANDIN)
    vmm.check_kernel(guest_files.vmlinux)
    with pytest.raises(InvalidArgument, match="not an ELF64 x86-64 vmlinux") as info:
        vmm.check_kernel(guest_files.bzimage)
    assert "banger kernel import" in (info.value.hint or "")


def test_no_signal_for_a_reused_pid() -> None:
    """ADVERSARIAL 95-97: a pid now owned by another process is never signalled."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        real = procinfo.identify(sleeper.pid)
        assert real is not None
        forged = replace(real, start_ticks=real.start_ticks + 1)  # "our" VMM, long gone
        handle = VmmHandle(Backend.FIRECRACKER, forged, Path("/nonexistent/fc.sock"))
        vmm = FirecrackerVmm(Runner(), STANDIN)
        asyncio.run(vmm.kill(handle, sig=signal.SIGKILL))
        asyncio.run(vmm.shutdown(handle, timeout_s=1))
        assert sleeper.poll() is None
        asyncio.run(vmm.kill(replace(handle, process=real), sig=signal.SIGKILL))
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize(
    ("sig", "expected_status", "log_line"),
    [
        (signal.SIGKILL, -signal.SIGKILL, None),
        (signal.SIGTERM, -signal.SIGTERM, None),
        (signal.SIGBUS, 149, "Shutting down VM after intercepting signal 7, code 0."),
    ],
)
def test_standin_never_outlives_its_guest(
    guest_files: GuestFiles,
    short_dir: Path,
    sig: int,
    expected_status: int,
    log_line: str | None,
) -> None:
    """However the stand-in ends, its QEMU ends too (PDEATHSIG, handlers; ADVERSARIAL 103)."""
    sock = short_dir / "fc.sock"
    proc = subprocess.Popen(
        [str(STANDIN), "--api-sock", str(sock), "--id", "sig-test"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        api = FirecrackerApi(sock)
        wait_accepting(sock)
        api.put_machine_config(1, 128)
        # No drives, no network: the kernel starts and is killed long before it needs any.
        api.put_boot_source(guest_files.vmlinux, "console=ttyS0 panic=-1", guest_files.initrd)
        api.instance_start()
        (qemu_pid,) = children_of(proc.pid)
        qemu = procinfo.identify(qemu_pid)
        assert qemu is not None
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == expected_status
        assert wait_gone(qemu), "QEMU outlived the stand-in"
        if log_line is not None:
            assert log_line in out.decode()
    finally:
        proc.kill()
        proc.communicate()


def test_shutdown_of_a_frozen_vmm_ends_in_sigkill(guest_files: GuestFiles, short_dir: Path) -> None:
    """ADVERSARIAL 97: a SIGSTOPped VMM cannot answer; shutdown times out, then kills it."""
    sock = short_dir / "fc.sock"
    proc = subprocess.Popen(
        [str(STANDIN), "--api-sock", str(sock), "--id", "frozen"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_accepting(sock)
        api = FirecrackerApi(sock)
        api.put_machine_config(1, 128)
        api.put_boot_source(guest_files.vmlinux, "console=ttyS0 panic=-1", guest_files.initrd)
        api.instance_start()
        (qemu_pid,) = children_of(proc.pid)
        qemu = procinfo.identify(qemu_pid)
        me = procinfo.identify(proc.pid)
        assert qemu is not None and me is not None
        proc.send_signal(signal.SIGSTOP)
        handle = VmmHandle(Backend.FIRECRACKER, me, sock)
        started = time.monotonic()
        asyncio.run(FirecrackerVmm(Runner(), STANDIN).shutdown(handle, timeout_s=1.0))
        assert time.monotonic() - started < 10
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert wait_gone(qemu), "QEMU outlived the stand-in"
    finally:
        proc.kill()
        proc.wait()
