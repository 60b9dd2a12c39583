"""``banger mcp``: the MCP server over stdio, on the MCP library's low-level ``Server``.

Owns: the server's lifetime — serve until the client closes stdin, or until SIGTERM,
SIGINT or SIGHUP — and, whichever ends it, deleting the session's ephemeral sandboxes
(``ToolBox.close``) before the process exits; listing the tools with their fixed
schemas; running each call in a worker thread so the server keeps answering meanwhile.
Must not: write to stdout (it carries the protocol; logs go to stderr), or decide what a
tool does (``tool_calls``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from banger.host import buildinfo
from banger.mcp_server.tool_calls import ToolBox
from banger.mcp_server.tool_schemas import TOOLS
from banger.sdk.sandbox import connect

log = logging.getLogger("banger.mcp")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

INSTRUCTIONS = (
    "banger sandboxes are disposable Linux VMs on this machine. `run` is a one-shot "
    "(create, copy a repo, run, diff, delete); or `create` one, then `exec`, the file "
    "tools and `diff`, and `delete` it. No outbound network unless nat=true."
)


def tool_list() -> list[types.Tool]:
    return [
        types.Tool(name=name, description=description, input_schema=schema)
        for name, (description, schema) in TOOLS.items()
    ]


def build_server(toolbox: ToolBox) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tool_list())

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        # In a worker thread, abandoned (not waited for) if the session ends: the
        # sandbox it works in is deleted then anyway.
        result, is_error = await anyio.to_thread.run_sync(
            toolbox.call, params.name, params.arguments, abandon_on_cancel=True
        )
        body = {"error": result} if is_error else result
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(body, indent=1))],
            structured_content=body,
            is_error=is_error,
        )

    return Server(
        "banger",
        version=buildinfo.current().version,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve(toolbox: ToolBox) -> None:
    """Serve one client over stdin/stdout until it goes away or a signal ends us."""
    server = build_server(toolbox)
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, _stop_on_signal, toolbox, signum)
    async with stdio_server() as (read_stream, write_stream):
        log.info("serving %d tools on stdio", len(TOOLS))
        await server.run(read_stream, write_stream, server.create_initialization_options())


def _stop_on_signal(toolbox: ToolBox, signum: int) -> None:
    """Delete the ephemeral sandboxes, then end the process at once.

    Not by cancelling the serving task: the MCP library reads stdin in a worker thread
    that no cancellation interrupts (it waits for the next line), so unwinding would
    wait for a client that may never write again. Tool calls still running in their
    threads are abandoned; their sandboxes, if ephemeral, are gone by then.
    """
    log.info("stopping on signal %d", signum)
    try:
        toolbox.close()
    finally:
        logging.shutdown()
        os._exit(0)


def main() -> int:
    """Run the server; its ephemeral sandboxes are deleted however it ends."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="banger mcp: %(levelname)s %(message)s"
    )
    toolbox = ToolBox(connect)
    try:
        asyncio.run(serve(toolbox))
        log.info("the client closed stdin: stopping")
    finally:
        # Already stopping: a client's SIGTERM must not cut the cleanup short.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        toolbox.close()
    return 0
