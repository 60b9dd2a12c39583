"""The two systemd units of the supported setup (SPEC §9), rendered from the owner and paths.

Owns: the text of ``banger-helper.service`` (root, the narrow helper) and of the owner's
daemon unit (the owner's uid, no capabilities at all), and why each hardening line is
there or absent. docs/explanation/privilege.md lists the exposure ``systemd-analyze
security`` gives them; tests/component/test_system_install.py keeps those figures true.

Must not: touch the file system or run anything; the caller writes what this returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from banger.errors import InvalidArgument

HELPER_UNIT = "banger-helper.service"
#: Unit names allow more, but a conservative user name keeps the unit name unescaped.
_UNIT_SAFE_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
#: Where code run as root must not live: whoever writes it is root (ProtectHome=read-only
#: is then the most the helper can have, and install warns).
HOME_PREFIXES = (Path("/home"), Path("/root"), Path("/run/user"))


def daemon_unit_name(user: str) -> str:
    if not _UNIT_SAFE_USER.fullmatch(user):
        raise InvalidArgument(
            f"user name {user!r} cannot be part of a unit name here "
            "(lower-case letters, digits, '_' and '-', at most 32)",
            hint="install for a user with a plain name",
        )
    return f"banger-daemon-{user}.service"


@dataclass(frozen=True)
class Owner:
    name: str
    uid: int
    gid: int
    home: Path

    @property
    def state_dir(self) -> Path:
        # The daemon under systemd sees no XDG_* of the owner's session: the defaults.
        return self.home / ".local" / "state" / "banger"

    @property
    def cache_dir(self) -> Path:
        return self.home / ".cache" / "banger"

    @property
    def runtime_dir(self) -> Path:
        return Path(f"/run/user/{self.uid}")


@dataclass(frozen=True)
class UnitInputs:
    owner: Owner
    #: Full paths of the installed scripts: systemd and sudo both have a PATH of their own
    #: that rarely includes a virtualenv's bin, and the units must run this very build.
    helper_bin: Path
    daemon_bin: Path
    helper_config: Path
    group: str
    #: Whether the ``kvm`` group exists (else the daemon gets no KVM: QEMU falls back to TCG).
    kvm_group: bool
    #: The helper's code lives under a home directory (ProtectHome=read-only, not yes).
    code_in_home: bool


def code_in_home(*paths: Path) -> bool:
    return any(p == h or h in p.parents for p in paths for h in HOME_PREFIXES)


# Shared by both units: none of these is needed by either program.
_COMMON = """\
NoNewPrivileges=yes
ProtectSystem=strict
PrivateTmp=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
DevicePolicy=closed
"""


def render_helper(inputs: UnitInputs) -> str:
    protect_home = "read-only" if inputs.code_in_home else "yes"
    return f"""\
# Written by `banger system install`; `banger system uninstall` removes it.
# The narrow root helper of {inputs.owner.name}'s banger daemon (docs/explanation/privilege.md).
[Unit]
Description=banger root helper (bridge, TAPs, NAT for {inputs.owner.name}'s daemon)
After=network.target

[Service]
Type=exec
ExecStart={inputs.helper_bin} --config {inputs.helper_config}
Restart=on-failure
RestartSec=2
# /run/banger: the socket's directory; the helper gives it to group {inputs.group} (0750).
RuntimeDirectory=banger
RuntimeDirectoryMode=0750
UMask=0077
# Netlink (bridge, TAPs, addresses), nft and resolvectl need CAP_NET_ADMIN; handing the
# socket and its directory to the group needs CAP_CHOWN. Nothing else.
CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN
AmbientCapabilities=
{_COMMON}\
ProtectHome={protect_home}
# The one sysctl it writes (ip-forward); /proc/sys stays read-only otherwise.
ReadWritePaths=/proc/sys/net/ipv4/ip_forward
# TAPs are made through /dev/net/tun (TUNSETIFF, TUNSETOWNER, TUNSETPERSIST).
DeviceAllow=/dev/net/tun rw
# Its socket, netlink and D-Bus (resolvectl); no IP traffic at all.
RestrictAddressFamilies=AF_UNIX AF_NETLINK
IPAddressDeny=any
MemoryDenyWriteExecute=yes
PrivateIPC=yes

[Install]
WantedBy=multi-user.target
"""


def render_daemon(inputs: UnitInputs) -> str:
    owner = inputs.owner
    if inputs.kvm_group:
        groups = f"# kvm: /dev/kvm; {inputs.group}: the helper's socket directory.\n"
        groups += f"SupplementaryGroups=kvm {inputs.group}"
    else:
        groups = "# No kvm group on this host: QEMU runs without KVM (TCG).\n"
        groups += f"# {inputs.group}: the helper's socket directory.\n"
        groups += f"SupplementaryGroups={inputs.group}"
    return f"""\
# Written by `banger system install`; `banger system uninstall` removes it.
# {owner.name}'s banger daemon, run as {owner.name} (docs/explanation/privilege.md).
[Unit]
Description=banger daemon of {owner.name}
# {owner.runtime_dir} holds the socket where the owner's CLI looks for it; it stays while
# this unit wants it, logged in or not. Without logind (no D-Bus) it cannot be made, and
# daemon and CLI both fall back to the state directory's run/ (Layout.from_env): a want,
# not a requirement.
Wants=user-runtime-dir@{owner.uid}.service {HELPER_UNIT}
After=user-runtime-dir@{owner.uid}.service {HELPER_UNIT} network.target

[Service]
Type=exec
User={owner.name}
Group={owner.gid}
{groups}
ExecStart={inputs.daemon_bin}
# This host has a helper: while it restarts, creating a VM fails naming it (mode none)
# rather than quietly making rootless VMs (privilege_mode = "auto" would).
Environment=BANGER_PRIVILEGE_MODE=helper
Restart=on-failure
RestartSec=2
# VMMs outlive a daemon restart (as with a daemon the CLI started): the new daemon
# adopts them. Only the daemon itself is stopped.
KillMode=process
UMask=0077
CapabilityBoundingSet=
AmbientCapabilities=
{_COMMON}\
# Reads the owner's config and keys; writes only its state, cache and runtime dirs.
ProtectHome=read-only
# ("-": the runtime directory may not exist, see Wants= above.)
ReadWritePaths={owner.state_dir} {owner.cache_dir} -{owner.runtime_dir}
DeviceAllow=/dev/kvm rw
DeviceAllow=/dev/net/tun rw
# The API socket and guest agents (QEMU's virtio-serial, Firecracker's vsock: both Unix
# sockets on the host), registries and guests over IP, netlink (bridge state).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
# No MemoryDenyWriteExecute: QEMU's TCG translates guest code into W+X memory.
# No RemoveIPC: the owner is a real user, whose session's IPC objects are not ours.

[Install]
WantedBy=multi-user.target
"""
