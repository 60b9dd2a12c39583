"""``[[file_sync]]``: host reads that never follow nested symlinks, and the guest script
run locally by busybox and GNU tar against a fake guest home (ADVERSARIAL 59-65)."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from banger.config.settings import FileSyncEntry
from banger.host.runner import Runner
from banger.workspace import GuestShell
from banger.workspace.filesync import (
    SyncArchive,
    build_archive,
    dir_mode,
    guest_relative,
    sync_files,
    sync_files_blocking,
    sync_script,
)
from tests.localshell import busybox_path, local_shell

__all__ = ["busybox_path"]

SECRET = b"SECRET-OUTSIDE-THE-SYNCED-TREE"


def entry(host: str | Path, guest: str, mode: str | None = None) -> FileSyncEntry:
    return FileSyncEntry(host=str(host), guest=guest, mode=mode)


def members(archive: SyncArchive) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive.data)) as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A host home with ~/.aws (files, a nested dir) and a secret next to it."""
    home = tmp_path / "home"
    aws = home / ".aws"
    (aws / "sso").mkdir(parents=True)
    (aws / "config").write_text("[default]\n")
    (aws / "sso" / "cache.json").write_text("{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(SECRET)
    return home


def test_guest_paths_map_below_the_guest_home() -> None:
    assert guest_relative("~/.aws") == b".aws"
    assert guest_relative("/root/.config/gh/") == b".config/gh"
    assert guest_relative("~/a//b") == b"a/b"


def test_files_default_to_0600_and_mode_is_honoured(home: Path) -> None:
    (home / "token").write_text("t")
    archive = build_archive(
        [entry("~/token", "~/token"), entry("~/.aws", "~/.aws"), entry("~/token", "~/t2", "0640")],
        home=home,
    )
    got = members(archive)
    assert got["token"].mode == 0o600
    assert got["t2"].mode == 0o640
    assert got[".aws"].mode == 0o700 and got[".aws/sso"].mode == 0o700
    assert got[".aws/config"].mode == 0o600
    assert all(m.uid == 0 for m in got.values())
    assert dir_mode(0o644) == 0o755 and dir_mode(0o600) == 0o700 and dir_mode(None) == 0o700


def test_nested_symlinks_are_skipped_with_a_warning_never_read_e59(
    home: Path, tmp_path: Path
) -> None:
    aws = home / ".aws"
    (aws / "abs").symlink_to(tmp_path / "outside" / "secret")
    (aws / "rel").symlink_to("../../outside/secret")
    (aws / "dirlink").symlink_to(tmp_path / "outside")
    (aws / "sso" / "chain").symlink_to("../rel")
    (aws / "loop").symlink_to("loop")
    archive = build_archive([entry("~/.aws", "~/.aws")], home=home)
    assert SECRET not in archive.data
    assert set(members(archive)) == {".aws", ".aws/config", ".aws/sso", ".aws/sso/cache.json"}
    for name in ("abs", "rel", "dirlink", "sso/chain", "loop"):
        assert any(f".aws/{name}: skipped, a symlink" in w for w in archive.warnings), name


def test_the_named_path_itself_may_be_a_symlink(home: Path, tmp_path: Path) -> None:
    (home / "creds").symlink_to(tmp_path / "outside" / "secret")
    (home / "confdir").symlink_to(home / ".aws")
    archive = build_archive([entry("~/creds", "~/creds"), entry("~/confdir", "~/.aws")], home=home)
    got = members(archive)
    assert "creds" in got and ".aws/config" in got and not archive.warnings


def test_fifos_sockets_and_devices_are_skipped_without_hanging_e61(home: Path) -> None:
    aws = home / ".aws"
    os.mkfifo(aws / "fifo")
    os.mkfifo(home / "top-fifo")
    if os.geteuid() == 0:
        os.mknod(aws / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    archive = build_archive(
        [entry("~/.aws", "~/.aws"), entry("~/top-fifo", "~/top-fifo")], home=home
    )
    assert set(members(archive)) == {".aws", ".aws/config", ".aws/sso", ".aws/sso/cache.json"}
    assert any("fifo: skipped, a FIFO" in w for w in archive.warnings)
    assert any("top-fifo is not a regular file" in w for w in archive.warnings)
    if os.geteuid() == 0:
        assert any("zero: skipped, a device node" in w for w in archive.warnings)


def test_missing_host_paths_are_a_warning(home: Path) -> None:
    archive = build_archive([entry("~/nope", "~/nope")], home=home)
    assert archive.data == b"" and archive.dests == []
    assert archive.warnings == [f"file_sync: {home / 'nope'} does not exist; skipped"]


def test_unreadable_files_are_reported_e62(home: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    (home / ".aws" / "config").chmod(0)
    archive = build_archive([entry("~/.aws", "~/.aws")], home=home)
    assert any("config" in w for w in archive.warnings)


def test_the_size_bound_skips_what_does_not_fit(home: Path) -> None:
    (home / "big").write_bytes(b"x" * 4096)
    archive = build_archive(
        [entry("~/.aws", "~/.aws"), entry("~/big", "~/big")], home=home, max_bytes=1024
    )
    assert "big" not in members(archive)
    assert any("exceed" in w for w in archive.warnings)


def test_a_directory_swapped_for_a_symlink_mid_walk_is_not_followed_e60(
    home: Path, tmp_path: Path
) -> None:
    from banger.workspace.archive import RootDir, TarWriter, walk

    aws = home / ".aws"
    with RootDir(aws) as root:
        items = [i for i in walk(root) if not isinstance(i, str)]
        (aws / "sso").rename(tmp_path / "sso-moved")
        (aws / "sso").symlink_to(tmp_path / "outside")
        (tmp_path / "outside" / "cache.json").write_bytes(SECRET)
        buffer = io.BytesIO()
        writer = TarWriter(buffer)
        for item in items:
            if item.kind.value == "file":
                writer.add_file(root, item, item.rel, 0o600)
        writer.close()
    assert SECRET not in buffer.getvalue()


@pytest.mark.parametrize("tar", ["busybox", "gnu"])
def test_guest_side_never_writes_through_a_guest_made_symlink_e63(
    home: Path, tmp_path: Path, busybox_path: Path, tar: str
) -> None:
    guest_home = tmp_path / "guest-root"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config").write_text("victim")
    guest_home.mkdir()
    (guest_home / ".aws").symlink_to(victim)  # `ln -s /tmp /test` in the guest
    (home / "gh").mkdir()
    (home / "gh" / "hosts.yml").write_text("h")
    (guest_home / ".config").mkdir()
    (guest_home / ".config" / "gh").mkdir()
    (guest_home / ".config" / "gh" / "hosts.yml").symlink_to(victim / "config")
    (guest_home / "keep").write_text("guest's own file")
    shell = local_shell(busybox_path if tar == "busybox" else None)
    report = sync_files_blocking(
        [entry("~/.aws", "~/.aws"), entry("~/gh", "~/.config/gh")],
        shell,
        home=home,
        guest_home=str(guest_home),
    )
    assert report.warnings == [] and report.copied == ["~/.aws", "~/.config/gh"]
    assert sorted(p.name for p in victim.iterdir()) == ["config"]
    assert (victim / "config").read_text() == "victim"
    aws = guest_home / ".aws"
    assert aws.is_dir() and not aws.is_symlink()
    assert (aws / "config").read_text() == "[default]\n"
    assert stat.S_IMODE((aws / "config").stat().st_mode) == 0o600
    assert stat.S_IMODE(aws.stat().st_mode) == 0o700
    assert (guest_home / ".config" / "gh" / "hosts.yml").read_text() == "h"
    assert (guest_home / "keep").read_text() == "guest's own file"


def test_guest_paths_with_odd_names_are_quoted_e65(home: Path, tmp_path: Path) -> None:
    (home / ".aws" / "new\nline 'q'").write_text("odd")
    archive = build_archive([entry("~/.aws", "~/-odd dir")], home=home)
    script = sync_script(archive, guest_home=str(tmp_path / "g"))
    (tmp_path / "g").mkdir()
    shell = local_shell(None)
    result = shell.run(script, input_bytes=archive.data)
    assert result.returncode == 0
    assert (tmp_path / "g" / "-odd dir" / "new\nline 'q'").read_text() == "odd"


def test_a_failing_guest_is_reported_not_raised(home: Path, tmp_path: Path) -> None:
    report = sync_files_blocking(
        [entry("~/.aws", "~/.aws")], local_shell(None), home=home, guest_home=str(tmp_path / "no")
    )
    assert report.copied == []
    assert any("copying into the guest failed" in w for w in report.warnings)


def test_async_entry_point_runs_the_same_script(home: Path, tmp_path: Path) -> None:
    guest_home = tmp_path / "g"
    guest_home.mkdir()
    # Stand-in for `ssh … ip`: GuestShell appends `-- "sh -c '…'"`; eval runs that line.
    prefix = ["sh", "-c", 'eval "$2"', "ssh-standin"]
    report = asyncio.run(
        sync_files(
            [entry("~/.aws", "~/.aws")],
            runner=Runner(),
            ssh_prefix=prefix,
            home=home,
            guest_home=str(guest_home),
        )
    )
    assert report.copied == ["~/.aws"] and report.warnings == []
    assert (guest_home / ".aws" / "sso" / "cache.json").read_text() == "{}"
    assert isinstance(GuestShell(tuple(prefix)).argv("x")[-1], str)
