"""Host checks for ``banger doctor`` (SPEC §9): each one pass/warn/fail with a hint.

Owns: the list of checks and what each concludes from what it reads on the host.
Must not: change the host. Checks run in the daemon (it is what will run the VMs) and
are streamed to the CLI one by one.
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from banger.config.settings import Config, PrivilegeModeChoice
from banger.config.vm_defaults import VmDefaults
from banger.errors import BangerError
from banger.host import buildinfo
from banger.host.paths import Layout
from banger.host.runner import Runner
from banger.model.addressing import prefix_len
from banger.model.units import format_size
from banger.model.wire import StageState
from banger.net import privilege_mode
from banger.vmm import table
from banger.vmm.base import Backend
from banger.vmm.kvm_probe import Verdict as KvmVerdict

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
MIN_FREE_BYTES = 5 * 1024**3
#: An unprivileged VMM opens this to attach to the TAP the helper made for its user.
TUN_DEVICE = "/dev/net/tun"

#: host tool -> Debian package that provides it
HOST_TOOLS: dict[str, str] = {
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "fakeroot": "fakeroot",
    "ip": "iproute2",
    "nft": "nftables",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "git": "git",
    "zstd": "zstd",
}


@dataclass(frozen=True)
class CheckResult:
    state: StageState
    detail: str
    hint: str | None = None


@dataclass(frozen=True)
class DoctorInputs:
    layout: Layout
    config: Config
    vm_defaults: VmDefaults
    db_summary: Callable[[], str]
    #: The KVM probe's verdict (None: not probed, e.g. no kernel to boot yet).
    kvm_verdict: KvmVerdict | None = None
    runner: Runner = field(default_factory=Runner)
    #: "local" | "catalog" | "missing": where the default image would come from.
    default_image: str = "missing"
    #: banger-helper's socket (None: $BANGER_HELPER_SOCKET or the default).
    helper_socket: Path | None = None
    #: Published image/kernel dirs without a row: (path, size in bytes, command removing it).
    orphans: tuple[tuple[str, int, str], ...] = ()


Check = Callable[[DoctorInputs], CheckResult]


def check_arch(_: DoctorInputs) -> CheckResult:
    machine = platform.machine()
    if machine == "x86_64":
        return CheckResult(StageState.OK, machine)
    return CheckResult(
        StageState.FAIL,
        f"{machine} is not supported yet",
        hint="banger runs on x86_64 hosts only for now",
    )


def check_kvm(inputs: DoctorInputs) -> CheckResult:
    path = "/dev/kvm"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return CheckResult(
            StageState.WARN,
            "/dev/kvm is absent: VMs run under QEMU software emulation",
            hint="enable virtualisation in the firmware and load kvm_intel or kvm_amd",
        )
    except PermissionError:
        return CheckResult(
            StageState.WARN,
            "/dev/kvm exists but you cannot open it",
            hint="add yourself to the kvm group: sudo usermod -aG kvm $USER (then log in again)",
        )
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return CheckResult(StageState.WARN, f"/dev/kvm does not answer ioctls: {exc}")
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return CheckResult(StageState.WARN, f"/dev/kvm reports API version {version}")
    return _kvm_verdict(inputs.kvm_verdict)


def _kvm_verdict(verdict: KvmVerdict | None) -> CheckResult:
    measured = f"; probed {verdict.measured_at}" if verdict and verdict.measured_at else ""
    if verdict is not None and not verdict.runs_guests:
        return CheckResult(
            StageState.WARN,
            "/dev/kvm exists but could not run a guest (a probe boot under KVM printed "
            f"nothing{measured}): VMs run under QEMU software emulation (slow)",
            hint="nested virtualisation without full KVM (e.g. PVM) cannot boot stock "
            "kernels; on bare metal, check the kvm_intel/kvm_amd modules",
        )
    if verdict is None:
        return CheckResult(
            StageState.OK,
            "/dev/kvm opens (API 12); not probed yet: no kernel to boot (import or pull one)",
        )
    return CheckResult(
        StageState.OK, f"/dev/kvm runs guests (probe boot printed the kernel banner{measured})"
    )


def check_vhost_vsock(_: DoctorInputs) -> CheckResult:
    if Path("/dev/vhost-vsock").exists():
        return CheckResult(StageState.OK, "/dev/vhost-vsock present")
    return CheckResult(
        StageState.WARN,
        "/dev/vhost-vsock absent: QEMU guests reach banger's agent over virtio-serial instead",
        hint="optional: sudo modprobe vhost_vsock",
    )


def check_forward_policy(inputs: DoctorInputs) -> CheckResult:
    try:
        ruleset = inputs.runner.run(["nft", "list", "ruleset"], timeout_s=10).text
    except BangerError as exc:
        return CheckResult(StageState.SKIP, f"cannot read the firewall: {exc.brief}")
    dropping = forward_drop_chains(ruleset)
    if dropping:
        bridge = inputs.config.bridge_name
        return CheckResult(
            StageState.WARN,
            "FORWARD policy drop in "
            + ", ".join(dropping)
            + ": traffic of VMs started with --nat would be black-holed",
            hint=f"allow the bridge: sudo iptables -I FORWARD -i {bridge} -j ACCEPT && "
            f"sudo iptables -I FORWARD -o {bridge} -j ACCEPT",
        )
    return CheckResult(StageState.OK, "no forward chain drops by default")


def forward_drop_chains(ruleset: str) -> list[str]:
    """Chains hooked on forward with policy drop, outside banger's own table."""
    found, table, chain = [], "", ""
    for raw in ruleset.splitlines():
        line = raw.strip()
        if line.startswith("table "):
            table = line.removeprefix("table ").removesuffix("{").strip()
        elif line.startswith("chain "):
            chain = line.removeprefix("chain ").removesuffix("{").strip()
        elif "hook forward" in line and "policy drop" in line and table != "inet banger":
            found.append(f"{table} {chain}")
    return found


def check_default_image(inputs: DoctorInputs) -> CheckResult:
    name = inputs.config.default_image_name
    if inputs.default_image == "local":
        return CheckResult(StageState.OK, f"{name} is local")
    if inputs.default_image == "catalog":
        return CheckResult(
            StageState.OK,
            f"{name} is in the catalog: the first `vm run` obtains it",
            hint=f"`banger image pull {name}` obtains it now",
        )
    return CheckResult(
        StageState.FAIL,
        f"{name} is neither local nor in the catalog",
        hint="set default_image_name to a local image or a catalog one (`banger image list`)",
    )


def check_ssh_config(_: DoctorInputs) -> CheckResult:
    config = Path.home() / ".ssh" / "config"
    try:
        text = config.read_text(errors="replace")
    except OSError:
        text = ""
    if "banger/ssh_config" in text:
        return CheckResult(StageState.OK, f"{config} includes banger's ssh_config")
    return CheckResult(
        StageState.OK,
        "`ssh <name>.vm` is not set up (optional)",
        hint="`banger ssh-config --install` adds one Include line to ~/.ssh/config",
    )


def check_network(inputs: DoctorInputs) -> CheckResult:
    """The privilege mode (SPEC §9) first: a bridge is only ✓ if this daemon can make it."""
    report = privilege_mode.probe(inputs.helper_socket, setting=inputs.config.privilege_mode)
    if report.mode is privilege_mode.PrivilegeMode.ROOTLESS:
        return _rootless(report)
    if report.mode is privilege_mode.PrivilegeMode.NONE:
        return _mode_none(report)
    cfg = inputs.config
    bridge = cfg.bridge_name
    present = Path(f"/sys/class/net/{bridge}").exists()
    state = (
        f"bridge {bridge} present ({cfg.bridge_ip}, {cfg.cidr})"
        if present
        else f"bridge {bridge} not created yet (made at first VM)"
    )
    if report.hello is None:
        return CheckResult(StageState.OK, f"mode root (privileged steps in-process); {state}")
    return _helper_mode(cfg, report, state)


def _helper_mode(cfg: Config, report: privilege_mode.PrivilegeReport, state: str) -> CheckResult:
    hello = report.hello
    assert hello is not None
    ours = (cfg.bridge_name, f"{cfg.bridge_ip}/{prefix_len(cfg.cidr)}")
    if (hello.bridge_name, hello.bridge_address) != ours:
        return CheckResult(
            StageState.FAIL,
            f"mode helper, but the helper manages bridge {hello.bridge_name} "
            f"{hello.bridge_address} and config.toml says {ours[0]} {ours[1]}",
            hint="make bridge_name, bridge_ip and cidr in config.toml and the helper's "
            "/etc/banger/helper.toml agree",
        )
    if not os.access(TUN_DEVICE, os.R_OK | os.W_OK) and table.binary_for(Backend.FIRECRACKER, cfg):
        # QEMU is handed its TAP open by the helper; Firecracker opens it by name itself.
        return CheckResult(
            StageState.WARN,
            f"mode helper; {state}; but you cannot open {TUN_DEVICE}: QEMU gets its TAP "
            "from the helper, Firecracker (which opens it itself) cannot attach to one",
            hint=f'sudo chmod 0666 {TUN_DEVICE} (Debian\'s default mode), or vmm = "qemu"',
        )
    if hello.build != buildinfo.current().as_dict():
        return CheckResult(
            StageState.WARN,
            f"mode helper; {state}; but the helper is another build: {hello.describe()}",
            hint="restart banger-helper from the same installation as the daemon",
        )
    return CheckResult(StageState.OK, f"mode helper ({report.socket_path}); {state}")


def _mode_none(report: privilege_mode.PrivilegeReport) -> CheckResult:
    error = report.error
    return CheckResult(
        StageState.FAIL,
        f"mode none: {error.brief if error else 'no root and no helper'}",
        hint=error.hint if error else None,
    )


def _rootless(report: privilege_mode.PrivilegeReport) -> CheckResult:
    """Rootless works; what it costs is said, and how to get the bridge instead."""
    why = (
        'privilege_mode = "rootless"'
        if report.setting is PrivilegeModeChoice.ROOTLESS
        else "not root, and no banger-helper answers"
    )
    return CheckResult(
        StageState.OK,
        f"mode rootless ({why}): user-mode networking (QEMU's slirp), SSH through a "
        "127.0.0.1 port per VM; loses: no <vm>.vm address, no bridge (the host reaches a "
        "guest only over SSH; `vm ports` cannot probe web ports), no Firecracker, and "
        "--nat is slirp's outbound access (which also reaches the host's 127.0.0.1 "
        "through 10.0.2.2) rather than banger's NAT rules",
        hint="for bridged VMs: `sudo banger system install --owner $USER` (banger-helper), "
        "or run the daemon as root",
    )


def check_vmm(inputs: DoctorInputs) -> CheckResult:
    binaries = {b: table.binary_for(b, inputs.config) for b in table.VMM_CLASSES}
    found = [f"{backend.value}: {path}" for backend, path in binaries.items() if path]
    if not found:
        names = (table.vmm_class(b).binary_name for b in table.VMM_CLASSES)
        return CheckResult(
            StageState.FAIL,
            f"neither {' nor '.join(names)} found",
            hint="sudo apt-get install qemu-system-x86 (or set qemu_bin in config.toml)",
        )
    return CheckResult(StageState.OK, "; ".join(found))


def check_host_tools(_: DoctorInputs) -> CheckResult:
    missing = sorted({tool for tool in HOST_TOOLS if shutil.which(tool) is None})
    if not missing:
        return CheckResult(StageState.OK, ", ".join(HOST_TOOLS))
    packages = " ".join(sorted({HOST_TOOLS[t] for t in missing}))
    return CheckResult(
        StageState.WARN,
        "missing: " + ", ".join(missing),
        hint=f"sudo apt-get install {packages}",
    )


def check_config(inputs: DoctorInputs) -> CheckResult:
    path = inputs.config.path or inputs.layout.config_file
    where = str(path) if path.exists() else f"{path} (absent: built-in defaults)"
    return CheckResult(StageState.OK, f"loaded {where}")


def check_vm_defaults(inputs: DoctorInputs) -> CheckResult:
    d = inputs.vm_defaults
    detail = (
        f"vcpu {d.vcpu.value} ({d.vcpu.source}) · memory {d.memory_mib.value} MiB "
        f"({d.memory_mib.source}) · disk {d.disk_size_bytes.value // 1024**3}G "
        f"({d.disk_size_bytes.source})"
    )
    return CheckResult(
        StageState.OK,
        detail,
        hint=f"override in [vm_defaults] of {inputs.layout.config_file}",
    )


def check_state(inputs: DoctorInputs) -> CheckResult:
    summary = inputs.db_summary()
    if inputs.orphans:
        # Every file under the state dir has a row, or is named here (issue 14 item 4).
        listed = "; ".join(f"{path} ({format_size(size)})" for path, size, _ in inputs.orphans)
        return CheckResult(
            StageState.WARN,
            f"{summary}; on disk without a row (an interrupted pull or import): {listed}",
            hint="remove with " + ", ".join(remedy for _, _, remedy in inputs.orphans),
        )
    return CheckResult(StageState.OK, summary)


def check_disk_space(inputs: DoctorInputs) -> CheckResult:
    usage = shutil.disk_usage(inputs.layout.state_dir)
    free_gib = usage.free / 1024**3
    if usage.free < MIN_FREE_BYTES:
        return CheckResult(
            StageState.WARN,
            f"{free_gib:.1f} GiB free under {inputs.layout.state_dir}",
            hint="images and VM disks need several GiB; free some space",
        )
    return CheckResult(StageState.OK, f"{free_gib:.1f} GiB free")


def check_runtime_dir(inputs: DoctorInputs) -> CheckResult:
    rdir = inputs.layout.runtime_dir
    st = rdir.stat()
    sock_mode = _mode(inputs.layout.socket_path)
    if stat.S_IMODE(st.st_mode) != 0o700 or sock_mode not in (None, 0o600):
        return CheckResult(
            StageState.FAIL,
            f"{rdir} or its socket is reachable by others",
            hint=f"chmod 700 {rdir}; restart the daemon",
        )
    return CheckResult(StageState.OK, f"{rdir} (0700, socket 0600)")


#: (stage name, check) in the order they run and print
CHECKS: tuple[tuple[str, Check], ...] = (
    ("architecture", check_arch),
    ("kvm", check_kvm),
    ("vhost-vsock", check_vhost_vsock),
    ("vmm", check_vmm),
    ("host tools", check_host_tools),
    ("network", check_network),
    ("firewall", check_forward_policy),
    ("config", check_config),
    ("vm defaults", check_vm_defaults),
    ("default image", check_default_image),
    ("ssh-config", check_ssh_config),
    ("state", check_state),
    ("disk space", check_disk_space),
    ("runtime dir", check_runtime_dir),
)


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
