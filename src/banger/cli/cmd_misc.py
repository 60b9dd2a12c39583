"""``banger version``, ``banger doctor`` and ``banger config show``."""

from __future__ import annotations

import click

from banger.cli.output import emit_json, emit_kv, follow_stream
from banger.cli.session import Session
from banger.client.launcher import daemon_ping
from banger.errors import BangerError
from banger.host import buildinfo
from banger.model.api_types import to_json

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class ChecksFailed(BangerError):
    code = "checks_failed"
    status = 400


@click.command()
@json_option
@click.pass_obj
def version(session: Session, as_json: bool) -> None:
    """Show the CLI's build and, when a daemon runs, its build (never starts one)."""
    ours = buildinfo.current()
    ping = daemon_ping(session.layout)
    if as_json:
        emit_json({"cli": ours.as_dict(), "daemon": None if ping is None else to_json(ping)})
        return
    rows: list[tuple[str, object]] = [("banger", ours.describe())]
    if ping is None:
        rows.append(("daemon", "not running"))
    else:
        theirs = buildinfo.BuildInfo(**to_json(ping.build))
        same = " (same build)" if theirs == ours else " (other build: next command restarts it)"
        rows.append(("daemon", f"{theirs.describe()}, pid {ping.pid}{same}"))
    emit_kv(rows)


@click.command()
@json_option
@click.pass_obj
def doctor(session: Session, as_json: bool) -> None:
    """Check this host for everything banger needs; each check passes, warns or fails.

    Exits 1 when a check fails. `--json` prints the checks as NDJSON progress events.
    """
    failed = follow_stream(session.client().daemon.doctor(), as_json=as_json).failed
    if failed:
        raise ChecksFailed(
            f"{len(failed)} check(s) failed: {', '.join(failed)}",
            hint="each failed check above has a hint",
        )


@click.group()
def config() -> None:
    """Inspect the configuration (~/.config/banger/config.toml; see docs/config.md)."""


@config.command("show")
@json_option
@click.pass_obj
def config_show(session: Session, as_json: bool) -> None:
    """Show the config file's keys, each value and where it came from (file, env,
    default), and whether the running daemon uses them (a restart applies an edit).

    Reads and checks the file itself: an invalid file is an error naming the key.
    """
    from banger.cli.config_view import config_show as show

    show(session.layout, as_json=as_json)
