"""The Firecracker backend: one ``firecracker`` process per VM, configured over its API.

Owns: the Firecracker command line, the order of pre-boot API calls for a
``MachineSpec`` (logger, machine, boot source, drives with the first as root, network),
``InstanceStart``, the drive rescan after a grow (``PATCH /drives``), and stopping
(``SendCtrlAltDel``, then SIGKILL: after the timeout, or at once when the API does not
take the request). Must not: allocate TAPs, disks or
names, or trust a pid alone (``banger.host.procinfo`` decides whether a process is still ours;
after a daemon restart we are not Firecracker's parent, so ``waitpid`` tells nothing).

Firecracker facts relied on (firecracker-microvm/firecracker, docs and swagger):
- it boots only an uncompressed ELF ``vmlinux`` (x86-64; bzImage support is unreleased);
- ``--id`` must be 1-64 characters of ASCII letters, digits and ``-``; drive and
  interface ids only letters, digits and ``_``;
- the guest's serial console is written to Firecracker's stdout;
- the ``/logger`` file is opened with create+write but neither append nor truncate, so
  it must be a file nobody else writes (we start it empty). Firecracker's stderr only
  repeats its final error, which the logger records too, so stderr joins stdout in
  the console log;
- the API socket is left behind when the process exits, and binding fails if the path
  exists, so a stale one is removed first;
- ``SendCtrlAltDel`` presses the keys on an emulated i8042; Firecracker exits when the
  guest resets the CPU (``reboot=k``), which is how a guest shutdown ends it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import ClassVar

from banger.errors import BangerError, CommandFailed, InvalidArgument
from banger.host import procinfo
from banger.host.procinfo import ProcessIdentity
from banger.host.runner import Runner
from banger.kernels.vmlinux import KernelFormat, kernel_format
from banger.vmm import spawn
from banger.vmm.base import Backend, DriveSpec, MachineSpec, VmmHandle
from banger.vmm.channels import AgentChannel, firecracker_channel
from banger.vmm.fc_api import FirecrackerApi, LogLevel

log = logging.getLogger("banger.vmm.firecracker")

SOCKET_TIMEOUT_S = 10.0
KILL_GRACE_S = 5.0
#: After the API failed on a live Firecracker: long enough for one that is exiting anyway.
UNANSWERED_GRACE_S = 1.0
API_SOCKET_NAME = "fc.sock"
NET_IFACE_ID = "eth0"
_MAX_ID_LEN = 64


def instance_id(name: str) -> str:
    """``name`` as a Firecracker ``--id``: ASCII letters, digits and '-', 1-64 long."""
    cleaned = re.sub(r"[^A-Za-z0-9-]", "-", name)[:_MAX_ID_LEN]
    return cleaned or "banger-vm"


def resource_id(name: str) -> str:
    """``name`` as a Firecracker drive/interface id: ASCII letters, digits and '_'."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name) or "drive"


def build_argv(binary: Path, spec: MachineSpec) -> list[str]:
    api_socket = spec.run_dir / API_SOCKET_NAME
    return [str(binary), "--api-sock", str(api_socket), "--id", instance_id(spec.name)]


class FirecrackerVmm:
    backend: ClassVar[Backend] = Backend.FIRECRACKER
    control_socket_name: ClassVar[str] = API_SOCKET_NAME
    kernel_files: ClassVar[tuple[str, ...]] = ("vmlinux",)
    binary_setting: ClassVar[str] = "firecracker_bin"
    binary_name: ClassVar[str] = "firecracker"
    takes_tap_fd: ClassVar[bool] = False

    def __init__(self, runner: Runner, binary: Path) -> None:
        self.runner = runner
        self.binary = binary

    @classmethod
    def agent_channel(cls, run_dir: Path) -> AgentChannel:
        return firecracker_channel(run_dir)

    def check_kernel(self, kernel: Path) -> None:
        if kernel_format(kernel) is not KernelFormat.ELF:
            raise InvalidArgument(
                f"{kernel} is not an ELF64 x86-64 vmlinux: Firecracker boots only "
                "uncompressed ELF kernels, not a bzImage",
                hint="`banger kernel import` extracts the vmlinux from a bzImage",
            )

    async def launch(self, spec: MachineSpec) -> VmmHandle:
        self.check_kernel(spec.kernel)
        api_socket = spec.run_dir / API_SOCKET_NAME
        api_socket.unlink(missing_ok=True)
        vsock = self.agent_channel(spec.run_dir).socket_path
        if vsock is not None:
            vsock.unlink(missing_ok=True)
        _start_empty(spec.vmm_log)
        identity = spawn.spawn_detached(
            build_argv(self.binary, spec), log_path=spec.console_log, runner=self.runner
        )
        handle = VmmHandle(Backend.FIRECRACKER, identity, api_socket)
        try:
            await spawn.wait_for_socket(
                api_socket, identity, timeout_s=SOCKET_TIMEOUT_S, log_path=spec.console_log
            )
            await _wait_accepting(api_socket, identity, timeout_s=SOCKET_TIMEOUT_S)
            await asyncio.to_thread(_configure_and_start, FirecrackerApi(api_socket), spec)
        except BaseException as exc:
            await self.kill(handle, sig=signal.SIGKILL)
            if isinstance(exc, BangerError):
                raise _with_logs(exc, spec) from exc
            raise
        return handle

    async def shutdown(self, handle: VmmHandle, *, timeout_s: float) -> None:
        if not procinfo.is_running(handle.process):
            spawn.reap()
            return
        try:
            api = FirecrackerApi(handle.control_socket, timeout_s=min(max(timeout_s, 1.0), 5.0))
            await asyncio.to_thread(api.send_ctrl_alt_del)
        except BangerError as exc:
            # A VMM that cannot take the request (stopped, wedged: ADVERSARIAL 97) will not
            # stop the guest either: end it now rather than after the whole timeout.
            log.warning("SendCtrlAltDel to %s failed: %s", handle.control_socket, exc.brief)
            timeout_s = min(timeout_s, UNANSWERED_GRACE_S)
        if await spawn.wait_exit(handle.process, timeout_s=timeout_s):
            return
        log.warning("%s did not stop within %gs; killing it", handle.control_socket, timeout_s)
        await self.kill(handle, sig=signal.SIGKILL)

    async def kill(self, handle: VmmHandle, *, sig: int) -> None:
        if spawn.signal_if_ours(handle.process, sig) and sig == signal.SIGKILL:
            await spawn.wait_exit(handle.process, timeout_s=KILL_GRACE_S)

    async def grow_drive(self, handle: VmmHandle, drive: DriveSpec, size_bytes: int) -> None:
        """``PATCH /drives/{id}`` with the same path: Firecracker reads the file's new
        size (``size_bytes``, set by the caller) and rescans the device for the guest."""
        if not procinfo.is_running(handle.process):
            raise CommandFailed(f"Firecracker (pid {handle.process.pid}) is not running")
        api = FirecrackerApi(handle.control_socket)
        await asyncio.to_thread(api.patch_drive, resource_id(drive.drive_id), drive.path)


async def _wait_accepting(path: Path, identity: ProcessIdentity, *, timeout_s: float) -> None:
    """The socket path exists from bind(); connections are refused until listen()."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)  # a full backlog would block connect() otherwise
            error = probe.connect_ex(str(path))
        if error == 0:
            return
        if not procinfo.is_running(identity):
            raise CommandFailed("Firecracker exited while starting")
        if time.monotonic() > deadline:
            raise CommandFailed(
                f"Firecracker's API socket {path} refuses connections: {os.strerror(error)}"
            )
        await asyncio.sleep(0.01)


def _configure_and_start(api: FirecrackerApi, spec: MachineSpec) -> None:
    """The pre-boot calls in Firecracker's expected order, then InstanceStart (blocking)."""
    api.put_logger(spec.vmm_log, LogLevel.INFO)
    api.put_machine_config(spec.vcpu, spec.memory_mib)
    api.put_boot_source(spec.kernel, spec.cmdline, spec.initrd)
    for index, drive in enumerate(spec.drives):
        # Firecracker makes the root device /dev/vda and appends root= to the cmdline.
        api.put_drive(
            resource_id(drive.drive_id),
            drive.path,
            is_root_device=index == 0,
            is_read_only=drive.read_only,
        )
    if spec.net is not None:
        if spec.net.tap is None:  # banger.vmm.select never picks Firecracker for these
            raise InvalidArgument("Firecracker has no user-mode networking (rootless VMs)")
        api.put_network_interface(NET_IFACE_ID, spec.net.tap, spec.net.mac)
    # The guest agent's channel: Firecracker's vsock is a Unix socket on the host side.
    channel = FirecrackerVmm.agent_channel(spec.run_dir)
    if channel.socket_path is not None and channel.guest_cid is not None:
        api.put_vsock(channel.guest_cid, channel.socket_path)
    api.instance_start()


def _start_empty(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.close(fd)


def _with_logs(exc: BangerError, spec: MachineSpec) -> BangerError:
    """The same error, with where to look: Firecracker's log and the guest console."""
    where = f"Firecracker log: {spec.vmm_log}\nconsole log: {spec.console_log}"
    tail = spawn.log_tail(spec.vmm_log) or spawn.log_tail(spec.console_log)
    details = "\n".join(part for part in (exc.details, tail, where) if part)
    # Every BangerError takes (brief, *, details, hint): keep the class, so the code stays.
    return type(exc)(exc.brief, details=details, hint=exc.hint)
