"""The tools ``banger mcp`` offers: ten, with short JSON schemas (SPEC §11).

Owns: each tool's name, one-line description and input schema, as plain dicts. An
agent reads all of them into its context on every turn, so they are kept small:
tests/unit/test_mcp_tools.py holds them to ten tools and 6 KB of JSON in total.
Must not: import the MCP library (the schemas are checked without it) or do anything.
"""

from __future__ import annotations

from typing import Any

#: Largest output of one field (stdout, stderr, a file, a patch) in a tool's result.
OUTPUT_CAP_BYTES = 64 << 10
#: Largest ``content`` of ``write_file``: bigger files belong in a repository copy.
WRITE_CAP_BYTES = 1 << 20
#: A command without ``timeout_s`` is stopped after this long.
DEFAULT_TIMEOUT_S = 600

_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_SANDBOX = {"type": "string", "description": "sandbox name"}
_COMMAND = {"type": "string", "description": "shell command line (sh -c)"}
_PATH = {"type": "string", "description": "absolute guest path"}
_REPO = {"type": "string", "description": "host git repo to copy to /root/repo"}
_NAT = {"type": "boolean", "description": "outbound network (default: none)"}
_TIMEOUT = {"type": "integer", "description": f"seconds (default {DEFAULT_TIMEOUT_S})"}
_MACHINE: dict[str, Any] = {
    "image": _STR,
    "vcpu": _INT,
    "memory_mib": _INT,
    "nat": _NAT,
}


def _schema(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


#: name -> (description, input schema)
TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "run": (
        "One shot: new VM, copy repo, run command in it, return output and the repo's "
        "changes as a git patch, delete the VM.",
        _schema(["command"], command=_COMMAND, repo=_REPO, timeout_s=_TIMEOUT, **_MACHINE),
    ),
    "create": (
        "Create a sandbox VM (repo copied to /root/repo, the default cwd). Ephemeral ones "
        "(default) are deleted when this MCP session ends.",
        _schema([], repo=_REPO, ephemeral={"type": "boolean"}, **_MACHINE),
    ),
    "exec": (
        "Run a command in a sandbox; returns exit_code, stdout, stderr.",
        _schema(
            ["sandbox", "command"],
            sandbox=_SANDBOX,
            command=_COMMAND,
            cwd=_STR,
            env={"type": "object", "additionalProperties": _STR},
            stdin=_STR,
            timeout_s=_TIMEOUT,
        ),
    ),
    "read_file": (
        "Read a guest file (text, or base64 if binary).",
        _schema(["sandbox", "path"], sandbox=_SANDBOX, path=_PATH),
    ),
    "write_file": (
        "Write a guest file (parents created).",
        _schema(
            ["sandbox", "path", "content"],
            sandbox=_SANDBOX,
            path=_PATH,
            content=_STR,
            mode={"type": "string", "description": "octal, e.g. 755 (default 644)"},
        ),
    ),
    "list_files": (
        "List a guest directory.",
        _schema(["sandbox", "path"], sandbox=_SANDBOX, path=_PATH),
    ),
    "diff": (
        "The sandbox repo's changes since it was copied, as a git patch.",
        _schema(["sandbox"], sandbox=_SANDBOX),
    ),
    "ports": (
        "What listens in the sandbox.",
        _schema(["sandbox"], sandbox=_SANDBOX),
    ),
    "list": (
        "Sandboxes created through MCP (all=true: every banger VM).",
        _schema([], all={"type": "boolean"}),
    ),
    "delete": (
        "Delete a sandbox created through MCP.",
        _schema(["sandbox"], sandbox=_SANDBOX),
    ),
}
