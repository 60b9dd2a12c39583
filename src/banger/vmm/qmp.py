"""A small QMP client: QEMU's JSON control protocol over the VM's Unix socket.

Owns: the handshake (greeting, ``qmp_capabilities``), sending one command and reading
its reply while skipping asynchronous events, with bounded line sizes and timeouts.
Must not: decide when to stop a VM (``banger.vmm.qemu`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from banger.errors import CommandFailed, Timeout

MAX_LINE_BYTES = 1 << 20
DEFAULT_TIMEOUT_S = 5.0


class QmpClient:
    def __init__(self, path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> QmpClient:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.path), limit=MAX_LINE_BYTES),
                self.timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise CommandFailed(f"cannot reach QEMU's QMP socket {self.path}: {exc}") from exc
        greeting = await self._read_message()
        if "QMP" not in greeting:
            raise CommandFailed(f"unexpected QMP greeting on {self.path}")
        await self.execute("qmp_capabilities")

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        if self._writer is None:
            raise CommandFailed("QMP client is not connected")
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._writer.write(json.dumps(message).encode() + b"\n")
        await self._writer.drain()
        while True:
            reply = await self._read_message()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                desc = reply["error"].get("desc", "unknown error")
                raise CommandFailed(f"QMP {command} failed: {desc}")
            # Anything else is an asynchronous event (e.g. SHUTDOWN): not our reply.

    async def _read_message(self) -> dict[str, Any]:
        assert self._reader is not None
        try:
            line = await asyncio.wait_for(self._reader.readline(), self.timeout_s)
        except TimeoutError as exc:
            raise Timeout(f"QEMU did not answer on {self.path} in {self.timeout_s:g}s") from exc
        except (OSError, ValueError) as exc:  # ValueError: line over the limit
            raise CommandFailed(f"QMP connection to {self.path} failed: {exc}") from exc
        if not line:
            raise CommandFailed(f"QEMU closed the QMP connection on {self.path}")
        try:
            message = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CommandFailed(f"QEMU sent a malformed QMP message on {self.path}") from exc
        if not isinstance(message, dict):
            raise CommandFailed(f"QEMU sent a malformed QMP message on {self.path}")
        return message

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
