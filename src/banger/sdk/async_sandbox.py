"""``AsyncSandbox``: the ``Sandbox`` API for asyncio code, with the same names.

Owns: running each blocking ``Sandbox`` call in a worker thread (``asyncio.to_thread``)
so the event loop never waits on the daemon or the guest, and the cases threads make
tricky: ``AsyncSandbox.create(...)`` is both awaitable and an ``async with`` context
manager, and a create whose task is cancelled still deletes the VM once the thread
that makes it has finished.
Must not: hold logic of its own beyond that (``Sandbox`` has it all).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import threading
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from banger.client.facade import BangerClient
from banger.errors import BangerError
from banger.model.api_types import VmInfo
from banger.sdk.commands import Command, CommandHandle, CommandResult, OutputCallback
from banger.sdk.sandbox import Sandbox, Stdin, log

if TYPE_CHECKING:
    from banger.model.api_types import GuestFile


class AsyncSandbox:
    """A banger VM for asyncio code: ``async with AsyncSandbox.create(...) as sb:`` or
    ``sb = await AsyncSandbox.create(...)``; every method of ``Sandbox``, awaited."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sync = sandbox
        self.files = AsyncFiles(sandbox)
        self.workspace = AsyncWorkspace(sandbox)

    @classmethod
    def create(cls, **options: Any) -> Creating:
        """``Sandbox.create``'s options; await it, or use it in ``async with``."""
        return Creating(options)

    @classmethod
    async def get(cls, name: str, *, client: BangerClient | None = None) -> AsyncSandbox:
        return cls(await asyncio.to_thread(Sandbox.get, name, client=client))

    @classmethod
    async def list(cls, *, client: BangerClient | None = None) -> builtins.list[AsyncSandbox]:
        found = await asyncio.to_thread(Sandbox.list, client=client)
        return [cls(sandbox) for sandbox in found]

    @property
    def name(self) -> str:
        return self.sync.name

    @property
    def ip(self) -> str | None:
        return self.sync.ip

    @property
    def state(self) -> str:
        return self.sync.state

    @property
    def workdir(self) -> str | None:
        return self.sync.workdir

    async def refresh(self) -> VmInfo:
        return await asyncio.to_thread(self.sync.refresh)

    async def ports(self) -> builtins.list[dict[str, Any]]:
        return await asyncio.to_thread(self.sync.ports)

    async def run(
        self,
        cmd: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: Stdin = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        max_output_bytes: int | None = None,
    ) -> CommandResult:
        """As ``Sandbox.run``; the callbacks are called from the worker thread."""
        return await asyncio.to_thread(
            self.sync.run,
            cmd,
            cwd=cwd,
            env=env,
            timeout=timeout,
            stdin=stdin,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            max_output_bytes=max_output_bytes,
        )

    async def start(
        self,
        cmd: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        max_output_bytes: int | None = None,
        open_stdin: bool = False,
    ) -> AsyncCommandHandle:
        handle = await asyncio.to_thread(
            self.sync.start,
            cmd,
            cwd=cwd,
            env=env,
            timeout=timeout,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            max_output_bytes=max_output_bytes,
            open_stdin=open_stdin,
        )
        return AsyncCommandHandle(handle)

    async def delete(self) -> None:
        await asyncio.to_thread(self.sync.delete)

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Shielded: a cancelled task (the asyncio form of Ctrl-C) still deletes its VM.
        await asyncio.shield(asyncio.to_thread(self.sync.__exit__, exc_type, exc, tb))

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"


class Creating:
    """What ``AsyncSandbox.create`` returns: awaitable, and an async context manager."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._sandbox: AsyncSandbox | None = None

    async def _create(self) -> AsyncSandbox:
        # A cancelled await does not stop the thread making the VM: whichever of the
        # two ends second (the thread, or the cancelled task) deletes it.
        lock = threading.Lock()
        made: list[Sandbox] = []
        abandoned = False
        undo = not self._options.get("keep", False)

        def make() -> Sandbox:
            sandbox = Sandbox.create(**self._options)
            with lock:
                made.append(sandbox)
                if not (abandoned and undo):
                    return sandbox
            _delete_abandoned(sandbox)
            return sandbox

        try:
            return AsyncSandbox(await asyncio.to_thread(make))
        except asyncio.CancelledError:
            with lock:
                abandoned = True
                orphan = made[0] if made and undo else None
            if orphan is not None:
                threading.Thread(target=_delete_abandoned, args=(orphan,)).start()
            raise

    def __await__(self) -> Generator[Any, None, AsyncSandbox]:
        return self._create().__await__()

    async def __aenter__(self) -> AsyncSandbox:
        self._sandbox = await self._create()
        return self._sandbox

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._sandbox is not None
        await self._sandbox.__aexit__(exc_type, exc, tb)


def _delete_abandoned(sandbox: Sandbox) -> None:
    """Delete a sandbox whose create was cancelled (its awaiting task went away)."""
    with contextlib.suppress(BangerError):
        sandbox.delete()
    log.info("deleted sandbox %s: its create was cancelled", sandbox.name)


class AsyncCommandHandle:
    """``CommandHandle`` for asyncio code: ``await handle.wait()``."""

    def __init__(self, handle: CommandHandle) -> None:
        self.sync = handle

    @property
    def stdout(self) -> str:
        return self.sync.stdout

    @property
    def stderr(self) -> str:
        return self.sync.stderr

    @property
    def running(self) -> bool:
        return self.sync.running

    async def write(self, data: bytes | str) -> None:
        await asyncio.to_thread(self.sync.write, data)

    async def close_stdin(self) -> None:
        await asyncio.to_thread(self.sync.close_stdin)

    async def signal(self, signum: int) -> None:
        await asyncio.to_thread(self.sync.signal, signum)

    async def kill(self) -> None:
        await asyncio.to_thread(self.sync.kill)

    async def wait(self, timeout: float | None = None) -> CommandResult:
        return await asyncio.to_thread(self.sync.wait, timeout)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncCommandHandle:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class AsyncFiles:
    def __init__(self, sandbox: Sandbox) -> None:
        self._files = sandbox.files

    async def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        return await asyncio.to_thread(self._files.read, path, max_bytes=max_bytes)

    async def read_text(self, path: str, *, max_bytes: int | None = None) -> str:
        return await asyncio.to_thread(self._files.read_text, path, max_bytes=max_bytes)

    async def read_to(self, path: str, dest: BinaryIO, *, max_bytes: int | None = None) -> int:
        return await asyncio.to_thread(self._files.read_to, path, dest, max_bytes=max_bytes)

    async def write(
        self, path: str, data: bytes | str | BinaryIO, *, mode: int = 0o644, parents: bool = True
    ) -> None:
        await asyncio.to_thread(self._files.write, path, data, mode=mode, parents=parents)

    async def list(self, path: str) -> builtins.list[GuestFile]:
        return await asyncio.to_thread(self._files.list, path)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await asyncio.to_thread(self._files.remove, path, recursive=recursive)


class AsyncWorkspace:
    def __init__(self, sandbox: Sandbox) -> None:
        self._workspace = sandbox.workspace

    @property
    def path(self) -> str | None:
        return self._workspace.path

    async def copy(self, repo: str | Path, **options: Any) -> builtins.list[str]:
        return await asyncio.to_thread(self._workspace.copy, repo, **options)

    async def export(
        self, *, base_commit: str | None = None, guest_path: str | None = None
    ) -> bytes:
        return await asyncio.to_thread(
            self._workspace.export, base_commit=base_commit, guest_path=guest_path
        )
