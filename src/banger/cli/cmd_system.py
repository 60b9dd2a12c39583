"""``banger system install|status|restart|uninstall``: the helper and the owner's daemon as
systemd units (SPEC §9). Runs in the CLI process as root, never through the daemon.

Owns: the options and printing the outcome; ``banger.system`` does the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from banger.cli.output import emit_json, emit_kv

root_option = click.option(
    "--root",
    "root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=Path("/"),
    help="Write the files under this directory instead of / and skip systemctl (for "
    "packages and tests).",
)


def _installer(root: Path) -> Any:
    from banger.host.runner import Runner
    from banger.system.hostops import HostRoot
    from banger.system.install import SystemInstaller

    return SystemInstaller(HostRoot(root.absolute(), Runner()))


def _print(outcome: Any) -> None:
    for line in outcome.lines:
        click.echo(line)


@click.group()
def system() -> None:
    """Install banger-helper and your daemon as hardened systemd units (as root).

    The supported setup (docs/explanation/privilege.md): your daemon runs as you, and
    only the small banger-helper runs as root. Use `sudo` with the full path of this
    banger (sudo's PATH rarely includes a virtualenv's bin).
    """


@system.command(short_help="Set up the helper and the owner's daemon as services.")
@click.option(
    "--owner",
    metavar="USER",
    default=None,
    help="The user whose daemon runs VMs (default: $SUDO_USER, whoever ran sudo).",
)
@root_option
def install(owner: str | None, root: Path) -> None:
    """Create the banger group, /etc/banger/helper.toml and both units; enable them.

    The helper's bridge and network come from the owner's config.toml (or the
    defaults). Everything made is recorded in /etc/banger/installed.json; running it
    again changes nothing. Needs systemd as PID 1, unless --root is given.
    """
    _print(_installer(root).install(owner))


@system.command(short_help="Remove exactly what install made.")
@root_option
def uninstall(root: Path) -> None:
    """Stop, disable and remove exactly what install made; never your VMs' state or images.

    The warm pool's ready VMs are banger's, not yours: they are removed first (the
    daemon's unit stops only the daemon, and VMs outlive it)."""
    if root.absolute() == Path("/"):
        for line in _remove_owner_pool():
            click.echo(line)
    _print(_installer(root).uninstall())


def _remove_owner_pool() -> list[str]:
    """Drain the owner's running daemon's pool, as the owner (its socket takes no other
    uid); nothing when not root, not installed, or no daemon answers."""
    import os

    from banger.errors import BangerError
    from banger.system import install_manifest
    from banger.system.install import MANIFEST, resolve_owner
    from banger.system.owner import as_owner

    manifest = install_manifest.load(MANIFEST) if os.geteuid() == 0 else None
    if manifest is None:
        return []
    try:
        owner = resolve_owner(manifest.owner)
        removed: list[str] = as_owner(owner, lambda: drain_pool(owner.home, owner.uid))
    except BangerError as exc:
        return [f"warm-pool VMs not removed: {exc.brief}"]
    return [f"removed warm-pool VMs: {', '.join(removed)}"] if removed else []


def drain_pool(home: Path, uid: int) -> list[str]:
    """The pool VMs the daemon of the user with this home and uid removed (XDG defaults:
    the unit's daemon sees none of the owner's XDG_* variables)."""
    from banger.client.facade import BangerClient
    from banger.client.http import Client
    from banger.errors import DaemonUnavailable
    from banger.host.paths import Layout

    layout = Layout.from_env({"HOME": str(home)}, uid=uid)
    try:
        return BangerClient(Client(layout.socket_path, timeout_s=120)).pool.drain().removed
    except DaemonUnavailable:
        return []


@system.command(short_help="Restart both services.")
def restart() -> None:
    """Restart banger-helper and the owner's daemon (after upgrading banger, say)."""
    _print(_installer(Path("/")).restart())


@system.command(short_help="Show both services, the mode and the helper's build.")
@root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(root: Path, as_json: bool) -> None:
    """Both units' state, the mode the owner's daemon gets and whether the helper answers
    with this build."""
    from banger.host.runner import Runner
    from banger.system.hostops import HostRoot
    from banger.system.status import gather

    report = gather(HostRoot(root.absolute(), Runner()))
    if as_json:
        emit_json(report)
        return
    rows: list[tuple[str, Any]] = [
        ("installed", f"yes, for {report['owner']}" if report["installed"] else "no"),
        ("systemd", "running" if report["systemd"] else "not PID 1"),
    ]
    rows += [(unit, f"{s['active']}, {s['enabled']}") for unit, s in report["units"].items()]
    helper = report["helper"]
    if helper["answers"]:
        build = helper["build"]
        same = "same build" if helper["same_build"] else "ANOTHER build than this CLI"
        answer = f"answers on {report['helper_socket']}: {build.get('commit', '?')} ({same})"
    else:
        answer = f"does not answer on {report['helper_socket']}: {helper['error']}"
    rows += [("mode", report["mode"]), ("helper", answer)]
    emit_kv(rows)
