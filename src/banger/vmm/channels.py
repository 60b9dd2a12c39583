"""How a VM's guest-agent channel is exposed, per backend.

Owns: the host-side socket of each VM's agent channel (always in the VM's ``run_dir``, a
path banger chose — never one the guest named), the QEMU arguments that create it, the
Firecracker vsock configuration, and the matching ``AgentClient``.

- QEMU without vhost-vsock (these hosts): a virtio-serial port named
  ``org.banger.agent`` whose chardev is a listening Unix socket ``<run_dir>/agent.sock``
  (``server=on,wait=off``: QEMU accepts one host connection at a time; the guest sees
  the host come and go); a second port ``org.banger.exec`` on ``<run_dir>/exec.sock``
  carries exec (``banger.guest.exec_client``).
- QEMU with vhost-vsock: ``vhost-vsock-device`` with a host-unique guest CID; the host
  connects with AF_VSOCK to (cid, 52).
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
from banger.vmm.base import Backend, MachineSpec

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
    VHOST_VSOCK = "vhost-vsock"
    FIRECRACKER_VSOCK = "firecracker-vsock"


@dataclass(frozen=True)
class AgentChannel:
    kind: ChannelKind
    #: The host-side Unix socket (virtio-serial chardev, Firecracker vsock); None for AF_VSOCK.
    socket_path: Path | None
    #: The guest's vsock CID (vhost-vsock, Firecracker); None for virtio-serial.
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
        if self.kind is ChannelKind.VHOST_VSOCK:
            device = "vhost-vsock-device" if mmio else "vhost-vsock-pci"
            return ["-device", f"{device},guest-cid={self.guest_cid}"]
        return []

    @property
    def exec_socket_path(self) -> Path | None:
        """virtio-serial: the exec port's chardev socket; Firecracker: the vsock socket."""
        if self.kind is ChannelKind.VIRTIO_SERIAL:
            assert self.socket_path is not None
            return self.socket_path.with_name(EXEC_SOCKET)
        return self.socket_path

    async def exec_connect(self, *, timeout_s: float = CONNECT_TIMEOUT_S) -> ExecConnection:
        """A connection to the guest's exec channel (one per VM carries every command)."""
        path = self.exec_socket_path
        if self.kind is ChannelKind.VIRTIO_SERIAL:
            assert path is not None
            return await ExecConnection.over_unix(path, timeout_s=timeout_s)
        if self.kind is ChannelKind.FIRECRACKER_VSOCK:
            assert path is not None
            return await ExecConnection.over_firecracker_vsock(
                path, EXEC_VSOCK_PORT, timeout_s=timeout_s
            )
        raise NotImplementedError("exec over AF_VSOCK (vhost-vsock) is not wired up yet")

    def client(self, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> AgentClient:
        if self.kind is ChannelKind.VIRTIO_SERIAL:
            assert self.socket_path is not None
            return AgentClient.over_unix(self.socket_path, timeout_s=timeout_s)
        if self.kind is ChannelKind.FIRECRACKER_VSOCK:
            assert self.socket_path is not None
            return AgentClient.over_firecracker_vsock(
                self.socket_path, self.port, timeout_s=timeout_s
            )
        assert self.guest_cid is not None
        return AgentClient.over_vsock(self.guest_cid, self.port, timeout_s=timeout_s)


def agent_channel(
    spec: MachineSpec, backend: Backend, *, vsock_cid: int | None = None
) -> AgentChannel:
    """The agent channel of the VM ``spec`` describes, when ``backend`` runs it."""
    return agent_channel_at(spec.run_dir, backend, vsock_cid=vsock_cid)


def agent_channel_at(
    run_dir: Path, backend: Backend, *, vsock_cid: int | None = None
) -> AgentChannel:
    """The same from a VM's socket dir alone (what the API handlers have).

    ``vsock_cid``: for QEMU only, a host-unique guest CID (>= 3) when the host has
    ``/dev/vhost-vsock``; None (the default) means virtio-serial.
    """
    if backend is Backend.FIRECRACKER:
        return AgentChannel(
            ChannelKind.FIRECRACKER_VSOCK, run_dir / VSOCK_SOCKET, FIRECRACKER_GUEST_CID
        )
    if vsock_cid is not None:
        if vsock_cid < 3:
            raise ValueError(f"guest CID {vsock_cid} is reserved (0-2)")
        return AgentChannel(ChannelKind.VHOST_VSOCK, None, vsock_cid)
    return AgentChannel(ChannelKind.VIRTIO_SERIAL, run_dir / AGENT_SOCKET, None)
