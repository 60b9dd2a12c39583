"""The guest behind the stand-in: one QEMU/TCG ``microvm`` process.

Owns: QEMU's command line for a configured microVM (virtio-mmio drives in Firecracker's
order, the TAP fd Firecracker would hold, an i8042 so ctrl-alt-del reaches the guest as
on Firecracker, and, with a vsock device, the virtio-serial port ``org.banger.agent``
that the stand-in's vsock muxer bridges ``CONNECT 52`` to, and ``org.banger.exec`` for
``CONNECT 53``), the serial console on the
stand-in's stdout (Firecracker writes the guest console to its stdout), QMP over an
inherited socketpair (no socket file to leave behind), QEMU's stderr forwarded to the
Firecracker log, and QEMU's death with ours: ``PR_SET_PDEATHSIG`` from the thread that
lives as long as the process (the main one).
Must not: validate API input (``machine`` did).

Guest-visible differences from Firecracker that cannot be avoided: QEMU's devices sit at
other MMIO addresses (both describe them in ACPI), and TCG needs the TSC frequency on the
command line (microvm has no HPET to calibrate against), so ``tsc_early_khz`` is added;
the guest gets a virtio-serial port where Firecracker would give it a vsock device.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from tests.fcstandin.fclog import FcLog

QEMU = "qemu-system-x86_64"
PR_SET_PDEATHSIG = 1
QMP_TIMEOUT_S = 20.0
STDERR_LINES_KEPT = 20


class GuestError(Exception):
    pass


@dataclass(frozen=True)
class DriveSpec:
    path: str
    read_only: bool
    cache_type: str  # Firecracker's "Unsafe" | "Writeback"


@dataclass(frozen=True)
class NetSpec:
    tap_fd: int
    mac: str | None


@dataclass(frozen=True)
class GuestSpec:
    kernel: str
    initrd: str | None
    cmdline: str
    vcpus: int
    memory_mib: int
    drives: tuple[DriveSpec, ...]
    nets: tuple[NetSpec, ...] = field(default=())
    #: A listening socket for the agent's virtio-serial port (the vsock bridge), if any.
    agent_fd: int | None = None
    #: The same for the exec port ``org.banger.exec`` (``CONNECT 53``).
    exec_fd: int | None = None


def build_argv(spec: GuestSpec, qmp_fd: int) -> list[str]:
    argv = [
        shutil.which(QEMU) or QEMU,
        "-M", "microvm,acpi=on,rtc=on,isa-serial=on",
        "-accel", "tcg", "-cpu", "max",
        "-smp", str(spec.vcpus), "-m", str(spec.memory_mib),
        "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-monitor", "none",
        "-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0",
        # Firecracker's SendCtrlAltDel goes through an emulated i8042 keyboard controller.
        "-device", "i8042",
        "-chardev", f"socket,id=qmp0,fd={qmp_fd}", "-mon", "chardev=qmp0,mode=control",
        "-kernel", spec.kernel, "-append", spec.cmdline,
    ]  # fmt: skip
    if spec.initrd:
        argv += ["-initrd", spec.initrd]
    for index, drive in enumerate(spec.drives):
        cache = "unsafe" if drive.cache_type == "Unsafe" else "writeback"
        ro = ",readonly=on" if drive.read_only else ""
        argv += [
            "-drive", f"file={drive.path},if=none,id=d{index},format=raw,cache={cache}{ro}",
            "-device", f"virtio-blk-device,drive=d{index}",
        ]  # fmt: skip
    if spec.agent_fd is not None:
        argv += [
            "-chardev", f"socket,id=agent,fd={spec.agent_fd},server=on,wait=off",
            "-device", "virtio-serial-device",
            "-device", "virtserialport,chardev=agent,name=org.banger.agent",
        ]  # fmt: skip
    if spec.agent_fd is not None and spec.exec_fd is not None:
        argv += [
            "-chardev", f"socket,id=exec,fd={spec.exec_fd},server=on,wait=off",
            "-device", "virtserialport,chardev=exec,name=org.banger.exec",
        ]  # fmt: skip
    for index, net in enumerate(spec.nets):
        mac = f",mac={net.mac}" if net.mac else ""
        argv += [
            "-netdev", f"tap,id=n{index},fd={net.tap_fd}",
            "-device", f"virtio-net-device,netdev=n{index}{mac}",
        ]  # fmt: skip
    return argv


#: Loaded at import, before any thread exists: the child after fork() must not dlopen().
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with(parent: int) -> Callable[[], None]:
    def setup() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork() and prctl(): then no signal will come.
        if os.getppid() != parent:
            os._exit(1)

    return setup


class Guest:
    """A running QEMU. Start it from the main thread (PDEATHSIG follows the forking thread)."""

    def __init__(self, spec: GuestSpec, log: FcLog) -> None:
        self.log = log
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        ours, theirs = socket.socketpair()
        pass_fds = (theirs.fileno(), *(n.tap_fd for n in spec.nets))
        if spec.agent_fd is not None:
            pass_fds += (spec.agent_fd,)
        if spec.exec_fd is not None:
            pass_fds += (spec.exec_fd,)
        argv = build_argv(spec, theirs.fileno())
        log.info("stand-in: starting " + " ".join(argv))
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=None,  # our stdout: where Firecracker writes the guest console
                stderr=subprocess.PIPE,
                pass_fds=pass_fds,
                preexec_fn=_die_with(os.getpid()),  # noqa: PLW1509 - only prctl + getppid run
            )
        except OSError as exc:
            ours.close()
            raise GuestError(f"cannot run {QEMU}: {exc}") from exc
        finally:
            theirs.close()
        assert self.proc.stderr is not None
        self._pump = threading.Thread(
            target=self._pump_stderr, args=(self.proc.stderr,), daemon=True
        )
        self._pump.start()
        self._qmp = ours
        self._qmp.settimeout(QMP_TIMEOUT_S)
        self._qmp_file = ours.makefile("rwb")
        try:
            self._handshake()
        except (OSError, GuestError, ValueError) as exc:
            self.kill()
            raise GuestError(self._why(exc)) from exc

    def _pump_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(line)
            self.log.warn(f"qemu: {line}")

    def _why(self, exc: BaseException) -> str:
        self._pump.join(timeout=2)  # QEMU is dead: let its last words arrive
        tail = " | ".join(self._stderr_tail)
        return f"the stand-in's QEMU failed to start ({exc}){': ' + tail if tail else ''}"

    def _handshake(self) -> None:
        greeting = self._read()
        if "QMP" not in greeting:
            raise GuestError("no QMP greeting")
        self.execute("qmp_capabilities")
        status = self.execute("query-status")
        if not status.get("running"):
            raise GuestError(f"guest is {status.get('status')!r} after start")

    def _read(self) -> dict[str, Any]:
        line = self._qmp_file.readline(1 << 20)
        if not line:
            raise GuestError("QEMU closed its QMP connection")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise GuestError("QMP message is not an object")
        return message

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._qmp_file.write(json.dumps(message).encode() + b"\n")
        self._qmp_file.flush()
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise GuestError(f"QMP {command}: {reply['error'].get('desc')}")
            self.log.info(f"stand-in: QMP event {reply.get('event')}")

    def send_ctrl_alt_del(self) -> None:
        keys = [{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]
        self.execute("send-key", {"keys": keys})

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.log.error(f"stand-in: QEMU pid {self.proc.pid} did not die")
        self._qmp.close()


def host_tsc_khz() -> int | None:
    """Under TCG the guest TSC ticks at the host's rate; /proc/cpuinfo has the host's."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        return None
    return None
