"""An MCP client from the MCP library driving ``banger mcp`` over stdio, for the tests of
the MCP server (tests/component/test_mcp_stdio.py, tests/e2e/test_mcp.py) and bench/sdk.py.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.conftest import BIN


@contextlib.asynccontextmanager
async def mcp_session(
    env: dict[str, str], *, wrap: Sequence[str] = ()
) -> AsyncIterator[ClientSession]:
    """``banger mcp`` started by the library's stdio client (``wrap``: e.g. the netns
    prefix), initialised; leaving closes its stdin, as an agent that quits does."""
    argv = [*wrap, str(BIN / "banger"), "mcp"]
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, read_timeout_seconds=1200) as session,
    ):
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **args: Any) -> tuple[dict[str, Any], bool]:
    """(structured result, is_error) of one tool call; the text content says the same."""
    result = await session.call_tool(tool, args)
    body = result.structured_content
    assert isinstance(body, dict), result
    assert len(result.content) == 1
    assert json.loads(result.content[0].text) == body  # type: ignore[union-attr]
    return body, result.is_error


async def ok(session: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    body, is_error = await call(session, tool, **args)
    assert not is_error, body
    return body


async def error(session: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    body, is_error = await call(session, tool, **args)
    assert is_error, body
    err = body["error"]
    assert isinstance(err, dict) and {"code", "message", "hint"} <= set(err), body
    return err
