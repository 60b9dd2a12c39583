"""Where the daemon's socket lives, from XDG variables, with nothing but ``os`` (SPEC §2).

Owns: the XDG base rule and the runtime directory rule, as strings. Shared by
``banger.host.paths.Layout`` and the CLI's fast ``vm exec`` (``banger.cli.fast_exec``),
which must not import pathlib (docs/explanation/cli-startup.md).
Must not: import anything but ``os`` and ``stat``, or create anything.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

APP = "banger"
SOCKET_NAME = "bangerd.sock"


def xdg(env: Mapping[str, str], name: str, default: str) -> str:
    """``$name`` when it is absolute; the XDG spec says relative values must be ignored."""
    value = env.get(name, "")
    return value if value.startswith("/") else default


def runtime_dir(env: Mapping[str, str], uid: int, fallback: str) -> str:
    """``$XDG_RUNTIME_DIR/banger``; else ``/run/user/UID/banger`` when that directory is
    the user's own; else ``fallback``."""
    value = env.get("XDG_RUNTIME_DIR", "")
    if value.startswith("/"):
        return f"{value.rstrip('/')}/{APP}"
    run_user = f"/run/user/{uid}"
    try:
        st = os.stat(run_user)  # noqa: PTH116 - no pathlib here (see the docstring)
    except OSError:
        return fallback
    if st.st_uid == uid and stat.S_ISDIR(st.st_mode):
        return f"{run_user}/{APP}"
    return fallback


def state_home(env: Mapping[str, str], home: str) -> str:
    return xdg(env, "XDG_STATE_HOME", f"{home.rstrip('/')}/.local/state")


def socket_path(env: Mapping[str, str], uid: int, home: str) -> str:
    """The daemon's socket, as ``Layout.from_env(env, uid=uid).socket_path`` gives it."""
    fallback = f"{state_home(env, home).rstrip('/')}/{APP}/run"
    return f"{runtime_dir(env, uid, fallback)}/{SOCKET_NAME}"
