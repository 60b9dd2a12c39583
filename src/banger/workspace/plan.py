"""Planning a workspace copy: which files of a host repository go into a guest (SPEC §7).

Owns: choosing what goes in the guest. ``tracked`` (the default): the repository's
history (a bundle made into a fresh ``.git`` on the host, so the guest needs no git),
then the working tree's tracked files as they are on disk, plus untracked non-ignored
files with ``include_untracked``; ignored files never. ``full``: the whole directory as
it is, ``.git`` and ignored files included (submodules work there, nowhere else).
``branch`` makes a guest-only branch at HEAD; with ``from_ref`` the guest gets that
ref's committed tree instead of the host's files. Refusing what cannot be copied (no
commits, submodules in tracked mode, a linked worktree in full mode) before anything is
created.
Must not: run git itself (``gitrepo`` does), read a working-tree file except through
``archive`` (no symlink is ever followed), or print anything (the CLI presents a plan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from banger.errors import InvalidArgument
from banger.host.runner import Runner
from banger.model.workspace_modes import Mode
from banger.workspace.archive import Item, Kind, RootDir, classify, display, walk
from banger.workspace.gitrepo import MODE_SUBMODULE, Repo, check_branch_name, open_repo


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
    def file_count(self) -> int:
        return sum(1 for i in self.items if i.kind is not Kind.DIR)

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
            hint=_full_mode_hint(repo.toplevel),
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


def _full_mode_hint(top: Path) -> str:
    # `vm run` has tracked mode only (it has no --mode): full mode is `workspace prepare`'s.
    return (
        "full mode copies the whole directory, submodules included, into a VM that exists: "
        f"`banger vm create --name NAME`, then `banger vm workspace prepare NAME {top} "
        "--mode full` (`banger vm run` copies tracked files only)"
    )


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
                f"{commit[:12]} has submodules ({display(rel)}); tracked mode does not copy them",
                hint="without --from: " + _full_mode_hint(repo.toplevel),
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
