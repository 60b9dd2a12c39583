"""What each tool of ``banger mcp`` does, on the SDK, and the sandboxes a session made.

Owns: checking a call's arguments, doing it through ``banger.sdk``, capping every output
field (``OUTPUT_CAP_BYTES``, with a note saying how much was cut), turning any failure
into ``{code, message, hint}``, and the session's sandboxes: every one it creates is
named ``mcp-…`` (so ``list`` and ``delete`` can tell them from the user's own VMs), and
the ephemeral ones are deleted by ``close()`` when the client goes away.
Must not: import the MCP library (``stdio_main`` does) or block the caller's event loop
(it runs these calls in worker threads).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any

from banger.client.facade import BangerClient
from banger.errors import BangerError, InvalidArgument, PayloadTooLarge, PermissionDenied
from banger.mcp_server.tool_schemas import (
    DEFAULT_TIMEOUT_S,
    OUTPUT_CAP_BYTES,
    TOOLS,
    WRITE_CAP_BYTES,
)
from banger.model import limits, units
from banger.model.record import as_dict
from banger.sdk.sandbox import Sandbox, discard, new_name

log = logging.getLogger("banger.mcp")

#: The names of sandboxes made through MCP, whichever session made them.
NAME_PREFIX = "mcp-"
#: Largest file ``read_file`` reads through (its first OUTPUT_CAP_BYTES are shown);
#: a bigger one is refused (``payload_too_large``): ``exec`` with head/tail/grep fits.
READ_SCAN_BYTES = 64 << 20
#: How long ``close()`` looks for a VM whose create was still under way.
PENDING_WAIT_S = 15.0

Result = dict[str, Any]


def error_result(err: BaseException) -> Result:
    """``{code, message, hint}`` for any failure (an unexpected one is ``internal``)."""
    if isinstance(err, BangerError):
        out: Result = {"code": err.code, "message": err.brief, "hint": err.hint}
        if err.details:
            out["details"] = capped_text(err.details.encode(), 4096)
        return out
    log.exception("tool call failed unexpectedly")
    return {"code": "internal", "message": f"{type(err).__name__}: {err}", "hint": None}


def capped_text(data: bytes, cap: int = OUTPUT_CAP_BYTES) -> str:
    if len(data) <= cap:
        return data.decode(errors="replace")
    return (
        data[:cap].decode(errors="replace") + f"\n[... cut: {len(data)} bytes, first {cap} shown]"
    )


class _Sink:
    """A file-like ``write`` keeping the first ``cap`` bytes and counting the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.size = 0

    def write(self, chunk: bytes) -> int:
        self.size += len(chunk)
        self.data += chunk[: max(0, self.cap - len(self.data))]
        return len(chunk)


class ToolBox:
    """One MCP session's tools. ``call(name, arguments)`` never raises: a failure is a
    result with ``error``."""

    def __init__(self, connect: Callable[[], BangerClient]) -> None:
        self._connect = connect
        self._client: BangerClient | None = None
        self._lock = threading.Lock()
        #: Ephemeral sandboxes: made (``ephemeral``) or still being made (``pending``).
        self.ephemeral: set[str] = set()
        self.pending: set[str] = set()
        #: The sandboxes this session made, as made: their repository copy (where
        #: commands run, what diffs compare) is known, and no lookup precedes a call.
        self.made: dict[str, Sandbox] = {}

    @property
    def client(self) -> BangerClient:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def call(self, name: str, arguments: dict[str, Any] | None) -> tuple[Result, bool]:
        """(result, is_error) of one tool call."""
        handler = getattr(self, f"_tool_{name}", None)
        if name not in TOOLS or handler is None:
            return error_result(InvalidArgument(f"no tool named {name!r}")), True
        try:
            result: Result = handler(_Args(name, arguments or {}))
        except Exception as err:  # noqa: BLE001 - every failure goes back as data
            return error_result(err), True
        return result, False

    # -- the tools -----------------------------------------------------------------------

    def _tool_run(self, args: _Args) -> Result:
        command, repo = args.text("command"), args.opt_text("repo")
        options = self._machine(args)
        timeout = args.integer("timeout_s", DEFAULT_TIMEOUT_S)
        name = new_name(NAME_PREFIX)
        self.pending.add(name)
        try:
            with Sandbox.create(name=name, repo=repo, client=self.client, **options) as sb:
                result = _command_result(sb, command, timeout=timeout)
                if repo:
                    result["patch"] = capped_text(sb.workspace.export())
                return result
        finally:
            self.pending.discard(name)

    def _tool_create(self, args: _Args) -> Result:
        repo = args.opt_text("repo")
        ephemeral = args.boolean("ephemeral", default=True)
        options = self._machine(args)
        name = new_name(NAME_PREFIX)
        if ephemeral:
            self.pending.add(name)
        try:
            # keep=True: this session, not the SDK's exit hook, decides when it goes.
            sb = Sandbox.create(name=name, repo=repo, keep=True, client=self.client, **options)
            if ephemeral:
                self.ephemeral.add(name)
            self.made[name] = sb
        except BaseException:
            if ephemeral:
                discard(self.client, name)
            raise
        finally:
            self.pending.discard(name)
        return {"sandbox": sb.name, "ip": sb.ip, "workdir": sb.workdir, "ephemeral": ephemeral}

    def _tool_exec(self, args: _Args) -> Result:
        sb = self._sandbox(args)
        env = args.mapping("env")
        return _command_result(
            sb,
            args.text("command"),
            cwd=args.opt_text("cwd"),
            env=env,
            stdin=args.opt_text("stdin"),
            timeout=args.integer("timeout_s", DEFAULT_TIMEOUT_S),
        )

    def _tool_read_file(self, args: _Args) -> Result:
        path = args.guest_path("path")  # checked before anything is looked up
        sb = self._sandbox(args)
        sink = _Sink(OUTPUT_CAP_BYTES)
        # Streamed (only the first OUTPUT_CAP_BYTES kept) up to a bound past which a
        # note would mislead less than a refusal with a hint.
        sb.files.read_to(path, sink, max_bytes=READ_SCAN_BYTES)  # type: ignore[arg-type]
        data = bytes(sink.data)
        out: Result = {"path": path, "size": sink.size}
        try:
            out["content"] = data.decode()
        except UnicodeDecodeError:
            out["content_base64"] = base64.b64encode(data).decode()
        if sink.size > len(data):
            out["note"] = f"cut: the file has {sink.size} bytes, the first {len(data)} shown"
        return out

    def _tool_write_file(self, args: _Args) -> Result:
        path = args.guest_path("path")  # checked before anything is looked up
        data = args.text("content", allow_empty=True).encode()
        if len(data) > WRITE_CAP_BYTES:
            raise PayloadTooLarge(
                f"content is {len(data)} bytes; write_file takes at most {WRITE_CAP_BYTES}",
                hint="put large files in the repository the sandbox copies (create repo=…)",
            )
        mode = args.octal("mode", 0o644)
        sb = self._sandbox(args)
        sb.files.write(path, data, mode=mode)
        return {"path": path, "size": len(data), "mode": f"{mode:o}"}

    def _tool_list_files(self, args: _Args) -> Result:
        path = args.guest_path("path")  # checked before anything is looked up
        sb = self._sandbox(args)
        entries = [as_dict(f) for f in sb.files.list(path)]
        shown = entries[:1000]
        out: Result = {"path": path, "entries": shown}
        if len(entries) > len(shown):
            out["note"] = f"cut: {len(entries)} entries, the first {len(shown)} shown"
        return out

    def _tool_diff(self, args: _Args) -> Result:
        patch = self._sandbox(args).workspace.export()
        return {"patch": capped_text(patch), "bytes": len(patch)}

    def _tool_ports(self, args: _Args) -> Result:
        return {"ports": self._sandbox(args).ports()}

    def _tool_list(self, args: _Args) -> Result:
        every = args.boolean("all", default=False)
        rows = [
            {
                "sandbox": vm.name,
                "state": vm.state,
                "ip": vm.ip,
                "ephemeral": vm.name in self.ephemeral,
            }
            for vm in self.client.vms.list()
            if every or vm.name.startswith(NAME_PREFIX)
        ]
        return {"sandboxes": rows}

    def _tool_delete(self, args: _Args) -> Result:
        name = args.text("sandbox")
        if not name.startswith(NAME_PREFIX):
            raise PermissionDenied(
                f"{name!r} was not created through MCP; this server deletes only mcp-… sandboxes",
                hint=f"delete it yourself if you mean to: banger vm delete {name}",
            )
        (self.made.pop(name, None) or Sandbox.get(name, client=self.client)).delete()
        self.ephemeral.discard(name)
        return {"deleted": name}

    # -- helpers -------------------------------------------------------------------------

    def _sandbox(self, args: _Args) -> Sandbox:
        name = args.text("sandbox")
        return self.made.get(name) or Sandbox.get(name, client=self.client)

    @staticmethod
    def _machine(args: _Args) -> dict[str, Any]:
        return {
            "image": args.opt_text("image"),
            "vcpu": args.opt_bounded("vcpu", limits.VCPU),
            "memory_mib": args.opt_bounded("memory_mib", limits.MEMORY_MIB),
            "nat": args.boolean("nat", default=False),
        }

    def close(self) -> None:
        """Delete this session's ephemeral sandboxes (the client went away).

        All at once, one request each: a client that quits gives its server a couple of
        seconds before SIGTERM and SIGKILL (the MCP library's stdio client: 2 s, then
        2 s), and a delete the daemon has received is finished by the daemon even if
        this process is killed while it waits for the answer.
        """
        if self._client is None:
            return
        client = self._client
        waits = dict.fromkeys(self.ephemeral, 0.0)
        waits.update(dict.fromkeys(self.pending, PENDING_WAIT_S))
        if not waits:
            return
        log.info("deleting ephemeral sandboxes: %s", ", ".join(sorted(waits)))
        with ThreadPoolExecutor(max_workers=min(len(waits), 16)) as pool:
            for name, wait_s in waits.items():
                pool.submit(discard, client, name, wait_s=wait_s)
        self.ephemeral.clear()
        self.pending.clear()


def _command_result(sb: Sandbox, command: str, **options: Any) -> Result:
    result = sb.run(command, max_output_bytes=OUTPUT_CAP_BYTES, **options)
    out: Result = {"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}
    if result.timed_out:
        out["note"] = "timed out (timeout_s)"
    return out


class _Args:
    """A call's arguments, each read with its type checked; unknown ones are refused."""

    def __init__(self, tool: str, values: dict[str, Any]) -> None:
        self._tool = tool
        self._values = values
        known = set(TOOLS[tool][1]["properties"])
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidArgument(
                f"{tool}: unknown argument {unknown[0]!r}",
                hint=f"known: {', '.join(sorted(known))}",
            )

    def _get(self, key: str) -> Any:
        return self._values.get(key)

    def _bad(self, key: str, want: str) -> InvalidArgument:
        return InvalidArgument(f"{self._tool}: {key} must be {want}")

    def text(self, key: str, *, allow_empty: bool = False) -> str:
        value = self._get(key)
        if not isinstance(value, str) or (not value and not allow_empty):
            raise self._bad(key, "a non-empty string" if not allow_empty else "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self._values.get(key) is None else self.text(key)

    def integer(self, key: str, default: int) -> int:
        value = self.opt_integer(key)
        return default if value is None else value

    def opt_integer(self, key: str) -> int | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self._bad(key, "a positive integer")
        return value

    def opt_bounded(self, key: str, bound: limits.Bound) -> int | None:
        """A size within the daemon's bound, refused here (before any request) in the
        bound's unit: "create: memory_mib: must be at least 128 MiB (got 100)"."""
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer")
        return units.check_bound(value, bound, what=f"{self._tool}: {key}")

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def mapping(self, key: str) -> dict[str, str] | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self._bad(key, "an object of strings")
        return value

    def octal(self, key: str, default: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value or len(value) > 4:
            raise self._bad(key, "an octal mode like 644")
        with contextlib.suppress(ValueError):
            mode = int(value, 8)
            if mode <= 0o7777:
                return mode
        raise self._bad(key, "an octal mode like 644")

    def guest_path(self, key: str) -> str:
        """An absolute guest path without ``.``/``..`` parts: what a tool may touch is
        said plainly, never reached by climbing out of another path."""
        value = self.text(key)
        parts = value.split("/")
        if not value.startswith("/") or any(p in (".", "..") for p in parts) or "\0" in value:
            raise InvalidArgument(
                f"{self._tool}: path {value!r} must be absolute, without . or .. parts",
                hint="e.g. /root/repo/src/main.c",
            )
        return str(PurePosixPath(value))
