"""What the daemon finds at its socket path before binding, and keeping watch on it after.

Owns: listing what on disk proves that the state database cannot be empty (item 3),
deciding whether the thing at ``bangerd.sock`` is banger's own stale leftover (a
socket of ours that nobody serves: removed) or anything else (refused with an error that
names the path: issue 14 items 11, 21), and noticing that the socket — or the whole
runtime dir — was deleted under a running daemon (item 2).
Must not: be called without the daemon's locks held (``banger.daemon.lock``): only then is
an unserved socket of ours known to be a dead daemon's.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from banger.daemon.lock import describe_type
from banger.errors import DaemonAlreadyRunning, PermissionDenied
from banger.host.paths import Layout

_CONNECT_TIMEOUT_S = 1.0


def clear_stale_socket(path: Path) -> None:
    """Remove a dead daemon's socket at ``path``; refuse anything else found there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise PermissionDenied(
            f"{path} is {describe_type(st.st_mode)}, not bangerd's socket",
            hint=f"banger did not make this; remove {path} if nothing of yours needs it",
        )
    if st.st_uid != os.geteuid():
        raise PermissionDenied(
            f"the socket {path} belongs to uid {st.st_uid}, not to you",
            hint=f"remove {path}, or point XDG_RUNTIME_DIR elsewhere",
        )
    if _served(path):
        # We hold the locks, so this is no banger of this build: an older one, or another
        # program. Its clients would lose it if we replaced the socket.
        raise DaemonAlreadyRunning(
            f"a process is still serving {path} although no bangerd holds its lock",
            hint="stop that process (`ss -xlp | grep bangerd.sock` names it), then retry",
        )
    path.unlink(missing_ok=True)


def _served(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_CONNECT_TIMEOUT_S)
    try:
        probe.connect(str(path))
    except OSError as exc:
        # ECONNREFUSED: nobody listens; EAGAIN / timeout: a listener with a full backlog.
        return exc.errno not in {errno.ECONNREFUSED, errno.ENOENT}
    finally:
        probe.close()
    return True


class SocketWatch:
    """Tells whether the socket the daemon bound is still reachable at its path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        st = path.stat()
        self._identity = (st.st_dev, st.st_ino)

    def intact(self) -> bool:
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity


def state_evidence(layout: Layout, *, limit: int = 5) -> list[Path]:
    """Published images, kernels and VM dirs: each must have a row in ``state.db``.

    A database that is missing or empty while these exist lost its rows; starting on it
    would silently forget them (issue 14 item 3).
    """
    found: list[Path] = []
    for root in layout.artifact_roots():
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        found.extend(e for e in entries if not e.name.startswith("."))
        if len(found) >= limit:
            break
    return found[:limit]
