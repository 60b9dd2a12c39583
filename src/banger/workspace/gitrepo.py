"""Host-side git: what a repository holds, and a self-contained ``.git`` for the guest.

Owns: every git command banger runs on the host. Each one goes through ``Repo.git`` with
``core.fsmonitor=false`` and ``core.hooksPath=/dev/null`` (a repository's own config must
not make us run its programs, ADVERSARIAL 71), ``--no-optional-locks`` (we never write the
user's index), ``-z`` output and ``--`` or ``--end-of-options`` before anything the user
typed (68). Commands in banger's own temp repositories also ignore the user's global and
system config (``isolated_env``), so no filter or hook configured anywhere runs on
content that came from a guest.

Must not: read working-tree files (``archive`` does, without following symlinks) or
modify the user's repository.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from banger.errors import BangerError, CommandFailed, InvalidArgument, PermissionDenied
from banger.host.runner import Result, Runner

HARDENING = (
    "--no-optional-locks",
    "-c", "core.fsmonitor=false",
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.untrackedCache=false",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
)  # fmt: skip
#: For banger's temp repositories: no user or system config at all.
ISOLATED_ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}
MODE_SUBMODULE = 0o160000
MODE_SYMLINK = 0o120000
_HEX = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
GIT_TIMEOUT_S = 600.0


def is_object_id(text: str) -> bool:
    return bool(_HEX.fullmatch(text))


@dataclass(frozen=True)
class IndexEntry:
    mode: int
    path: bytes


@dataclass(frozen=True)
class Repo:
    """A non-bare repository with a work tree, found from any path inside it."""

    toplevel: Path
    git_dir: Path
    common_dir: Path
    object_format: str
    runner: Runner

    @property
    def dotgit_is_file(self) -> bool:
        """A linked worktree or a submodule checkout: ``.git`` points elsewhere."""
        return (self.toplevel / ".git").is_file()

    def git(
        self,
        *args: str | Path,
        ok_codes: Sequence[int] = (0,),
        input_bytes: bytes | None = None,
        cwd: Path | None = None,
        isolated: bool = False,
    ) -> Result:
        where = cwd or self.toplevel
        return run_git(
            self.runner, where, *args, ok_codes=ok_codes, input_bytes=input_bytes, isolated=isolated
        )

    def head(self) -> str | None:
        """The commit HEAD names, or None for a repository without commits yet."""
        out = self.git("rev-parse", "--verify", "-q", "HEAD^{commit}", ok_codes=(0, 1))
        return out.text.strip() or None

    def head_branch(self) -> str | None:
        """``main`` for ``refs/heads/main``; None when HEAD is detached."""
        out = self.git("symbolic-ref", "-q", "HEAD", ok_codes=(0, 1))
        ref = out.text.strip()
        return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None

    def resolve_commit(self, ref: str) -> str:
        if not ref or ref.startswith("-") or any(ord(c) < 0x20 for c in ref):
            raise InvalidArgument(f"{ref!r} is not a valid git revision")
        out = self.git(
            "rev-parse", "--verify", "-q", "--end-of-options", f"{ref}^{{commit}}", ok_codes=(0, 1)
        )
        commit = out.text.strip()
        if not commit:
            raise InvalidArgument(
                f"{ref!r} does not name a commit in {self.toplevel}",
                hint="`git log --oneline` lists commits; branch and tag names work too",
            )
        return commit

    def index_entries(self) -> list[IndexEntry]:
        """Every path in the index once (conflict stages collapsed), in git's order."""
        out = self.git("ls-files", "-z", "--stage").stdout
        entries: dict[bytes, IndexEntry] = {}
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, path = record.partition(b"\t")
            entries.setdefault(path, IndexEntry(int(meta.split(b" ", 1)[0], 8), path))
        return list(entries.values())

    def untracked_paths(self) -> list[bytes]:
        """Untracked files git does not ignore; a nested repository shows as ``dir/``."""
        out = self.git("ls-files", "-z", "--others", "--exclude-standard").stdout
        return [p for p in out.split(b"\0") if p]

    def config_value(self, key: str) -> str | None:
        out = self.git("config", "--get", "--end-of-options", key, ok_codes=(0, 1))
        return out.text.strip() or None


def run_git(
    runner: Runner,
    where: Path,
    *args: str | Path,
    ok_codes: Sequence[int] = (0,),
    input_bytes: bytes | None = None,
    isolated: bool = False,
) -> Result:
    argv = ["git", *HARDENING, "-C", str(where), *map(str, args)]
    try:
        return runner.run(
            argv,
            ok_codes=ok_codes,
            input_bytes=input_bytes,
            timeout_s=GIT_TIMEOUT_S,
            env=ISOLATED_ENV if isolated else {"GIT_TERMINAL_PROMPT": "0"},
        )
    except CommandFailed as exc:
        raise _translate(exc, where, [str(a) for a in args[:2]]) from exc


def _translate(exc: CommandFailed, where: Path, words: list[str]) -> BangerError:
    text = exc.details or ""
    if "dubious ownership" in text or "safe.directory" in text:
        return PermissionDenied(
            f"git refuses {where}: the repository is owned by another user",
            details=text,
            hint=f"if you trust it: git config --global --add safe.directory {where}",
        )
    # The runner's brief would show our -c flags; name the git command instead.
    return CommandFailed(f"`git {' '.join(words)}` failed in {where}", details=exc.details)


def open_repo(
    path: Path, runner: Runner, *, not_a_repo: Callable[[Path], BangerError] | None = None
) -> Repo:
    """The repository enclosing ``path``; bare repositories and ``.git`` itself refused.
    ``not_a_repo(start)`` is the error when there is none (the default suits a copy)."""
    if not path.exists():
        raise InvalidArgument(f"{path} does not exist")
    start = path if path.is_dir() else path.parent
    out = run_git(
        runner,
        start,
        "rev-parse",
        "--is-bare-repository",
        "--is-inside-work-tree",
        "--absolute-git-dir",
        "--path-format=absolute",
        "--git-common-dir",
        "--show-object-format",
        ok_codes=(0, 128),
    )
    if out.returncode != 0:
        error = _not_a_repo(start, out)
        if not_a_repo is not None and isinstance(error, InvalidArgument):
            raise not_a_repo(start)
        raise error
    bare, in_tree, git_dir, common_dir, object_format = out.text.split("\n")[:5]
    if bare == "true":
        raise InvalidArgument(
            f"{start} is a bare git repository: it has no working tree to copy",
            hint="clone it (`git clone BARE DIR`) and use DIR",
        )
    if in_tree != "true":
        raise InvalidArgument(
            f"{start} is inside a .git directory, not a working tree",
            hint="give the repository's top-level directory",
        )
    top = run_git(runner, start, "rev-parse", "--show-toplevel").text.rstrip("\n")
    return Repo(Path(top), Path(git_dir), Path(common_dir), object_format, runner)


def _not_a_repo(start: Path, out: Result) -> InvalidArgument | PermissionDenied:
    text = out.stderr.decode(errors="replace").strip()
    if "dubious ownership" in text:
        return PermissionDenied(
            f"git refuses {start}: the repository is owned by another user",
            details=text,
            hint=f"if you trust it: git config --global --add safe.directory {start}",
        )
    return InvalidArgument(
        f"{start} is not inside a git repository",
        details=text or None,
        hint="`git init` it first, or run `banger vm run` without a path for a bare sandbox",
    )


@dataclass(frozen=True)
class GuestGit:
    """The ``.git`` made for the guest, and where its work tree is (for ``--from``)."""

    work: Path
    base: str
    head_ref: str | None


def build_guest_git(
    repo: Repo,
    tmp: Path,
    *,
    base: str,
    branch: str | None,
    checkout: bool,
) -> GuestGit:
    """A self-contained repository in ``tmp/work`` holding the host's history.

    The history travels as a bundle (branches, tags, remote-tracking refs and HEAD), is
    fetched into a fresh repository made without templates (so no hooks), and the index
    is set to ``base`` — the guest's first ``git status`` then shows the host's
    uncommitted changes as changes. ``checkout`` also writes ``base``'s files into
    ``tmp/work`` (``--from``: the guest gets that commit's tree, not the host's files).
    """
    bundle, work = tmp / "history.bundle", tmp / "work"
    tmp.mkdir(parents=True, exist_ok=True)
    repo.git("bundle", "create", "-q", bundle, "--branches", "--tags", "--remotes", "HEAD")
    work.mkdir()
    tmp_git(repo, work, "init", "-q", "--template=", f"--object-format={repo.object_format}")
    tmp_git(
        repo, work, "fetch", "-q", "--no-write-fetch-head", "--update-head-ok", "--no-tags",
        "--", bundle, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
        "+refs/remotes/*:refs/remotes/*", "+HEAD:refs/banger/host-head",
    )  # fmt: skip
    bundle.unlink()
    if tmp_git(repo, work, "cat-file", "-e", f"{base}^{{commit}}", ok_codes=(0, 1, 128)).returncode:
        raise InvalidArgument(
            f"commit {base[:12]} is not reachable from a branch, tag or HEAD",
            hint="create a branch or tag at it first",
        )
    head_ref = _set_head(repo, work, base=base, branch=branch)
    tmp_git(repo, work, "update-ref", "refs/banger/base", base)
    tmp_git(repo, work, "update-ref", "-d", "refs/banger/host-head")
    (work / ".git" / "banger-base").write_text(base + "\n")
    for key in ("user.name", "user.email"):
        value = repo.config_value(key)
        if value:
            tmp_git(repo, work, "config", "--end-of-options", key, value)
    if checkout:
        tmp_git(repo, work, "read-tree", "--reset", "-u", base)
    else:
        tmp_git(repo, work, "read-tree", base)
    return GuestGit(work=work, base=base, head_ref=head_ref)


def tmp_git(repo: Repo, work: Path, *args: str | Path, ok_codes: Sequence[int] = (0,)) -> Result:
    """git in one of banger's temp repositories: no user or system config applies."""
    return run_git(repo.runner, work, *args, ok_codes=ok_codes, isolated=True)


def _set_head(repo: Repo, work: Path, *, base: str, branch: str | None) -> str | None:
    if branch is not None:
        ref = f"refs/heads/{branch}"
        if tmp_git(repo, work, "show-ref", "-q", "--verify", ref, ok_codes=(0, 1)).returncode == 0:
            raise InvalidArgument(
                f"branch {branch!r} already exists in the repository",
                hint="pick a new name for the guest-only branch",
            )
        tmp_git(repo, work, "update-ref", ref, base)
        tmp_git(repo, work, "symbolic-ref", "HEAD", ref)
        return branch
    current = repo.head_branch()
    if current is not None and repo.head() == base:
        tmp_git(repo, work, "symbolic-ref", "HEAD", f"refs/heads/{current}")
        return current
    tmp_git(repo, work, "update-ref", "--no-deref", "HEAD", base)
    return None


def check_branch_name(repo: Repo, name: str) -> str:
    """A name for a guest-only branch, checked the way ``git branch`` would."""
    if name.startswith("-") or name == "HEAD" or any(ord(c) < 0x20 for c in name):
        raise InvalidArgument(f"{name!r} is not a valid branch name")
    if repo.git("check-ref-format", "--branch", name, ok_codes=(0, 1, 128)).returncode != 0:
        raise InvalidArgument(
            f"{name!r} is not a valid branch name", hint="see `git help check-ref-format`"
        )
    return name
