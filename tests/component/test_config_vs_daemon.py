"""`config show` and `vm create --help` against a real daemon whose config is older than
the file (issue 14 item 14): the file is shown and checked, the keys the daemon does
not use yet are named with the restart that applies them, and --help shows the default
a create gets now."""

from __future__ import annotations

import json

from tests.conftest import BangerHome

OLD = "[vm_defaults]\nvcpu = 2\n"
NEW = '[vm_defaults]\nvcpu = 1\n\n[[file_sync]]\nhost = "~/.gitconfig"\nguest = "~/.gitconfig"\n'


def started(home: BangerHome) -> None:
    out = home.banger("daemon", "start")
    assert out.returncode == 0, out.stderr


def test_config_show_prints_the_file_and_names_what_the_daemon_lacks(home: BangerHome) -> None:
    home.write_config(OLD)
    started(home)
    home.write_config(NEW)

    out = home.banger("config", "show")
    assert out.returncode == 0, out.stderr
    lines = {
        line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in out.stdout.splitlines()
    }
    assert lines["vm_defaults.vcpu"] == "1  [file]"
    assert lines["file_sync[0].host"] == "~/.gitconfig  [file]"
    daemon = lines["daemon"]
    assert "other values for vm_defaults.vcpu, file_sync" in daemon
    assert "`banger daemon restart`" in daemon

    data = json.loads(home.banger("config", "show", "--json").stdout)
    assert data["values"]["vm_defaults.vcpu"] == 1
    assert data["sources"]["file_sync[0].guest"] == "file"
    assert data["daemon"]["differs"] == ["vm_defaults.vcpu", "file_sync"]
    assert data["daemon"]["restart_needed"] is True

    restarted = home.banger("daemon", "restart")
    assert restarted.returncode == 0, restarted.stderr
    data = json.loads(home.banger("config", "show", "--json").stdout)
    assert data["daemon"]["differs"] == [] and data["daemon"]["restart_needed"] is False
    status = home.banger("daemon", "status")
    assert "1 vcpu" in status.stdout, status.stdout


def test_an_invalid_file_is_an_error_while_the_daemon_runs_on(home: BangerHome) -> None:
    home.write_config(OLD)
    started(home)
    path = home.write_config("[vm_defaults]\nmemory_mib = -1\n")
    for args in (["config", "show"], ["config", "show", "--json"]):
        out = home.banger(*args)
        assert out.returncode == 1, out.stdout
        assert out.stdout == ""
        assert out.stderr.startswith("error: vm_defaults.memory_mib: must be at least 128")
        assert f"hint: fix {path}" in out.stderr
        assert "keeps the config it started with" in out.stderr
    assert home.banger("daemon", "status").returncode == 0


def test_config_show_never_starts_the_daemon(home: BangerHome) -> None:
    home.write_config(OLD)
    out = home.banger("config", "show")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].split(None, 1) == [
        "daemon:",
        "not running (it reads this file when it starts)",
    ]
    assert not home.socket.exists()
    assert home.daemon_pid() is None


def test_create_help_shows_the_default_in_effect(home: BangerHome) -> None:
    home.write_config(NEW)
    alone = " ".join(home.banger("vm", "create", "--help").stdout.split())
    assert "Virtual CPUs, 1 to 64. [default: 1 (config)]" in alone
    assert not home.socket.exists()

    home.write_config(OLD)
    started(home)
    home.write_config(NEW)
    shown = " ".join(home.banger("vm", "create", "--help").stdout.split())
    assert (
        "Virtual CPUs, 1 to 64. [default: 2 (config); 1 from the config file after "
        "`banger daemon restart`]" in shown
    ), shown
