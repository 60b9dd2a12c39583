"""Issue 4, first done-means: a multi-arch index with several layers — whiteouts, an
opaque dir, hardlinks across layers, a setuid file, a device node, absolute symlinks, a
file owned by uid 1000 — pulled from the real local registry by the real daemon into an
ext4 whose contents debugfs shows exactly right. The same pull also runs as a normal user
(issue 11: images are pulled and flattened as the user, no root and no helper): the daemon
runs as that user, the files it writes are the user's, and the ext4 inside is just as
exact (root-owned, setuid, device node) — the flattener's ownership is recorded, never
taken from the host."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import layers as L
from tests.conftest import BIN, BangerHome
from tests.registry import LocalRegistry, OciLayout, running_registry
from tests.userenv import UserEnv, user_env

Banger = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    with running_registry(tmp_path / "registry") as reg:
        yield reg


def _stat(image: Path, path: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"stat {path}", str(image)], capture_output=True, text=True, check=True
    ).stdout


def _ls(image: Path, path: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"ls -l {path}", str(image)], capture_output=True, text=True, check=True
    ).stdout


def _field(stat: str, name: str) -> str:
    match = re.search(rf"{name}:\s*(\S+)", stat)
    assert match, f"{name} not in {stat}"
    return match.group(1)


def _layers() -> list[bytes]:
    base = [
        L.directory("bin"),
        L.file("bin/sh", b"#!/bin/false\n", mode=0o755),
        L.directory("etc"),
        L.file("etc/os-release", b"ID=debian\n"),
        L.directory("usr"),
        L.directory("usr/bin"),
        L.file("usr/bin/su", b"su", mode=0o4755),
        L.file("usr/bin/perlbug", b"perl"),
        L.directory("old"),
        L.file("old/a", b"a"),
        L.file("old/b", b"b"),
        L.directory("gone"),
        L.file("gone/file", b"x"),
        L.directory("home"),
        L.directory("home/dev", uid=1000, gid=1000),
        L.file("home/dev/notes", b"mine", uid=1000, gid=1000),
    ]
    upper = [
        L.whiteout("gone"),
        L.opaque("old"),
        L.file("old/c", b"c"),
        L.hardlink("usr/bin/perlthanks", "/usr/bin/perlbug"),
        L.chardev("dev-null", 1, 3),
        L.symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
    ]
    return [L.tar_bytes(base), L.tar_bytes(upper)]


def test_multi_arch_pull_gives_exact_ext4_contents(
    home: BangerHome, registry: LocalRegistry, tmp_path: Path
) -> None:
    _pull_and_check(home.banger, registry, tmp_path)


def _as_user(env: UserEnv) -> Banger:
    """The user's CLI on this host's loopback (the registry's), not in the env's netns."""

    def banger(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        argv = env.as_user([str(BIN / "banger"), *args])
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    return banger


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("Uid:")[1].split()[0])


def test_a_normal_user_pulls_an_image_with_no_root_and_no_helper(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    with user_env(helper=False, privilege_mode="rootless") as env:
        banger = _as_user(env)
        try:
            image = _pull_and_check(banger, registry, tmp_path)
            status = banger("daemon", "status", "--json", timeout=60)
            assert status.returncode == 0, status.stderr
            pid = json.loads(status.stdout)["pid"]
            assert _uid_of(pid) == env.uid, "the daemon that pulled is not the user's"
            assert image.is_relative_to(env.base / "state")
            assert image.stat().st_uid == env.uid and image.parent.stat().st_uid == env.uid
            cache = env.base / "cache" / "banger"
            assert cache.is_dir() and cache.stat().st_uid == env.uid
            foreign = [
                str(p)
                for root in (env.base / "state", env.base / "cache")
                for p in root.rglob("*")
                if not p.is_symlink() and p.lstat().st_uid != env.uid
            ]
            assert foreign == [], "files the user's pull wrote but does not own"
            assert os.access(image, os.R_OK)
        finally:
            banger("daemon", "stop", timeout=60)


def _pull_and_check(banger: Banger, registry: LocalRegistry, tmp_path: Path) -> Path:
    layout = OciLayout(tmp_path / "layout")
    amd64 = layout.image(_layers(), arch="amd64")
    arm64 = layout.image([L.tar_bytes([L.file("etc/arm", b"arm")])], arch="arm64")
    layout.tag(layout.index([amd64, arm64]), "t")
    registry.push(layout, "t", "fixture/full:v1")
    out = banger("image", "pull", f"{registry.host}/fixture/full:v1", "--json", timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])["data"]
    assert result["source_digest"] == amd64["digest"]
    image = Path(result["rootfs_path"])

    su = _stat(image, "/usr/bin/su")
    assert _field(su, "Mode") == "04755" and _field(su, "User") == "0"
    notes = _stat(image, "/home/dev/notes")
    assert (_field(notes, "User"), _field(notes, "Group")) == ("1000", "1000")
    perlbug, perlthanks = _stat(image, "/usr/bin/perlbug"), _stat(image, "/usr/bin/perlthanks")
    assert _field(perlbug, "Links") == "2"
    assert _field(perlbug, "Inode") == _field(perlthanks, "Inode")
    null = _stat(image, "/dev-null")
    assert "Type: character special" in null
    assert re.search(r"Device major/minor number:\s*01:03|major.*\b1\b.*minor.*\b3\b", null), null
    assert 'Fast link dest: "/usr/share/zoneinfo/UTC"' in _stat(image, "/etc/localtime")
    old = _ls(image, "/old")
    assert " c" in old and not re.search(r"\s[ab]\s*$", old, re.M)
    assert "gone" not in _ls(image, "/")
    assert "arm" not in _ls(image, "/etc")
    listing = subprocess.run(
        ["debugfs", "-R", "ls -R /", str(image)], capture_output=True, text=True, check=False
    ).stdout
    assert ".wh." not in listing
    return image
