"""How much of a host repository a workspace copy takes (SPEC §7): a value both the CLI's
flags and ``banger.workspace.plan`` use.

Owns: the names of the copy modes. Must not: import anything (the CLI loads this while
it builds its commands, before any workspace machinery).
"""

from __future__ import annotations

from enum import StrEnum

#: Where ``vm run PATH`` (and the SDK's and MCP server's ``repo=``) put a repository.
DEFAULT_GUEST_PATH = "/root/repo"


class Mode(StrEnum):
    TRACKED = "tracked"  # history + tracked files (+ untracked on request), never ignored
    FULL = "full"  # the whole directory as it is, .git and ignored files included
