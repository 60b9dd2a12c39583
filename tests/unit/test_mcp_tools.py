"""``banger mcp``'s tools against a stand-in client (tests/sdkfakes.py): at most ten with
6 KB of schemas, arguments checked, outputs capped with a note, every failure a
``{code, message, hint}`` after which the next call still works, and the session's
ephemeral sandboxes deleted by ``close()``. Over real stdio with the MCP library:
tests/component/test_mcp_stdio.py; against real guests: tests/e2e/test_mcp.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from banger.mcp_server.stdio_main import tool_list
from banger.mcp_server.tool_calls import NAME_PREFIX, ToolBox
from banger.mcp_server.tool_schemas import OUTPUT_CAP_BYTES, TOOLS, WRITE_CAP_BYTES
from tests.sdkfakes import FakeClient, FakeExecResult, Ran

SPEC_TOOLS = {
    "run",
    "create",
    "exec",
    "read_file",
    "write_file",
    "list_files",
    "diff",
    "ports",
    "list",
    "delete",
}


def _box(fake: FakeClient) -> ToolBox:
    return ToolBox(lambda: fake)  # type: ignore[arg-type,return-value]


def _ok(box: ToolBox, tool: str, **args: Any) -> dict[str, Any]:
    result, is_error = box.call(tool, args)
    assert not is_error, result
    return result


def _err(box: ToolBox, tool: str, **args: Any) -> dict[str, Any]:
    result, is_error = box.call(tool, args)
    assert is_error, result
    assert set(result) >= {"code", "message", "hint"}
    return result


def test_ten_tools_whose_schemas_fit_in_6_kb() -> None:
    assert set(TOOLS) == SPEC_TOOLS
    tools = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tool_list()]
    assert len(tools) <= 10
    size = len(json.dumps(tools, separators=(",", ":")))
    assert size <= 6 * 1024, size
    for tool in tools:
        assert tool["inputSchema"]["type"] == "object"
        assert set(tool["inputSchema"].get("required", [])) <= set(
            tool["inputSchema"]["properties"]
        )


def test_create_exec_write_read_list_and_delete() -> None:
    fake = FakeClient()
    box = _box(fake)
    made = _ok(box, "create", image="deb")
    name = made["sandbox"]
    assert name.startswith(NAME_PREFIX) and made["ephemeral"] is True
    assert fake.vms.created[0].nat is False  # no network unless asked
    out = _ok(box, "exec", sandbox=name, command="echo hi", env={"A": "b"}, stdin="in")
    assert out == {"exit_code": 0, "stdout": "sh -c echo hiin", "stderr": ""}
    assert fake.vms.ran[-1].timeout_s == 600  # a default bound
    assert _ok(box, "exec", sandbox=name, command="exit 4")["exit_code"] == 4
    assert _ok(box, "write_file", sandbox=name, path="/root/x.sh", content="echo", mode="755") == {
        "path": "/root/x.sh",
        "size": 4,
        "mode": "755",
    }
    assert _ok(box, "read_file", sandbox=name, path="/root/x.sh")["content"] == "echo"
    assert [e["name"] for e in _ok(box, "list_files", sandbox=name, path="/root")["entries"]] == [
        "x.sh"
    ]
    assert _ok(box, "ports", sandbox=name)["ports"] == [{"proto": "tcp", "port": 8000}]
    listed = _ok(box, "list")["sandboxes"]
    assert [(s["sandbox"], s["ephemeral"]) for s in listed] == [(name, True)]
    assert _ok(box, "delete", sandbox=name) == {"deleted": name}
    assert _ok(box, "list")["sandboxes"] == []


def test_nat_is_given_only_when_asked() -> None:
    fake = FakeClient()
    _ok(_box(fake), "create", nat=True, vcpu=1, memory_mib=256, ephemeral=False)
    (request,) = fake.vms.created
    assert (request.nat, request.vcpu, request.memory_mib) == (True, 1, 256)


@pytest.mark.parametrize("tool", ["create", "run"])
def test_a_bad_size_names_the_argument_and_unit_before_any_request(tool: str) -> None:
    """Issue 14 item 15: refused by the tool, in units, with no VM made or deleted."""
    fake = FakeClient()
    box = _box(fake)
    extra = {"command": "true"} if tool == "run" else {}
    err = _err(box, tool, memory_mib=100, **extra)
    assert err["code"] == "invalid_argument"
    assert err["message"] == f"{tool}: memory_mib: must be at least 128 MiB (got 100)"
    err = _err(box, tool, vcpu=65, **extra)
    assert err["message"] == f"{tool}: vcpu: must be at most 64 vCPUs (got 65)"
    assert fake.vms.created == [] and fake.vms.deleted == []


def test_bad_calls_are_structured_errors_and_the_box_keeps_serving() -> None:
    fake = FakeClient()
    box = _box(fake)
    name = _ok(box, "create")["sandbox"]
    huge = "x" * (WRITE_CAP_BYTES + 1)
    cases = [
        ("exec", {"sandbox": "ghost", "command": "true"}, "vm_not_found"),
        ("read_file", {"sandbox": name, "path": "etc/passwd"}, "invalid_argument"),
        ("read_file", {"sandbox": name, "path": "/root/../etc/shadow"}, "invalid_argument"),
        ("write_file", {"sandbox": name, "path": "/r/x", "content": huge}, "payload_too_large"),
        ("write_file", {"sandbox": name, "path": "/x", "content": "", "mode": "9"}, "invalid_argument"),  # noqa: E501
        ("exec", {"sandbox": name}, "invalid_argument"),
        ("exec", {"sandbox": name, "command": "true", "timeout_s": "5"}, "invalid_argument"),
        ("exec", {"sandbox": name, "command": "true", "shell": "bash"}, "invalid_argument"),
        ("nope", {}, "invalid_argument"),
        ("read_file", {"sandbox": name, "path": "/missing"}, "not_found"),
        ("delete", {"sandbox": "users-own-vm"}, "permission_denied"),
    ]  # fmt: skip
    for tool, args, code in cases:
        err = _err(box, tool, **args)
        assert err["code"] == code, (tool, args, err)
        assert err["message"]
    assert fake.vms.files == {}  # nothing was written by the refused calls
    assert _ok(box, "exec", sandbox=name, command="true")["exit_code"] == 0


def test_outputs_are_capped_with_a_note() -> None:
    big = b"x" * (3 * OUTPUT_CAP_BYTES)

    def program(ran: Ran) -> tuple[FakeExecResult, list[bytes], list[bytes]]:
        return FakeExecResult(0), [big], [b"e"]

    fake = FakeClient(program)
    box = _box(fake)
    name = _ok(box, "create")["sandbox"]
    out = _ok(box, "exec", sandbox=name, command="yes")
    assert len(out["stdout"]) < OUTPUT_CAP_BYTES + 100
    assert f"{2 * OUTPUT_CAP_BYTES} bytes of output cut" in out["stdout"]
    fake.vms.files[name, "/big"] = big
    read = _ok(box, "read_file", sandbox=name, path="/big")
    assert len(read["content"]) == OUTPUT_CAP_BYTES and read["size"] == len(big)
    assert "cut" in read["note"]
    fake.vms.files[name, "/bin"] = b"\xff\x00"
    assert _ok(box, "read_file", sandbox=name, path="/bin")["content_base64"] == "/wA="


def test_close_deletes_the_ephemeral_sandboxes_only() -> None:
    fake = FakeClient()
    box = _box(fake)
    gone = _ok(box, "create")["sandbox"]
    kept = _ok(box, "create", ephemeral=False)["sandbox"]
    box.close()
    assert fake.vms.deleted == [gone]
    assert set(fake.vms.vms) == {kept}


def test_a_run_is_one_shot() -> None:
    fake = FakeClient()
    out = _ok(_box(fake), "run", command="exit 2", timeout_s=30)
    assert out["exit_code"] == 2 and out["stderr"] == "bye\n" and "patch" not in out
    assert fake.vms.vms == {}
    assert len(fake.vms.deleted) == 1


@pytest.mark.parametrize("tool", sorted(SPEC_TOOLS))
def test_every_tool_has_a_handler(tool: str) -> None:
    assert callable(getattr(ToolBox, f"_tool_{tool}", None))
