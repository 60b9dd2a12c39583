"""``banger mcp`` against a real guest (issue 13): an MCP client of the MCP library starts
the server over stdio inside the netns of a daemon of the test's own (tests/vmenv.py),
lists its tools, and goes create (with a repository) → exec → write_file → read_file →
list_files → diff → delete on the Debian test guest with banger's agent. The patch
``diff`` returns applies on the host. Bad calls — an unknown sandbox, a relative path, a
path climbing out with ``..``, an oversized write — come back as ``{code, message, hint}``
and the server goes on serving. The ephemeral sandbox left when the client disconnects
is deleted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gitrepos import git, project_with_tests
from tests.mcpclient import error, mcp_session, ok
from tests.vmenv import VmEnv, agent_guest_env


@pytest.fixture(scope="module")
def env() -> Iterator[VmEnv]:
    with agent_guest_env(tap_pool_size=2) as env:
        yield env


def _vm_names(env: VmEnv) -> list[str]:
    return [vm["name"] for vm in env.json("vm", "list")]


@pytest.mark.timeout(1800)
def test_an_agent_session_on_a_real_guest(env: VmEnv, tmp_path: Path) -> None:
    repo = project_with_tests(tmp_path)

    async def session() -> tuple[str, str]:
        async with mcp_session(env.env, wrap=env.ns.argv([])) as s:
            assert len((await s.list_tools()).tools) == 10
            made = await ok(s, "create", repo=str(repo))
            name = made["sandbox"]
            assert made["workdir"] == "/root/repo" and made["ephemeral"] is True
            assert await ok(s, "exec", sandbox=name, command="./test.sh") == {
                "exit_code": 0,
                "stdout": "tests passed\n",
                "stderr": "",
            }
            out = await ok(s, "exec", sandbox=name, command="echo $X >&2; exit 3", env={"X": "y"})
            assert (out["exit_code"], out["stderr"]) == (3, "y\n")
            note = "from the agent\n"
            path = "/root/repo/NOTES.md"
            written = await ok(s, "write_file", sandbox=name, path=path, content=note)
            assert written["size"] == len(note)
            assert (await ok(s, "read_file", sandbox=name, path=path))["content"] == note
            entries = (await ok(s, "list_files", sandbox=name, path="/root/repo"))["entries"]
            assert {"NOTES.md", "README.md", "test.sh"} <= {e["name"] for e in entries}
            diff = await ok(s, "diff", sandbox=name)
            (repo / "agent.patch").write_text(diff["patch"])

            # Bad calls: structured errors, and the server keeps serving.
            assert (await error(s, "exec", sandbox="ghost", command="true"))["code"] == (
                "vm_not_found"
            )
            for bad in ("etc/passwd", "/root/repo/../../etc/passwd"):
                err = await error(s, "read_file", sandbox=name, path=bad)
                assert err["code"] == "invalid_argument", err
            err = await error(s, "write_file", sandbox=name, path=path, content="x" * (2 << 20))
            assert err["code"] == "payload_too_large"
            assert (await ok(s, "exec", sandbox=name, command="cat NOTES.md"))["stdout"] == note

            listed = (await ok(s, "list"))["sandboxes"]
            assert [(x["sandbox"], x["ephemeral"]) for x in listed] == [(name, True)]
            assert await ok(s, "delete", sandbox=name) == {"deleted": name}
            # One left behind on purpose: the disconnect below must take it.
            left = (await ok(s, "create"))["sandbox"]
            assert _vm_names(env) == [left]
            return name, left

    name, left = asyncio.run(session())
    assert name != left
    checked = git(repo, "apply", "--check", "agent.patch", check=False)
    assert checked.returncode == 0, checked.stderr
    deadline = time.monotonic() + 120
    while _vm_names(env) and time.monotonic() < deadline:
        time.sleep(1)
    assert _vm_names(env) == []
