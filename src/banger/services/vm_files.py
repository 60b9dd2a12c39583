"""Files in a running VM's guest: read, write, list, stat, remove, and directory archives.

Owns: finding a VM's exec connection (``ExecLinks``: one per running VM, opened when
first needed, reopened when it died — QEMU's virtio-serial chardev takes one host at a
time, so everything that talks exec to a VM must share it), checking the VM is running,
and the daemon's limits on a transfer. The operations themselves are
``banger.guest.file_ops``; the design is docs/explanation/guest-files.md.
Must not: write anything on the host (the client writes what it reads), trust the guest,
or speak HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Sequence

from banger.errors import AgentUnavailable, CommandFailed, InvalidArgument, Timeout
from banger.guest.exec_client import ExecConnection
from banger.guest.file_ops import DEFAULT_AGENT_ARGV, GuestFiles, GuestStream
from banger.model.api_types import GuestFile
from banger.model.guest_paths import TRANSFER_MAX_BYTES, check_guest_path
from banger.model.records import VmRecord
from banger.services import vm_boot
from banger.services.vms import VmService
from banger.vmm.table import agent_channel_at

#: How long the guest's agent has to answer a new exec connection.
CONNECT_TIMEOUT_S = 5.0


class ExecLinks:
    """The exec connection of each running VM, shared by everything that uses exec."""

    def __init__(self, vms: VmService) -> None:
        self._vms = vms
        self._links: dict[str, ExecConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def connection(self, vm: VmRecord) -> ExecConnection:
        lock = self._locks.setdefault(vm.name, asyncio.Lock())
        async with lock:
            conn = self._links.get(vm.name)
            if conn is not None and conn.alive:
                return conn
            if conn is not None:
                await conn.aclose()
            conn = await self._open(vm)
            self._links[vm.name] = conn
            return conn

    async def _open(self, vm: VmRecord) -> ExecConnection:
        paths = self._vms.paths(vm)
        handle = vm_boot.running_handle(vm, paths)
        channel = agent_channel_at(paths.run_dir, handle.backend)
        try:
            return await channel.exec_connect(timeout_s=CONNECT_TIMEOUT_S)
        except (CommandFailed, Timeout) as exc:
            raise AgentUnavailable(
                f"the agent in VM {vm.name!r} does not answer on its exec channel",
                details=str(exc),
            ) from exc

    async def close_all(self) -> None:
        links, self._links = self._links, {}
        for conn in links.values():
            await conn.aclose()


class VmFileService:
    def __init__(
        self,
        vms: VmService,
        links: ExecLinks | None = None,
        *,
        agent_argv: Sequence[str] = DEFAULT_AGENT_ARGV,
    ) -> None:
        self._vms = vms
        self.links = links or ExecLinks(vms)
        self._agent = tuple(agent_argv)

    async def _files(self, name: str) -> tuple[VmRecord, GuestFiles]:
        vm = await self._vms.get(name)
        conn = await self.links.connection(vm)
        return vm, GuestFiles(conn, agent_argv=self._agent)

    async def stat(self, name: str, path: str) -> GuestFile:
        check_guest_path(path)
        _, files = await self._files(name)
        return await files.stat(path)

    async def list(self, name: str, path: str, *, limit: int) -> tuple[list[GuestFile], bool]:
        check_guest_path(path)
        _, files = await self._files(name)
        return await files.list(path, limit=limit)

    async def remove(self, name: str, path: str, *, recursive: bool) -> None:
        check_guest_path(path)
        _, files = await self._files(name)
        await files.remove(path, recursive=recursive)

    async def open_read(
        self, name: str, path: str, *, max_bytes: int, offset: int = 0
    ) -> GuestStream:
        check_guest_path(path)
        _check_size(max_bytes)
        _, files = await self._files(name)
        return await files.open_read(path, max_bytes=max_bytes, offset=offset)

    async def open_pack(self, name: str, path: str, *, max_bytes: int) -> GuestStream:
        check_guest_path(path)
        _check_size(max_bytes)
        _, files = await self._files(name)
        return await files.open_pack(path, max_bytes=max_bytes)

    async def write(
        self,
        name: str,
        path: str,
        data: AsyncIterable[bytes],
        *,
        size: int,
        mode: int,
        parents: bool,
    ) -> None:
        check_guest_path(path)
        _check_size(size)
        _, files = await self._files(name)
        await files.write(path, data, size=size, mode=mode, parents=parents)

    async def unpack(
        self, name: str, path: str, data: AsyncIterable[bytes], *, size: int, parents: bool
    ) -> None:
        check_guest_path(path)
        _check_size(size)
        _, files = await self._files(name)
        await files.unpack(path, data, parents=parents)


def _check_size(size: int) -> None:
    if not 0 <= size <= TRANSFER_MAX_BYTES:
        raise InvalidArgument(
            f"{size} bytes is outside what one transfer may carry (0-{TRANSFER_MAX_BYTES})"
        )
