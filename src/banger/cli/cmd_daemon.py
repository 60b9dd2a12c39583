"""``banger daemon status|start|stop|restart|logs``; ``stop --all`` stops every VM and
removes the warm pool's VMs first (through the API, before the daemon is asked to exit)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from banger.cli.output import emit_json, emit_kv
from banger.cli.session import Session
from banger.client.facade import BangerClient
from banger.client.http import Client
from banger.client.launcher import daemon_ping, stop_daemon
from banger.errors import BadResponse
from banger.model.api_types import to_json

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def daemon() -> None:
    """Start, stop and inspect the per-user daemon (bangerd)."""


@daemon.command()
@json_option
@click.pass_obj
def status(session: Session, as_json: bool) -> None:
    """Show the daemon's build, pid, socket and state (starts it if needed)."""
    client = session.client()
    reply = client.daemon.status()
    pool = client.pool.status()
    if as_json:
        emit_json({**to_json(reply), "pool": to_json(pool)})
        return
    build = reply.build
    emit_kv(
        [
            ("daemon", f"running, pid {reply.pid}, up {reply.uptime_s:.0f}s"),
            ("build", f"{build.version} (commit {build.commit}, built {build.build_time})"),
            ("socket", reply.socket),
            ("state", reply.state_dir),
            ("config", reply.config_file),
            ("log", reply.log_file),
            ("inventory", ", ".join(f"{n} {k}" for k, n in reply.db.counts.items())),
            ("vm defaults", reply.vm_defaults.spec_line.removeprefix("spec: ")),
            ("pool", pool.summary),
        ]
    )


@daemon.command()
@click.pass_obj
def start(session: Session) -> None:
    """Start the daemon if it is not running (other commands do this by themselves)."""
    ping = session.client().daemon.ping()
    click.echo(f"daemon running, pid {ping.pid}")


@daemon.command()
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Stop every running VM first and remove the warm pool's ready VMs (the next "
    "daemon refills it). Without it VMs keep running and the next daemon adopts them.",
)
@json_option
@click.pass_obj
def stop(session: Session, everything: bool, as_json: bool) -> None:
    """Stop the daemon (waits until it has exited). Not running is not an error."""
    ping = daemon_ping(session.layout)
    pid = None if ping is None else ping.pid
    swept = Swept()
    if pid is not None:
        http = Client(session.layout.socket_path)
        if everything:
            swept = stop_every_vm(BangerClient(http))
        stop_daemon(http, pid)
    if as_json:
        reply: dict[str, Any] = {"stopped": pid is not None, "pid": pid}
        if everything:
            reply |= {"vms_stopped": swept.stopped, "pool_removed": swept.pool_removed}
        emit_json(reply)
        return
    if swept.pool_removed:
        click.echo(f"removed warm-pool VMs: {', '.join(swept.pool_removed)}")
    if swept.stopped:
        click.echo(f"stopped VMs: {', '.join(swept.stopped)}")
    click.echo("daemon not running" if pid is None else f"daemon stopped (pid {pid})")


@dataclass
class Swept:
    stopped: list[str] = field(default_factory=list)
    pool_removed: list[str] = field(default_factory=list)


def stop_every_vm(api: BangerClient) -> Swept:
    """The warm pool drained first (it would boot a replacement for each VM stopped, and a
    stopped pool VM is of no use: the next daemon's pool removes it), then each running
    VM stopped. A VM that cannot be stopped fails the command: the daemon keeps running."""
    swept = Swept(pool_removed=api.pool.drain().removed)
    for vm in api.vms.list():
        if vm.state in ("running", "starting"):
            api.vms.stop(vm.name)
            swept.stopped.append(vm.name)
    return swept


@daemon.command()
@click.pass_obj
def restart(session: Session) -> None:
    """Stop the daemon and start it again, e.g. to apply an edited config file (running
    VMs keep running and are adopted again). A daemon of `banger system install`:
    `sudo banger system restart` instead."""
    try:
        ping = daemon_ping(session.layout)
    except BadResponse:  # another build's ping: starting below restarts it all the same
        ping = None
    if ping is not None:
        stop_daemon(Client(session.layout.socket_path), ping.pid)
    started = session.client().daemon.ping()
    click.echo(f"daemon running, pid {started.pid}")


@daemon.command()
@click.option("-n", "--lines", default=50, show_default=True, help="How many recent lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@json_option
@click.pass_obj
def logs(session: Session, lines: int, follow: bool, as_json: bool) -> None:
    """Show the daemon's structured log (works while the daemon is down too)."""
    path = session.layout.log_file
    if not path.exists():
        click.echo(f"no daemon log yet ({path})", err=True)
        return
    for raw in _tail(path, lines, follow=follow):
        sys.stdout.write(raw if as_json else format_log_line(raw))
        sys.stdout.flush()


def _tail(path: Path, count: int, *, follow: bool) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as fh:
        recent = fh.readlines()[-count:] if count > 0 else []
        yield from recent
        while follow:
            line = fh.readline()
            if line:
                yield line
            else:
                time.sleep(0.2)


def format_log_line(raw: str) -> str:
    try:
        entry: Any = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    if not isinstance(entry, dict):
        return raw
    head = f"{entry.pop('ts', '?')} {entry.pop('level', '?'):<7} {entry.pop('msg', '')}"
    entry.pop("logger", None)
    exc = entry.pop("exc", None)
    extras = " ".join(f"{k}={json.dumps(v)}" for k, v in entry.items())
    text = f"{head}  {extras}".rstrip() + "\n"
    return text + (exc + "\n" if exc else "")
