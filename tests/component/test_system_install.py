"""`banger system install|status|uninstall` for real, under `--root` (SPEC §9, issue 11).

This host (like CI) has no systemd as PID 1, so install writes under a throwaway root
made by the test: a copy of the host's user and group files and a home for a user the
test creates (useradd; userdel at the end). groupadd/gpasswd/groupdel work on that copy
through their chroot options; the host's /etc is never written. The rendered units are
checked by `systemd-analyze verify` and rated by `systemd-analyze security --offline`.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.helper import helper_config
from tests.conftest import BIN

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs as root (TESTING.md)"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("useradd", "groupadd", "gpasswd", "setpriv")),
        reason="needs shadow-utils and setpriv",
    ),
]

ETC_FILES = ("passwd", "group", "shadow", "gshadow", "group-", "gshadow-", ".pwd.lock")
#: What the security rating must not exceed (issue 11): helper "OK" or better, daemon 5.0.
MAX_HELPER_EXPOSURE = 4.0
MAX_DAEMON_EXPOSURE = 5.0


@dataclass
class Tree:
    root: Path
    user: str
    uid: int

    @property
    def home(self) -> Path:
        return self.root / "home" / self.user

    @property
    def daemon_unit(self) -> Path:
        return self.root / "etc/systemd/system" / f"banger-daemon-{self.user}.service"

    @property
    def helper_unit(self) -> Path:
        return self.root / "etc/systemd/system/banger-helper.service"

    def banger(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "banger"), "system", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={"PATH": os.environ["PATH"], **(env or {})},
        )

    def ok(self, *args: str) -> str:
        out = self.banger(*args)
        assert out.returncode == 0, f"{args}: {out.stdout}\n{out.stderr}"
        return out.stdout

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        """Every path under the root: (mode, uid, gid)."""
        found = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in [*dirnames, *filenames]:
                path = Path(dirpath) / name
                st = path.lstat()
                found[str(path.relative_to(self.root))] = (st.st_mode, st.st_uid, st.st_gid)
        return found


def _make_user() -> tuple[str, int]:
    user = f"bgsi{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "-M", "-d", f"/home/{user}", "-s", "/usr/sbin/nologin", "-U", user],
        check=True,
    )
    return user, pwd.getpwnam(user).pw_uid


def _fake_root(user: str, uid: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix="bgr-sys-"))
    root.chmod(0o755)  # the owner walks to its home in it
    (root / "etc").mkdir(mode=0o755)
    for name in ETC_FILES:
        if (Path("/etc") / name).exists():
            shutil.copy2(Path("/etc") / name, root / "etc" / name)
    home = root / "home" / user
    home.mkdir(parents=True, mode=0o755)
    home.chmod(0o700)
    os.chown(home, uid, uid)
    return root


@pytest.fixture
def tree() -> Iterator[Tree]:
    # The user's home as the installed system sees it is /home/USER (useradd -M: not
    # made); under the test's root that is ROOT/home/USER. The host's /home is not touched.
    user, uid = _make_user()
    try:
        root = _fake_root(user, uid)
        try:
            yield Tree(root, user, uid)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    finally:
        subprocess.run(["userdel", user], check=False)


def _group_line(tree: Tree, group: str) -> list[str] | None:
    for line in (tree.root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return fields
    return None


def test_install_writes_exactly_these_files_with_these_modes_and_owners(tree: Tree) -> None:
    before = tree.snapshot()
    tree.ok("install", "--owner", tree.user, "--root", str(tree.root))
    after = tree.snapshot()
    added = {
        path: (stat.S_IMODE(m), u, g) for path, (m, u, g) in after.items() if path not in before
    }
    uid = tree.uid
    home = f"home/{tree.user}"
    assert added == {
        "etc/banger": (0o755, 0, 0),
        "etc/banger/helper.toml": (0o644, 0, 0),
        "etc/banger/installed.json": (0o644, 0, 0),
        "etc/systemd": (0o755, 0, 0),
        "etc/systemd/system": (0o755, 0, 0),
        "etc/systemd/system/banger-helper.service": (0o644, 0, 0),
        f"etc/systemd/system/banger-daemon-{tree.user}.service": (0o644, 0, 0),
        f"{home}/.local": (0o700, uid, uid),
        f"{home}/.local/state": (0o700, uid, uid),
        f"{home}/.local/state/banger": (0o700, uid, uid),
        f"{home}/.cache": (0o700, uid, uid),
        f"{home}/.cache/banger": (0o700, uid, uid),
    }
    # The helper loads what install wrote, with its own checks (root-owned, not writable).
    config = helper_config.load(tree.root / "etc/banger/helper.toml", owners=[])
    assert config.owners == (tree.uid,)
    assert (config.bridge_name, str(config.bridge_address)) == ("banger0", "10.213.7.1/24")
    group = _group_line(tree, "banger")
    assert group is not None and group[3] == tree.user
    manifest = json.loads((tree.root / "etc/banger/installed.json").read_text())
    assert manifest["group_created"] is True and manifest["units"] == []
    unit = tree.daemon_unit.read_text()
    assert f"ExecStart={BIN / 'bangerd'}\n" in unit
    assert f"ReadWritePaths=/home/{tree.user}/.local/state/banger " in unit


def test_the_helper_network_comes_from_the_owners_config(tree: Tree) -> None:
    config = tree.home / ".config/banger/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('bridge_name = "bgtest7"\ncidr = "10.77.0.0/24"\nbridge_ip = "10.77.0.1"\n')
    config.chmod(0o600)
    for path in (config.parent.parent, config.parent, config):
        os.chown(path, tree.uid, tree.uid)
    tree.ok("install", "--owner", tree.user, "--root", str(tree.root))
    loaded = helper_config.load(tree.root / "etc/banger/helper.toml", owners=[])
    assert (loaded.bridge_name, str(loaded.cidr)) == ("bgtest7", "10.77.0.0/24")


def test_a_second_install_changes_nothing_and_says_so(tree: Tree) -> None:
    tree.ok("install", "--owner", tree.user, "--root", str(tree.root))
    files = {
        p: (tree.root / p).read_bytes()
        for p, _ in tree.snapshot().items()
        if (tree.root / p).is_file()
    }
    mtimes = {p: (tree.root / p).stat().st_mtime_ns for p in files}
    out = tree.ok("install", "--owner", tree.user, "--root", str(tree.root))
    assert out.startswith(f"nothing to change: banger system is installed for {tree.user}\n")
    assert {p: (tree.root / p).read_bytes() for p in files} == files
    assert {p: (tree.root / p).stat().st_mtime_ns for p in files} == mtimes


def test_uninstall_returns_the_tree_to_the_file_set_before_install(tree: Tree) -> None:
    before = tree.snapshot()
    group_before = (tree.root / "etc/group").read_bytes()
    tree.ok("install", "--owner", tree.user, "--root", str(tree.root))
    tree.ok("install", "--owner", tree.user, "--root", str(tree.root))
    out = tree.ok("uninstall", "--root", str(tree.root))
    assert "deleted group banger" in out
    assert tree.snapshot() == before
    assert (tree.root / "etc/group").read_bytes() == group_before
    again = tree.ok("uninstall", "--root", str(tree.root))
    assert again.startswith("nothing to uninstall")


def test_uninstall_keeps_the_owners_state_and_a_group_that_was_there(tree: Tree) -> None:
    subprocess.run(["groupadd", "-R", str(tree.root), "--system", "banger"], check=True)
    tree.ok("install", "--owner", tree.user, "--root", str(tree.root))
    group = _group_line(tree, "banger")
    assert group is not None and group[3] == tree.user
    image = tree.home / ".local/state/banger/images/img.ext4"
    image.parent.mkdir()
    image.write_bytes(b"an image")
    tree.ok("uninstall", "--root", str(tree.root))
    assert image.read_bytes() == b"an image"
    assert not (tree.root / "etc/banger").exists()
    assert not tree.daemon_unit.exists()
    assert not (tree.home / ".cache/banger").exists()  # empty and made by install
    group = _group_line(tree, "banger")
    assert group is not None and group[3] == ""  # the group stays, the membership goes


def test_a_second_owner_is_refused(tree: Tree) -> None:
    tree.ok("install", "--owner", tree.user, "--root", str(tree.root))
    before = tree.snapshot()
    out = tree.banger("install", "--owner", "nobody", "--root", str(tree.root))
    assert out.returncode == 1
    assert f"banger system is installed for {tree.user}; one owner per host" in out.stderr
    assert tree.snapshot() == before


def test_the_owner_defaults_to_whoever_ran_sudo(tree: Tree) -> None:
    out = tree.banger("install", "--root", str(tree.root), env={"SUDO_USER": tree.user})
    assert out.returncode == 0, out.stderr
    assert tree.daemon_unit.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "whose daemon? no --owner and no SUDO_USER"),
        (("--owner", "root"), "root cannot be the owner"),
        (("--owner", "no-such-user-bg"), "is not a user on this host"),
    ],
)
def test_no_owner_or_a_wrong_one_is_refused(
    tree: Tree, args: tuple[str, ...], message: str
) -> None:
    before = tree.snapshot()
    out = tree.banger("install", *args, "--root", str(tree.root))
    assert out.returncode == 1
    assert message in out.stderr
    assert tree.snapshot() == before


def test_a_bad_owner_config_is_refused_before_anything_changes(tree: Tree) -> None:
    config = tree.home / ".config/banger/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('cidr = "8.8.8.0/24"\n')
    config.chmod(0o600)
    for path in (config.parent.parent, config.parent, config):
        os.chown(path, tree.uid, tree.uid)
    before = tree.snapshot()
    out = tree.banger("install", "--owner", tree.user, "--root", str(tree.root))
    assert out.returncode == 1
    assert "cidr" in out.stderr
    assert tree.snapshot() == before


def test_the_owners_config_is_read_as_the_owner_not_as_root(tree: Tree) -> None:
    """A config.toml that links to /etc/shadow is opened with the owner's rights only."""
    config = tree.home / ".config/banger/config.toml"
    config.parent.mkdir(parents=True)
    config.symlink_to("/etc/shadow")
    for path in (config.parent.parent, config.parent):
        os.chown(path, tree.uid, tree.uid)
    os.chown(config, tree.uid, tree.uid, follow_symlinks=False)
    before = tree.snapshot()
    out = tree.banger("install", "--owner", tree.user, "--root", str(tree.root))
    assert out.returncode == 1
    assert "root:" not in out.stdout + out.stderr  # not a byte of /etc/shadow
    assert tree.snapshot() == before


def test_restart_without_systemd_or_an_install_is_refused(tree: Tree) -> None:
    out = tree.banger("restart")
    assert out.returncode == 1
    assert "nothing to restart" in out.stderr or "no services to restart" in out.stderr


def test_a_file_install_did_not_write_is_refused_before_anything_changes(tree: Tree) -> None:
    (tree.root / "etc/banger").mkdir()
    (tree.root / "etc/banger/helper.toml").write_text('owners = ["someone"]\n')
    before = tree.snapshot()
    out = tree.banger("install", "--owner", tree.user, "--root", str(tree.root))
    assert out.returncode == 1
    assert "was not written by banger system install" in out.stderr
    assert "hint:" in out.stderr
    assert tree.snapshot() == before
    assert (tree.root / "etc/banger/helper.toml").read_text() == 'owners = ["someone"]\n'


def test_a_normal_user_is_refused_with_the_sudo_hint(tree: Tree) -> None:
    before = tree.snapshot()
    for action in ("install", "uninstall"):
        out = subprocess.run(
            [
                *("setpriv", f"--reuid={tree.uid}", f"--regid={tree.uid}", "--clear-groups"),
                *(str(BIN / "banger"), "system", action, "--root", str(tree.root)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": os.environ["PATH"], "HOME": str(tree.home)},
        )
        assert out.returncode == 1, out
        assert f"banger system {action} must run as root" in out.stderr
        assert f"hint: sudo {BIN / 'banger'} system {action}" in out.stderr
    assert tree.snapshot() == before


@pytest.mark.skipif(Path("/run/systemd/system").exists(), reason="systemd is PID 1 here")
@pytest.mark.skipif(Path("/etc/banger").exists(), reason="/etc/banger exists on this host")
def test_without_systemd_install_says_so_and_names_the_foreground_helper(tree: Tree) -> None:
    out = tree.banger("install", "--owner", tree.user)
    assert out.returncode == 1
    assert "does not run systemd" in out.stderr
    assert f"sudo {BIN / 'banger-helper'} --owner {tree.user}" in out.stderr
    assert not Path("/etc/banger").exists()


def _exposure(unit: Path) -> float:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\S+)", out)
    assert match, out
    print(f"{unit.name}: exposure {match[1]} {match[2]}")
    return float(match[1])


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_both_units_pass_verify_and_rate_ok(tree: Tree) -> None:
    tree.ok("install", "--owner", tree.user, "--root", str(tree.root))
    units = [str(tree.helper_unit), str(tree.daemon_unit)]
    verify = subprocess.run(
        ["systemd-analyze", "verify", *units],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tree.root / "etc/systemd/system",
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == "", verify.stderr
    assert _exposure(tree.helper_unit) <= MAX_HELPER_EXPOSURE
    assert _exposure(tree.daemon_unit) <= MAX_DAEMON_EXPOSURE


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_the_other_renderings_rate_the_same(tmp_path: Path) -> None:
    """With a kvm group, and with the helper's code under /home (ProtectHome=read-only)."""
    from banger.system.unit_files import Owner, UnitInputs, render_daemon, render_helper

    owner = Owner("alice", 1000, 1000, Path("/home/alice"))
    inputs = UnitInputs(
        owner, BIN / "banger-helper", BIN / "bangerd", Path("/etc/banger/helper.toml"),
        "banger", kvm_group=True, code_in_home=True,
    )  # fmt: skip
    helper, daemon = tmp_path / "banger-helper.service", tmp_path / "banger-daemon-a.service"
    helper.write_text(render_helper(inputs))
    daemon.write_text(render_daemon(inputs))
    assert "ProtectHome=read-only" in helper.read_text()
    assert "SupplementaryGroups=kvm banger" in daemon.read_text()
    assert _exposure(helper) <= MAX_HELPER_EXPOSURE
    assert _exposure(daemon) <= MAX_DAEMON_EXPOSURE


def _owner_config(root: Path, home: Path, uid: int, text: str) -> None:
    """The owner's config.toml as the installed system sees it (under ``root``)."""
    path = root / home.relative_to("/") / ".config" / "banger" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    for made in (path, path.parent, path.parent.parent, path.parent.parent.parent):
        os.chown(made, uid, uid)


def test_status_asks_the_helper_as_the_owner() -> None:
    from tests.userenv import user_env

    with user_env() as env:
        root = _fake_root(env.user, env.uid)
        try:
            tree = Tree(root, env.user, env.uid)
            tree.ok("install", "--owner", env.user, "--root", str(root))
            socket_env = {"BANGER_HELPER_SOCKET": str(env.helper_socket)}
            out = tree.banger("status", "--root", str(root), "--json", env=socket_env)
            assert out.returncode == 0, out.stderr
            report = json.loads(out.stdout)
            assert report["installed"] is True and report["owner"] == env.user
            assert report["mode"] == "helper"
            assert report["helper"]["answers"] is True
            assert report["helper"]["same_build"] is True
            assert set(report["units"]) == {
                "banger-helper.service",
                f"banger-daemon-{env.user}.service",
            }
            env.stop_helper()
            out = tree.banger("status", "--root", str(root), "--json", env=socket_env)
            report = json.loads(out.stdout)
            assert report["mode"] == "rootless"  # what the owner's daemon falls back to
            assert report["helper"]["answers"] is False
            assert "no banger-helper answers" in report["helper"]["error"]
            # An owner whose config forbids rootless gets no mode at all (issue 11).
            _owner_config(root, env.base / "home", env.uid, 'privilege_mode = "helper"\n')
            out = tree.banger("status", "--root", str(root), "--json", env=socket_env)
            assert json.loads(out.stdout)["mode"] == "none", out.stdout
            tree.ok("uninstall", "--root", str(root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
