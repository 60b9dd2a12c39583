"""Crash-safe publication (SPEC §2; ADVERSARIAL 85, 92, 93) on real files."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from banger.errors import AlreadyExists, InvalidArgument, PermissionDenied, StateError
from banger.host.publish import (
    STAGING_DIR,
    Step,
    cleanup_leftovers,
    remove_published,
    rename_exchange,
    rename_fallback,
    rename_noreplace,
    retire_published,
    staging,
    write_file_atomic,
)

# Names passed to os.open() while a test listens (see ``opened``); audit hooks cannot be
# removed, so the hook is installed once and records only while this list is non-None.
_OPENED: list[list[str]] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _OPENED:
        _OPENED[-1].append(os.fsdecode(args[0]) if isinstance(args[0], str | bytes) else "")


sys.addaudithook(_audit)


def _build(tree: Path) -> None:
    (tree / "rootfs.ext4").write_bytes(b"\0" * 4096 + b"ext4")
    (tree / "modules" / "6.1").mkdir(parents=True)
    (tree / "modules" / "6.1" / "modules.dep").write_text("dep\n")
    (tree / "manifest.json").write_text('{"name": "art"}')


def _assert_complete(final: Path) -> None:
    assert (final / "rootfs.ext4").read_bytes().endswith(b"ext4")
    assert (final / "modules" / "6.1" / "modules.dep").read_text() == "dep\n"
    assert (final / "manifest.json").read_text() == '{"name": "art"}'


def _staging_entries(root: Path) -> list[str]:
    area = root / STAGING_DIR
    return sorted(os.listdir(area)) if area.exists() else []


def test_commit_publishes_the_whole_tree(tmp_path: Path) -> None:
    steps: list[str] = []
    with staging(tmp_path, "art") as st:
        assert st.path.parent == tmp_path / STAGING_DIR
        assert st.path.name.startswith("art.") and st.path.name.endswith(".partial")
        _build(st.path)
        final = st.commit(tmp_path / "art", on_step=steps.append)
    assert steps == [Step.FILES_SYNCED, Step.RENAMED, Step.PARENT_SYNCED]
    _assert_complete(final)
    assert _staging_entries(tmp_path) == []


@pytest.mark.parametrize("failing", list(Step))
def test_adversarial_92_failpoint_after_each_step_leaves_old_or_new(
    tmp_path: Path, failing: Step
) -> None:
    def on_step(step: str) -> None:
        if step == failing:
            raise RuntimeError(f"failpoint {step}")

    with pytest.raises(RuntimeError, match="failpoint"), staging(tmp_path, "art") as st:
        _build(st.path)
        st.commit(tmp_path / "art", on_step=on_step)
    if failing is Step.FILES_SYNCED:
        assert not os.path.lexists(tmp_path / "art")
    else:
        _assert_complete(tmp_path / "art")
    assert _staging_entries(tmp_path) == []


_CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from banger.host.publish import staging

    root, kill_at = Path(sys.argv[1]), sys.argv[2]

    def on_step(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    with staging(root, "art") as st:
        (st.path / "rootfs.ext4").write_bytes(b"\\0" * 4096 + b"ext4")
        (st.path / "modules" / "6.1").mkdir(parents=True)
        (st.path / "modules" / "6.1" / "modules.dep").write_text("dep\\n")
        (st.path / "manifest.json").write_text('{"name": "art"}')
        if kill_at == "building":
            os.kill(os.getpid(), signal.SIGKILL)
        st.commit(root / "art", on_step=on_step)
    """
)


@pytest.mark.parametrize("kill_at", ["building", *Step])
def test_adversarial_85_92_sigkill_at_each_step_then_startup_cleanup(
    tmp_path: Path, kill_at: str
) -> None:
    proc = subprocess.run([sys.executable, "-c", _CRASHER, str(tmp_path), kill_at], check=False)
    assert proc.returncode == -signal.SIGKILL
    removed = cleanup_leftovers([tmp_path])
    if kill_at in {"building", Step.FILES_SYNCED}:
        assert not os.path.lexists(tmp_path / "art")
        assert len(removed) == 1 and removed[0].name.endswith(".partial")
    else:
        _assert_complete(tmp_path / "art")
        assert removed == []
    assert _staging_entries(tmp_path) == []
    # A retry is never blocked by what the crash left (ADVERSARIAL 85).
    remove_published(tmp_path / "art")
    with staging(tmp_path, "art") as st:
        _build(st.path)
        st.commit(tmp_path / "art")
    _assert_complete(tmp_path / "art")


@pytest.mark.parametrize("existing", ["dir", "empty-dir", "file", "dangling-symlink"])
def test_commit_never_replaces_an_existing_entry(tmp_path: Path, existing: str) -> None:
    final = tmp_path / "art"
    if existing == "dir":
        final.mkdir()
        (final / "keep").write_text("old")
    elif existing == "empty-dir":
        final.mkdir()
    elif existing == "file":
        final.write_text("old")
    else:
        final.symlink_to(tmp_path / "nowhere")
    before = os.lstat(final)
    with pytest.raises(AlreadyExists, match="already exists"), staging(tmp_path, "art") as st:
        _build(st.path)
        st.commit(final)
    assert os.lstat(final).st_ino == before.st_ino
    if existing == "dir":
        assert (final / "keep").read_text() == "old"
    assert _staging_entries(tmp_path) == []


def test_rename_fallback_without_renameat2_refuses_existing_targets(tmp_path: Path) -> None:
    src_file, src_dir = tmp_path / "f.partial", tmp_path / "d.partial"
    src_file.write_text("new")
    src_dir.mkdir()
    (src_dir / "x").write_text("new")
    taken_file, taken_dir = tmp_path / "taken-file", tmp_path / "taken-dir"
    taken_file.write_text("old")
    taken_dir.mkdir()
    for src, dst in [(src_file, taken_file), (src_dir, taken_dir), (src_dir, taken_file)]:
        with pytest.raises(AlreadyExists):
            rename_fallback(src, dst)
    assert taken_file.read_text() == "old" and list(taken_dir.iterdir()) == []
    rename_fallback(src_file, tmp_path / "f")
    rename_fallback(src_dir, tmp_path / "d")
    assert (tmp_path / "f").read_text() == "new" and (tmp_path / "d" / "x").read_text() == "new"
    assert not src_file.exists() and not src_dir.exists()


def test_rename_noreplace_moves_files_and_dirs(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    rename_noreplace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "a"
    (tmp_path / "c").write_text("c")
    with pytest.raises(AlreadyExists):
        rename_noreplace(tmp_path / "c", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "a"


def test_rename_exchange_swaps_or_says_unsupported(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("new")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("old")
    if not rename_exchange(tmp_path / "a", tmp_path / "b"):
        # no renameat2 or a filesystem without RENAME_EXCHANGE: nothing moved
        assert (tmp_path / "b" / "x").read_text() == "old"
        return
    assert (tmp_path / "b" / "x").read_text() == "new"
    assert (tmp_path / "a" / "x").read_text() == "old"
    with pytest.raises(OSError):
        rename_exchange(tmp_path / "missing", tmp_path / "b")


def test_fsync_walk_never_follows_symlinks(tmp_path: Path) -> None:
    """Links to a sentinel file, an outside dir and a FIFO are kept as links, never opened."""
    outside = tmp_path / "outside"
    outside.mkdir()
    sentinel = outside / "sentinel"
    sentinel.write_text("secret")
    os.utime(sentinel, ns=(1_000_000_000, 1_000_000_000))
    os.mkfifo(outside / "fifo")
    before = sentinel.stat()
    root = tmp_path / "root"
    with staging(root, "art") as st:
        _build(st.path)
        (st.path / "to-sentinel").symlink_to(sentinel)
        (st.path / "to-dir").symlink_to(outside)
        (st.path / "modules" / "to-fifo").symlink_to(outside / "fifo")
        (st.path / "loop").symlink_to("loop")
        os.mkfifo(st.path / "own-fifo")  # opening it for fsync would block
        _OPENED.append([])
        try:
            final = st.commit(root / "art")
        finally:
            opened = _OPENED.pop()
    assert not {"to-sentinel", "to-dir", "to-fifo", "loop", "own-fifo"} & set(opened)
    assert not any(name.startswith(str(outside)) for name in opened)
    assert {"rootfs.ext4", "manifest.json", "modules.dep"} <= set(opened)
    after = sentinel.stat()
    assert (after.st_mtime_ns, after.st_atime_ns) == (before.st_mtime_ns, before.st_atime_ns)
    assert sentinel.read_text() == "secret"
    assert os.readlink(final / "to-sentinel") == str(sentinel)
    assert stat.S_ISFIFO(os.lstat(final / "own-fifo").st_mode)


def test_abandoned_staging_is_removed_without_following_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    root = tmp_path / "root"
    with staging(root, "art") as st:
        (st.path / "sub").mkdir()
        (st.path / "sub" / "escape").symlink_to(outside)
        (st.path / "escape").symlink_to(outside)
        # no commit: leaving the block discards the staging directory
    assert _staging_entries(root) == []
    assert (outside / "keep").read_text() == "keep"
    with pytest.raises(ValueError, match="boom"), staging(root, "art") as st:
        raise ValueError("boom")
    assert _staging_entries(root) == []


def test_commit_twice_is_refused(tmp_path: Path) -> None:
    with staging(tmp_path, "art") as st:
        st.commit(tmp_path / "art")
        with pytest.raises(RuntimeError, match="already committed"):
            st.commit(tmp_path / "art2")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", ".hidden", "x\0y"])
def test_staging_rejects_names_that_could_escape(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument), staging(tmp_path, name):
        pass


def test_symlinked_staging_area_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / STAGING_DIR).symlink_to(elsewhere)
    with pytest.raises(PermissionDenied), staging(root, "art"):
        pass
    assert list(elsewhere.iterdir()) == []


def test_adversarial_93_cleanup_removes_only_our_pattern(tmp_path: Path) -> None:
    roots = [tmp_path / "images", tmp_path / "kernels", tmp_path / "absent"]
    area = roots[0] / STAGING_DIR
    area.mkdir(parents=True)
    (roots[1] / STAGING_DIR).mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    ours = {
        area / "debian.0123456789abcdef.partial": "dir",
        area / "debian.fedcba9876543210.trash": "file",
        area / "linked.00000000aaaaaaaa.partial": "symlink",
        roots[1] / STAGING_DIR / "vmlinux.1111111111111111.trash": "dir",
    }
    theirs = [
        area / "notes.txt",
        area / "debian.partial",
        area / "debian.0123456789ABCDEF.partial",  # upper-case hex is not what we write
        area / "debian.0123456789abcde.partial",  # 15 hex digits
        area / "debian.0123456789abcdef.partial.keep",
        roots[0] / "debian.0123456789abcdef.partial",  # outside .staging
    ]
    for path, kind in ours.items():
        if kind == "dir":
            path.mkdir()
            (path / "data").write_text("x")
            (path / "escape").symlink_to(outside)
        elif kind == "file":
            path.write_text("x")
        else:
            path.symlink_to(outside)
    for path in theirs:
        path.write_text("theirs")
    removed = cleanup_leftovers(roots)
    assert sorted(removed) == sorted(ours)
    assert all(not os.path.lexists(p) for p in ours)
    assert all(p.read_text() == "theirs" for p in theirs)
    assert (outside / "keep").read_text() == "keep"


def test_adversarial_93_cleanup_does_not_enter_a_symlinked_staging(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x.0123456789abcdef.partial").write_text("user data")
    root = tmp_path / "root"
    root.mkdir()
    (root / STAGING_DIR).symlink_to(victim)
    assert cleanup_leftovers([root]) == []
    assert (victim / "x.0123456789abcdef.partial").read_text() == "user data"


def test_remove_published_disappears_then_deletes(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    root = tmp_path / "root"
    with staging(root, "art") as st:
        _build(st.path)
        (st.path / "escape").symlink_to(outside)
        st.commit(root / "art")
    assert remove_published(root / "art") is True
    assert not os.path.lexists(root / "art")
    assert _staging_entries(root) == []
    assert (outside / "keep").read_text() == "keep"
    assert remove_published(root / "art") is False
    (root / "single-file").write_text("x")
    assert remove_published(root / "single-file") is True
    assert not os.path.lexists(root / "single-file")
    with pytest.raises(InvalidArgument):
        remove_published(root / STAGING_DIR)


def test_retire_published_frees_the_name_and_leaves_trash_for_later(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with staging(root, "vm") as st:
        _build(st.path)
        st.commit(root / "vm")
    trash = retire_published(root / "vm")
    assert trash is not None and trash.parent == root / STAGING_DIR
    assert trash.name.startswith("vm.") and trash.name.endswith(".trash")
    assert not os.path.lexists(root / "vm"), "the name is free at once"
    with staging(root, "vm") as st:  # and a new entry of that name can be published
        st.commit(root / "vm")
    assert _staging_entries(root) == [trash.name]
    assert retire_published(root / "absent") is None
    # A daemon that died before deleting it: the next start's cleanup does.
    assert cleanup_leftovers([root]) == [trash]
    assert _staging_entries(root) == [] and (root / "vm").is_dir()
    with pytest.raises(InvalidArgument):
        retire_published(root / STAGING_DIR)


def test_write_file_atomic_round_trip_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    old_umask = os.umask(0o077)
    try:
        write_file_atomic(target, b'{"v": 1}', mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b'{"v": 1}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_file_atomic(target, b'{"v": 2}')
    assert target.read_bytes() == b'{"v": 2}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_file_atomic(target, b"")
    assert target.read_bytes() == b""
    assert sorted(os.listdir(tmp_path)) == ["manifest.json"]


def test_write_file_atomic_failure_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "dir-in-the-way"
    target.mkdir()
    with pytest.raises(StateError, match="cannot publish"):
        write_file_atomic(target, b"data")
    assert sorted(os.listdir(tmp_path)) == ["dir-in-the-way"]
    assert list(target.iterdir()) == []
