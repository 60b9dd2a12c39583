"""Issue 4, first done-means: a multi-arch index with several layers — whiteouts, an
opaque dir, hardlinks across layers, a setuid file, a device node, absolute symlinks, a
file owned by uid 1000 — pulled from the real local registry by the real daemon into an
ext4 whose contents debugfs shows exactly right."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import layers as L
from tests.conftest import BangerHome
from tests.registry import LocalRegistry, OciLayout, running_registry


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
    layout = OciLayout(tmp_path / "layout")
    amd64 = layout.image(_layers(), arch="amd64")
    arm64 = layout.image([L.tar_bytes([L.file("etc/arm", b"arm")])], arch="arm64")
    layout.tag(layout.index([amd64, arm64]), "t")
    registry.push(layout, "t", "fixture/full:v1")
    out = home.banger("image", "pull", f"{registry.host}/fixture/full:v1", "--json", timeout=600)
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
