"""The ``ssh`` command line banger uses to reach a guest, for the daemon and the CLI.

Owns: the options every connection to a VM needs (its own key only, the VM's pinned host
key, quiet logs, keepalives) and the variants (batch mode and a connect timeout for the
daemon's readiness probe and file sync; the login user).
Must not: run ssh, or know where the key and known_hosts files live (callers pass them).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_PORT = 22


def ssh_prefix(
    key: Path | str,
    known_hosts: Path | str,
    *,
    user: str = "root",
    batch: bool = False,
    connect_timeout_s: int | None = None,
    port: int | None = None,
    host_key_alias: str | None = None,
) -> list[str]:
    """``ssh`` and its options up to the login user; the caller appends the host (and
    ``--`` and a command). ``port`` and ``host_key_alias`` are for a guest reached through
    a forwarded port (rootless VMs): its key is filed under the alias, not the port."""
    argv = ["ssh", "-i", str(key)]
    argv += ["-p", str(port)] if port is not None and port != DEFAULT_PORT else []
    argv += ["-o", f"HostKeyAlias={host_key_alias}"] if host_key_alias else []
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
