"""Real git repositories in temp dirs for the workspace tests (unit and e2e).

``isolated_home`` is an autouse fixture: a test module that imports it gets a HOME of its
own, so no user gitconfig (safe.directory, filters, fsmonitor) leaks in.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}
ODD_NAMES = [b"new\nline", b"q'uo\"te", b"-leading", "ünïcödé".encode(), b"bad\xffbyte", b"sp ace"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A HOME of the test's own: no user gitconfig (safe.directory, filters) leaks in."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for key in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG_GLOBAL"):
        monkeypatch.delenv(key, raising=False)
    yield home


def git(where: Path, *args: str | bytes, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        ["git", "-C", str(where), *args], env=env, capture_output=True, check=check
    )


def make_repo(root: Path, files: dict[bytes, bytes] | None = None) -> Path:
    """A repository with one commit holding ``files`` (default: README)."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    for rel, data in (files or {b"README": b"hello\n"}).items():
        path = Path(os.fsdecode(root)) / os.fsdecode(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    return root


TEST_SH = b'#!/bin/sh\nset -e\ngrep -q project README.md\necho "tests passed"\n'


def project_with_tests(where: Path) -> Path:
    """``where/project``: a README and an executable ``test.sh`` standing in for
    ``make test`` (it passes in a copy of the repository), committed."""
    repo = make_repo(where / "project", {b"README.md": b"# project\n", b"test.sh": TEST_SH})
    (repo / "test.sh").chmod(0o755)
    git(repo, "add", "test.sh")
    git(repo, "commit", "-qm", "test.sh runs")
    return repo


def fsmonitor_trap(repo: Path, tmp_path: Path) -> Path:
    """Point core.fsmonitor at a script that leaves a marker; return the marker path."""
    marker = tmp_path / "fsmonitor-ran"
    script = tmp_path / "fsmonitor.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    script.chmod(0o755)
    git(repo, "config", "core.fsmonitor", str(script))
    return marker
