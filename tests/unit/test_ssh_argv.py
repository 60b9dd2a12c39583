"""The one ssh command line for the daemon (batch, timeout) and the CLI (interactive)."""

from __future__ import annotations

from pathlib import Path

from banger.guest.ssh_argv import ssh_prefix

PINNED = [
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "StrictHostKeyChecking=yes",
    "-o",
    "UserKnownHostsFile=/vm/known_hosts",
]
QUIET_AND_ALIVE = [
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ServerAliveInterval=5",
    "-o",
    "ServerAliveCountMax=3",
]


def test_daemon_argv_is_batch_with_a_connect_timeout() -> None:
    argv = ssh_prefix(Path("/k/id"), Path("/vm/known_hosts"), batch=True, connect_timeout_s=2)
    assert argv == [
        "ssh",
        "-i",
        "/k/id",
        "-o",
        "BatchMode=yes",
        *PINNED,
        "-o",
        "ConnectTimeout=2",
        *QUIET_AND_ALIVE,
        "-l",
        "root",
    ]


def test_cli_argv_logs_in_as_the_given_user_without_batch_mode() -> None:
    argv = ssh_prefix("/k/id", "/vm/known_hosts", user="dev")
    assert argv == ["ssh", "-i", "/k/id", *PINNED, *QUIET_AND_ALIVE, "-l", "dev"]


def test_a_forwarded_guest_gets_its_port_and_the_name_its_key_is_filed_under() -> None:
    argv = ssh_prefix("/k/id", "/vm/known_hosts", port=21003, host_key_alias="rootless-box")
    assert argv[:7] == ["ssh", "-i", "/k/id", "-p", "21003", "-o", "HostKeyAlias=rootless-box"]
    assert argv[7:] == [*PINNED, *QUIET_AND_ALIVE, "-l", "root"]


def test_port_22_and_no_alias_leave_the_bridged_argv_as_it_was() -> None:
    plain = ssh_prefix("/k/id", "/vm/known_hosts")
    assert ssh_prefix("/k/id", "/vm/known_hosts", port=22, host_key_alias=None) == plain
