"""What ``banger system`` does as the owner rather than as root.

Owns: running a function in a forked child that dropped to the owner's uid, gid and
groups (``as_owner``), and the three things done that way — reading the owner's network
settings from their ``config.toml``, making the owner's state and cache directories, and
removing those again when they are still empty. As the owner, whatever the owner placed
in their home (a symlink to /etc/shadow, a directory swapped for a link) can only reach
what the owner could reach anyway: root never walks a path the owner controls.

Must not: return anything but plain JSON values from the child, or let the child run
past its function (it always ends with ``os._exit``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from banger.errors import BangerError, error_from_payload
from banger.system.unit_files import Owner

_MAX_REPLY = 1 << 20


def as_owner(owner: Owner, fn: Callable[[], Any], *, extra_gids: tuple[int, ...] = ()) -> Any:
    """``fn()`` run as ``owner`` in a child process; its JSON-able result or its error."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: drop, run, report, exit — never return into the caller
        code = 0
        try:
            os.close(read_fd)
            groups = os.getgrouplist(owner.name, owner.gid) if _user_known(owner) else []
            os.setgroups(sorted({owner.gid, *groups, *extra_gids}))
            os.setgid(owner.gid)
            os.setuid(owner.uid)
            os.umask(0o077)
            reply: dict[str, Any] = {"ok": fn()}
        except BangerError as exc:
            reply = {"error": exc.to_payload()}
        except Exception as exc:  # noqa: BLE001 - the parent turns it into an error
            reply = {"error": BangerError(f"{type(exc).__name__}: {exc}").to_payload()}
        try:
            with os.fdopen(write_fd, "wb") as out:
                out.write(json.dumps(reply).encode())
        except BaseException:  # noqa: BLE001 - nothing may unwind into the parent's code
            code = 1
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read(_MAX_REPLY)
    _, status = os.waitpid(pid, 0)
    try:
        reply = json.loads(data)
    except ValueError:
        raise BangerError(
            f"a child run as {owner.name} ended without an answer (wait status {status})"
        ) from None
    if "error" in reply:
        raise error_from_payload(reply["error"], status=0)
    return reply["ok"]


def _user_known(owner: Owner) -> bool:
    import pwd

    try:
        return pwd.getpwnam(owner.name).pw_uid == owner.uid
    except KeyError:
        return False


def read_network(owner: Owner, home: Path) -> dict[str, str]:
    """``bridge_name``, ``bridge_ip`` and ``cidr`` from the owner's config (or defaults).

    ``home`` is the owner's home as seen from here (under ``--root`` it differs from the
    one in the units). Root's environment does not apply: only the file counts.
    """

    def read() -> dict[str, str]:
        from banger.config.settings import load_config
        from banger.host.paths import Layout

        env = {"HOME": str(home)}
        config = load_config(env=env, layout=Layout.from_env(env, uid=owner.uid))
        return {
            "bridge_name": config.bridge_name,
            "bridge_ip": config.bridge_ip,
            "cidr": config.cidr,
        }

    result: dict[str, str] = as_owner(owner, read)
    return result


def make_dirs(owner: Owner, dirs: list[Path]) -> list[str]:
    """Create each of ``dirs`` (and missing parents) as the owner, mode 0700.

    Returns the directories created, parents first; existing ones are left as they are.
    """

    def make() -> list[str]:
        created: list[str] = []
        for target in dirs:
            missing = [p for p in (target, *target.parents) if not p.exists()]
            for path in reversed(missing):
                path.mkdir(mode=0o700)
                created.append(str(path))
        return created

    result: list[str] = as_owner(owner, make)
    return result


def remove_empty_dirs(owner: Owner, dirs: list[Path]) -> tuple[list[str], list[str]]:
    """rmdir ``dirs`` deepest first, as the owner; (removed, kept because not empty)."""

    def remove() -> tuple[list[str], list[str]]:
        removed: list[str] = []
        kept: list[str] = []
        for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            try:
                path.rmdir()
            except FileNotFoundError:
                continue
            except OSError:  # not empty (the owner's state), or no longer a directory
                kept.append(str(path))
                continue
            removed.append(str(path))
        return removed, kept

    removed, kept = as_owner(owner, remove)
    return list(removed), list(kept)
