"""Copying a planned workspace into a guest: one tar stream over a ``Shell``
(the guest agent, or ssh; SPEC §7).

Owns: building the guest's ``.git`` (tracked mode), writing the plan's items into the
archive the guest's unpack script reads, and turning the script's exit status into an
error. Must not: decide what is copied (``plan`` does) or follow a symlink (``archive``
reads every file through ``RootDir``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import IO

from banger.errors import AlreadyExists
from banger.host.runner import Result
from banger.model.workspace_modes import Mode
from banger.workspace import EXIT_EXISTS, Shell, check_guest_path, guest_failure
from banger.workspace.archive import (
    Item,
    Kind,
    RootDir,
    TarWriter,
    parent_dirs,
    unpack_script,
    walk,
)
from banger.workspace.gitrepo import GuestGit, build_guest_git
from banger.workspace.plan import Plan

#: Copying the workspace is retried when ssh never got a session (nothing ran in the guest).
SSH_CONNECT_ATTEMPTS = 3
_PRE_SESSION = (b"kex_exchange_identification", b"banner exchange", b"Connection refused")


def send_plan(
    plan: Plan, shell: Shell, guest_path: str, *, replace: bool = False, readonly: bool = False
) -> list[str]:
    """Copy the plan into the guest; returns warnings (files that changed meanwhile)."""
    guest_path = check_guest_path(guest_path)
    with tempfile.TemporaryDirectory(prefix="banger-workspace-") as tmp:
        guest_git = None
        if plan.mode is Mode.TRACKED:
            guest_git = build_guest_git(
                plan.repo,
                Path(tmp),
                base=plan.base,
                branch=plan.branch,
                checkout=plan.from_ref is not None,
            )
        warnings: list[str] = []

        def write(stream: IO[bytes]) -> None:
            warnings.clear()
            warnings.extend(_write_archive(plan, guest_git, stream))

        script = unpack_script(guest_path, replace=replace, readonly=readonly)
        for attempt in range(1, SSH_CONNECT_ATTEMPTS + 1):
            result = shell.send(script, write)
            if attempt == SSH_CONNECT_ATTEMPTS or not _never_connected(result):
                break
            time.sleep(1.0)
    if result.returncode == EXIT_EXISTS:
        raise AlreadyExists(
            f"{guest_path} already exists in the guest",
            hint="add --replace to overwrite it, or choose another --guest-path",
        )
    if result.returncode != 0:
        raise guest_failure("unpacking the workspace", result)
    return warnings


def _never_connected(result: Result) -> bool:
    """ssh failed before any session (so nothing ran in the guest): worth another try.

    Seen once under heavy host load on a guest that had just become ready: sshd reset the
    connection during the identification exchange (``kex_exchange_identification: read:
    Connection reset by peer``).
    """
    return result.returncode == 255 and any(m in result.stderr for m in _PRE_SESSION)


def _write_archive(plan: Plan, guest_git: GuestGit | None, stream: IO[bytes]) -> list[str]:
    writer = TarWriter(stream)
    if guest_git is not None:
        with RootDir(guest_git.work) as root:
            writer.add_dir(b".git", 0o755)
            for found in walk(root, b".git"):
                _add_item(writer, root, found)
    source = guest_git.work if guest_git is not None and plan.from_ref else plan.repo.toplevel
    with RootDir(source) as root:
        if plan.mode is Mode.TRACKED:
            for rel in parent_dirs(i.rel for i in plan.items):
                writer.add_dir(rel, 0o755)
        for item in plan.items:
            _add_item(writer, root, item)
    if guest_git is None:  # full mode: the real .git is in the items; record the base
        writer.add_bytes(b".git/banger-base", plan.base.encode() + b"\n", 0o644)
    writer.close()
    return writer.warnings


def _add_item(writer: TarWriter, root: RootDir, found: Item | str) -> None:
    if isinstance(found, str):
        writer.warnings.append(found)
    elif found.kind is Kind.DIR:
        writer.add_dir(found.rel, (found.mode & 0o777) | 0o700, found.mtime)
    elif found.kind is Kind.SYMLINK:
        target = found.target if found.target is not None else root.readlink(found.rel)
        writer.add_symlink(found.rel, target, found.mtime)
    else:
        writer.add_file(root, found, found.rel, found.mode & 0o777)
