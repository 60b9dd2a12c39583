"""A sandbox's files and workspace: ``sb.files`` and ``sb.workspace``.

Owns: the guest file calls of the SDK (through the daemon and the guest agent: bounded
and time-limited on the host side, paths absolute) and the workspace of a sandbox —
copying a host repository in (planned on the host, sent over banger's ssh as ``vm run
PATH`` does) and the guest's changes back as a git patch (``banger.workspace.export``,
the code behind ``banger vm workspace export``).
Must not: decide what a copy takes (``banger.workspace.plan``) or trust the guest.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from banger.client.agent_shell import AgentShell
from banger.model.workspace_modes import DEFAULT_GUEST_PATH
from banger.workspace import check_guest_path
from banger.workspace.export import export_patch
from banger.workspace.plan import Plan, make_plan
from banger.workspace.send import send_plan

if TYPE_CHECKING:
    from banger.client.facade import BangerClient
    from banger.model.api_types import GuestFile


class SandboxFiles:
    """Files in the guest, through its agent: ``read``, ``write``, ``list``, ``remove``."""

    def __init__(self, client: BangerClient, name: str) -> None:
        self._client = client
        self._name = name

    def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """The file's bytes; more than ``max_bytes`` is an error (``payload_too_large``)."""
        return self._client.vms.read_file(self._name, path, max_bytes=max_bytes)

    def read_text(self, path: str, *, max_bytes: int | None = None) -> str:
        return self.read(path, max_bytes=max_bytes).decode()

    def read_to(self, path: str, dest: BinaryIO, *, max_bytes: int | None = None) -> int:
        """Stream the file into ``dest``; returns the number of bytes."""
        return self._client.vms.read_file_to(self._name, path, dest, max_bytes=max_bytes)

    def write(
        self, path: str, data: bytes | str | BinaryIO, *, mode: int = 0o644, parents: bool = True
    ) -> None:
        """Write (atomically: a temp file renamed over ``path``); a str is UTF-8."""
        body = data.encode() if isinstance(data, str) else data
        self._client.vms.write_file(self._name, path, body, mode=mode, parents=parents)

    def list(self, path: str) -> builtins.list[GuestFile]:
        return self._client.vms.list_files(self._name, path)

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._client.vms.remove_file(self._name, path, recursive=recursive)


class SandboxWorkspace:
    """The host repository copied into the guest, and its changes back as a patch."""

    def __init__(self, client: BangerClient, name: str, repo: Path | None) -> None:
        self._client = client
        self._name = name
        #: The host repository the copy came from (the base commit of ``export`` is
        #: looked up there when the guest has no git).
        self.repo = repo
        #: Where the copy is in the guest; None until one was made.
        self.path: str | None = None

    def copy(
        self,
        repo: str | Path,
        *,
        guest_path: str = DEFAULT_GUEST_PATH,
        include_untracked: bool = False,
        replace: bool = False,
    ) -> builtins.list[str]:
        """Copy the git repository enclosing ``repo`` to ``guest_path`` (history and
        tracked files as they are on disk); returns warnings (files that changed meanwhile)."""
        plan = make_plan(Path(repo).expanduser(), include_untracked=include_untracked)
        return self.send(plan, guest_path=guest_path, replace=replace)

    def send(
        self, plan: Plan, *, guest_path: str = DEFAULT_GUEST_PATH, replace: bool = False
    ) -> builtins.list[str]:
        """Copy a plan made earlier (``Sandbox.create(repo=…)`` plans before the VM exists)."""
        warnings = send_plan(plan, self._shell(), guest_path, replace=replace)
        self.repo = plan.repo.toplevel
        self.path = guest_path
        return [*plan.warnings, *warnings]

    def export(self, *, base_commit: str | None = None, guest_path: str | None = None) -> bytes:
        """The guest's changes since the copy as one binary git patch (``git apply`` takes
        it): commits made in the guest and uncommitted edits, new files included."""
        where = check_guest_path(guest_path or self.path or DEFAULT_GUEST_PATH)
        result = export_patch(
            self._shell(),
            guest_path=where,
            base_commit=base_commit,
            host_repo=self.repo or Path.cwd(),
        )
        return result.patch

    def _shell(self) -> AgentShell:
        """The guest agent, or ssh when the guest has none."""
        return AgentShell(self._client, self._name)
