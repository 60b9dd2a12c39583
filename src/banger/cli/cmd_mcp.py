"""``banger mcp``: serve banger's sandboxes to a coding agent over MCP on stdio (SPEC §11).

Owns: the command and the error when the optional MCP library is missing. Must not:
import the MCP library at start-up (it costs ~1 s and is an optional extra,
``banger[mcp]``) or write to stdout (the protocol owns it).
"""

from __future__ import annotations

import click

from banger.errors import MissingExtra


@click.command()
def mcp() -> int:
    """Serve an MCP server on stdin/stdout for a coding agent (docs/mcp.md).

    Ten tools: run, create, exec, read_file, write_file, list_files, diff, ports, list,
    delete. Sandboxes it creates as ephemeral (the default) are deleted when the client
    disconnects or the server gets SIGTERM.
    """
    try:
        from banger.mcp_server.stdio_main import main
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("mcp", "mcp_types"):
            raise
        raise MissingExtra(
            f"banger mcp needs the MCP library ({exc.name} is not installed)",
            hint="install banger's mcp extra: `scripts/setup.sh --mcp`, "
            "or `pip install 'banger[mcp]'`",
        ) from exc
    return main()
