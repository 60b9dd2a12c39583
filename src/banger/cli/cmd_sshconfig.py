"""``banger ssh-config [--install|--uninstall] [--json]`` (SPEC §4).

Owns: writing ``~/.config/banger/ssh_config`` and, only when asked, the Include block
in ``~/.ssh/config``. Needs no daemon. Must not: edit files itself
(``banger.cli.ssh_include`` does) or touch ``~/.ssh/config`` without a flag.
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

import click

from banger.cli import ssh_include
from banger.cli.output import emit_json
from banger.cli.session import Session
from banger.host.paths import Layout, ensure_private_dir


@click.command("ssh-config")
@click.option("--install", is_flag=True, help="Include banger's file from ~/.ssh/config.")
@click.option("--uninstall", is_flag=True, help="Remove that Include again.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_obj
def ssh_config(session: Session, install: bool, uninstall: bool, as_json: bool) -> None:
    """Print the ssh settings that make `ssh <name>.vm` work from any terminal.

    The settings are (re)written to ~/.config/banger/ssh_config. `--install` adds one
    marker-fenced `Include` of that file at the top of ~/.ssh/config (idempotent);
    `--uninstall` removes it, restoring the file exactly. Without a flag ~/.ssh/config
    is never touched. `<name>.vm` must resolve through banger's DNS: see
    docs/dns-routing.md.
    """
    if install and uninstall:
        raise click.UsageError("--install and --uninstall exclude each other")
    home = _home()
    snippet_path = session.layout.config_dir / ssh_include.SNIPPET_NAME
    user_config = home / ".ssh" / "config"
    names = _include_names(snippet_path, home)
    snippet = None
    changed = False
    if not uninstall:
        snippet = _write_snippet(session.layout, snippet_path)
    if install:
        changed = ssh_include.install(user_config, names[0], names)
    elif uninstall:
        changed = ssh_include.uninstall(user_config)
    status = ssh_include.include_status(user_config, names)
    if as_json:
        emit_json(_json(status, snippet_path, snippet, changed=changed))
    elif install or uninstall:
        sys.stdout.write(_summary(status, snippet_path, changed=changed, install=install) + "\n")
    else:
        sys.stdout.write(snippet or "")


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def _passwd_home() -> Path | None:
    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        return None


def _include_names(snippet_path: Path, home: Path) -> list[str]:
    """The Include argument to write first, then other spellings that mean the same file."""
    preferred = ssh_include.include_target(snippet_path, home=home, passwd_home=_passwd_home())
    names = [preferred, str(snippet_path)]
    if snippet_path.is_relative_to(home):
        names.append("~/" + snippet_path.relative_to(home).as_posix())
    return list(dict.fromkeys(names))


def _write_snippet(layout: Layout, path: Path) -> str:
    from banger.config.settings import load_config  # pydantic: only when needed

    config = load_config(layout=layout)
    text = ssh_include.render_snippet(
        key=config.ssh_key_file(), vms_dir=layout.vms_dir, python=sys.executable
    )
    ensure_private_dir(path.parent)
    if ssh_include.read_text(path) != text:
        ssh_include.write_atomic(path, text, mode=0o600)
    return text


def _json(
    status: ssh_include.IncludeStatus, snippet_path: Path, snippet: str | None, *, changed: bool
) -> dict[str, object]:
    return {
        "snippet_path": str(snippet_path),
        "snippet": snippet,
        "ssh_config": status.as_dict(),
        "changed": changed,
    }


def _summary(
    status: ssh_include.IncludeStatus, snippet_path: Path, *, changed: bool, install: bool
) -> str:
    where = str(status.path)
    if status.target != status.path:
        where += f" (a link to {status.target})"
    if install and changed:
        return f"added an Include of {snippet_path} to {where}; try `ssh <vm-name>.vm`"
    if install and status.own_include_line is not None and not status.managed_block:
        return f"{where} already includes {snippet_path} (line {status.own_include_line})"
    if install:
        return f"{where} already includes {snippet_path}; nothing changed"
    if changed:
        return f"removed banger's Include from {where}"
    if status.own_include_line is not None:
        return (
            f"{where} includes {snippet_path} on line {status.own_include_line}, which "
            "banger did not add; left as it is"
        )
    return f"{where} has no Include of banger's; nothing changed"
