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
from pathlib import Path

from banger.host.runner import find_tool
from banger.model.units import format_size
from banger.model.wire import StageState
from banger.services.doctor_inputs import Check, CheckResult, DoctorInputs
from banger.services.doctor_net import check_dns, check_forward_policy, check_nat, check_network
from banger.vmm import table
from banger.vmm.kvm_probe import Verdict as KvmVerdict

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
MIN_FREE_BYTES = 5 * 1024**3

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
        # Opening is not running guests (nested PVM hosts): unknown is not a pass.
        return CheckResult(
            StageState.WARN,
            "/dev/kvm opens (API 12), but whether it can run a guest is unknown: not "
            "probed yet, no kernel to boot it with",
            hint="store a kernel: `banger kernel pull NAME` (names: `banger kernel list "
            "--available`); the daemon probes /dev/kvm with it once, then `banger doctor` "
            "shows the result",
        )
    return CheckResult(
        StageState.OK, f"/dev/kvm runs guests (probe boot printed the kernel banner{measured})"
    )


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
    missing = sorted({tool for tool in HOST_TOOLS if find_tool(tool) is None})
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
    ("vmm", check_vmm),
    ("host tools", check_host_tools),
    ("network", check_network),
    ("nat", check_nat),
    ("dns", check_dns),
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
