"""The QEMU backend: microvm (virtio-mmio) with direct kernel boot, controlled over QMP.

Owns: QEMU's command line for a ``MachineSpec``, starting it detached, stopping it
(ACPI power-down, then QMP quit, then SIGKILL), and telling it a drive's file grew (QMP
``block_resize``). Must not: allocate anything.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from banger.errors import CommandFailed, InvalidArgument, Timeout
from banger.host import procinfo
from banger.host.runner import Runner
from banger.kernels.vmlinux import KernelFormat, kernel_format
from banger.vmm import spawn
from banger.vmm.base import Accel, Backend, DriveSpec, MachineSpec, NetSpec, VmmHandle
from banger.vmm.channels import AgentChannel, qemu_option_value, serial_channel
from banger.vmm.qmp import QmpClient

log = logging.getLogger("banger.vmm.qemu")

SOCKET_TIMEOUT_S = 15.0
CTRL_ALT_DEL = {"keys": [{"type": "qcode", "data": key} for key in ("ctrl", "alt", "delete")]}
QUIT_GRACE_S = 5.0
#: After a QMP command failed on a live QEMU: long enough for one that is exiting anyway.
UNANSWERED_GRACE_S = 1.0
QMP_SOCKET_NAME = "qmp.sock"
#: The KVM probe's guest: the smallest machine that boots a stock kernel far enough to
#: print its banner; no disk, so the kernel panics and (``-no-reboot``) QEMU exits.
PROBE_MEMORY_MIB = 256
PROBE_CMDLINE = "console=ttyS0 panic=-1"


class Answer(Enum):
    """How a QMP command went."""

    DONE = "done"
    #: The VMM is not running (any more): nothing left to ask.
    GONE = "gone"
    #: The VMM runs but QMP did not answer (refused, closed, or timed out).
    UNANSWERED = "unanswered"


def build_argv(binary: Path, spec: MachineSpec, *, machine: str = "microvm") -> list[str]:
    qmp = spec.run_dir / QMP_SOCKET_NAME
    if machine == "microvm":
        # acpi=on: devices and the power button are described in ACPI (no cmdline devices).
        argv = [str(binary), "-M", "microvm,acpi=on,rtc=on,isa-serial=on"]
        blk, net = "virtio-blk-device", "virtio-net-device"
    else:
        argv = [str(binary), "-M", "pc"]
        blk, net = "virtio-blk-pci", "virtio-net-pci"
    if spec.accel is Accel.KVM:
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", "tcg", "-cpu", "max"]
    argv += [
        "-name",
        f"banger-{spec.name}",
        "-smp",
        str(spec.vcpu),
        "-m",
        str(spec.memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        # append=on: O_APPEND, so the log can be cut in place (console_logs) without
        # leaving a hole, and a restart adds to it instead of truncating it.
        "-chardev",
        f"file,id=console,path={qemu_option_value(spec.console_log)},append=on",
        "-serial",
        "chardev:console",
        "-qmp",
        f"unix:{qemu_option_value(qmp)},server=on,wait=off",
        "-kernel",
        str(spec.kernel),
        "-append",
        spec.cmdline,
    ]
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    for drive in spec.drives:
        ro = ",readonly=on" if drive.read_only else ""
        argv += [
            "-drive",
            f"file={qemu_option_value(drive.path)},if=none,id={drive.drive_id},format=raw{ro}",
            "-device",
            f"{blk},drive={drive.drive_id}",
        ]
    if spec.net is not None:
        argv += [
            "-netdev",
            _netdev(spec.net),
            "-device",
            f"{net},netdev=n0,mac={spec.net.mac}",
        ]
    argv += ["-device", "virtio-rng-device" if machine == "microvm" else "virtio-rng-pci"]
    # The guest agent's virtio-serial port (no vhost-vsock needed).
    argv += QemuVmm.agent_channel(spec.run_dir).qemu_argv(machine)
    if machine == "microvm":
        # The keyboard controller that carries ctrl-alt-del, as Firecracker emulates one:
        # guests ignore the ACPI power button (its driver is a module, nothing listens).
        argv += ["-device", "i8042"]
    return argv


def _netdev(net: NetSpec) -> str:
    if net.user is None and net.tap_fd is not None:
        return f"tap,id=n0,fd={net.tap_fd}"
    if net.user is None:
        return f"tap,id=n0,ifname={net.tap},script=no,downscript=no"
    # slirp's own addresses, spelled out: the guest's static ip= on the command line must
    # match them (banger.net.user_net). The forward listens on loopback only.
    forward = f"tcp:127.0.0.1:{net.user.ssh_port}-{net.ip}:22"
    restrict = "off" if net.user.outbound else "on"
    return (
        f"user,id=n0,net={net.gateway}/{net.prefix_len},host={net.gateway},"
        f"dhcpstart={net.ip},dns={net.dns[0] if net.dns else net.gateway},"
        f"restrict={restrict},hostfwd={forward}"
    )


async def _status_when_listening(path: Path, handle: VmmHandle, spec: MachineSpec) -> Any:
    """QMP ``query-status`` once QEMU listens: its socket file exists from bind(), a moment
    before listen(), and a connection in that gap is refused."""
    deadline = time.monotonic() + SOCKET_TIMEOUT_S
    while True:
        try:
            async with QmpClient(path) as qmp:
                return await qmp.execute("query-status")
        except CommandFailed as exc:
            refused = isinstance(exc.__cause__, ConnectionRefusedError)
            if not refused or time.monotonic() > deadline:
                raise
            if not procinfo.is_running(handle.process):
                raise CommandFailed(
                    "QEMU exited while starting", details=spawn.log_tail(spec.vmm_log)
                ) from exc
        await asyncio.sleep(0.02)


class QemuVmm:
    backend: ClassVar[Backend] = Backend.QEMU
    control_socket_name: ClassVar[str] = QMP_SOCKET_NAME
    # The bzImage boots directly (smaller, no PVH detour); the ELF vmlinux also works.
    kernel_files: ClassVar[tuple[str, ...]] = ("vmlinuz", "vmlinux")
    binary_setting: ClassVar[str] = "qemu_bin"
    binary_name: ClassVar[str] = "qemu-system-x86_64"
    takes_tap_fd: ClassVar[bool] = True

    def __init__(self, runner: Runner, binary: Path, *, machine: str = "microvm") -> None:
        self.runner = runner
        self.binary = binary
        self.machine = machine

    @classmethod
    def agent_channel(cls, run_dir: Path) -> AgentChannel:
        """virtio-serial on every host (docs/explanation/guest-agent.md: why not vhost-vsock)."""
        return serial_channel(run_dir)

    def kvm_probe_argv(self, kernel: Path, scratch: Path) -> list[str]:
        """The real command line for a one-vCPU, disk-less guest under KVM booting
        ``kernel``; its console goes to ``console_log_path(scratch)``."""
        spec = MachineSpec(
            name="kvm-probe",
            vcpu=1,
            memory_mib=PROBE_MEMORY_MIB,
            kernel=kernel,
            initrd=None,
            cmdline=PROBE_CMDLINE,
            drives=(),
            net=None,
            vm_dir=scratch,
            run_dir=scratch,
            accel=Accel.KVM,
        )
        return build_argv(self.binary, spec, machine=self.machine)

    def check_kernel(self, kernel: Path) -> None:
        if kernel_format(kernel) is KernelFormat.UNKNOWN:
            raise InvalidArgument(
                f"{kernel} is neither a bzImage nor an ELF vmlinux: QEMU cannot boot it",
                hint="import the kernel with `banger kernel import NAME --from DIR`",
            )

    async def launch(self, spec: MachineSpec) -> VmmHandle:
        qmp_path = spec.run_dir / QMP_SOCKET_NAME
        qmp_path.unlink(missing_ok=True)
        argv = build_argv(self.binary, spec, machine=self.machine)
        fds = () if spec.net is None or spec.net.tap_fd is None else (spec.net.tap_fd,)
        identity = spawn.spawn_detached(
            argv, log_path=spec.vmm_log, runner=self.runner, pass_fds=fds
        )
        handle = VmmHandle(Backend.QEMU, identity, qmp_path)
        try:
            await spawn.wait_for_socket(
                qmp_path, identity, timeout_s=SOCKET_TIMEOUT_S, log_path=spec.vmm_log
            )
            status = await _status_when_listening(qmp_path, handle, spec)
            if status.get("status") != "running":
                raise CommandFailed(f"QEMU is {status.get('status')!r} after start, not running")
        except BaseException:
            await self.kill(handle, sig=signal.SIGKILL)
            raise
        return handle

    async def shutdown(self, handle: VmmHandle, *, timeout_s: float) -> None:
        if await self._graceful(handle, timeout_s=timeout_s):
            return
        log.warning("QEMU %s did not stop gracefully; killing it", handle.process.pid)
        await self.kill(handle, sig=signal.SIGKILL)

    async def _graceful(self, handle: VmmHandle, *, timeout_s: float) -> bool:
        """ctrl-alt-del, then QMP ``quit``; False when QEMU must be killed: it did not
        exit in time, or its QMP does not answer (a stopped or wedged process, ADVERSARIAL
        97: nothing it is asked will happen, so waiting longer is pointless)."""
        # ctrl-alt-del: busybox init powers off, systemd reboots; with -no-reboot and
        # reboot=k either way QEMU exits (Firecracker's SendCtrlAltDel semantics).
        steps = (("send-key", CTRL_ALT_DEL, timeout_s), ("quit", None, QUIT_GRACE_S))
        for command, arguments, wait_s in steps:
            answer = await self._ask(handle, command, arguments)
            if answer is Answer.GONE:
                return True
            if answer is Answer.UNANSWERED:
                # A QMP connection that closes under ``quit`` may be QEMU exiting.
                return await spawn.wait_exit(handle.process, timeout_s=UNANSWERED_GRACE_S)
            if await spawn.wait_exit(handle.process, timeout_s=wait_s):
                return True
        return False

    async def kill(self, handle: VmmHandle, *, sig: int) -> None:
        spawn.signal_if_ours(handle.process, sig)
        if sig == signal.SIGKILL:
            await spawn.wait_exit(handle.process, timeout_s=QUIT_GRACE_S)

    async def grow_drive(self, handle: VmmHandle, drive: DriveSpec, size_bytes: int) -> None:
        """QMP ``block_resize`` on the drive's ``-drive id``: QEMU sets the file to that
        length (already so: the caller grew it) and raises virtio-blk's config-change
        interrupt, on which the guest kernel reads the new capacity."""
        if not procinfo.is_running(handle.process):
            raise CommandFailed(f"QEMU (pid {handle.process.pid}) is not running")
        async with QmpClient(handle.control_socket) as qmp:
            await qmp.execute("block_resize", {"device": drive.drive_id, "size": size_bytes})

    async def _ask(
        self, handle: VmmHandle, command: str, arguments: dict[str, Any] | None = None
    ) -> Answer:
        """Send a QMP command and say how it went."""
        if not procinfo.is_running(handle.process):
            return Answer.GONE
        try:
            async with QmpClient(handle.control_socket) as qmp:
                await qmp.execute(command, arguments)
        except (CommandFailed, Timeout) as exc:
            if not procinfo.is_running(handle.process):
                return Answer.GONE
            log.warning("QMP %s to %s failed: %s", command, handle.control_socket, exc.brief)
            return Answer.UNANSWERED
        return Answer.DONE
