"""``doctor``'s network checks: the privilege mode, the firewall, NAT and DNS (SPEC §4, §9).

Owns: what each concludes from the privilege mode, nft, the daemon's DNS port and
systemd-resolved. Must not: change the host (reading nft and resolvectl only), or ask
any DNS server but the daemon's own on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from banger.config.settings import Config, PrivilegeModeChoice
from banger.dns import probe as dns_probe
from banger.errors import BangerError
from banger.host import buildinfo
from banger.host.runner import find_tool
from banger.model.addressing import prefix_len
from banger.model.wire import StageState
from banger.net import nat, privilege_mode
from banger.net.privileged import IP_FORWARD_SYSCTL, RESOLVED_SOCKET
from banger.services.doctor_inputs import CheckResult, DoctorInputs
from banger.vmm import table
from banger.vmm.base import Backend

#: An unprivileged VMM opens this to attach to the TAP the helper made for its user.
TUN_DEVICE = "/dev/net/tun"
_GET_A_BRIDGE = (
    "`sudo banger system install --owner $USER` (banger-helper), or run the daemon as root"
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


def check_network(inputs: DoctorInputs) -> CheckResult:
    """The privilege mode (SPEC §9) first: a bridge is only ✓ if this daemon can make it."""
    report = inputs.privilege_report()
    if report.mode is privilege_mode.PrivilegeMode.ROOTLESS:
        if table.binary_for(Backend.QEMU, inputs.config) is None:
            # Only QEMU has user-mode networking: a Firecracker-only host runs nothing.
            return CheckResult(
                StageState.FAIL,
                "mode rootless (not root, and no banger-helper answers), but user-mode "
                "networking needs QEMU and none is found: no VM can start",
                hint="sudo apt-get install qemu-system-x86, or give the daemon a bridge: "
                "`sudo banger system install --owner $USER`",
            )
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


def check_nat(inputs: DoctorInputs) -> CheckResult:
    """Whether a ``--nat`` VM gets outbound access in this privilege mode, and how."""
    report = inputs.privilege_report()
    mode = report.mode
    if mode is privilege_mode.PrivilegeMode.ROOTLESS:
        return CheckResult(
            StageState.OK,
            "rootless: --nat is user-mode networking's own outbound access (QEMU's "
            "slirp), not banger's NAT rules",
            hint=f"for NAT on a bridge: {_GET_A_BRIDGE}",
        )
    if mode is privilege_mode.PrivilegeMode.NONE:
        return CheckResult(
            StageState.WARN,
            "no NAT: not root and no banger-helper answers (and privilege_mode forbids "
            "rootless), so no VM starts at all",
            hint=_GET_A_BRIDGE,
        )
    if mode is privilege_mode.PrivilegeMode.HELPER:
        return CheckResult(
            StageState.OK,
            f"through banger-helper ({report.socket_path}): it installs table {nat.TABLE} "
            "for the first --nat VM",
        )
    return _nat_as_root(inputs)


def _nat_as_root(inputs: DoctorInputs) -> CheckResult:
    if find_tool("nft") is None:
        return CheckResult(
            StageState.WARN,
            "mode root, but nft is not installed: VMs started with --nat fail",
            hint="sudo apt-get install nftables",
        )
    try:
        tables = inputs.runner.run(["nft", "list", "tables"], timeout_s=10).text
    except BangerError as exc:
        return CheckResult(
            StageState.WARN,
            f"mode root, but nft cannot list tables: {exc.brief}",
            hint="VMs started with --nat need nftables in the kernel (nf_tables)",
        )
    present = any(line.strip() == f"table {nat.TABLE}" for line in tables.splitlines())
    table_state = (
        f"table {nat.TABLE} present"
        if present
        else f"table {nat.TABLE} not made yet (made for the first --nat VM)"
    )
    forwarding = _read(IP_FORWARD_SYSCTL)
    forward_state = (
        "IPv4 forwarding on"
        if forwarding == "1"
        else "IPv4 forwarding off (turned on with the table)"
    )
    return CheckResult(StageState.OK, f"mode root (nft in-process): {table_state}; {forward_state}")


def check_dns(inputs: DoctorInputs) -> CheckResult:
    """The daemon's DNS server answers on its port, and ``~vm`` is routed to it."""
    port = inputs.dns_port
    if port is None:
        return CheckResult(
            StageState.WARN,
            "this daemon runs no DNS server: <vm>.vm names do not resolve",
            hint="restart the daemon: `banger daemon stop` (the next command starts it)",
        )
    where = f"127.0.0.1:{port}"
    if not dns_probe.answers(port):
        return CheckResult(
            StageState.FAIL,
            f"banger's DNS server does not answer on {where}",
            hint=f"restart the daemon (`banger daemon stop`); `ss -ulpn 'sport = :{port}'` "
            "shows what holds the port",
        )
    check_by_hand = f"`dig @127.0.0.1 -p {port} NAME.vm` asks banger's DNS directly"
    if not inputs.privilege_report().mode.bridged:
        return CheckResult(
            StageState.OK,
            f"answers on {where}; ~vm is not routed: rootless VMs have no <vm>.vm address "
            "(reach them with `banger vm ssh NAME`)",
        )
    return _vm_domain_routing(inputs.config.bridge_name, where, check_by_hand, inputs)


def _vm_domain_routing(
    bridge: str, where: str, check_by_hand: str, inputs: DoctorInputs
) -> CheckResult:
    if shutil.which("resolvectl") is None or not RESOLVED_SOCKET.exists():
        return CheckResult(
            StageState.WARN,
            f"answers on {where}; ~vm is not routed to it: systemd-resolved is not "
            "running, so `ssh NAME.vm` and other lookups of <vm>.vm fail on this host",
            hint=f"{check_by_hand}; with systemd-resolved running, banger routes ~vm to "
            f"it on {bridge} (check with `resolvectl domain {bridge}`), or point your "
            f"resolver's vm zone at {where}",
        )
    if not Path(f"/sys/class/net/{bridge}").exists():
        return CheckResult(
            StageState.OK,
            f"answers on {where}; ~vm is routed to it on {bridge} when the bridge is made "
            "(at the first VM)",
        )
    try:
        domains = inputs.runner.run(["resolvectl", "domain", bridge], timeout_s=10).text
        servers = inputs.runner.run(["resolvectl", "dns", bridge], timeout_s=10).text
    except BangerError as exc:
        return CheckResult(
            StageState.WARN,
            f"answers on {where}; cannot read systemd-resolved's state: {exc.brief}",
            hint=f"check with `resolvectl domain {bridge}` (expect ~vm) and "
            f"`resolvectl dns {bridge}` (expect {where}); {check_by_hand}",
        )
    if "~vm" in domains.split() and where in servers.split():
        return CheckResult(StageState.OK, f"answers on {where}; ~vm is routed to it on {bridge}")
    return CheckResult(
        StageState.WARN,
        f"answers on {where}; but systemd-resolved does not route ~vm to it on {bridge} "
        f"(domains: {_after_colon(domains)}; DNS: {_after_colon(servers)})",
        hint=f"restart the daemon (it routes ~vm when it makes the bridge); {check_by_hand}",
    )


def _after_colon(text: str) -> str:
    """``Link 5 (banger0): ~vm`` -> ``~vm`` (resolvectl's per-link line), or "none"."""
    value = text.strip().partition("):")[2].strip()
    return value or "none"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "?"
