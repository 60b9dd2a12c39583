"""The ``ssh`` command line banger uses to reach a guest, for the daemon and the CLI.

Owns: the options every connection to a VM needs (its own key only, the VM's pinned host
key, quiet logs, keepalives) and the variants (batch mode and a connect timeout for the
daemon's readiness probe and file sync; the login user).
Must not: run ssh, or know where the key and known_hosts files live (callers pass them).
"""

from __future__ import annotations

from pathlib import Path


def ssh_prefix(
    key: Path | str,
    known_hosts: Path | str,
    *,
    user: str = "root",
    batch: bool = False,
    connect_timeout_s: int | None = None,
) -> list[str]:
    """``ssh`` and its options up to the login user; the caller appends the host (and
    ``--`` and a command)."""
    argv = ["ssh", "-i", str(key)]
    argv += ["-o", "BatchMode=yes"] if batch else []
    argv += [
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
    ]
    if connect_timeout_s is not None:
        argv += ["-o", f"ConnectTimeout={connect_timeout_s}"]
    return [
        *argv,
        "-o",
        "LogLevel=ERROR",
        # A guest whose VMM dies sends no FIN or RST, so without keepalives ssh would wait
        # for TCP to give up (~15 min, ADVERSARIAL 99); this way it gives up after ~20 s.
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
        "-l",
        user,
    ]
