"""The helper's listening socket: its directory, ownership and modes.

Owns: making the socket directory (0750, root:group) and the socket (0660) so that only
root and the group can reach it, refusing to start when another helper already answers
there, and removing a stale socket left by a helper that died. SO_PEERCRED on every
connection (``banger.helper.connections``) is the real check; these modes keep everyone else
from even connecting (ADVERSARIAL 121, 122).

Must not: follow a symlink for the directory or remove anything that is not a socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from banger.errors import AlreadyExists, ConfigError, PermissionDenied

DIR_MODE = 0o750
SOCKET_MODE = 0o660
BACKLOG = 64


def bind(path: Path, gid: int) -> socket.socket:
    """A listening Unix socket at ``path`` (absolute), reachable by root and ``gid`` only."""
    if not path.is_absolute():
        raise ConfigError(f"socket path {path} must be absolute")
    _prepare_dir(path.parent, gid)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bound inside the 0750 directory: between bind and chmod only root and the group
        # can see it, and they pass SO_PEERCRED checks anyway.
        sock.bind(str(path))
        os.chown(path, 0, gid, follow_symlinks=False)
        path.chmod(SOCKET_MODE)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _prepare_dir(directory: Path, gid: int) -> None:
    with contextlib.suppress(FileExistsError):
        directory.mkdir(DIR_MODE)
    # Owner and mode are set through a descriptor opened without following a symlink, so
    # a directory swapped for a link after the check cannot redirect them.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise PermissionDenied(
            f"{directory} must be a directory owned by root (it holds the helper's socket): "
            f"{exc.strerror}",
            hint=f"remove {directory} or pick another --socket",
        ) from None
    try:
        if os.fstat(fd).st_uid != 0:
            raise PermissionDenied(
                f"{directory} must be owned by root (it holds the helper's socket)",
                hint=f"remove {directory} or pick another --socket",
            )
        os.fchown(fd, 0, gid)
        os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)


def _remove_stale(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise PermissionDenied(f"{path} exists and is not a socket; the helper leaves it alone")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a helper that died left it
        return
    finally:
        probe.close()
    raise AlreadyExists(
        f"another banger-helper already listens on {path}",
        hint="stop it first, or give this one another --socket",
    )
