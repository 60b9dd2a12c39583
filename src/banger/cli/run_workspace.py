"""A host repository put into a VM: the plan (what would be copied), ``--dry-run``, and
the copy itself — shared by ``vm run PATH`` and ``vm workspace prepare`` (SPEC §7).

Owns: choosing what goes in the guest. ``tracked`` (the default): the repository's
history (a bundle made into a fresh ``.git`` on the host, so the guest needs no git),
then the working tree's tracked files as they are on disk, plus untracked non-ignored
files with ``--include-untracked``; ignored files never. ``full``: the whole directory as
it is, ``.git`` and ignored files included (submodules work there, nowhere else).
``--branch NAME`` makes a guest-only branch at HEAD; with ``--from REF`` the guest gets
REF's committed tree instead of the host's files.

Must not: run git itself (``workspace.gitrepo`` does) or read a working-tree file except
through ``workspace.archive`` (no symlink is ever followed). Loaded only when a command
copies a workspace: what click needs to build the commands is in ``workspace_options``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from banger.cli.session import Session
from banger.cli.workspace_options import DEFAULT_GUEST_PATH, Mode
from banger.errors import AlreadyExists, InvalidArgument
from banger.runner import Result, Runner
from banger.workspace import EXIT_EXISTS, GuestShell, check_guest_path, guest_failure
from banger.workspace.archive import (
    Item,
    Kind,
    RootDir,
    TarWriter,
    classify,
    display,
    parent_dirs,
    unpack_script,
    walk,
)
from banger.workspace.gitrepo import (
    MODE_SUBMODULE,
    GuestGit,
    Repo,
    build_guest_git,
    check_branch_name,
    open_repo,
)

#: Copying the workspace is retried when ssh never got a session (nothing ran in the guest).
SSH_CONNECT_ATTEMPTS = 3
_PRE_SESSION = (b"kex_exchange_identification", b"banner exchange", b"Connection refused")


@dataclass
class Plan:
    """What a prepare would copy; ``items`` are working-tree paths relative to the top."""

    repo: Repo
    mode: Mode
    base: str
    include_untracked: bool = False
    branch: str | None = None
    from_ref: str | None = None
    items: list[Item] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    untracked_skipped: int = 0

    @property
    def describe_mode(self) -> str:
        if self.mode is Mode.FULL:
            return "full (the whole directory: .git, untracked and ignored files too)"
        if self.from_ref:
            return f"tracked (the committed tree of {self.from_ref}; host edits not copied)"
        if self.include_untracked:
            return "tracked + untracked (ignored files never)"
        return "tracked (tracked files only)"


def make_plan(
    path: Path,
    *,
    mode: Mode = Mode.TRACKED,
    include_untracked: bool = False,
    branch: str | None = None,
    from_ref: str | None = None,
    runner: Runner | None = None,
) -> Plan:
    """Inspect the repository enclosing ``path``; refuses what cannot be copied."""
    repo = open_repo(path, runner or Runner())
    head = repo.head()
    if head is None:
        raise InvalidArgument(
            f"{repo.toplevel} has no commits yet", hint="commit once, then run this again"
        )
    if from_ref is not None and branch is None:
        raise InvalidArgument("--from needs --branch NAME (the guest-only branch it starts)")
    if mode is Mode.FULL:
        if branch is not None or include_untracked:
            raise InvalidArgument("--branch and --include-untracked apply to --mode tracked")
        return _plan_full(repo, head)
    if branch is not None:
        check_branch_name(repo, branch)
    base = repo.resolve_commit(from_ref) if from_ref is not None else head
    plan = Plan(repo, mode, base, include_untracked, branch, from_ref)
    entries = repo.index_entries()
    submodules = [e.path for e in entries if e.mode == MODE_SUBMODULE]
    if submodules:
        raise InvalidArgument(
            f"{repo.toplevel} has submodules ({display(submodules[0])}"
            f"{' …' if len(submodules) > 1 else ''}); tracked mode does not copy them",
            hint="`banger vm workspace prepare VM PATH --mode full` copies the whole directory",
        )
    if from_ref is not None:
        plan.items = _tree_items(repo, base)
        return plan
    untracked = repo.untracked_paths()
    paths = [e.path for e in entries]
    if include_untracked:
        nested = [p for p in untracked if p.endswith(b"/")]
        plan.warnings += [f"{display(p)}: skipped, an untracked nested repository" for p in nested]
        paths += [p for p in untracked if not p.endswith(b"/")]
    else:
        plan.untracked_skipped = len(untracked)
    plan.items = _scan(repo.toplevel, sorted(set(paths)), plan.warnings)
    return plan


def _plan_full(repo: Repo, head: str) -> Plan:
    if repo.dotgit_is_file:
        raise InvalidArgument(
            f"{repo.toplevel} is a linked worktree or a submodule checkout (.git is a file): "
            "--mode full cannot copy the repository it points to",
            hint="use --mode tracked, or the main checkout",
        )
    plan = Plan(repo, Mode.FULL, head)
    with RootDir(repo.toplevel) as root:
        for found in walk(root):
            if isinstance(found, str):
                plan.warnings.append(found)
            elif found.rel != b".git/banger-base":
                plan.items.append(found)
    return plan


def _scan(top: Path, paths: list[bytes], warnings: list[str]) -> list[Item]:
    items: list[Item] = []
    with RootDir(top) as root:
        for rel in paths:
            found = classify(root, rel)
            if isinstance(found, str):
                warnings.append(found)
            elif found is not None and found.kind is Kind.DIR:
                warnings.append(f"{display(rel)}: skipped, a directory where git has a file")
            elif found is not None:
                items.append(found)
    return items


def _tree_items(repo: Repo, commit: str) -> list[Item]:
    out = repo.git("ls-tree", "-r", "-z", "-l", "--full-tree", commit).stdout
    items = []
    for record in filter(None, out.split(b"\0")):
        meta, _, rel = record.partition(b"\t")
        mode_text, kind, _obj, size = meta.split(maxsplit=3)
        mode = int(mode_text, 8)
        if kind == b"commit":
            raise InvalidArgument(
                f"{commit[:12]} has submodules ({display(rel)}); tracked mode does not copy them"
            )
        is_link = mode == 0o120000
        items.append(
            Item(
                rel,
                Kind.SYMLINK if is_link else Kind.FILE,
                0o777 if is_link else mode & 0o777,
                0 if is_link else int(size),
            )
        )
    return items


def print_plan(plan: Plan, guest_path: str, out: IO[str]) -> None:
    """The ``--dry-run`` report: mode, base, destination and every path, exactly."""
    branch = plan.branch or plan.repo.head_branch()
    out.write("dry run: nothing was created or copied\n")
    out.write(f"repository: {plan.repo.toplevel}\n")
    out.write(f"base commit: {plan.base}{f' (branch {branch})' if branch else ''}\n")
    out.write(f"mode: {plan.describe_mode}\n")
    out.write(f"guest path: {guest_path}\n")
    files = [i for i in plan.items if i.kind is not Kind.DIR]
    out.write(f"files ({len(files)}):\n")
    for item in files:
        if item.kind is Kind.SYMLINK:
            target = f" -> {display(item.target)}" if item.target is not None else ""
            out.write(f"  {display(item.rel)}{target} (symlink, copied as a link)\n")
        else:
            out.write(f"  {display(item.rel)}\n")
    for warning in plan.warnings:
        out.write(f"warning: {warning}\n")
    if plan.untracked_skipped:
        out.write(f"note: {_untracked_note(plan)}\n")


def _untracked_note(plan: Plan) -> str:
    n = plan.untracked_skipped
    return (
        f"{n} untracked file{'s' if n != 1 else ''} not copied (tracked files only); "
        "--include-untracked adds them"
    )


def send_plan(
    plan: Plan, shell: GuestShell, guest_path: str, *, replace: bool = False, readonly: bool = False
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


def guest_shell(session: Session, vm_name: str) -> GuestShell:
    """banger's ssh to the VM, non-interactive (no tty: the archive is binary)."""
    from banger.cli.vm_common import ssh_command

    argv = ssh_command(session, vm_name, ("true",))
    assert argv[-2:] == ["--", "true"], argv
    return GuestShell(("ssh", "-T", "-o", "BatchMode=yes", *argv[1:-2]))


def report(warnings: list[str], plan: Plan) -> None:
    for warning in [*plan.warnings, *warnings]:
        sys.stderr.write(f"banger: warning: {warning}\n")
    if plan.untracked_skipped:
        sys.stderr.write(f"banger: {_untracked_note(plan)}\n")


def prepare_for_run(
    session: Session,
    vm_name: str | None,
    path: str | Path,
    *,
    include_untracked: bool,
    branch: str | None,
    from_ref: str | None,
    dry_run: bool,
) -> str:
    """``vm run PATH``: copy the repository to /root/repo; returns the guest cwd.

    With ``dry_run`` only prints the plan (``vm_name`` may then be None; nothing is
    created). Call ``check_for_run`` before creating the VM to refuse early.
    """
    plan = make_plan(
        Path(path), include_untracked=include_untracked, branch=branch, from_ref=from_ref
    )
    if dry_run:
        print_plan(plan, DEFAULT_GUEST_PATH, sys.stdout)
        return DEFAULT_GUEST_PATH
    if vm_name is None:
        raise InvalidArgument("no VM to prepare the workspace in")
    warnings = send_plan(plan, guest_shell(session, vm_name), DEFAULT_GUEST_PATH)
    report(warnings, plan)
    n = sum(1 for i in plan.items if i.kind is not Kind.DIR)
    sys.stderr.write(f"banger: copied {n} files of {plan.repo.toplevel} to {DEFAULT_GUEST_PATH}\n")
    return DEFAULT_GUEST_PATH


def check_for_run(
    path: str | Path, *, include_untracked: bool, branch: str | None, from_ref: str | None
) -> None:
    """Refuse what ``prepare_for_run`` would refuse, before a VM exists."""
    make_plan(Path(path), include_untracked=include_untracked, branch=branch, from_ref=from_ref)
