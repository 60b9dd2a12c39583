"""Fakes at the seams (DESIGN.md rule 2): a ``Vmm``, ``PrivilegedOps`` and a ``Runner``.

They let the services run with real SQLite, real files and real (tiny) processes, and
reach on demand the failures real QEMU cannot: a VMM that fails to start, a guest that
never answers, one that dies later, a stop the guest ignores. They never replace the
real-VM tests (tests/e2e): they only make the services' own logic fast to test.

- ``FakeVmm`` follows ``banger.vmm.base.Vmm``. A "VM" is a real ``sleep`` process started
  through the real detached spawner, so process identity, pid reuse checks, signals and
  reaping are the real code. What the next guest does is set on ``fake.script``.
- ``FakeVmms`` is the ``VmmFactory`` handing it out; ``FakeVmm.port_open`` stands in for
  the TCP probe of a guest's port 22 (tests may not send packets to guest addresses).
- ``FakePrivilegedOps`` keeps the bridge, TAPs and NAT in memory and validates every
  argument with the same validators as the real one.
- ``FakeRunner`` answers the commands it is told to (``ssh`` into guests that do not
  exist) and runs every other command for real (``mkfs.ext4``, ``debugfs``, ssh-keygen).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from banger.errors import AlreadyExists, CommandFailed, InvalidArgument, InvalidState
from banger.host import procinfo
from banger.host.runner import DEFAULT_TIMEOUT_S, Result, Runner, command_failed
from banger.model.addressing import (
    is_our_tap,
    validate_bridge_name,
    validate_interface_address,
    validate_private_cidr,
    validate_tap_name,
    validate_uid,
)
from banger.model.records import VmRecord
from banger.net.privilege_mode import PrivilegeMode
from banger.services.vmm_factory import VmmPick
from banger.vmm import spawn
from banger.vmm.base import Accel, Backend, DriveSpec, MachineSpec, Vmm, VmmHandle
from banger.vmm.channels import AgentChannel
from banger.vmm.kvm_probe import Verdict
from banger.vmm.qemu import QemuVmm

#: A fake VM: one process that powers off cleanly (exit 0) on SIGTERM, as a guest asked
#: to shut down does, and outlives no test run by much even if a test dies before clean-up.
GUEST_PROGRAM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print('fake guest booting', flush=True)\n"
    "time.sleep(120)\n"
)


@dataclass
class GuestScript:
    """How the next guests a ``FakeVmm`` launches behave."""

    #: The VMM exits while starting (a bad QEMU option, a missing device).
    fail_start: bool = False
    #: The guest answers on port 22 (else it boots forever, silently).
    ready: bool = True
    #: Seconds after launch at which the VMM dies on its own (SIGKILL), or never.
    die_after_s: float | None = None
    #: The guest ignores the graceful stop (a hung guest): the service must SIGKILL it.
    ignore_shutdown: bool = False
    #: Seconds a graceful stop takes before the VMM exits.
    shutdown_delay_s: float = 0.0
    #: The VMM refuses to resize a drive of a running guest (``grow_drive``).
    fail_grow: bool = False


class FakeVmm:
    """Stands in for QEMU: rows record ``qemu``, so adoption and stops find it again."""

    backend: ClassVar[Backend] = Backend.QEMU
    control_socket_name: ClassVar[str] = QemuVmm.control_socket_name
    kernel_files: ClassVar[tuple[str, ...]] = QemuVmm.kernel_files
    binary_setting: ClassVar[str] = "qemu_bin"
    binary_name: ClassVar[str] = "fake-vmm"
    takes_tap_fd: ClassVar[bool] = True

    @classmethod
    def agent_channel(cls, run_dir: Path) -> AgentChannel:
        """Where QEMU's agent channel would be: nothing listens there (an image without
        the agent), so readiness goes the SSH way."""
        return QemuVmm.agent_channel(run_dir)

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.script = GuestScript()
        self.launched: list[MachineSpec] = []
        self.handles: list[VmmHandle] = []
        self.shutdowns: list[VmmHandle] = []
        self.bad_kernels: set[Path] = set()
        #: (drive id, backing file's size seen, size asked) per ``grow_drive``.
        self.grown: list[tuple[str, int, int]] = []
        self._answering: set[str] = set()
        self._guests: dict[str, VmmHandle] = {}
        self._timers: list[asyncio.TimerHandle] = []

    # -- the Vmm protocol ---------------------------------------------------------------

    def check_kernel(self, kernel: Path) -> None:
        if kernel in self.bad_kernels:
            raise InvalidArgument(f"the fake VMM cannot boot {kernel}")

    async def launch(self, spec: MachineSpec) -> VmmHandle:
        self.launched.append(spec)
        script = self.script
        if script.fail_start:
            spec.vmm_log.write_text("fake-vmm: could not initialize the machine\n")
            raise CommandFailed(
                "the VMM exited while starting",
                details=spawn.log_tail(spec.vmm_log),
                hint=f"full log: {spec.vmm_log}",
            )
        identity = spawn.spawn_detached(
            [sys.executable, "-c", GUEST_PROGRAM],
            log_path=spec.vmm_log,
            runner=self.runner,
            stdout_path=spec.console_log,
        )
        # Like a real VMM's control socket appearing: the guest is set up once it printed.
        while b"booting" not in _read(spec.console_log):
            if not procinfo.is_running(identity):
                raise CommandFailed("the VMM exited while starting")
            await asyncio.sleep(0.005)
        handle = VmmHandle(self.backend, identity, spec.run_dir / self.control_socket_name)
        self.handles.append(handle)
        if spec.net is not None:
            where = _reached_at(spec)
            self._guests[where] = handle
            if script.ready:
                self._answering.add(where)
            else:
                self._answering.discard(where)
        if script.die_after_s is not None:
            loop = asyncio.get_running_loop()
            self._timers.append(
                loop.call_later(script.die_after_s, spawn.signal_if_ours, identity, signal.SIGKILL)
            )
        return handle

    async def shutdown(self, handle: VmmHandle, *, timeout_s: float) -> None:
        self.shutdowns.append(handle)
        if self.script.ignore_shutdown:
            await asyncio.sleep(min(0.2, timeout_s))
            return
        await asyncio.sleep(self.script.shutdown_delay_s)
        spawn.signal_if_ours(handle.process, signal.SIGTERM)
        await spawn.wait_exit(handle.process, timeout_s=timeout_s)

    async def kill(self, handle: VmmHandle, *, sig: int) -> None:
        spawn.signal_if_ours(handle.process, sig)

    async def grow_drive(self, handle: VmmHandle, drive: DriveSpec, size_bytes: int) -> None:
        if self.script.fail_grow or not procinfo.is_running(handle.process):
            raise CommandFailed("fake: the VMM did not resize the drive")
        self.grown.append((drive.drive_id, drive.path.stat().st_size, size_bytes))

    # -- what tests use -----------------------------------------------------------------

    async def port_open(self, ip: str, port: int) -> bool:
        """The guest's port accepts: it was told to answer and its VMM still runs. A
        rootless guest is asked at ``127.0.0.1`` and its forwarded port."""
        where = ip if ip in self._guests else f"{ip}:{port}"
        handle = self._guests.get(where)
        return (
            handle is not None and where in self._answering and procinfo.is_running(handle.process)
        )

    def kill_all(self) -> None:
        """End every fake VM still running (test clean-up)."""
        for timer in self._timers:
            timer.cancel()
        for handle in self.handles:
            spawn.signal_if_ours(handle.process, signal.SIGKILL)
        spawn.reap()


def _reached_at(spec: MachineSpec) -> str:
    """Where the host reaches a fake guest: its address, or (rootless) the forward."""
    assert spec.net is not None
    if spec.net.user is not None:
        return f"127.0.0.1:{spec.net.user.ssh_port}"
    return spec.net.ip


class FakeMode:
    """The privilege mode each create sees (``banger.net.privilege_mode.ModeProbe``)."""

    def __init__(self, mode: PrivilegeMode = PrivilegeMode.ROOT) -> None:
        self.mode = mode

    def __call__(self) -> PrivilegeMode:
        return self.mode


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


class FakeVmms:
    """The ``VmmFactory`` of the tests: always the one ``FakeVmm`` (under TCG); KVM is
    known not to run guests unless ``kvm_unknown`` asks for a (fake, instant) probe."""

    def __init__(self, vmm: FakeVmm) -> None:
        self.vmm = vmm
        self.probed: list[Path] = []
        self.wanted: list[Backend | None] = []
        self.rootless: list[bool] = []
        #: The VMM binary was uninstalled after the VM started.
        self.uninstalled = False
        self.kvm_unknown = False

    def kvm_known(self) -> Verdict | None:
        return None if self.kvm_unknown else Verdict(False, "fake: no KVM")

    async def kvm_probe(self, kernel: Path) -> Verdict:
        self.probed.append(kernel)
        self.kvm_unknown = False
        return Verdict(False, "fake probe: the guest printed nothing")

    def choose(self, *, kvm_usable: bool, wanted: Backend | None, rootless: bool) -> VmmPick:
        self.wanted.append(wanted)
        self.rootless.append(rootless)
        vmm: Vmm = self.vmm
        return VmmPick(vmm, Accel.TCG, "fake VMM (tests)")

    def installed(self, backend: Backend) -> Vmm:
        if self.uninstalled:
            raise InvalidState(f"{backend.value} is no longer installed")
        vmm: Vmm = self.vmm
        return vmm


class FakeGuestNamer:
    """Stands in for running commands in a pool VM's guest (``services.pool_claim.GuestNamer``):
    records each rename and each other command; ``fail`` makes the next renames fail as an
    unreachable guest would, ``fail_commands`` the other commands whose argv holds it."""

    def __init__(self) -> None:
        self.renamed: list[tuple[str, str]] = []
        self.fail = False
        #: (VM name, argv) of each ``run``.
        self.ran: list[tuple[str, list[str]]] = []
        self.fail_commands: str | None = None
        #: Commands whose argv holds the text wait for the event before they end.
        self.gate: tuple[str, asyncio.Event] | None = None

    async def run(
        self, vm: VmRecord, ssh_argv: list[str], argv: list[str], *, timeout_s: float, what: str
    ) -> str:
        self.ran.append((vm.name, argv))
        if self.gate is not None and any(self.gate[0] in a for a in argv):
            await self.gate[1].wait()
        if self.fail_commands is not None and any(self.fail_commands in a for a in argv):
            raise CommandFailed(f"fake: {what} failed")
        return "fake run"

    async def rename(self, vm: VmRecord, paths: object, ssh_argv: list[str], name: str) -> str:
        if self.fail:
            raise CommandFailed("fake: the guest did not answer")
        self.renamed.append((vm.name, name))
        return "fake rename"


@dataclass
class FakePrivilegedOps:
    """``PrivilegedOps`` in memory, refusing what the real one refuses."""

    bridges: dict[str, str] = field(default_factory=dict)
    #: TAP name → (bridge, owner uid).
    taps: dict[str, tuple[str, int]] = field(default_factory=dict)
    nat: tuple[str, str] | None = None
    ip_forward: bool = False
    routed: list[tuple[str, int]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def ensure_bridge(self, name: str, address_cidr: str) -> None:
        self.calls.append("ensure_bridge")
        self.bridges[validate_bridge_name(name)] = str(validate_interface_address(address_cidr))

    def create_tap(self, name: str, *, bridge: str, owner_uid: int) -> None:
        self.calls.append("create_tap")
        name = validate_tap_name(name)
        bridge = validate_bridge_name(bridge)
        if bridge not in self.bridges:
            raise CommandFailed(f"bridge {bridge} does not exist")
        if name in self.taps:
            raise AlreadyExists(f"interface {name} already exists")
        self.taps[name] = (bridge, validate_uid(owner_uid))

    def delete_tap(self, name: str) -> None:
        self.calls.append("delete_tap")
        self.taps.pop(validate_tap_name(name), None)

    def list_taps(self, *, owner_uid: int | None = None) -> list[str]:
        return sorted(
            n
            for n, (_, uid) in self.taps.items()
            if is_our_tap(n) and (owner_uid is None or uid == owner_uid)
        )

    def open_tap(self, name: str, *, owner_uid: int) -> int:
        """A real descriptor (of /dev/null) standing in for the TAP's queue."""
        self.calls.append("open_tap")
        name = validate_tap_name(name)
        if name not in self.list_taps(owner_uid=owner_uid):
            raise InvalidState(f"no TAP {name} of uid {owner_uid}")
        return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    def ensure_nat(self, bridge: str, cidr: str) -> None:
        self.calls.append("ensure_nat")
        self.nat = (validate_bridge_name(bridge), str(validate_private_cidr(cidr)))

    def remove_nat(self) -> None:
        self.nat = None

    def enable_ip_forward(self) -> None:
        self.ip_forward = True

    def route_vm_domain(self, bridge: str, dns_port: int) -> bool:
        self.routed.append((validate_bridge_name(bridge), dns_port))
        return False


Answer = Callable[[tuple[str, ...]], Result]


def answered(returncode: int = 0, stdout: bytes = b"", stderr: bytes = b"") -> Answer:
    return lambda argv: Result(argv, returncode, stdout, stderr)


@dataclass
class FakeRunner(Runner):
    """A ``Runner`` that answers some programs itself and runs the others for real."""

    #: Program name (``argv[0]``) → its scripted answer.
    answers: dict[str, Answer] = field(default_factory=dict, kw_only=True)
    #: Every argv asked for, answered or run.
    calls: list[tuple[str, ...]] = field(default_factory=list, kw_only=True)

    def _answer(self, argv: Sequence[str | Path], ok_codes: Sequence[int]) -> Result | None:
        args = tuple(str(a) for a in argv)
        self.calls.append(args)
        answer = self.answers.get(os.path.basename(args[0]))
        if answer is None:
            return None
        result = answer(args)
        if result.returncode not in ok_codes:
            raise command_failed(result)
        return result

    def run(
        self,
        argv: Sequence[str | Path],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ok_codes: Sequence[int] = (0,),
        input_bytes: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result:
        result = self._answer(argv, ok_codes)
        if result is not None:
            return result
        return super().run(
            argv,
            timeout_s=timeout_s,
            ok_codes=ok_codes,
            input_bytes=input_bytes,
            env=env,
            cwd=cwd,
        )

    async def run_async(
        self,
        argv: Sequence[str | Path],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ok_codes: Sequence[int] = (0,),
        input_bytes: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        result = self._answer(argv, ok_codes)
        if result is not None:
            return result
        return await super().run_async(
            argv, timeout_s=timeout_s, ok_codes=ok_codes, input_bytes=input_bytes, env=env
        )

    def ran(self, program: str) -> list[tuple[str, ...]]:
        return [c for c in self.calls if os.path.basename(c[0]) == program]


@dataclass
class FakeDns:
    """A ``DnsPublisher`` that keeps the last records it was given."""

    port: int = 5353
    records: Mapping[str, str] = field(default_factory=dict)

    def update(self, records: Mapping[str, str]) -> None:
        self.records = dict(records)
