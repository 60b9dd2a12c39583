"""A normal user's local Debian build: what mmdebstrap's unshare mode needs, checked
before any download, and the error that names what the host lacks (issue 11)."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest

from banger.errors import UnsupportedHost
from banger.images import localbuild
from tests.fakes import FakeRunner, answered

ME = pwd.getpwuid(os.geteuid())


def etc_with(tmp_path: Path, subuid: str, subgid: str) -> Path:
    (tmp_path / "subuid").write_text(subuid)
    (tmp_path / "subgid").write_text(subgid)
    return tmp_path


def tools(*present: str) -> Callable[[str], str | None]:
    return lambda name: f"/usr/bin/{name}" if name in present else None


USERNS_OK = FakeRunner(answers={"unshare": answered()})


def test_a_host_with_everything_lacks_nothing(tmp_path: Path) -> None:
    etc = etc_with(tmp_path, "other:100000:65536\nalice:165536:65536\n", "1001:165536:70000\n")
    lacks = localbuild.unshare_lacks(
        "alice", 1001, runner=USERNS_OK, etc=etc, which=tools("newuidmap", "newgidmap")
    )
    assert lacks == []
    assert USERNS_OK.ran("unshare") == [("unshare", "--user", "--map-root-user", "true")]


def test_each_missing_piece_is_named(tmp_path: Path) -> None:
    # A range too small, another user's range, a malformed line: none counts.
    etc = etc_with(tmp_path, "alice:100000:1000\nbob:1:65536\nalice:x:65536\n", "")
    refused = FakeRunner(
        answers={
            "unshare": answered(1, stderr=b"unshare: unshare failed: Operation not permitted\n")
        }
    )
    lacks = localbuild.unshare_lacks("alice", 1001, runner=refused, etc=etc, which=tools())
    assert lacks[:2] == ["newuidmap (package uidmap)", "newgidmap (package uidmap)"]
    assert lacks[2] == f"a range of 65536 ids for alice in {etc / 'subuid'}"
    assert lacks[3] == f"a range of 65536 ids for alice in {etc / 'subgid'}"
    assert lacks[4].startswith("user namespaces for ordinary users")
    assert "Operation not permitted" in lacks[4]


def test_missing_subid_files_are_a_lack_not_a_crash(tmp_path: Path) -> None:
    lacks = localbuild.unshare_lacks(
        "alice",
        1001,
        runner=USERNS_OK,
        etc=tmp_path / "none",
        which=tools("newuidmap", "newgidmap"),
    )
    assert len(lacks) == 2 and all("ids for alice" in x for x in lacks)


@pytest.mark.skipif(os.geteuid() == 0, reason="the check is for normal users")
def test_check_user_build_raises_with_the_hint_when_something_lacks() -> None:
    lacks = localbuild.unshare_lacks(ME.pw_name, ME.pw_uid, runner=FakeRunner())
    if not lacks:
        pytest.skip("this host gives a normal user everything unshare mode needs")
    with pytest.raises(UnsupportedHost) as caught:
        localbuild.check_user_build(FakeRunner())
    assert "unshare mode" in caught.value.brief and lacks[0] in caught.value.brief
    assert caught.value.hint is not None and "uidmap" in caught.value.hint
