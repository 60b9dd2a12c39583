"""How a VM's guest-agent channel is exposed, per backend.

Owns: the kinds of agent channel, the host-side socket of each (always in the VM's
``run_dir``, a path banger chose — never one the guest named), the QEMU arguments that
create one, and the matching ``AgentClient``. Which backend uses which kind is the
backend class's business (``agent_channel``; ``banger.vmm.table`` looks it up).

- QEMU, on every host: a virtio-serial port named
  ``org.banger.agent`` whose chardev is a listening Unix socket ``<run_dir>/agent.sock``
  (``server=on,wait=off``: QEMU accepts one host connection at a time; the guest sees
  the host come and go); a second port ``org.banger.exec`` on ``<run_dir>/exec.sock``
  carries exec (``banger.guest.exec_client``).
- Firecracker: its vsock device (``PUT /vsock`` with guest CID 3 — each VM has its own
  device — and ``uds_path=<run_dir>/vsock.sock``); the host connects to that socket and
  sends ``CONNECT 52`` (``CONNECT 53`` for exec). Firecracker forwards guest-initiated
  connections to ``<uds_path>_<port>``: banger never listens there (ADVERSARIAL 101).

Must not: start processes or talk to the guest (``banger.guest.agent_client`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from banger.guest.agent_client import DEFAULT_TIMEOUT_S, AgentClient
from banger.guest.exec_client import CONNECT_TIMEOUT_S, ExecConnection

AGENT_PORT_NAME = "org.banger.agent"
AGENT_VSOCK_PORT = 52
FIRECRACKER_GUEST_CID = 3
AGENT_SOCKET = "agent.sock"
#: The exec channel (docs/explanation/guest-exec.md): its own port, so long-lived
#: multiplexed sessions never wait behind the request/reply channel or block it.
EXEC_PORT_NAME = "org.banger.exec"
EXEC_VSOCK_PORT = 53
EXEC_SOCKET = "exec.sock"
VSOCK_SOCKET = "vsock.sock"


def qemu_option_value(path: Path | None) -> str:
    """``path`` inside a QEMU ``key=value,…`` option: a comma is written twice."""
    return str(path).replace(",", ",,")


class ChannelKind(StrEnum):
    VIRTIO_SERIAL = "virtio-serial"
    FIRECRACKER_VSOCK = "firecracker-vsock"


@dataclass(frozen=True)
class AgentChannel:
    kind: ChannelKind
    #: The host-side Unix socket: QEMU's virtio-serial chardev, Firecracker's vsock.
    socket_path: Path
    #: The guest's vsock CID (Firecracker); None for virtio-serial.
    guest_cid: int | None
    port: int = AGENT_VSOCK_PORT

    def qemu_argv(self, machine: str = "microvm") -> list[str]:
        """What QEMU's command line needs for this channel (nothing for Firecracker)."""
        mmio = machine == "microvm"
        if self.kind is ChannelKind.VIRTIO_SERIAL:
            return [
                "-chardev",
                f"socket,id=agent,path={qemu_option_value(self.socket_path)},server=on,wait=off",
                "-device",
                "virtio-serial-device" if mmio else "virtio-serial-pci",
                "-device",
                f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
                "-chardev",
                f"socket,id=exec,path={qemu_option_value(self.exec_socket_path)},"
                "server=on,wait=off",
                "-device",
                f"virtserialport,chardev=exec,name={EXEC_PORT_NAME}",
            ]
        return []

    @property
    def exec_socket_path(self) -> Path:
        """virtio-serial: the exec port's chardev socket; Firecracker: the vsock socket."""
        if self.kind is ChannelKind.VIRTIO_SERIAL:
            return self.socket_path.with_name(EXEC_SOCKET)
        return self.socket_path

    async def exec_connect(self, *, timeout_s: float = CONNECT_TIMEOUT_S) -> ExecConnection:
        """A connection to the guest's exec channel (one per VM carries every command)."""
        if self.kind is ChannelKind.VIRTIO_SERIAL:
            return await ExecConnection.over_unix(self.exec_socket_path, timeout_s=timeout_s)
        return await ExecConnection.over_firecracker_vsock(
            self.exec_socket_path, EXEC_VSOCK_PORT, timeout_s=timeout_s
        )

    def client(self, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> AgentClient:
        if self.kind is ChannelKind.VIRTIO_SERIAL:
            return AgentClient.over_unix(self.socket_path, timeout_s=timeout_s)
        return AgentClient.over_firecracker_vsock(self.socket_path, self.port, timeout_s=timeout_s)


def serial_channel(run_dir: Path) -> AgentChannel:
    """QEMU: a virtio-serial port behind ``<run_dir>/agent.sock``."""
    return AgentChannel(ChannelKind.VIRTIO_SERIAL, run_dir / AGENT_SOCKET, None)


def firecracker_channel(run_dir: Path) -> AgentChannel:
    """Firecracker's vsock device, reached through ``<run_dir>/vsock.sock``."""
    return AgentChannel(
        ChannelKind.FIRECRACKER_VSOCK, run_dir / VSOCK_SOCKET, FIRECRACKER_GUEST_CID
    )
