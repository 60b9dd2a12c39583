"""What ``banger config show`` and the VM-size ``--help`` say about the configuration: the
FILE as a daemon started now would load it, and whether the running daemon uses it.

The daemon reads its config once, when it starts (issue 14 item 14): after an edit, the
file and the values in effect differ until ``banger daemon restart``. So ``config show``
loads and checks the file here, in the CLI (a bad file is its ConfigError, exit 1), and
then asks a running daemon of this build for the config it started with, to name the
keys that differ. ``--help`` shows the default a create would get now: the running
daemon's, else the file's (the next command starts a daemon that reads it).

Owns: that comparison and the text and JSON of ``config show``. Must not: start, stop
or restart the daemon (a look at the config must not change what runs), or print the
config in any other form than ``banger.config.listing`` rows.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from banger.cli.output import emit_json, emit_kv
from banger.client.facade import BangerClient
from banger.client.http import Client
from banger.config import listing
from banger.config.listing import Row
from banger.config.settings import load_config
from banger.errors import BangerError, ConfigError, DaemonUnavailable
from banger.host import buildinfo
from banger.host.paths import Layout
from banger.model import units

#: Asking the daemon is a courtesy of `config show` and `--help`: never wait long for it.
ASK_TIMEOUT_S = 2.0
RESTART = "`banger daemon restart`"


@dataclass(frozen=True)
class DaemonView:
    """A running daemon as `config show` reports it."""

    pid: int
    #: Another build is restarted by the next command, with the file: nothing to compare.
    same_build: bool
    config_file: str | None = None
    #: Settings (``vm_defaults.vcpu``, ``file_sync``) whose value in effect is not the file's.
    differs: list[str] = field(default_factory=list)

    @property
    def restart_needed(self) -> bool:
        return bool(self.differs)

    def describe(self, path: Path) -> str:
        if not self.same_build:
            return f"pid {self.pid}, another build: the next command restarts it with this file"
        reads = "" if self.config_file == str(path) else f" (it read {self.config_file})"
        if not self.differs:
            return f"pid {self.pid} uses these values{reads}"
        return (
            f"pid {self.pid} started with other values for {', '.join(self.differs)}{reads}; "
            f"{RESTART} applies this file (running VMs keep running)"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "same_build": self.same_build,
            "config_file": self.config_file,
            "differs": self.differs,
            "restart_needed": self.restart_needed,
        }


def running_client(layout: Layout) -> tuple[int, BangerClient | None] | None:
    """``(pid, client)`` of the daemon that answers, client None for another build; None
    when none runs. Never starts one."""
    http = Client(layout.socket_path, timeout_s=ASK_TIMEOUT_S)
    try:
        # Raw, as the launcher does: another build's ping may have another shape.
        ping = http.get("/ping")
    except DaemonUnavailable:
        return None
    ping = ping if isinstance(ping, dict) else {}
    pid = ping.get("pid")
    pid = pid if isinstance(pid, int) else 0
    same = ping.get("build") == buildinfo.current().as_dict()
    return pid, BangerClient(http) if same else None


def _daemon_view(layout: Layout, path: Path, rows: list[Row]) -> DaemonView | None:
    found = running_client(layout)
    if found is None:
        return None
    pid, client = found
    if client is None:
        return DaemonView(pid, same_build=False)
    reply = client.daemon.config()
    theirs = listing.rows(reply.values, reply.sources)
    return DaemonView(pid, True, reply.path, listing.differing_settings(rows, theirs))


def config_show(layout: Layout, *, as_json: bool, env: Mapping[str, str] = os.environ) -> None:
    try:
        config = load_config(env=env, layout=layout)  # a bad file raises, naming the key
    except ConfigError as err:
        raise _still_running(err, layout) from err
    path = config.path or layout.config_file
    rows = listing.rows(config.model_dump(mode="json"), config.sources)
    try:
        daemon: DaemonView | str | None = _daemon_view(layout, path, rows)
    except BangerError as err:  # e.g. a socket of another user: say so, show the file
        daemon = f"could not ask it: {err.brief}"
    if as_json:
        emit_json(
            {
                "path": str(path),
                "exists": path.exists(),
                **listing.json_form(rows),
                "daemon": _daemon_json(daemon),
            }
        )
        return
    if daemon is None:
        running = "not running (it reads this file when it starts)"
    else:
        running = daemon if isinstance(daemon, str) else daemon.describe(path)
    missing = "" if path.exists() else " (not found: every key has its default)"
    emit_kv(
        [
            ("config file", f"{path}{missing}"),
            *((row.key, f"{row.text()}  [{row.source}]") for row in rows),
            ("daemon", running),
        ]
    )


def _daemon_json(daemon: DaemonView | str | None) -> dict[str, Any] | None:
    if daemon is None:
        return None
    return daemon.as_json() if isinstance(daemon, DaemonView) else {"error": daemon}


def _still_running(err: ConfigError, layout: Layout) -> ConfigError:
    """The file's error; with a daemon running, also that it goes on with its old config."""
    try:
        found = running_client(layout)
    except BangerError:
        found = None
    if found is None:
        return err
    note = (
        f"the running daemon (pid {found[0]}) keeps the config it started with; "
        "it cannot start again until the file is fixed"
    )
    details = f"{err.details}\n{note}" if err.details else note
    return ConfigError(err.brief, details=details, hint=err.hint)


# -- VM size defaults in `vm create --help` / `vm run --help` ----------------------------


@dataclass(frozen=True)
class _Shown:
    value: int
    source: str


@functools.cache
def _help_defaults() -> tuple[dict[str, _Shown] | None, dict[str, _Shown] | None]:
    """(from the file, in effect in a running daemon of this build); None where unknown."""
    from banger.config.vm_defaults import HostFacts, resolve_vm_defaults

    layout = Layout.from_env(os.environ)
    try:
        resolved = resolve_vm_defaults(load_config(layout=layout), HostFacts.probe())
        from_file: dict[str, _Shown] | None = {
            name: _Shown(r.value, str(r.source))
            for name, r in (
                ("vcpu", resolved.vcpu),
                ("memory_mib", resolved.memory_mib),
                ("disk_size_bytes", resolved.disk_size_bytes),
            )
        }
    except BangerError:
        from_file = None
    try:
        found = running_client(layout)
        client = None if found is None else found[1]
        running = None if client is None else client.vms.defaults()
    except BangerError:
        running = None
    in_effect = None
    if running is not None:
        in_effect = {
            name: _Shown(r.value, r.source)
            for name, r in (
                ("vcpu", running.vcpu),
                ("memory_mib", running.memory_mib),
                ("disk_size_bytes", running.disk_size_bytes),
            )
        }
    return from_file, in_effect


def _size_text(name: str, value: int) -> str:
    if name == "disk_size_bytes":
        return units.format_size(value)
    return f"{value} MiB" if name == "memory_mib" else str(value)


def help_default(name: str) -> str:
    """``2 (auto)``: what a create without the flag gets now. When the running daemon
    still uses an older config, its value, and the file's after a restart."""
    from_file, in_effect = _help_defaults()
    ours = None if from_file is None else from_file[name]
    now = in_effect[name] if in_effect is not None else ours
    if now is None:
        return "invalid config file: see `banger config show`"
    text = f"{_size_text(name, now.value)} ({now.source})"
    if ours is None:
        return f"{text}; the config file is invalid: see `banger config show`"
    if ours != now:
        text += f"; {_size_text(name, ours.value)} from the config file after {RESTART}"
    return text
