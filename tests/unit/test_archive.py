"""The workspace archive from real repositories, unpacked by busybox and GNU tar with the
very guest script the VM runs (ADVERSARIAL 60, 61, 66-71)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import IO

import pytest
from click.testing import CliRunner

from banger.cli import main as cli_main
from banger.cli.run_workspace import print_plan
from banger.errors import AlreadyExists, CommandFailed, InvalidArgument
from banger.host.runner import Result
from banger.model.workspace_modes import Mode
from banger.workspace import GuestShell
from banger.workspace.archive import Kind, RootDir, TarWriter, Unsafe, _ExactReader, display
from banger.workspace.plan import make_plan
from banger.workspace.send import send_plan
from tests.gitrepos import ODD_NAMES, fsmonitor_trap, git, isolated_home, make_repo
from tests.localshell import busybox_path, local_shell

# Fixtures: isolated_home (autouse: no user gitconfig here) and busybox_path.
__all__ = ["busybox_path", "isolated_home"]

SECRET = b"TOP-SECRET-KEY-MATERIAL"


class CaptureShell(GuestShell):
    """Keeps the archive instead of sending it anywhere."""

    data: bytes = b""

    def send(self, script: str, write: object, *, timeout_s: float = 0) -> Result:
        buffer = io.BytesIO()
        write(buffer)  # type: ignore[operator]
        object.__setattr__(self, "data", buffer.getvalue())
        return Result(("capture",), 0, b"", b"")


def archive_of(repo: Path, **plan_args: object) -> tuple[bytes, dict[bytes, tarfile.TarInfo]]:
    plan = make_plan(repo, **plan_args)  # type: ignore[arg-type]
    shell = CaptureShell(())
    send_plan(plan, shell, "/root/repo")
    with tarfile.open(
        fileobj=io.BytesIO(shell.data), encoding="utf-8", errors="surrogateescape"
    ) as tar:
        members = {os.fsencode(m.name): m for m in tar.getmembers()}
    return shell.data, members


def work_tree(members: dict[bytes, tarfile.TarInfo]) -> set[bytes]:
    """Files and symlinks outside .git."""
    return {
        name
        for name, m in members.items()
        if not name.startswith(b".git/") and name != b".git" and not m.isdir()
    }


def test_tracked_only_by_default_untracked_by_flag_ignored_never(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {b".gitignore": b"*.log\nsecrets/\n", b"src/main.c": b"m"})
    (repo / "notes.txt").write_text("untracked")
    (repo / "debug.log").write_text("ignored")
    (repo / "secrets").mkdir()
    (repo / "secrets" / "token").write_text("ignored")
    _, members = archive_of(repo)
    assert work_tree(members) == {b".gitignore", b"src/main.c"}
    assert {b".git/HEAD", b".git/config", b".git/index", b".git/banger-base"} <= set(members)
    _, members = archive_of(repo, include_untracked=True)
    assert work_tree(members) == {b".gitignore", b"src/main.c", b"notes.txt"}
    assert members[b"src"].isdir() and members[b"src/main.c"].uid == 0


def test_tracked_symlink_to_a_host_secret_stays_a_link_e66(tmp_path: Path) -> None:
    secret_dir = tmp_path / "dot-ssh"
    secret_dir.mkdir()
    (secret_dir / "id_ed25519").write_bytes(SECRET)
    repo = make_repo(tmp_path / "r")
    (repo / "key").symlink_to(secret_dir / "id_ed25519")
    (repo / "keys").symlink_to(secret_dir)
    git(repo, "add", "key", "keys")
    git(repo, "commit", "-qm", "links")
    for mode in (Mode.TRACKED, Mode.FULL):
        data, members = archive_of(repo, mode=mode)
        assert SECRET not in data
        assert members[b"key"].issym()
        assert members[b"key"].linkname == str(secret_dir / "id_ed25519")
        assert members[b"keys"].issym() and b"keys/id_ed25519" not in members


@pytest.mark.parametrize("tar", ["busybox", "gnu"])
def test_odd_names_round_trip_exactly_e67_e68(tmp_path: Path, busybox_path: Path, tar: str) -> None:
    long_name = b"deep/" + b"x" * 180
    files = {name: b"content of " + name for name in [*ODD_NAMES, long_name]}
    repo = make_repo(tmp_path / "r", files)
    (repo / "-rf").symlink_to("-leading")
    git(repo, "add", "--", "-rf")
    git(repo, "commit", "-qm", "link")
    guest = tmp_path / "guest"
    plan = make_plan(repo)
    send_plan(plan, local_shell(busybox_path if tar == "busybox" else None), f"{guest}/repo")
    out = guest / "repo"
    got = {os.fsencode(p.relative_to(out)) for p in out.rglob("*") if ".git" not in p.parts}
    assert got == {*files, b"deep", b"-rf"}
    for name, data in files.items():
        assert (out / os.fsdecode(name)).read_bytes() == data
    assert os.readlink(out / "-rf") == "-leading"
    status = git(out, "status", "--porcelain", "-z").stdout
    assert status == b"", status  # the guest's git sees exactly the committed files


def test_modified_deleted_and_staged_files_show_the_same_in_the_guest_e69(
    tmp_path: Path, busybox_path: Path
) -> None:
    repo = make_repo(tmp_path / "r", {b"keep": b"1", b"gone": b"2", b"edit": b"3"})
    (repo / "gone").unlink()
    (repo / "edit").write_text("changed")
    (repo / "staged").write_text("new")
    git(repo, "add", "staged")
    plan = make_plan(repo)
    assert {i.rel for i in plan.items} == {b"keep", b"edit", b"staged"}
    send_plan(plan, local_shell(busybox_path), f"{tmp_path}/g/repo")
    out = tmp_path / "g" / "repo"
    assert (out / "edit").read_text() == "changed"
    status = git(out, "status", "--porcelain").stdout.decode().splitlines()
    assert sorted(status) == [" D gone", " M edit", "?? staged"]


def test_fifo_and_device_where_a_file_was_are_skipped_without_hanging_e61(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "r", {b"pipe": b"p", b"dev": b"d", b"ok": b"o"})
    (repo / "pipe").unlink()
    os.mkfifo(repo / "pipe")
    (repo / "dev").unlink()
    if os.geteuid() == 0:
        os.mknod(repo / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
    plan = make_plan(repo)
    assert any("pipe" in w and "FIFO" in w for w in plan.warnings)
    _, members = archive_of(repo)
    assert work_tree(members) == {b"ok"}


def test_a_directory_swapped_for_a_symlink_after_planning_is_not_followed_e60(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "r", {b"sub/config": b"harmless"})
    elsewhere = tmp_path / "dot-ssh"
    elsewhere.mkdir()
    (elsewhere / "config").write_bytes(SECRET)
    plan = make_plan(repo)
    (repo / "sub").rename(tmp_path / "moved-away")
    (repo / "sub").symlink_to(elsewhere)
    shell = CaptureShell(())
    warnings = send_plan(plan, shell, "/root/repo")
    assert SECRET not in shell.data
    assert any("sub/config" in w and "symlink" in w for w in warnings)


def test_root_dir_refuses_escaping_paths_and_symlinked_parents(tmp_path: Path) -> None:
    (tmp_path / "root" / "d").mkdir(parents=True)
    (tmp_path / "root" / "link").symlink_to("/etc")
    with RootDir(tmp_path / "root") as root:
        for bad in (b"../x", b"/etc/passwd", b"d/../../x", b"", b"d//x"):
            with pytest.raises(Unsafe):
                root.lstat(bad)
        with pytest.raises(Unsafe):
            root.lstat(b"link/passwd")
        with pytest.raises(Unsafe):
            root.open_regular(b"link")
        assert root.lstat(b"d/missing") is None


def test_a_file_that_shrinks_while_copied_keeps_the_tar_well_formed_e62(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = _ExactReader(fd, 5)
        assert io.BufferedReader(reader).read() == b"abc\0\0"
        assert reader.changed
    finally:
        os.close(fd)


def test_submodules_are_refused_in_tracked_mode_and_copied_in_full_e69(tmp_path: Path) -> None:
    sub = make_repo(tmp_path / "sub", {b"lib.c": b"l"})
    repo = make_repo(tmp_path / "r")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "lib")
    git(repo, "commit", "-qm", "sub")
    with pytest.raises(InvalidArgument, match="submodules") as err:
        make_plan(repo)
    assert err.value.hint and "--mode full" in err.value.hint
    # Issue 14 item 19: `vm run` has no --mode; the hint names the command that has it.
    assert f"`banger vm workspace prepare NAME {repo} --mode full`" in err.value.hint
    assert "`banger vm run` copies tracked files only" in err.value.hint
    _, members = archive_of(repo, mode=Mode.FULL)
    assert {b"lib/lib.c", b"lib/.git", b".git/modules/lib/HEAD", b".gitmodules"} <= set(members)


def test_bare_repo_and_worktree_rules_e70(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {b"a": b"1"})
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(tmp_path / "bare.git"))
    with pytest.raises(InvalidArgument, match="bare"):
        make_plan(tmp_path / "bare.git")
    git(repo, "worktree", "add", "-q", str(tmp_path / "wt"), "-b", "side")
    (tmp_path / "wt" / "a").write_text("worktree edit")
    _, members = archive_of(tmp_path / "wt")
    assert work_tree(members) == {b"a"}
    with pytest.raises(InvalidArgument, match="linked worktree"):
        make_plan(tmp_path / "wt", mode=Mode.FULL)


def test_repo_config_programs_never_run_e71(tmp_path: Path, busybox_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {b".gitattributes": b"* filter=evil\n", b"a": b"1"})
    marker = fsmonitor_trap(repo, tmp_path)
    filter_marker = tmp_path / "filter-ran"
    git(repo, "config", "filter.evil.clean", f"touch {filter_marker}; cat")
    git(repo, "config", "filter.evil.smudge", f"touch {filter_marker}; cat")
    (repo / "a").write_text("2")
    (repo / "u").write_text("untracked")
    plan = make_plan(repo, include_untracked=True)
    send_plan(plan, local_shell(busybox_path), f"{tmp_path}/g/repo")
    plan = make_plan(repo, branch="b", from_ref="HEAD")
    send_plan(plan, local_shell(busybox_path), f"{tmp_path}/g2/repo")
    assert not marker.exists() and not filter_marker.exists()


def test_existing_guest_path_is_refused_then_replaced_and_a_failed_unpack_keeps_it(
    tmp_path: Path, busybox_path: Path
) -> None:
    repo = make_repo(tmp_path / "r")
    dest = tmp_path / "g" / "repo"
    dest.mkdir(parents=True)
    (dest / "work").write_text("guest work")
    plan = make_plan(repo)
    with pytest.raises(AlreadyExists):
        send_plan(plan, local_shell(busybox_path), str(dest))
    assert (dest / "work").read_text() == "guest work"

    class Broken(GuestShell):
        def send(self, script: str, write: object, *, timeout_s: float = 0) -> Result:
            def truncated(stream: IO[bytes]) -> None:
                buffer = io.BytesIO()
                write(buffer)  # type: ignore[operator]
                stream.write(buffer.getvalue()[:1500])

            return GuestShell.send(self, script, truncated)

    with pytest.raises(CommandFailed, match="unpacking the workspace"):
        send_plan(
            plan, Broken(local_shell(busybox_path).prefix, remote=False), str(dest), replace=True
        )
    assert (dest / "work").read_text() == "guest work"
    assert [p.name for p in dest.parent.iterdir()] == ["repo"]  # no staging dir left

    send_plan(plan, local_shell(busybox_path), str(dest), replace=True)
    assert not (dest / "work").exists() and (dest / "README").exists()


def test_from_ref_copies_the_committed_tree_on_a_guest_only_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {b"a": b"v1"})
    git(repo, "tag", "v1")
    (repo / "a").write_text("v2")
    (repo / "b").write_text("b")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v2")
    (repo / "a").write_text("uncommitted")
    data, members = archive_of(repo, branch="fix", from_ref="v1")
    assert work_tree(members) == {b"a"}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        handle = tar.extractfile("a")
        assert handle is not None and handle.read() == b"v1"
        head = tar.extractfile(".git/HEAD")
        assert head is not None and head.read() == b"ref: refs/heads/fix\n"
    with pytest.raises(InvalidArgument, match="--from needs --branch"):
        make_plan(repo, from_ref="v1")


def test_dry_run_prints_the_exact_list_and_mode_and_the_untracked_note(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {b"a": b"1", b"new\nline": b"2"})
    (repo / "link").symlink_to("a")
    git(repo, "add", "link")
    (repo / "scratch").write_text("u")
    out = io.StringIO()
    print_plan(make_plan(repo), "/root/repo", out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "dry run: nothing was created or copied"
    assert "mode: tracked (tracked files only)" in lines
    assert "guest path: /root/repo" in lines
    start = lines.index("files (3):")
    assert lines[start + 1 : start + 4] == [
        "  a",
        "  link -> a (symlink, copied as a link)",
        '  "new\\nline"',
    ]
    assert lines[-1] == (
        "note: 1 untracked file not copied (tracked files only); --include-untracked adds them"
    )
    out = io.StringIO()
    print_plan(make_plan(repo, include_untracked=True), "/root/repo", out)
    assert "  scratch" in out.getvalue() and "note:" not in out.getvalue()


def test_vm_run_dry_run_prints_the_plan_and_needs_no_daemon(tmp_path: Path) -> None:
    """``vm run PATH --dry-run`` plans once and prints exactly what ``print_plan`` does."""
    repo = make_repo(tmp_path / "r", {b"a": b"1", b"dir/b": b"2"})
    (repo / "scratch").write_text("u")
    env = {
        f"XDG_{k}": str(tmp_path / k.lower()) for k in ("CONFIG_HOME", "STATE_HOME", "CACHE_HOME")
    }
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    result = CliRunner(env=env).invoke(
        cli_main.cli, ["vm", "run", str(repo), "--dry-run"], catch_exceptions=False
    )
    expected = io.StringIO()
    print_plan(make_plan(repo), "/root/repo", expected)
    assert result.exit_code == 0
    assert result.stdout == expected.getvalue()
    assert not (tmp_path / "runtime_dir").exists()  # no daemon was started or asked


def test_display_escapes_what_a_terminal_would_misread() -> None:
    assert display(b"plain/name.txt") == "plain/name.txt"
    assert display("ünï".encode()) == "ünï"
    assert display(b"a\nb") == '"a\\nb"'
    assert display(b"bad\xff") == '"bad\\xff"'
    assert display(b'q"uote') == '"q\\"uote"'


def test_no_commits_yet_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q")
    with pytest.raises(InvalidArgument, match="no commits"):
        make_plan(repo)


def test_tar_writer_streams_to_a_pipe(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"z" * (3 << 20))
    read_fd, write_fd = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(os.fdopen(read_fd, "rb").read()))
    reader.start()
    with os.fdopen(write_fd, "wb") as pipe, RootDir(tmp_path) as root:
        writer = TarWriter(pipe)
        from banger.workspace.archive import classify

        item = classify(root, b"big")
        assert item is not None and not isinstance(item, str) and item.kind is Kind.FILE
        writer.add_file(root, item, b"big", 0o644)
        writer.close()
    reader.join()
    with tarfile.open(fileobj=io.BytesIO(got[0])) as tar:
        assert tar.getmember("big").size == 3 << 20


# -- export: the guest's changes back (the tar from the guest is hostile input) ----------


def _hostile_tar(entries: list[tuple[str, bytes | None, str | None, bytes]]) -> bytes:
    """(name, tar type, linkname, data) -> tar bytes, written without any sanitising."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, link, data in entries:
            info = tarfile.TarInfo(name)
            info.type = kind or tarfile.REGTYPE
            info.linkname = link or ""
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            info.mode = 0o755 if info.type == tarfile.DIRTYPE else 0o644
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


def _unpack(tmp_path: Path, data: bytes, **limits: int) -> tuple[Path, list[str]]:
    from banger.workspace.export import unpack_untrusted

    root_dir = Path(tempfile.mkdtemp(dir=tmp_path, prefix="unpacked-"))
    with RootDir(root_dir) as root:
        return root_dir, unpack_untrusted(io.BytesIO(data), root, **limits)


@pytest.mark.parametrize(
    "entries",
    [
        [("../victim/x", None, None, b"pwned")],
        [("/abs/x", None, None, b"pwned")],
        [("a/../../victim/x", None, None, b"pwned")],
        [("link", tarfile.SYMTYPE, "../victim", b""), ("link/x", None, None, b"pwned")],
        [("esc", tarfile.SYMTYPE, "..", b""), ("esc/victim/x", None, None, b"pwned")],
    ],
)
def test_unpacking_the_guests_tar_never_writes_outside(
    tmp_path: Path, entries: list[tuple[str, bytes | None, str | None, bytes]]
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    with pytest.raises(CommandFailed, match=r"unsafe path|through a symlink"):
        _unpack(tmp_path, _hostile_tar(entries))
    assert list(victim.iterdir()) == []


def test_unpacking_keeps_links_as_links_copies_hardlinks_and_drops_dot_git(
    tmp_path: Path,
) -> None:
    data = _hostile_tar(
        [
            ("./", tarfile.DIRTYPE, None, b""),
            ("./f", None, None, b"data"),
            ("./hard", tarfile.LNKTYPE, "./f", b""),
            ("./abs-link", tarfile.SYMTYPE, "/etc/shadow", b""),
            ("./fifo", tarfile.FIFOTYPE, None, b""),
            ("./.git/config", None, None, b"[core]\n\tfsmonitor = /tmp/evil\n"),
            ("./vendor/x/.git", tarfile.DIRTYPE, None, b""),
            ("./vendor/x/.GIT/hooks/post-checkout", None, None, b"evil"),
            ("./vendor/x/y", None, None, b"kept"),
        ]
    )
    root, warnings = _unpack(tmp_path, data)
    assert sorted(p.name for p in root.iterdir()) == ["abs-link", "f", "hard", "vendor"]
    assert (root / "hard").read_bytes() == b"data" and not (root / "hard").samefile(root / "f")
    assert os.readlink(root / "abs-link") == "/etc/shadow"
    assert (root / "vendor" / "x" / "y").read_bytes() == b"kept"
    assert not (root / "vendor" / "x" / ".git").exists()
    assert any("fifo" in w for w in warnings) and any("nested repository" in w for w in warnings)


def test_unpacking_is_bounded(tmp_path: Path) -> None:
    big = _hostile_tar([("a", None, None, b"x" * 2048), ("b", None, None, b"y")])
    with pytest.raises(CommandFailed, match="exceed"):
        _unpack(tmp_path, big, max_bytes=1024)
    with pytest.raises(CommandFailed, match="more than 1 entries"):
        _unpack(tmp_path, big, max_entries=1)
    with pytest.raises(CommandFailed, match="damaged"):
        _unpack(tmp_path, b"not a tar" * 200)
    assert _unpack(tmp_path, b"")[1] == []


def _prepared_guest(tmp_path: Path, busybox_path: Path) -> tuple[Path, Path]:
    repo = make_repo(tmp_path / "r", {b"a": b"1\n", b"bin.dat": bytes(range(256)), b"d/x": b"x"})
    guest = tmp_path / "guest" / "repo"
    send_plan(make_plan(repo), local_shell(busybox_path), str(guest))
    return repo, guest


def test_export_on_the_host_and_in_the_guest_give_the_same_appliable_patch(
    tmp_path: Path, busybox_path: Path
) -> None:
    from banger.workspace.export import Via, export_patch

    repo, guest = _prepared_guest(tmp_path, busybox_path)
    (guest / "a").write_text("1\nedited in the guest\n")
    git(guest, "commit", "-qam", "a guest commit")  # must not be lost (SPEC §7)
    (guest / "new file").write_text("created in the guest\n")
    (guest / "bin.dat").write_bytes(bytes(reversed(range(256))))
    (guest / "d" / "x").unlink()
    (guest / "build.log").write_text("ignored by the guest's .gitignore")
    (guest / ".gitignore").write_text("*.log\n")
    patches = {}
    for via, shell in ((Via.HOST, local_shell(busybox_path)), (Via.GUEST, local_shell(None))):
        result = export_patch(
            shell, guest_path=str(guest), base_commit=None, host_repo=repo, via=via
        )
        assert result.via is via and result.files == 5
        patches[via] = result.patch
    assert patches[Via.HOST] == patches[Via.GUEST]
    patch = patches[Via.HOST]
    assert b"build.log" not in patch and b"GIT binary patch" in patch
    assert git(repo, "status", "--porcelain").stdout == b""  # export changed nothing
    (tmp_path / "p.patch").write_bytes(patch)
    git(repo, "apply", "--check", str(tmp_path / "p.patch"))
    git(repo, "apply", str(tmp_path / "p.patch"))
    assert (repo / "new file").read_text() == "created in the guest\n"
    assert (repo / "bin.dat").read_bytes() == bytes(reversed(range(256)))


def test_guest_export_sees_a_same_size_edit_made_in_the_second_of_the_index(
    tmp_path: Path, busybox_path: Path
) -> None:
    """Racy git: an edit of a tracked file that keeps its size and lands in the same second
    as the guest's index looks clean by its stat alone. git re-reads such entries only
    when the index file's own mtime says so, so the throwaway index must keep it (cp -p)."""
    from banger.workspace.export import Via, export_patch

    repo, guest = _prepared_guest(tmp_path, busybox_path)
    git(guest, "update-index", "--refresh")
    target, index = guest / "bin.dat", guest / ".git" / "index"
    recorded = target.stat()
    target.write_bytes(bytes(reversed(range(256))))  # same size, new content
    os.utime(target, ns=(recorded.st_atime_ns, recorded.st_mtime_ns))
    os.utime(index, ns=(recorded.st_atime_ns, recorded.st_mtime_ns))  # written that second
    result = export_patch(
        local_shell(None), guest_path=str(guest), base_commit=None, host_repo=repo, via=Via.GUEST
    )
    assert result.files == 1 and b"diff --git a/bin.dat b/bin.dat" in result.patch


def test_export_base_commit_errors_and_override(tmp_path: Path, busybox_path: Path) -> None:
    from banger.errors import InvalidState
    from banger.workspace.export import Via, export_patch

    repo, guest = _prepared_guest(tmp_path, busybox_path)
    shell = local_shell(busybox_path)

    def export(**kw: object) -> bytes:
        args = {"guest_path": str(guest), "base_commit": None, "host_repo": repo, "via": Via.HOST}
        return export_patch(shell, **{**args, **kw}).patch  # type: ignore[arg-type]

    with pytest.raises(InvalidState, match="no workspace"):
        export(guest_path=str(tmp_path / "nowhere"))
    (guest / ".git" / "banger-base").write_text("; rm -rf /\n")
    with pytest.raises(InvalidState, match="records no base commit") as err:
        export()
    assert err.value.hint and "--base-commit" in err.value.hint
    (guest / ".git" / "banger-base").write_text("0" * 40 + "\n")
    with pytest.raises(InvalidState, match="not in the repository"):
        export()
    assert export(base_commit="main") == b""
    with pytest.raises(InvalidArgument):
        export(base_commit="--output=/tmp/x")
    # Issue 14 item 19: outside a repository, say what export needs (not `git init`).
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    with pytest.raises(InvalidArgument) as err:
        export(base_commit="main", host_repo=outside)
    assert err.value.brief.startswith(f"{outside} is not a git repository: "), err.value.brief
    assert "the repository the workspace was copied from" in err.value.brief
    assert err.value.hint == "run it in that repository, or name it with --repo DIR"


def test_export_on_the_host_runs_no_configured_program_e71(
    tmp_path: Path, busybox_path: Path, isolated_home: Path
) -> None:
    from banger.workspace.export import Via, export_patch

    repo, guest = _prepared_guest(tmp_path, busybox_path)
    marker = tmp_path / "filter-ran"
    # The user's own config defines a filter; the guest's .gitattributes asks for it.
    (isolated_home / ".gitconfig").write_text(
        f'[filter "evil"]\n\tclean = touch {marker}; cat\n\tsmudge = touch {marker}; cat\n'
        f"[core]\n\tfsmonitor = touch {marker}\n"
    )
    (guest / ".gitattributes").write_text("* filter=evil\n")
    (guest / "a").write_text("changed")
    result = export_patch(
        local_shell(busybox_path),
        guest_path=str(guest),
        base_commit=None,
        host_repo=repo,
        via=Via.HOST,
    )
    assert b".gitattributes" in result.patch
    assert not marker.exists()


class FlakyShell(GuestShell):
    """ssh fails before a session ``failures`` times (``stderr`` each time), then works."""

    failures: int = 0
    stderr: bytes = b""
    calls: int = 0

    def send(self, script: str, write: object, *, timeout_s: float = 0) -> Result:
        object.__setattr__(self, "calls", self.calls + 1)
        write(io.BytesIO())  # type: ignore[operator]
        if self.calls <= self.failures:
            return Result(("ssh",), 255, b"", self.stderr)
        return Result(("ssh",), 0, b"", b"")


def test_a_connection_reset_before_any_session_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("banger.workspace.send.time.sleep", lambda _s: None)
    plan = make_plan(make_repo(tmp_path / "r"))
    reset = b"kex_exchange_identification: read: Connection reset by peer\r\n"
    shell = FlakyShell(())
    object.__setattr__(shell, "failures", 2)
    object.__setattr__(shell, "stderr", reset)
    send_plan(plan, shell, "/root/repo")
    assert shell.calls == 3
    # Three failures in a row: the error says ssh could not reach the guest.
    shell = FlakyShell(())
    object.__setattr__(shell, "failures", 3)
    object.__setattr__(shell, "stderr", reset)
    with pytest.raises(CommandFailed, match="could not reach the guest over SSH"):
        send_plan(plan, shell, "/root/repo")
    assert shell.calls == 3
    # A failure after the session began (the unpack may have run) is not retried.
    shell = FlakyShell(())
    object.__setattr__(shell, "failures", 1)
    object.__setattr__(shell, "stderr", b"client_loop: send disconnect: Broken pipe\r\n")
    with pytest.raises(CommandFailed):
        send_plan(plan, shell, "/root/repo")
    assert shell.calls == 1
