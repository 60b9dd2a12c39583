"""Host-side git queries on real repositories in temp dirs (ADVERSARIAL 67-71)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from banger.errors import InvalidArgument, PermissionDenied
from banger.host.runner import Runner
from banger.workspace.gitrepo import (
    MODE_SUBMODULE,
    MODE_SYMLINK,
    build_guest_git,
    check_branch_name,
    open_repo,
)
from tests.gitrepos import ODD_NAMES, fsmonitor_trap, git, isolated_home, make_repo

__all__ = ["isolated_home"]  # the autouse fixture: no user gitconfig in these tests


def test_not_a_repo_is_refused_with_a_hint(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(InvalidArgument, match="not inside a git repository") as err:
        open_repo(plain, Runner())
    assert err.value.hint and "git init" in err.value.hint


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        open_repo(tmp_path / "nope", Runner())


def test_bare_repo_is_refused_e70(tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    with pytest.raises(InvalidArgument, match="bare git repository"):
        open_repo(bare, Runner())


def test_inside_dot_git_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    with pytest.raises(InvalidArgument, match=r"inside a \.git directory"):
        open_repo(repo / ".git", Runner())


def test_a_subdirectory_finds_the_top_level(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {b"sub/dir/f": b"x"})
    found = open_repo(repo / "sub" / "dir", Runner())
    assert found.toplevel == repo
    assert found.git_dir == repo / ".git" and not found.dotgit_is_file
    assert found.head_branch() == "main"


def test_worktree_is_recognised_e70(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    git(repo, "worktree", "add", "-q", str(tmp_path / "wt"), "-b", "side")
    found = open_repo(tmp_path / "wt", Runner())
    assert found.toplevel == tmp_path / "wt"
    assert found.dotgit_is_file
    assert found.common_dir == repo / ".git"
    assert found.head_branch() == "side"


def test_repo_owned_by_another_user_gives_the_safe_directory_hint_e70(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown the repository to another uid")
    repo = make_repo(tmp_path / "r")
    for path in [repo, *repo.rglob("*")]:
        os.lchown(path, 54321, 54321)
    with pytest.raises(PermissionDenied, match="owned by another user") as err:
        open_repo(repo, Runner())
    assert err.value.hint and "safe.directory" in err.value.hint


def test_no_commits_yet_has_no_head(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q")
    assert open_repo(repo, Runner()).head() is None


def test_index_entries_keep_odd_names_as_exact_bytes_e67_e68(tmp_path: Path) -> None:
    files = {name: name for name in ODD_NAMES}
    repo = make_repo(tmp_path / "r", files)
    (repo / "link").symlink_to("README-not-there")
    git(repo, "add", "link")
    entries = {e.path: e.mode for e in open_repo(repo, Runner()).index_entries()}
    assert set(entries) == {*ODD_NAMES, b"link"}
    assert entries[b"link"] == MODE_SYMLINK
    assert entries[b"-leading"] == 0o100644


def test_untracked_lists_non_ignored_files_and_nested_repos(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {b".gitignore": b"*.log\nbuild/\n"})
    (repo / "notes.txt").write_text("n")
    (repo / "debug.log").write_text("ignored")
    (repo / "build").mkdir()
    (repo / "build" / "out").write_text("ignored")
    make_repo(repo / "vendor" / "inner")
    untracked = open_repo(repo, Runner()).untracked_paths()
    assert sorted(untracked) == [b"notes.txt", b"vendor/inner/"]


def test_submodule_shows_as_a_gitlink(tmp_path: Path) -> None:
    sub = make_repo(tmp_path / "sub")
    repo = make_repo(tmp_path / "r")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "lib")
    entries = {e.path: e.mode for e in open_repo(repo, Runner()).index_entries()}
    assert entries[b"lib"] == MODE_SUBMODULE


def test_resolve_commit_refuses_option_like_and_unknown_refs_e68(tmp_path: Path) -> None:
    repo = open_repo(make_repo(tmp_path / "r"), Runner())
    head = repo.head()
    assert head is not None and repo.resolve_commit("main") == head
    for bad in ("--output=/tmp/x", "-n", "nope", ""):
        with pytest.raises(InvalidArgument):
            repo.resolve_commit(bad)


def test_branch_names_are_checked(tmp_path: Path) -> None:
    repo = open_repo(make_repo(tmp_path / "r"), Runner())
    assert check_branch_name(repo, "feature/x") == "feature/x"
    for bad in ("-b", "a..b", "HEAD", "with space", "x\ny", "end."):
        with pytest.raises(InvalidArgument):
            check_branch_name(repo, bad)


def test_guest_git_is_self_contained_and_hookless(tmp_path: Path) -> None:
    host = make_repo(tmp_path / "r", {b"a": b"1"})
    git(host, "tag", "v1")
    (host / "a").write_text("2")
    git(host, "commit", "-qam", "two")
    git(host, "config", "user.name", "Host User")
    repo = open_repo(host, Runner())
    head = repo.head()
    assert head is not None
    made = build_guest_git(repo, tmp_path / "t", base=head, branch=None, checkout=False)
    dotgit = made.work / ".git"
    assert not (dotgit / "hooks").exists()
    assert not (dotgit / "objects" / "info" / "alternates").exists()
    assert (dotgit / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (dotgit / "banger-base").read_text() == head + "\n"
    assert git(made.work, "rev-parse", "refs/banger/base").stdout.decode().strip() == head
    assert git(made.work, "config", "user.name").stdout.decode().strip() == "Host User"
    assert b"v1" in git(made.work, "tag").stdout
    assert git(made.work, "rev-list", "--count", "HEAD").stdout.strip() == b"2"
    # The index is the base commit's tree; no work-tree files were written.
    assert git(made.work, "ls-files").stdout == b"a\n"
    assert not (made.work / "a").exists()
    # Self-contained: it still works after the host repository is gone.
    moved = tmp_path / "moved"
    made.work.rename(moved)
    for path in host.rglob("*"):
        if path.is_file():
            path.chmod(0)
    assert git(moved, "fsck", "--no-dangling", check=False).returncode == 0


def test_guest_branch_and_from_ref(tmp_path: Path) -> None:
    host = make_repo(tmp_path / "r", {b"a": b"old"})
    first = git(host, "rev-parse", "HEAD").stdout.decode().strip()
    (host / "a").write_text("new")
    git(host, "commit", "-qam", "two")
    repo = open_repo(host, Runner())
    made = build_guest_git(repo, tmp_path / "t", base=first, branch="try", checkout=True)
    assert (made.work / ".git" / "HEAD").read_text() == "ref: refs/heads/try\n"
    assert (made.work / "a").read_text() == "old"
    assert made.head_ref == "try"
    assert b"try" not in git(host, "branch").stdout  # guest-only
    with pytest.raises(InvalidArgument, match="already exists"):
        build_guest_git(repo, tmp_path / "t2", base=first, branch="main", checkout=False)


def test_detached_head_stays_detached(tmp_path: Path) -> None:
    host = make_repo(tmp_path / "r")
    git(host, "checkout", "-q", "--detach")
    repo = open_repo(host, Runner())
    head = repo.head()
    assert head is not None and repo.head_branch() is None
    made = build_guest_git(repo, tmp_path / "t", base=head, branch=None, checkout=False)
    assert (made.work / ".git" / "HEAD").read_text().strip() == head


def test_fsmonitor_in_repo_config_never_runs_e71(tmp_path: Path) -> None:
    host = make_repo(tmp_path / "r")
    (host / "untracked").write_text("u")
    marker = fsmonitor_trap(host, tmp_path)
    # Sanity: plain git does run it, so the trap is armed.
    git(host, "status", "--porcelain")
    assert marker.exists()
    marker.unlink()
    repo = open_repo(host, Runner())
    repo.index_entries()
    repo.untracked_paths()
    head = repo.head()
    assert head is not None
    build_guest_git(repo, tmp_path / "t", base=head, branch="b", checkout=True)
    assert not marker.exists()
