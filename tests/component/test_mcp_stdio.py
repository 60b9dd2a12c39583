"""``banger mcp`` as an agent starts it: a real process on stdio, spoken to by the MCP
library's own client, with a real daemon behind it (no guest needed): ten tools in under
6 KB of schemas, bad calls answered as ``{code, message, hint}`` with the server still
serving, and the server ending by itself when the client closes stdin or on SIGTERM.
Against real guests: tests/e2e/test_mcp.py."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

from tests.conftest import BIN, BangerHome
from tests.mcpclient import error, mcp_session, ok


def test_tools_fit_and_bad_calls_are_structured_errors(home: BangerHome) -> None:
    async def main() -> None:
        async with mcp_session(home.env) as session:
            tools = (await session.list_tools()).tools
            assert len(tools) <= 10
            size = len(
                json.dumps(
                    [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools],
                    separators=(",", ":"),
                )
            )
            assert size <= 6 * 1024, size
            assert {t.name for t in tools} >= {"run", "create", "exec", "diff", "delete"}

            err = await error(session, "exec", sandbox="no-such-vm", command="true")
            assert err["code"] == "vm_not_found" and err["hint"]
            err = await error(session, "read_file", sandbox="no-such-vm", path="etc/passwd")
            assert err["code"] == "invalid_argument"
            err = await error(
                session, "write_file", sandbox="x", path="/a", content="x" * (2 << 20)
            )
            assert err["code"] == "payload_too_large"
            err = await error(session, "delete", sandbox="not-made-by-mcp")
            assert err["code"] == "permission_denied"
            # … and it keeps serving.
            assert await ok(session, "list") == {"sandboxes": []}

    asyncio.run(main())


def _server(home: BangerHome) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "banger"), "mcp"],
        env=home.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_the_server_ends_when_stdin_closes_or_on_sigterm(home: BangerHome) -> None:
    proc = _server(home)
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    proc = _server(home)
    assert proc.stderr is not None
    assert b"serving 10 tools on stdio" in proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    rest = proc.stderr.read()
    assert b"stopping on signal 15" in rest and b"Traceback" not in rest


def test_without_the_library_it_says_how_to_install_it(home: BangerHome) -> None:
    # The MCP library hidden from the import system, as in an install without the extra.
    code = (
        "import sys; sys.modules['mcp'] = None; sys.modules['mcp_types'] = None\n"
        "from banger.cli.main import main; main()\n"
    )
    out = subprocess.run(
        [str(BIN / "python"), "-c", code, "mcp"],
        env=home.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "banger mcp needs the MCP library" in out.stderr
    assert "banger[mcp]" in out.stderr
