"""The units and manifest of `banger system install`, rendered and read without a host.

tests/component/test_system_install.py writes them for real and runs `systemd-analyze
verify` and `security` on them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.errors import ConfigError, InvalidArgument
from banger.system import install_manifest as mf
from banger.system.unit_files import (
    Owner,
    UnitInputs,
    code_in_home,
    daemon_unit_name,
    render_daemon,
    render_helper,
)

ALICE = Owner(name="alice", uid=1234, gid=1235, home=Path("/home/alice"))


def _inputs(**overrides: object) -> UnitInputs:
    values: dict[str, object] = {
        "owner": ALICE,
        "helper_bin": Path("/opt/banger/bin/banger-helper"),
        "daemon_bin": Path("/opt/banger/bin/bangerd"),
        "helper_config": Path("/etc/banger/helper.toml"),
        "group": "banger",
        "kvm_group": True,
        "code_in_home": False,
    }
    values.update(overrides)
    return UnitInputs(**values)  # type: ignore[arg-type]


def _settings(text: str) -> dict[str, list[str]]:
    """Each ``Key=value`` of a unit, values in order (comments and sections left out)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_the_daemon_runs_as_the_owner_with_no_capabilities_and_its_own_dirs_writable() -> None:
    unit = _settings(render_daemon(_inputs()))
    assert unit["User"] == ["alice"]
    assert unit["Group"] == ["1235"]
    assert unit["ExecStart"] == ["/opt/banger/bin/bangerd"]
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["AmbientCapabilities"] == [""]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ProtectHome"] == ["read-only"]
    assert unit["ReadWritePaths"] == [
        "/home/alice/.local/state/banger /home/alice/.cache/banger -/run/user/1234"
    ]
    # Wanted, not required: without D-Bus, user-runtime-dir@ fails (seen under a live
    # systemd) and the daemon must still start, in the state directory's run/.
    assert unit["Wants"] == ["user-runtime-dir@1234.service banger-helper.service"]
    assert "Requires" not in unit
    # No XDG_RUNTIME_DIR forced (see above); only the mode: with a helper installed, no
    # quiet fallback to rootless VMs while it restarts.
    assert unit["Environment"] == ["BANGER_PRIVILEGE_MODE=helper"]
    assert unit["SupplementaryGroups"] == ["kvm banger"]
    assert unit["DevicePolicy"] == ["closed"]
    assert unit["DeviceAllow"] == ["/dev/kvm rw", "/dev/net/tun rw"]
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert unit["SystemCallFilter"] == ["@system-service"]
    assert unit["KillMode"] == ["process"]  # VMMs outlive a daemon restart
    # QEMU's TCG needs W+X memory; RemoveIPC would reach the owner's session.
    assert "MemoryDenyWriteExecute" not in unit
    assert "RemoveIPC" not in unit


def test_without_a_kvm_group_the_daemon_gets_only_the_helpers_group() -> None:
    unit = _settings(render_daemon(_inputs(kvm_group=False)))
    assert unit["SupplementaryGroups"] == ["banger"]


def test_the_helper_runs_as_root_with_net_admin_and_chown_only() -> None:
    unit = _settings(render_helper(_inputs()))
    assert "User" not in unit
    assert unit["ExecStart"] == ["/opt/banger/bin/banger-helper --config /etc/banger/helper.toml"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_CHOWN"]
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_NETLINK"]
    assert unit["IPAddressDeny"] == ["any"]
    assert unit["RuntimeDirectory"] == ["banger"]
    assert unit["ReadWritePaths"] == ["/proc/sys/net/ipv4/ip_forward"]
    assert unit["DeviceAllow"] == ["/dev/net/tun rw"]
    assert unit["MemoryDenyWriteExecute"] == ["yes"]
    assert unit["ProtectHome"] == ["yes"]
    assert unit["ProtectKernelTunables"] == ["yes"]


def test_helper_code_under_a_home_keeps_homes_readable_for_it() -> None:
    unit = _settings(render_helper(_inputs(code_in_home=True)))
    assert unit["ProtectHome"] == ["read-only"]
    assert code_in_home(Path("/home/alice/.venv/bin/banger-helper"))
    assert code_in_home(Path("/root/banger/.venv"))
    assert not code_in_home(Path("/opt/banger/bin/banger-helper"), Path("/usr/bin/python3.11"))
    assert not code_in_home(Path("/homework/bin/banger-helper"))


@pytest.mark.parametrize("name", ["Alice", "al ice", "a/b", "x" * 40, "", "-x", "bob$"])
def test_a_user_name_that_cannot_name_a_unit_is_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        daemon_unit_name(name)


def test_unit_name_of_a_plain_user() -> None:
    assert daemon_unit_name("ci_user-2") == "banger-daemon-ci_user-2.service"


def test_manifest_round_trip_and_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "installed.json"
    m = mf.Manifest(owner="alice", group="banger", group_created=True)
    # Every list filled: units and members are names, not paths (a live systemd found
    # the first version refusing its own units).
    assert m.note("units", "banger-helper.service")
    assert m.note("members_added", "alice")
    assert m.note("dirs", "/etc/banger")
    assert m.note("owner_dirs", "/home/alice/.cache")
    assert m.note("files", "/etc/banger/helper.toml")
    assert not m.note("files", "/etc/banger/helper.toml")
    mf.save(path, m)
    assert mf.load(path) == m
    assert [p.name for p in tmp_path.iterdir()] == ["installed.json"]  # no temp file left
    assert path.stat().st_mode & 0o777 == 0o644
    assert mf.load(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"owner": "alice"}',  # no format
        '{"format": 2, "owner": "alice"}',
        '{"format": 1, "owner": "alice", "bogus": 1}',
        '{"format": 1, "owner": "alice", "files": ["relative/path"]}',
        '{"format": 1, "owner": "alice", "dirs": "/etc"}',
        '{"format": 1, "owner": "alice", "units": [1]}',
        '{"format": 1, "owner": "alice", "owner_dirs": ["home/alice"]}',
    ],
)
def test_a_damaged_manifest_is_refused_not_guessed(tmp_path: Path, text: str) -> None:
    path = tmp_path / "installed.json"
    path.write_text(text)
    with pytest.raises(ConfigError):
        mf.load(path)
