"""User-mode networking for rootless VMs (SPEC §9): QEMU's slirp, SSH over a host forward.

Owns: the addresses slirp gives a guest (10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3:
the guest's static ``ip=`` must match them), the range of loopback ports SSH is forwarded
from and choosing a free one, and where a VM's SSH is reached (``SshTarget``) whichever
kind of networking it has.
Must not: start QEMU, read the database (callers pass the ports their rows hold), or bind
anything but 127.0.0.1, and then only to see whether a port is free.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Container
from dataclasses import dataclass

from banger.errors import Conflict

#: What slirp hands out by default; the guest is told these on its kernel command line.
GUEST_IP = "10.0.2.15"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
CIDR = "10.0.2.0/24"
#: Every rootless VM has a network of its own, so they can all share one MAC (QEMU's).
GUEST_MAC = "52:54:00:12:34:56"
LOOPBACK = "127.0.0.1"
SSH_PORT = 22
#: Host ports SSH forwards listen on: below Linux's ephemeral range (32768-60999), so
#: outgoing connections rarely hold one; 1000 rootless VMs per user at most.
SSH_FORWARD_PORTS = range(21000, 22000)


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound now (by anyone: this is only a hint; the
    VMM's own bind is the real test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def allocate_ssh_port(
    taken: Container[int],
    *,
    ports: range = SSH_FORWARD_PORTS,
    free: Callable[[int], bool] = port_free,
) -> int:
    """The lowest port of ``ports`` that no VM row holds (``taken``) and nobody has bound."""
    for port in ports:
        if port not in taken and free(port):
            return port
    raise Conflict(
        f"no free port for a rootless VM's SSH in 127.0.0.1:{ports.start}-{ports.stop - 1}",
        hint="delete VMs you no longer need (`banger vm list`); each keeps its port",
    )


@dataclass(frozen=True)
class SshTarget:
    """Where ssh connects to reach a guest's sshd, and the name its host key is filed
    under in the VM's known_hosts."""

    host: str
    port: int = SSH_PORT
    #: ssh's ``HostKeyAlias`` when ``host`` is not the name the key is filed under.
    host_key_alias: str | None = None

    @property
    def known_hosts_name(self) -> str:
        return self.host_key_alias or self.host


def ssh_target(name: str, ip: str | None, ssh_port: int | None) -> SshTarget | None:
    """A bridged VM is reached at its address; a rootless one at its loopback forward,
    its key filed under ``rootless-<name>`` (the port may change from boot to boot)."""
    if ssh_port is not None:
        return SshTarget(LOOPBACK, ssh_port, host_key_alias=f"rootless-{name}")
    if ip:
        return SshTarget(ip)
    return None
