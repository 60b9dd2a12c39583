"""Shell completion (SPEC §1): the scripts, and live names from a running daemon only.

Completion runs the real CLI the way the shell scripts do (``_BANGER_COMPLETE`` plus
``COMP_WORDS``/``COMP_CWORD``) through a ``banger`` shim on PATH. The shim registers
``completion`` and attaches the name callbacks wherever the CLI does not yet do so
itself, so these tests pass before and after that wiring.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.model.records import ImageRecord, KernelRecord, VmRecord, VmState, utc_now
from banger.state import repo
from banger.state.db import Database
from tests.conftest import BangerHome

SHIM = """\
from banger.cli import main as m
m.LAZY_COMMANDS.setdefault(
    "completion", ("banger.cli.cmd_completion", "completion", "Print a shell completion script.")
)
from banger.cli import cmd_image, cmd_kernel, cmd_vm
from banger.cli import completion as c
for command, callback in (
    (cmd_vm.show, c.complete_vm_names),
    (cmd_vm.start, c.complete_vm_names),
    (cmd_image.image_show, c.complete_image_names),
    (cmd_kernel.kernel_show, c.complete_kernel_names),
):
    param = command.params[0]
    if param._custom_shell_complete is None:
        param._custom_shell_complete = callback
m.main()
"""

VMS = ("brisk-badger", "brisk-comet", "calm-falcon")
IMAGES = ("debian-bookworm", "alpine")
KERNELS = ("vanilla-6.1",)


@pytest.fixture
def cli(home: BangerHome, tmp_path: Path) -> BangerHome:
    """``home`` whose PATH starts with the ``banger`` shim."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "banger"
    shim.write_text(f"#!{sys.executable}\n{SHIM}")
    shim.chmod(0o755)
    home.env["PATH"] = f"{bin_dir}:{home.env['PATH']}"
    home.env["BANGER_DNS_PORT"] = "0"  # a daemon here must not need the real port
    return home


def run(home: BangerHome, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        ["banger", *args],
        env={**home.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def complete(
    home: BangerHome, line: str, *, shell: str = "bash"
) -> subprocess.CompletedProcess[str]:
    """What the shell gets for ``line`` (completing its last word; '' after a space)."""
    words = line.split(" ")
    # fish's script passes the word being completed itself, bash's and zsh's its index.
    cword = words[-1] if shell == "fish" else str(len(words) - 1)
    env = {"_BANGER_COMPLETE": f"{shell}_complete", "COMP_WORDS": line, "COMP_CWORD": cword}
    return run(home, env=env, timeout=30)


def bash_names(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def assert_silent(result: subprocess.CompletedProcess[str]) -> None:
    """No candidates (click's bash format still ends with a newline) and no stderr."""
    assert result.returncode == 0
    assert result.stdout.strip() == "" and result.stderr == ""


def seed_rows(home: BangerHome) -> None:
    db = Database.open(home.state_dir / "state.db")
    try:
        now = utc_now()
        for name in KERNELS:
            kernel = KernelRecord(
                name=name, arch="x86_64", source="test", dir_path=f"/k/{name}", imported_at=now
            )
            repo.insert_kernel(db, kernel)
        image_ids = [
            repo.insert_image(
                db,
                ImageRecord(
                    name=name,
                    managed=False,
                    rootfs_path=f"/i/{name}.ext4",
                    source="test",
                    created_at=now,
                ),
            ).id
            for name in IMAGES
        ]
        for name in VMS:
            vm = VmRecord(
                name=name,
                image_id=image_ids[0],
                state=VmState.STOPPED,
                vcpu=1,
                memory_mib=512,
                disk_size_bytes=1 << 30,
                created_at=now,
                updated_at=now,
            )
            repo.insert_vm(db, vm)
    finally:
        db.close()


@pytest.fixture
def daemon(cli: BangerHome) -> Iterator[BangerHome]:
    seed_rows(cli)
    started = run(cli, "daemon", "status")
    assert started.returncode == 0, started.stderr
    yield cli


def assert_no_daemon(home: BangerHome) -> None:
    assert home.daemon_pid() is None
    assert not home.socket.exists()


# -- the scripts ------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script(cli: BangerHome, shell: str) -> None:
    result = run(cli, "completion", shell)
    assert result.returncode == 0, result.stderr
    assert "_BANGER_COMPLETE" in result.stdout
    assert f"{shell}_complete" in result.stdout
    assert_no_daemon(cli)


def test_unknown_shell_is_a_usage_error(cli: BangerHome) -> None:
    result = run(cli, "completion", "tcsh")
    assert result.returncode == 2
    assert "tcsh" in result.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_script_completes_in_bash(daemon: BangerHome) -> None:
    script = (
        'eval "$(banger completion bash)"; '
        "COMP_WORDS=(banger vm show brisk-); COMP_CWORD=3; _banger_completion banger; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        ["bash", "-c", script],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sorted(result.stdout.split()) == ["brisk-badger", "brisk-comet"], result.stderr


# -- live names -------------------------------------------------------------------------------


def test_vm_names_from_running_daemon(daemon: BangerHome) -> None:
    result = complete(daemon, "banger vm show ")
    assert result.returncode == 0 and result.stderr == ""
    assert bash_names(result) == list(VMS)


def test_prefix_filters_names(daemon: BangerHome) -> None:
    assert bash_names(complete(daemon, "banger vm show brisk-")) == ["brisk-badger", "brisk-comet"]
    assert bash_names(complete(daemon, "banger vm start calm-falcon c")) == ["calm-falcon"]
    assert bash_names(complete(daemon, "banger vm show zzz")) == []


def test_image_and_kernel_names(daemon: BangerHome) -> None:
    assert sorted(bash_names(complete(daemon, "banger image show "))) == sorted(IMAGES)
    assert bash_names(complete(daemon, "banger kernel show ")) == list(KERNELS)


def test_zsh_and_fish_get_the_vm_state_as_help(daemon: BangerHome) -> None:
    zsh = complete(daemon, "banger vm show calm", shell="zsh")
    assert zsh.stdout.splitlines() == ["plain", "calm-falcon", "stopped"]
    fish = complete(daemon, "banger vm show calm", shell="fish")
    assert fish.stdout.splitlines() == ["plain,calm-falcon\tstopped"]


def test_subcommands_still_complete_without_daemon(cli: BangerHome) -> None:
    result = complete(cli, "banger vm sh")
    assert "plain,show" in result.stdout.splitlines()
    assert_no_daemon(cli)


# -- no daemon: nothing, silently, and none started ----------------------------------------------


@pytest.mark.parametrize(
    "line", ["banger vm show ", "banger image show d", "banger kernel show ", "banger vm start a "]
)
def test_no_daemon_no_output_and_none_started(cli: BangerHome, line: str) -> None:
    assert_silent(complete(cli, line))
    assert_no_daemon(cli)


def test_stale_socket_file_is_no_daemon(cli: BangerHome) -> None:
    cli.runtime_dir.mkdir(parents=True, mode=0o700)
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(cli.socket))  # bound, never listening: connect() is refused
        assert_silent(complete(cli, "banger vm show "))
    assert cli.daemon_pid() is None


def test_daemon_that_never_answers_costs_at_most_the_timeout(cli: BangerHome) -> None:
    cli.runtime_dir.mkdir(parents=True, mode=0o700)
    with socket.socket(socket.AF_UNIX) as hung:
        hung.bind(str(cli.socket))
        hung.listen(8)  # accepts into the backlog, never replies
        started = time.monotonic()
        result = complete(cli, "banger vm show ")
        took = time.monotonic() - started
    assert_silent(result)
    assert took < 5, f"completion waited {took:.1f}s"


def test_daemon_stopped_afterwards_gives_nothing(daemon: BangerHome) -> None:
    assert bash_names(complete(daemon, "banger vm show "))
    assert run(daemon, "daemon", "stop").returncode == 0
    assert_silent(complete(daemon, "banger vm show "))
    assert_no_daemon(daemon)


def test_completion_does_not_create_state(cli: BangerHome) -> None:
    complete(cli, "banger vm show ")
    assert not (cli.state_dir / "state.db").exists()
    assert os.listdir(cli.env["XDG_STATE_HOME"]) == []
