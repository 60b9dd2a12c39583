"""``banger ssh-config`` (SPEC §4): the snippet, the fenced Include, the known-hosts helper."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from banger.cli import main as cli_main
from banger.cli import ssh_include as sshconfig
from banger.cli.ssh_include import BEGIN_MARKER, END_MARKER
from banger.errors import InvalidArgument, InvalidState, PermissionDenied

INCLUDE = "~/.config/banger/ssh_config"
NAMES = [INCLUDE, "/home/u/.config/banger/ssh_config"]
KEY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7d3gBQpVNKnGgo1CSVDmV6sVZxvVgxN0QY7ecExeR0"


# -- the snippet ----------------------------------------------------------------------------


def test_snippet_has_the_host_block() -> None:
    text = sshconfig.render_snippet(
        key=Path("/s/ssh/id_ed25519"), vms_dir=Path("/s/vms"), python="/usr/bin/python3"
    )
    lines = [line.strip() for line in text.splitlines()]
    assert "Host *.vm" in lines
    assert "User root" in lines
    assert "IdentityFile /s/ssh/id_ed25519" in lines
    assert "StrictHostKeyChecking yes" in lines
    assert "ServerAliveInterval 5" in lines and "ServerAliveCountMax 3" in lines  # J.99
    assert "UserKnownHostsFile /dev/null" in lines
    assert (
        "KnownHostsCommand /usr/bin/python3 -I -m banger.sshconfig known-hosts /s/vms %H" in lines
    )
    assert not any(line.startswith(("ProxyCommand", "HostName")) for line in lines)
    assert text.endswith("\n")


def test_snippet_quotes_paths_with_spaces() -> None:
    text = sshconfig.render_snippet(
        key=Path("/my keys/id"), vms_dir=Path("/s/v ms"), python="/opt/py 3/python"
    )
    assert 'IdentityFile "/my keys/id"' in text
    helper = 'KnownHostsCommand "/opt/py 3/python" -I -m banger.sshconfig known-hosts "/s/v ms" %H'
    assert helper in text


@pytest.mark.parametrize("bad", ['/a"b', "/a%h", "/a${HOME}", "/a\nb", "/a\\b"])
def test_snippet_refuses_paths_ssh_would_mangle(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        sshconfig.render_snippet(key=Path(bad), vms_dir=Path("/v"), python="/p")


def test_include_target_uses_tilde_only_when_ssh_agrees() -> None:
    snippet = Path("/home/u/.config/banger/ssh_config")
    home = Path("/home/u")
    assert sshconfig.include_target(snippet, home=home, passwd_home=home) == INCLUDE
    # ssh expands ~ from the password database: a different $HOME needs the full path.
    other = sshconfig.include_target(snippet, home=home, passwd_home=Path("/root"))
    assert other == str(snippet)
    outside = sshconfig.include_target(Path("/etc/x/ssh_config"), home=home, passwd_home=home)
    assert outside == "/etc/x/ssh_config"


# -- pure editing -----------------------------------------------------------------------------

ORIGINALS = {
    "empty": "",
    "trailing newline": "Host a\n    User x\n",
    "no trailing newline": "Host a\n    User x",
    "crlf": "Host a\r\n    User x\r\n",
    "crlf no trailing": "Host a\r\n    User x",
    "existing include": "Include config.d/*\n\nHost *\n    ForwardAgent no\n",
    "only blank lines": "\n\n\n",
    "comment first": "# my config\nHost *\n",
    "odd whitespace": "\tHost\x0ba \x0c\n\u2028\n",
}


@pytest.mark.parametrize("original", ORIGINALS.values(), ids=ORIGINALS.keys())
def test_add_then_remove_is_byte_for_byte(original: str) -> None:
    added = sshconfig.add_block(original, INCLUDE)
    assert added.startswith(BEGIN_MARKER)
    assert added.endswith(original)
    assert sshconfig.add_block(added, INCLUDE) == added  # idempotent
    assert added.count(BEGIN_MARKER) == 1
    assert sshconfig.remove_blocks(added) == original


def test_block_follows_crlf_files() -> None:
    added = sshconfig.add_block(ORIGINALS["crlf"], INCLUDE)
    block = added[: len(added) - len(ORIGINALS["crlf"])]
    assert block.count("\r\n") == block.count("\n") == 4
    assert f"Include {INCLUDE}\r\n" in block


def test_include_is_first_before_any_host_block() -> None:
    added = sshconfig.add_block("Host *\n    User me\n", INCLUDE)
    lines = added.splitlines()
    assert lines.index(f"Include {INCLUDE}") < lines.index("Host *")


def test_outdated_block_is_replaced_in_place() -> None:
    original = "# top\n" + sshconfig.block_for("/old/path") + "Host *\n"
    updated = sshconfig.add_block(original, INCLUDE)
    assert updated == "# top\n" + sshconfig.block_for(INCLUDE) + "Host *\n"


def test_remove_takes_every_block_and_nothing_else() -> None:
    block = sshconfig.block_for(INCLUDE)
    text = block + "Host a\n" + block + "Host b"
    assert sshconfig.remove_blocks(text) == "Host a\nHost b"


@pytest.mark.parametrize(
    "text",
    [
        f"{BEGIN_MARKER}\nInclude x\n",
        f"Include x\n{END_MARKER}\n",
        f"{BEGIN_MARKER}\n{BEGIN_MARKER}\n{END_MARKER}\n",
    ],
)
def test_unbalanced_markers_are_refused(text: str) -> None:
    with pytest.raises(InvalidState):
        sshconfig.remove_blocks(text)
    with pytest.raises(InvalidState):
        sshconfig.add_block(text, INCLUDE)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (f"Include {INCLUDE}\n", 1),
        (f"Host x\n\n  include   {INCLUDE}\n", 3),
        (f'Include="{NAMES[1]}"\n', 1),
        (f"Include other.conf {INCLUDE}\n", 1),
        (f"# Include {INCLUDE}\n", None),
        ("Include other.conf\n", None),
        (sshconfig.block_for(INCLUDE), None),
    ],
)
def test_own_include_line(text: str, line: int | None) -> None:
    assert sshconfig.own_include_line(text, NAMES) == line


settings_fuzz = settings(max_examples=300, deadline=None)
text_lines = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=30),
        st.sampled_from(["Host *", "Include foo", "", "\r", "# >>> banger", "  User x"]),
    ),
    max_size=8,
)


@settings_fuzz
@given(text_lines, st.booleans(), st.sampled_from(["\n", "\r\n"]))
def test_fuzz_add_remove_round_trip(lines: list[str], trailing: bool, newline: str) -> None:
    original = newline.join(lines) + (newline if trailing and lines else "")
    added = sshconfig.add_block(original, INCLUDE)
    assert sshconfig.add_block(added, INCLUDE) == added
    assert sshconfig.remove_blocks(added) == original


# -- files ---------------------------------------------------------------------------------


@pytest.fixture
def ssh_config(tmp_path: Path) -> Path:
    return tmp_path / "home" / ".ssh" / "config"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_creates_private_dir_and_file(ssh_config: Path) -> None:
    assert sshconfig.install(ssh_config, INCLUDE, NAMES) is True
    assert mode_of(ssh_config.parent) == 0o700
    assert mode_of(ssh_config) == 0o600
    assert ssh_config.read_text() == sshconfig.block_for(INCLUDE)
    assert sshconfig.install(ssh_config, INCLUDE, NAMES) is False
    assert sshconfig.uninstall(ssh_config) is True
    # A file --install created is left empty, not deleted (it may have been edited since).
    assert ssh_config.read_bytes() == b""


def test_install_keeps_mode_and_uninstall_restores_bytes(ssh_config: Path) -> None:
    ssh_config.parent.mkdir(mode=0o755, parents=True)
    original = b"Host a\r\n  User \xff\xfe latin1 \xe9\n\tIdentityFile x"
    ssh_config.write_bytes(original)
    ssh_config.chmod(0o644)
    assert sshconfig.install(ssh_config, INCLUDE, NAMES) is True
    assert sshconfig.install(ssh_config, INCLUDE, NAMES) is False
    assert mode_of(ssh_config) == 0o644
    assert mode_of(ssh_config.parent) == 0o755  # an existing ~/.ssh is left as it is
    assert ssh_config.read_bytes().endswith(original)
    assert ssh_config.read_bytes().count(BEGIN_MARKER.encode()) == 1
    assert sshconfig.uninstall(ssh_config) is True
    assert ssh_config.read_bytes() == original
    assert mode_of(ssh_config) == 0o644
    assert sorted(os.listdir(ssh_config.parent)) == ["config"]  # no temporary files left


def test_uninstall_without_file_or_block_changes_nothing(ssh_config: Path) -> None:
    assert sshconfig.uninstall(ssh_config) is False
    assert not ssh_config.parent.exists()
    ssh_config.parent.mkdir(parents=True)
    ssh_config.write_text("Host a\n")
    before = ssh_config.stat()
    assert sshconfig.uninstall(ssh_config) is False
    assert ssh_config.stat().st_ino == before.st_ino


def test_users_own_include_counts_as_installed(ssh_config: Path) -> None:
    ssh_config.parent.mkdir(parents=True)
    text = f"Include {INCLUDE}\nHost *\n"
    ssh_config.write_text(text)
    assert sshconfig.install(ssh_config, INCLUDE, NAMES) is False
    status = sshconfig.include_status(ssh_config, NAMES)
    assert status.installed and not status.managed_block and status.own_include_line == 1
    assert sshconfig.uninstall(ssh_config) is False
    assert ssh_config.read_text() == text


def test_symlinked_config_edits_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = dotfiles / "ssh_config"
    target.write_text("Host a\n")
    target.chmod(0o640)
    link = tmp_path / "home" / ".ssh" / "config"
    link.parent.mkdir(parents=True)
    link.symlink_to("../../dotfiles/ssh_config")
    assert sshconfig.install(link, INCLUDE, NAMES) is True
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text().startswith(BEGIN_MARKER)
    assert mode_of(target) == 0o640
    status = sshconfig.include_status(link, NAMES)
    assert status.target == target and status.managed_block
    assert sshconfig.uninstall(link) is True
    assert link.is_symlink() and target.read_text() == "Host a\n"


def test_dangling_or_looping_links_and_directories_are_refused(tmp_path: Path) -> None:
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    to_dir = tmp_path / "to-dir"
    to_dir.symlink_to(tmp_path)
    for path in (dangling, loop, to_dir, tmp_path):
        with pytest.raises(PermissionDenied):
            sshconfig.install(path, INCLUDE, NAMES)
        with pytest.raises(PermissionDenied):
            sshconfig.uninstall(path)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file of another user")
def test_file_of_another_user_is_refused(ssh_config: Path) -> None:
    ssh_config.parent.mkdir(parents=True)
    ssh_config.write_text("Host a\n")
    os.chown(ssh_config, 65534, 65534)
    with pytest.raises(PermissionDenied, match="uid 65534"):
        sshconfig.install(ssh_config, INCLUDE, NAMES)
    assert ssh_config.read_text() == "Host a\n"


# -- known-hosts helper ------------------------------------------------------------------------


@pytest.fixture
def vms_dir(tmp_path: Path) -> Path:
    vm = tmp_path / "vms" / "brisk-badger"
    vm.mkdir(parents=True)
    (vm / "known_hosts").write_text(f"10.213.7.5 {KEY_LINE}\n")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "known_hosts").write_text(f"10.0.0.1 {KEY_LINE}\n")
    return tmp_path / "vms"


@pytest.mark.parametrize("host", ["brisk-badger.vm", "BRISK-Badger.VM", "[brisk-badger.vm]:2222"])
def test_known_hosts_rekeys_the_vm_line_by_the_name_asked(vms_dir: Path, host: str) -> None:
    assert sshconfig.known_hosts_lines(vms_dir, host) == [f"{host} {KEY_LINE}"]


@pytest.mark.parametrize(
    "host",
    ["ghost.vm", "brisk-badger", "brisk-badger.com", "../secret.vm", "x/../secret.vm", ".vm", ""],
)
def test_known_hosts_for_anything_else_is_empty(vms_dir: Path, host: str) -> None:
    assert sshconfig.known_hosts_lines(vms_dir, host) == []


def test_known_hosts_helper_as_ssh_runs_it(vms_dir: Path) -> None:
    def helper(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-I", "-m", "banger.cli.ssh_include", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)

    ok = helper("known-hosts", str(vms_dir), "brisk-badger.vm")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"brisk-badger.vm {KEY_LINE}\n", "")
    # Unknown names and missing dirs print nothing and still exit 0: ssh then refuses
    # the host by strict checking instead of aborting with a helper error.
    for args in (("ghost.vm",), ("x.vm",)):
        none = helper("known-hosts", str(vms_dir / "missing"), *args)
        assert (none.returncode, none.stdout) == (0, "")
    assert helper("bogus").returncode == 2


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
def test_ssh_reads_the_snippet_through_the_include(tmp_path: Path) -> None:
    snippet = tmp_path / "banger" / "ssh_config"
    snippet.parent.mkdir()
    text = sshconfig.render_snippet(
        key=tmp_path / "key", vms_dir=tmp_path / "vms", python=sys.executable
    )
    snippet.write_text(text)
    user_config = tmp_path / "config"
    user_config.write_text("Host *\n    User alice\n    IdentityFile ~/.ssh/id_rsa\n")
    sshconfig.install(user_config, str(snippet), [str(snippet)])
    out = subprocess.run(
        ["ssh", "-G", "-F", str(user_config), "brisk-badger.vm"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    settings_seen = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert settings_seen["user"] == "root"  # first match wins: the Include comes first
    assert settings_seen["stricthostkeychecking"] == "true"
    assert settings_seen["knownhostscommand"].endswith(
        "known-hosts " + str(tmp_path / "vms") + " %H"
    )
    assert str(tmp_path / "key") in out
    other = subprocess.run(
        ["ssh", "-G", "-F", str(user_config), "example.com"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert "user alice" in other.splitlines()


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setitem(
        cli_main.LAZY_COMMANDS, "ssh-config", ("banger.cli.cmd_sshconfig", "ssh_config", "")
    )
    env = {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    (tmp_path / "home").mkdir()
    return CliRunner(env=env)


def home_of(runner: CliRunner) -> Path:
    return Path(runner.env["HOME"] or "")


def test_command_prints_and_writes_the_snippet_only(runner: CliRunner) -> None:
    result = runner.invoke(cli_main.cli, ["ssh-config"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "Host *.vm" in result.output
    snippet = home_of(runner) / ".config" / "banger" / "ssh_config"
    assert snippet.read_text() == result.output
    assert mode_of(snippet) == 0o600
    assert not (home_of(runner) / ".ssh").exists()  # never touched unasked
    assert not (Path(runner.env["XDG_RUNTIME_DIR"] or "") / "banger" / "bangerd.sock").exists()


def test_command_install_twice_then_uninstall(runner: CliRunner) -> None:
    config = home_of(runner) / ".ssh" / "config"
    config.parent.mkdir(mode=0o700)
    config.write_bytes(b"Host old\n  User me")
    first = runner.invoke(cli_main.cli, ["ssh-config", "--install"], catch_exceptions=False)
    assert first.exit_code == 0 and first.output.startswith("added an Include")
    second = runner.invoke(cli_main.cli, ["ssh-config", "--install", "--json"])
    status = json.loads(second.output)
    assert status["changed"] is False
    assert status["ssh_config"]["installed"] is True
    assert status["ssh_config"]["managed_block"] is True
    assert config.read_bytes().count(BEGIN_MARKER.encode()) == 1
    assert str(home_of(runner) / ".config" / "banger" / "ssh_config") in config.read_text()
    gone = runner.invoke(cli_main.cli, ["ssh-config", "--uninstall"], catch_exceptions=False)
    assert gone.exit_code == 0 and gone.output.startswith("removed")
    assert config.read_bytes() == b"Host old\n  User me"
    again = runner.invoke(cli_main.cli, ["ssh-config", "--uninstall", "--json"])
    assert json.loads(again.output)["changed"] is False


def test_command_flags_exclude_each_other(runner: CliRunner) -> None:
    result = runner.invoke(cli_main.cli, ["ssh-config", "--install", "--uninstall"])
    assert result.exit_code == 2
    assert not (home_of(runner) / ".ssh").exists()


# -- a real ssh against a real sshd: the host key check through the helper ------------------


def _sshd() -> str | None:
    from tests.hosttools import sshd

    return str(sshd())


@pytest.fixture
def sshd_as_vm(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """An sshd on 127.0.0.1 standing in for a guest: (port, vms_dir, ssh config)."""
    sshd = _sshd()
    if sshd is None or os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs sshd (openssh-server), unshare and root")
    root = Path(tempfile.mkdtemp(prefix="bgr-sshd-"))  # nobody must reach it
    root.chmod(0o755)
    try:
        key = root / "host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        os.chown(key, 65534, 65534)
        port = _free_port()
        (root / "sshd_config").write_text(
            f"HostKey {key}\nListenAddress 127.0.0.1:{port}\nPidFile none\nUsePAM no\n"
            "StrictModes no\nAuthorizedKeysFile none\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
        )
        vm_dir = tmp_path / "vms" / "brisk-badger"
        vm_dir.mkdir(parents=True)
        public = key.with_suffix(".pub").read_text().split()
        (vm_dir / "known_hosts").write_text(f"10.213.7.5 {public[0]} {public[1]}\n")
        config = tmp_path / "ssh_config"
        config.write_text(
            sshconfig.render_snippet(
                key=tmp_path / "id", vms_dir=tmp_path / "vms", python=sys.executable
            )
        )
        proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(root / "sshd_config")],
            user=65534,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port)
            yield port, tmp_path / "vms", config
        finally:
            proc.kill()
            proc.wait()
    finally:
        shutil.rmtree(root)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            return
        time.sleep(0.05)
    raise AssertionError("sshd did not start")


def _ssh(config: Path, port: int, host: str) -> str:
    """``ssh host`` with the name resolving to 127.0.0.1 as banger's DNS would do it.

    A private /etc/hosts (in a mount namespace) resolves the name: ``HostName=`` would
    make ssh look the host key up under the address instead of the name typed.
    """
    hosts = config.with_name("hosts")
    hosts.write_text(f"127.0.0.1 localhost {host}\n")
    ssh = ["ssh", "-F", str(config), "-p", str(port), "-o", "BatchMode=yes"]
    ssh += ["-o", "ConnectTimeout=5", host, "true"]
    script = 'mount --bind "$1" /etc/hosts && shift && exec "$@"'
    argv = ["unshare", "--mount", "sh", "-c", script, "sh", str(hosts), *ssh]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stderr


def test_real_ssh_trusts_the_vm_key_by_name(sshd_as_vm: tuple[int, Path, Path]) -> None:
    port, _, config = sshd_as_vm
    stderr = _ssh(config, port, "brisk-badger.vm")
    # Past the host key check: only authentication (no key here) fails.
    assert "Permission denied" in stderr, stderr
    assert "Host key verification failed" not in stderr


def test_real_ssh_refuses_unknown_or_changed_keys(sshd_as_vm: tuple[int, Path, Path]) -> None:
    port, vms_dir, config = sshd_as_vm
    assert "Host key verification failed" in _ssh(config, port, "ghost.vm")
    (vms_dir / "brisk-badger" / "known_hosts").write_text(f"10.213.7.5 {KEY_LINE}\n")
    stderr = _ssh(config, port, "brisk-badger.vm")
    assert "Host key verification failed" in stderr, stderr
    assert "Permission denied" not in stderr
