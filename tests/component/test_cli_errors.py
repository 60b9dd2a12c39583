"""The CLI's contract for failures: `error:`/`hint:` lines, exit 1; usage errors exit 2;
a malformed config stops the daemon from starting and names the key (ADVERSARIAL 53-55)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import BIN, BangerHome


def test_not_found_prints_error_and_hint_and_exits_1(home: BangerHome) -> None:
    out = home.banger("vm", "show", "ghost")
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if not line.startswith("banger: started")]
    assert lines[0].startswith("error: ") and "ghost" in lines[0]
    assert lines[-1].startswith("hint: ")
    assert "Traceback" not in out.stderr


def test_debug_adds_a_traceback(home: BangerHome) -> None:
    out = home.banger("--debug", "vm", "show", "ghost")
    assert out.returncode == 1
    assert "Traceback" in out.stderr


@pytest.mark.parametrize(
    ("args", "brief", "help_of"),
    [
        (["vm", "show"], "error: missing argument 'NAME'", "banger vm show"),
        (["no-such-command"], "error: no such command 'no-such-command'", "banger"),
        (["vm", "list", "--bogus"], "error: no such option '--bogus'", "banger vm list"),
        (["vm", "set", "x"], "error: nothing to change: give --vcpu", "banger vm set"),
        (["vm", "exec", "x", "--env", "k", "--", "ls"], "error: invalid value", "banger vm exec"),
    ],
)
def test_usage_errors_exit_2_in_bangers_error_form(
    home: BangerHome, args: list[str], brief: str, help_of: str
) -> None:
    """Issue 14 item 16: click's `Usage:`/`Error:` block becomes banger's two lines."""
    out = home.banger(*args)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 2, out.stderr
    assert lines[0].startswith(brief), out.stderr
    assert lines[1] == f"hint: see '{help_of} --help'"


def test_debug_is_accepted_after_the_subcommand_too(home: BangerHome) -> None:
    """Issue 14 item 16: `--debug` was a usage error anywhere but before the subcommand."""
    listed = home.banger("vm", "list", "--debug")
    assert listed.returncode == 0, listed.stderr
    shown = home.banger("vm", "show", "ghost", "--debug")
    assert shown.returncode == 1
    assert "Traceback" in shown.stderr
    assert shown.stderr.rstrip().splitlines()[-1].startswith("hint: ")
    plain = home.banger("vm", "show", "ghost")
    assert "Traceback" not in plain.stderr
    assert home.banger("image", "list", "--json", "--debug").returncode == 0


def test_banger_debug_in_the_environment_still_adds_a_traceback(home: BangerHome) -> None:
    env = {**home.env, "BANGER_DEBUG": "1"}
    out = subprocess.run(
        [str(BIN / "banger"), "vm", "show", "ghost"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "Traceback" in out.stderr


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("memroy = 1\n", "memroy"),
        ("[vm_defaults]\nmemory_mib = -1\n", "vm_defaults.memory_mib"),
        ("[vm_defaults]\nvcpu = true\n", "vm_defaults.vcpu"),
        ('[[file_sync]]\nhost = "relative/path"\nguest = "~/x"\n', "file_sync[0].host"),
        ('[[file_sync]]\nhost = "~/a"\nguest = "/etc/passwd"\n', "file_sync[0].guest"),
        ("log_level = \n", "line 1"),
    ],
)
def test_malformed_config_refuses_to_start_naming_the_key_e53_e54_e55(
    home: BangerHome, config: str, named: str
) -> None:
    home.write_config(config)
    out = home.banger("daemon", "status")
    assert out.returncode == 1
    assert "error: the daemon could not start" in out.stderr
    assert named in out.stderr
    assert "hint:" in out.stderr
    assert not home.socket.exists()


def test_the_daemon_sends_its_start_error_on_the_ready_pipe_as_json(home: BangerHome) -> None:
    """The launcher gets the daemon's own error (code, message, hint) over the pipe, not
    text to parse back from the start log; the CLI prints that error."""
    home.write_config("memroy = 1\n")
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "banger.daemon", "--ready-fd", str(write_fd)],
            env=home.env,
            pass_fds=(write_fd,),
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        sent = pipe.read()
    assert proc.returncode == 1
    assert sent.endswith(b"\n") and sent.count(b"\n") == 1
    error = json.loads(sent)["error"]
    assert error["code"] == "config_invalid"
    assert "memroy" in f"{error['message']} {error['details']}"
    assert error["hint"]
    out = home.banger("daemon", "status")
    assert out.stderr.splitlines()[0] == f"error: the daemon could not start: {error['message']}"
    assert f"hint: {error['hint']}" in out.stderr


def test_empty_config_is_all_defaults_e53(home: BangerHome) -> None:
    home.write_config("")
    out = home.banger("config", "show", "--json")
    assert out.returncode == 0, out.stderr
    assert '"default_image_name": "debian-bookworm"' in out.stdout


def test_list_commands_have_json_and_empty_text(home: BangerHome) -> None:
    for kind in ("vm", "image", "kernel"):
        as_json = home.banger(kind, "list", "--json")
        assert as_json.returncode == 0, as_json.stderr
        assert as_json.stdout.strip() == "[]"
        text = home.banger(kind, "list")
        assert text.stdout.strip().startswith("no ")
