"""banger.images.bootable and the banger-init script's pure helpers.

make_bootable runs on real trees in tmp dirs (hostile symlinks included); the script is
checked with ``sh -n`` / ``busybox sh -n`` and its helpers run under both shells with
``BANGER_INIT_LIB=1`` (definitions only) and stub commands on PATH.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from banger.errors import InvalidArgument
from banger.images import bootable
from banger.images.bootable import (
    AGENT_PATH,
    AGENT_UNIT_PATH,
    INIT_PATH,
    PACKAGES_PATH,
    make_bootable,
)

SCRIPT = Path(bootable.__file__).parent / "guest" / "banger-init"
BUSYBOX = shutil.which("busybox")
SHELLS = [
    pytest.param(["/bin/sh"], id="sh"),
    pytest.param(
        [BUSYBOX or "busybox", "sh"],
        id="busybox",
        marks=pytest.mark.skipif(BUSYBOX is None, reason="no busybox on this host"),
    ),
]


# Debian's busybox-static is built with FEATURE_SH_STANDALONE: its shell runs its own
# applets (dpkg, ip, ifconfig, route, env...) before anything on PATH, so tests that stub
# those commands use dash and bash (Fedora's /bin/sh) only.
STUB_SHELLS = [
    pytest.param(["/bin/sh"], id="sh"),
    pytest.param(["/bin/bash", "--posix"], id="bash"),
]


# --- make_bootable --------------------------------------------------------------------


def _tree(tmp: Path, *, merged_usr: bool = False) -> Path:
    tree = tmp / "tree"
    if merged_usr:
        (tree / "usr/bin").mkdir(parents=True)
        (tree / "usr/sbin").mkdir(parents=True)
        (tree / "bin").symlink_to("usr/bin")
        (tree / "sbin").symlink_to("usr/sbin")
    else:
        (tree / "bin").mkdir(parents=True)
    (tree / "bin/dash").write_bytes(b"\x7fELF")
    (tree / "bin/sh").symlink_to("dash")
    (tree / "etc").mkdir()
    return tree


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_init_is_placed_executable_with_the_shipped_script(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    make_bootable(tree)
    init = tree / INIT_PATH.lstrip("/")
    assert init.read_bytes() == bootable.init_script() == SCRIPT.read_bytes()
    assert _mode(init) == 0o755 and stat.S_ISREG(init.lstat().st_mode)
    assert _mode(tree / "sbin") == 0o755  # made, as an image would have it
    if os.geteuid() == 0:
        assert (init.stat().st_uid, init.stat().st_gid) == (0, 0)


def test_replacing_an_existing_init_keeps_one_file(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    make_bootable(tree)
    (tree / "sbin/banger-init").write_text("old")
    (tree / "sbin/banger-init").chmod(0o600)
    make_bootable(tree)
    assert (tree / "sbin/banger-init").read_bytes() == bootable.init_script()
    assert _mode(tree / "sbin/banger-init") == 0o755


def test_a_symlinked_sbin_is_resolved_inside_the_tree(tmp_path: Path) -> None:
    tree = _tree(tmp_path, merged_usr=True)
    make_bootable(tree)
    assert (tree / "sbin").is_symlink()
    assert (tree / "usr/sbin/banger-init").is_file()


def test_an_absolute_sbin_link_means_the_trees_own_path(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "sbin").symlink_to("/usr/sbin")  # absolute: the guest's /usr/sbin
    make_bootable(tree)
    assert (tree / "usr/sbin/banger-init").is_file()
    assert _mode(tree / "usr") == 0o755


@pytest.mark.parametrize(
    "target",
    ["/../../{outside}", "../../../../../../{outside}", "{outside}", "/usr/../../../{outside}"],
)
def test_hostile_sbin_links_never_leave_the_tree(tmp_path: Path, target: str) -> None:
    outside = tmp_path / "outside"  # where the link would lead on the host
    outside.mkdir()
    tree = _tree(tmp_path)
    rel = str(outside).lstrip("/")
    (tree / "sbin").symlink_to(target.format(outside=rel if target[0] != "{" else outside))
    make_bootable(tree)
    assert list(outside.iterdir()) == []
    # the guest resolves the same link against its own root: that is where init went
    assert (tree / rel / "banger-init").is_file()


def test_the_classic_tmp_escape_lands_in_the_trees_tmp(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "sbin").symlink_to("/../../tmp")
    before = set(Path("/tmp").iterdir())
    make_bootable(tree)
    assert (tree / "tmp/banger-init").is_file()
    assert not Path("/tmp/banger-init").exists() or Path("/tmp/banger-init") in before


def test_an_init_symlink_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    tree = _tree(tmp_path)
    (tree / "sbin").mkdir()
    (tree / "sbin/banger-init").symlink_to(victim)
    make_bootable(tree)
    assert victim.read_text() == "precious"
    init = tree / "sbin/banger-init"
    assert not init.is_symlink() and init.read_bytes() == bootable.init_script()


def test_symlink_loops_and_files_in_the_way_are_clear_errors(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "sbin").symlink_to("/sbin")
    with pytest.raises(InvalidArgument, match="sbin"):
        make_bootable(tree)
    (tree / "sbin").unlink()
    (tree / "sbin").write_text("not a directory")
    with pytest.raises(InvalidArgument, match="not a directory"):
        make_bootable(tree)


def test_an_image_without_a_shell_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "distroless"
    (tree / "etc").mkdir(parents=True)
    with pytest.raises(InvalidArgument, match="/bin/sh") as info:
        make_bootable(tree)
    assert info.value.hint and "shell" in info.value.hint
    assert not (tree / "sbin").exists()


def test_a_shell_link_leading_out_of_the_tree_does_not_count(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin/sh").symlink_to("/bin/sh")  # the host has one; the tree does not
    with pytest.raises(InvalidArgument, match="/bin/sh"):
        make_bootable(tree)


def test_os_release_is_read_inside_the_tree_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host_file = tmp_path / "host-os-release"
    host_file.write_text("ID=alpine\n")
    tree = _tree(tmp_path, merged_usr=True)
    (tree / "etc/os-release").symlink_to(host_file)  # absolute: the tree's path, missing
    with caplog.at_level(logging.INFO, logger="banger.images.bootable"):
        make_bootable(tree)
    assert "ID=? " in caplog.text and "alpine" not in caplog.text

    (tree / "etc/os-release").unlink()
    (tree / "usr/lib").mkdir()
    (tree / "usr/lib/os-release").write_text('ID="ubuntu"\nID_LIKE=debian\n')
    (tree / "etc/os-release").symlink_to("../usr/lib/os-release")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="banger.images.bootable"):
        make_bootable(tree)
    assert "ID=ubuntu ID_LIKE=debian family=debian" in caplog.text


def test_the_agent_and_its_unit_are_copied_when_shipped(tmp_path: Path) -> None:
    guest = Path(bootable.__file__).parents[1] / "guest"
    shipped = (guest / "banger_agent.py").is_file()
    files = {path: (data, mode) for path, data, mode in bootable.agent_files()}
    if not shipped:
        assert files == {}
        pytest.skip("this tree ships no guest agent yet")
    assert files[AGENT_PATH] == ((guest / "banger_agent.py").read_bytes(), 0o755)
    assert files[AGENT_UNIT_PATH][0] == (guest / "banger-agent.service").read_bytes()
    tree = _tree(tmp_path)
    make_bootable(tree)
    agent, unit = tree / AGENT_PATH.lstrip("/"), tree / AGENT_UNIT_PATH.lstrip("/")
    assert agent.read_bytes() == files[AGENT_PATH][0] and _mode(agent) == 0o755
    assert _mode(unit) == 0o644 and f"ExecStart=/usr/bin/env python3 -I {AGENT_PATH}" in (
        unit.read_text()
    )


def test_without_an_agent_nothing_is_made_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bootable, "agent_files", list)
    tree = _tree(tmp_path)
    make_bootable(tree)
    assert not (tree / "usr").exists()  # no stub, no empty directory


def test_first_boot_packages_are_written_once_each(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    make_bootable(tree, packages=["iproute2", "ca-certificates", "iproute2", "python3-PyYAML"])
    listed = tree / PACKAGES_PATH.lstrip("/")
    assert listed.read_text() == "iproute2\nca-certificates\npython3-PyYAML\n"
    assert _mode(listed) == 0o644


@pytest.mark.parametrize(
    "packages", [["-oDebug=1"], ["a b"], ["x;reboot"], [""], ["ok", "../etc"], "iproute2"]
)
def test_what_cannot_be_a_package_name_is_refused(tmp_path: Path, packages: list[str]) -> None:
    tree = _tree(tmp_path)
    with pytest.raises(InvalidArgument):
        make_bootable(tree, packages=packages)
    assert not (tree / "sbin").exists()  # refused before anything is written


OS_RELEASES = {
    "debian": ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n', "debian"),
    "ubuntu": ("ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\n", "debian"),
    "mint": ("ID=linuxmint\nID_LIKE='ubuntu debian'\n", "debian"),
    "elementary": ('ID=elementary\nID_LIKE="ubuntu debian"\n', "debian"),
    "alpine": ('NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.1\n', "alpine"),
    "fedora": ("ID=fedora\nVERSION_ID=40\n", "fedora"),
    "rocky": ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "fedora"),
    "amazon": ('ID="amzn"\nID_LIKE="centos rhel fedora"\n', "fedora"),
    "arch": ("ID=arch\nBUILD_ID=rolling\n", "arch"),
    "manjaro": ("ID=manjaro\nID_LIKE=arch\n", "arch"),
    "tumbleweed": ('ID="opensuse-tumbleweed"\nID_LIKE="opensuse suse"\n', "suse"),
    "sles": ('ID="sles"\nID_LIKE="suse"\n', "suse"),
    "someday": ("ID=somedaylinux\nID_LIKE=fedora\n", "fedora"),  # ID_LIKE fallback
    "unknown": ("ID=gentoo\n", None),
}


@pytest.mark.parametrize("name", sorted(OS_RELEASES))
def test_family_from_os_release_in_python(name: str) -> None:
    text, family = OS_RELEASES[name]
    values = bootable.parse_os_release(text + "# comment\nnot a pair\n")
    assert bootable.family_of(values.get("ID", ""), values.get("ID_LIKE", "")) == family


# --- the script -----------------------------------------------------------------------


def test_the_script_is_posix_sh_for_dash_bash_and_busybox() -> None:
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")
    for shell in (["sh"], ["bash", "--posix"], [BUSYBOX, "sh"] if BUSYBOX else ["sh"]):
        out = subprocess.run([*shell, "-n", str(SCRIPT)], capture_output=True, check=False)
        assert out.returncode == 0, (shell, out.stderr)


def test_the_script_refuses_to_run_outside_pid_1(tmp_path: Path) -> None:
    out = subprocess.run(
        ["sh", str(SCRIPT)], capture_output=True, text=True, timeout=10, check=False
    )
    assert out.returncode == 2 and "must run as PID 1" in out.stderr


def _stub_path(tmp: Path, stubs: dict[str, str]) -> Path:
    """A PATH dir: the basics from the host plus ``stubs`` (name -> shell body)."""
    bin_dir = tmp / "stubbin"
    bin_dir.mkdir(exist_ok=True)
    for tool in (
        "cat",
        "mkdir",
        "rm",
        "chmod",
        "ln",
        "mv",
        "tr",
        "cut",
        "sleep",
        "env",
        "tail",
        "sed",
    ):
        link = bin_dir / tool
        if not link.exists():
            link.symlink_to(shutil.which(tool) or f"/bin/{tool}")
    for name, body in stubs.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return bin_dir


def run_lib(
    shell: list[str],
    code: str,
    tmp: Path,
    *,
    cmdline: str = "",
    stubs: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    (tmp / "cmdline").write_text(cmdline + "\n")
    bin_dir = _stub_path(tmp, stubs or {})
    full_env = {
        "PATH": str(bin_dir),
        "BANGER_INIT_LIB": "1",
        "CMDLINE_FILE": str(tmp / "cmdline"),
        "BANGER_INIT_ROOT": str(tmp / "root"),
        "CALLS": str(tmp / "calls"),
        **(env or {}),
    }
    (tmp / "root").mkdir(exist_ok=True)
    return subprocess.run(
        [*shell, "-c", f". {SCRIPT}\n{code}"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ok(out: subprocess.CompletedProcess[str]) -> list[str]:
    assert out.returncode == 0, f"rc {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout.splitlines()


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "172.30.0.2::172.30.0.1:255.255.255.0:vm-1:eth0:off",
            "172.30.0.2|172.30.0.1|255.255.255.0|vm-1|eth0|24",
        ),
        ("10.0.0.9:::255.255.0.0:h::off", "10.0.0.9||255.255.0.0|h|eth0|16"),
        ("10.0.0.9::10.0.0.1:255.255.255.252", "10.0.0.9|10.0.0.1|255.255.255.252||eth0|30"),
        ("dhcp", "dhcp||||eth0|bad-mask"),
    ],
)
def test_parse_ip(shell: list[str], spec: str, expected: str, tmp_path: Path) -> None:
    code = (
        'parse_ip "$(cmdline_value ip)"; p=$(mask_to_prefix "$NET_MASK") || p=bad-mask; '
        'echo "$NET_IP|$NET_GW|$NET_MASK|$NET_HOST|$NET_DEV|$p"'
    )
    assert ok(run_lib(shell, code, tmp_path, cmdline=f"console=ttyS0 ip={spec} rw")) == [expected]


@pytest.mark.parametrize("shell", SHELLS)
def test_address_and_mask_checks(shell: list[str], tmp_path: Path) -> None:
    code = """
    for a in 1.2.3.4 255.255.255.255 0.0.0.0 1.2.3 1.2.3.4.5 1.2.3.256 1..2.3 a.b.c.d '' .1.2.3; do
        is_ipv4 "$a" && echo "ip $a yes" || echo "ip $a no"
    done
    for m in 255.255.255.0 255.255.255.255 0.0.0.0 255.128.0.0 \
             255.0.255.0 255.255.255.1 300.0.0.0; do
        echo "mask $m $(mask_to_prefix "$m" || echo no)"
    done
    """
    lines = ok(run_lib(shell, code, tmp_path))
    yes = [line.split()[1] for line in lines if line.startswith("ip ") and line.endswith("yes")]
    assert yes == ["1.2.3.4", "255.255.255.255", "0.0.0.0"]
    masks = dict(line.split()[1:] for line in lines if line.startswith("mask "))
    assert masks == {
        "255.255.255.0": "24", "255.255.255.255": "32", "0.0.0.0": "0", "255.128.0.0": "9",
        "255.0.255.0": "no", "255.255.255.1": "no", "300.0.0.0": "no",
    }  # fmt: skip


@pytest.mark.parametrize("shell", SHELLS)
def test_command_line_values(shell: list[str], tmp_path: Path) -> None:
    cmdline = (
        "console=ttyS0 nameserver=10.0.0.1,10.0.0.2 nameserver=fd00::53 nameserver=bad;rm "
        "banger.mirror=http://a/x banger.mirror=http://172.30.0.1:8080/debian * "
        "banger.mirror_trusted=1"
    )
    code = (
        "nameservers; echo ---; cmdline_value banger.mirror; echo; "
        "cmdline_value banger.mirror_trusted; echo; cmdline_value banger.proxy; echo end"
    )
    lines = ok(run_lib(shell, code, tmp_path, cmdline=cmdline))
    assert lines == [
        "10.0.0.1", "10.0.0.2", "fd00::53", "---", "http://172.30.0.1:8080/debian", "1", "end",
    ]  # fmt: skip


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("name", sorted(OS_RELEASES))
def test_family_from_os_release_in_the_script(shell: list[str], name: str, tmp_path: Path) -> None:
    text, family = OS_RELEASES[name]
    (tmp_path / "root/etc").mkdir(parents=True)
    (tmp_path / "root/etc/os-release").write_text(text)
    out = run_lib(shell, "detect_family || echo none", tmp_path)
    assert ok(out) == [family or "none"]  # the same answer as the Python side


@pytest.mark.parametrize("shell", SHELLS)
def test_family_falls_back_to_the_os_release_in_usr_lib(shell: list[str], tmp_path: Path) -> None:
    (tmp_path / "root/usr/lib").mkdir(parents=True)
    (tmp_path / "root/usr/lib/os-release").write_text("ID=alpine\n")
    assert ok(run_lib(shell, "detect_family", tmp_path)) == ["alpine"]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("tool", "family"),
    [("apt-get", "debian"), ("apk", "alpine"), ("microdnf", "fedora"), ("pacman", "arch"),
     ("zypper", "suse")],
)  # fmt: skip
def test_without_os_release_the_package_manager_decides(
    shell: list[str], tool: str, family: str, tmp_path: Path
) -> None:
    out = run_lib(shell, "detect_family; package_manager $(detect_family)", tmp_path,
                  stubs={tool: "exit 0"})  # fmt: skip
    assert ok(out) == [family, tool]


@pytest.mark.parametrize("shell", SHELLS)
def test_no_os_release_and_no_package_manager_is_unknown(shell: list[str], tmp_path: Path) -> None:
    assert ok(run_lib(shell, "detect_family || echo unknown", tmp_path)) == ["unknown"]


@pytest.mark.parametrize("shell", SHELLS)
def test_package_manager_and_packages_per_family(shell: list[str], tmp_path: Path) -> None:
    code = """
    for f in debian alpine fedora arch suse; do
        echo "$f $(package_manager $f) | $(packages_of $f systemd udev networkd sshd python3)"
    done
    """
    assert ok(run_lib(shell, code, tmp_path)) == [
        "debian apt-get | systemd systemd-sysv udev openssh-server python3-minimal",
        "alpine apk | openssh-server python3",
        "fedora dnf | systemd systemd-udev systemd-networkd openssh-server python3",
        "arch pacman | systemd openssh python",
        "suse zypper | systemd udev systemd-network openssh-server python3",
    ]


def _exe(root: Path, path: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("#!/bin/sh\n")
    target.chmod(0o755)


@pytest.mark.parametrize("shell", SHELLS)
def test_missing_components(shell: list[str], tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    code = "WANT_SYSTEMD=1; missing_components; WANT_SYSTEMD=0; missing_components"
    everything = ["systemd udev networkd sshd python3", "sshd python3"]
    assert ok(run_lib(shell, code, tmp_path)) == everything
    for path in ("/lib/systemd/systemd", "/lib/systemd/systemd-networkd", "/usr/sbin/sshd"):
        _exe(root, path)
    (root / "usr/bin/python3").mkdir(parents=True)  # a directory is no interpreter
    assert ok(run_lib(shell, code, tmp_path)) == ["udev python3", "python3"]
    _exe(root, "/usr/lib/systemd/systemd-udevd")
    (root / "usr/bin/python3").rmdir()
    _exe(root, "/usr/bin/python3")
    assert ok(run_lib(shell, code, tmp_path)) == ["", ""]


@pytest.mark.parametrize("shell", STUB_SHELLS)
def test_the_install_ladder_drops_systemd_then_keeps_sshd(shell: list[str], tmp_path: Path) -> None:
    code = """
    FAMILY=debian
    install_debian() { echo "try $*" >>"$CALLS"; case " $* " in *" systemd "*) return 1;; esac; }
    install_ladder "systemd udev networkd sshd python3" && echo "INSTALLED=$INSTALLED"
    install_debian() { echo "try $*" >>"$CALLS"; case " $* " in *python3*) return 1;; esac; }
    install_ladder "sshd python3" && echo "INSTALLED=$INSTALLED"
    install_debian() { echo "try $*" >>"$CALLS"; return 1; }
    install_ladder "python3" || echo "ladder failed"
    """
    (tmp_path / "root/var/log").mkdir(parents=True)
    out = run_lib(shell, code, tmp_path)
    assert ok(out) == [
        "INSTALLED=openssh-server python3-minimal",
        "INSTALLED=openssh-server",
        "ladder failed",
    ]
    assert (tmp_path / "calls").read_text().splitlines() == [
        "try systemd systemd-sysv udev openssh-server python3-minimal",
        "try openssh-server python3-minimal",
        "try openssh-server python3-minimal",
        "try openssh-server",
        "try python3-minimal",
    ]
    assert "banger-init: [" in out.stderr and "installing: openssh-server" in out.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_extra_packages_file(shell: list[str], tmp_path: Path) -> None:
    etc = tmp_path / "root/etc/banger"
    etc.mkdir(parents=True)
    (etc / "first-boot-packages").write_text(
        "iproute2\n# a comment\n\n  ca-certificates  \n-oAPT::x=1\nbad;name\nlast-no-newline"
    )
    assert ok(run_lib(shell, "extra_packages", tmp_path)) == [
        "iproute2 ca-certificates last-no-newline"
    ]


@pytest.mark.parametrize("shell", STUB_SHELLS)
def test_a_bad_extra_package_does_not_cost_the_vm_its_sshd(
    shell: list[str], tmp_path: Path
) -> None:
    code = """
    FAMILY=debian
    install_debian() { echo "try $*" >>"$CALLS"; case " $* " in *" no-such-pkg "*) return 1;;
        esac; }
    install_ladder "sshd python3" "iproute2 no-such-pkg" && echo "INSTALLED=$INSTALLED"
    install_ladder "" "iproute2" && echo "INSTALLED=$INSTALLED"
    """
    (tmp_path / "root/var/log").mkdir(parents=True)
    assert ok(run_lib(shell, code, tmp_path)) == [
        "INSTALLED=openssh-server python3-minimal",
        "INSTALLED=iproute2",
    ]
    assert (tmp_path / "calls").read_text().splitlines() == [
        "try openssh-server python3-minimal iproute2 no-such-pkg",
        "try openssh-server python3-minimal",
        "try iproute2",
    ]


def _recorder(name: str) -> str:
    return f'echo "{name} $*" >>"$CALLS"'


def _install(
    shell: list[str], tmp: Path, family: str, env: dict[str, str], stubs: list[str]
) -> tuple[list[str], list[str]]:
    """Run install_<family> pkg-a pkg-b with recording stubs: (stdout lines, calls)."""
    for sub in ("run/banger", "var/log", "usr/sbin", "etc"):
        (tmp / "root" / sub).mkdir(parents=True, exist_ok=True)
    (tmp / "root/etc/os-release").write_text("ID=x\nVERSION_CODENAME=bookworm\nVERSION_ID=3.20.2\n")
    code = (
        f'CLEAN_ENV="PATH=$PATH CALLS=$CALLS"; install_{family} pkg-a pkg-b; echo "rc=$?"; '
        'test -e "$POLICY_RC_D" && echo policy-left || true'
    )
    out = run_lib(shell, code, tmp, env=env, stubs={name: _recorder(name) for name in stubs})
    lines = ok(out)
    calls = (tmp / "calls").read_text().splitlines() if (tmp / "calls").exists() else []
    return lines, calls


@pytest.mark.parametrize("shell", STUB_SHELLS)
def test_apt_installs_from_the_mirror_without_touching_the_images_sources(
    shell: list[str], tmp_path: Path
) -> None:
    env = {"MIRROR": "http://172.30.0.1:8080/debian", "MIRROR_TRUSTED": "1",
           "MIRROR_COMPONENTS": "main,contrib", "PROXY": "", "MIRROR_SUITE": ""}  # fmt: skip
    lines, calls = _install(shell, tmp_path, "debian", env, ["apt-get", "dpkg"])
    assert lines == ["rc=0"]  # and the policy-rc.d it made is gone again
    run = tmp_path / "root/run/banger"
    assert (run / "apt-sources.list").read_text() == (
        "deb [trusted=yes] http://172.30.0.1:8080/debian bookworm main contrib\n"
    )
    assert calls[0] == "dpkg --configure -a"
    assert calls[1].startswith("apt-get -q -y ") and calls[1].endswith(" update")
    assert calls[2].endswith(" install pkg-a pkg-b") and calls[3] == "apt-get clean"
    assert f"-o Dir::Etc::SourceList={run}/apt-sources.list" in calls[2]
    assert f"-o Dir::Etc::SourceParts={run}/apt-sources.d" in calls[2]
    assert "--force-unsafe-io" in calls[2] and "APT::Install-Recommends=false" in calls[2]


@pytest.mark.parametrize("shell", STUB_SHELLS)
def test_apt_through_a_proxy_keeps_the_images_sources(shell: list[str], tmp_path: Path) -> None:
    (tmp_path / "root/usr/sbin").mkdir(parents=True)
    (tmp_path / "root/usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")  # the image's
    env = {"MIRROR": "", "PROXY": "http://10.0.0.1:3142", "MIRROR_TRUSTED": ""}
    lines, calls = _install(shell, tmp_path, "debian", env, ["apt-get", "dpkg"])
    assert lines == ["rc=0", "policy-left"]  # not ours: left alone
    assert "-o Acquire::http::Proxy=http://10.0.0.1:3142" in calls[2]
    assert "SourceList" not in calls[2]


@pytest.mark.parametrize("shell", STUB_SHELLS)
def test_a_failing_apt_step_fails_the_install(shell: list[str], tmp_path: Path) -> None:
    (tmp_path / "root/var/log").mkdir(parents=True)
    (tmp_path / "root/run/banger").mkdir(parents=True)
    (tmp_path / "root/usr/sbin").mkdir(parents=True)
    code = 'CLEAN_ENV="PATH=$PATH"; MIRROR=; PROXY=; install_debian x; echo "rc=$?"'
    stubs = {"dpkg": "exit 0", "apt-get": 'echo "E: boom"; case "$*" in *update*) exit 100;; esac'}
    assert ok(run_lib(shell, code, tmp_path, stubs=stubs)) == ["rc=100"]
    assert "E: boom" in (tmp_path / "root/var/log/banger-init.log").read_text()
    assert not (tmp_path / "root/usr/sbin/policy-rc.d").exists()


@pytest.mark.parametrize("shell", STUB_SHELLS)
def test_the_other_families_commands(shell: list[str], tmp_path: Path) -> None:
    env = {"MIRROR": "http://m/x", "MIRROR_TRUSTED": "1", "PROXY": "", "MIRROR_SUITE": ""}
    (tmp_path / "a").mkdir()
    _, apk = _install(shell, tmp_path / "a", "alpine", env, ["apk"])
    assert apk == [f"apk --no-cache --allow-untrusted --repositories-file "
                   f"{tmp_path}/a/root/run/banger/apk-repositories add pkg-a pkg-b"]  # fmt: skip
    repos = (tmp_path / "a/root/run/banger/apk-repositories").read_text()
    assert repos == "http://m/x/v3.20/main\nhttp://m/x/v3.20/community\n"

    (tmp_path / "f").mkdir()
    _, dnf = _install(shell, tmp_path / "f", "fedora", env, ["dnf"])
    assert dnf == ["dnf -y --setopt=install_weak_deps=False --disablerepo=* "
                   "--repofrompath=banger,http://m/x --enablerepo=banger --nogpgcheck "
                   "install pkg-a pkg-b"]  # fmt: skip

    (tmp_path / "p").mkdir()
    _, pacman = _install(shell, tmp_path / "p", "arch", env, ["pacman"])
    conf = tmp_path / "p/root/run/banger/pacman.conf"
    assert pacman == [f"pacman -Sy --noconfirm --needed --config {conf} pkg-a pkg-b"]
    assert "SigLevel = Never" in conf.read_text()
    assert "[core]\nServer = http://m/x/$repo/os/$arch\n" in conf.read_text()

    (tmp_path / "s").mkdir()
    _, zypper = _install(shell, tmp_path / "s", "suse", env, ["zypper"])
    assert zypper == ["zypper --non-interactive --gpg-auto-import-keys --no-gpg-checks "
                      "--plus-repo http://m/x install --no-recommends pkg-a pkg-b"]  # fmt: skip


@pytest.mark.parametrize("shell", STUB_SHELLS)
def test_configure_systemd_masks_enables_and_orders_sshd(shell: list[str], tmp_path: Path) -> None:
    (tmp_path / "root/var/log").mkdir(parents=True)
    code = "configure_systemd"
    out = run_lib(shell, code, tmp_path, stubs={"systemctl": 'echo "systemctl $*" >>"$CALLS"'})
    ok(out)
    unit_dir = tmp_path / "root/etc/systemd/system"
    for unit in ("systemd-udev-settle.service", "systemd-networkd-wait-online.service",
                 "getty@tty1.service"):  # fmt: skip
        assert os.readlink(unit_dir / unit) == "/dev/null"
    for svc in ("ssh", "sshd"):
        conf = unit_dir / f"{svc}.service.d/10-banger-after-root.conf"
        assert conf.read_text() == "[Unit]\nAfter=root.mount\n"
    assert (tmp_path / "calls").read_text().splitlines() == [
        "systemctl enable systemd-networkd.service",
        "systemctl enable systemd-network-generator.service",
        "systemctl enable ssh.service",
    ]
    assert "banger-agent" not in (tmp_path / "calls").read_text()  # no agent in this image
    _exe(tmp_path / "root", AGENT_PATH)
    _exe(tmp_path / "root", "/usr/bin/python3")
    ok(run_lib(shell, code, tmp_path, stubs={"systemctl": 'echo "systemctl $*" >>"$CALLS"'}))
    assert (tmp_path / "calls").read_text().splitlines()[-1] == (
        "systemctl enable banger-agent.service"
    )


@pytest.mark.parametrize("shell", STUB_SHELLS)
def test_configure_systemd_starts_docker_and_apparmor_after_the_guest_is_ready(
    shell: list[str], tmp_path: Path
) -> None:
    (tmp_path / "root/var/log").mkdir(parents=True)
    units = tmp_path / "root/usr/lib/systemd/system"
    units.mkdir(parents=True)
    for name in ("containerd.service", "docker.service"):
        (units / name).write_text("[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n")
    (units / "apparmor.service").write_text(
        "[Unit]\nDescription=Load AppArmor profiles\nDefaultDependencies=no\n"
        "Before=sysinit.target\nAfter=local-fs.target\n[Service]\nType=oneshot\n"
        "ExecStart=/lib/apparmor/apparmor.systemd reload\n[Install]\nWantedBy=sysinit.target\n"
    )
    stubs = {"systemctl": 'echo "systemctl $*" >>"$CALLS"'}
    ok(run_lib(shell, "configure_systemd", tmp_path, stubs=stubs))
    etc = tmp_path / "root/etc/systemd/system"
    for name in ("containerd", "docker"):
        conf = (etc / f"{name}.service.d/10-banger-after-ready.conf").read_text()
        assert "After=banger-agent.service ssh.service sshd.service\n" in conf
        assert "CPUWeight=20\n" in conf
    apparmor = (etc / "apparmor.service").read_text()
    assert "Before=sysinit.target" not in apparmor
    assert apparmor.startswith("[Unit]\nAfter=banger-agent.service ssh.service sshd.service\n")
    assert "ExecStart=/lib/apparmor/apparmor.systemd reload" in apparmor
    assert "WantedBy=sysinit.target" in apparmor


@pytest.mark.parametrize("shell", STUB_SHELLS)
def test_configure_systemd_leaves_an_image_without_docker_alone(
    shell: list[str], tmp_path: Path
) -> None:
    (tmp_path / "root/var/log").mkdir(parents=True)
    ok(run_lib(shell, "configure_systemd", tmp_path, stubs={"systemctl": ":"}))
    etc = tmp_path / "root/etc/systemd/system"
    assert not (etc / "docker.service.d").exists() and not (etc / "apparmor.service").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_resolv_conf_from_nameservers_replaces_a_symlink(shell: list[str], tmp_path: Path) -> None:
    etc = tmp_path / "root/etc"
    etc.mkdir(parents=True)
    (etc / "resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    cmdline = "nameserver=172.30.0.1 nameserver=9.9.9.9,1.1.1.1"
    ok(run_lib(shell, "write_resolv_conf", tmp_path, cmdline=cmdline))
    assert not (etc / "resolv.conf").is_symlink()
    assert (etc / "resolv.conf").read_text() == (
        "nameserver 172.30.0.1\nnameserver 9.9.9.9\nnameserver 1.1.1.1\n"
    )
    ok(run_lib(shell, "write_resolv_conf", tmp_path, cmdline="console=ttyS0"))  # none: kept
    assert (etc / "resolv.conf").read_text().startswith("nameserver 172.30.0.1")


# net_up is not run here: it changes interfaces and routes, so it only ever runs inside a
# network namespace (tests/component/test_bootable_boot.py), never on the host.
