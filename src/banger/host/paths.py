"""Where banger keeps things on the host (SPEC §2), derived from XDG variables.

Owns: the directory layout and the creation of private (0700, owner-only) directories.
Must not: create files or decide anything about their contents.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from banger.errors import PermissionDenied
from banger.host import runtime_dir as rt

APP = rt.APP


@dataclass(frozen=True)
class Layout:
    config_dir: Path
    state_dir: Path
    cache_dir: Path
    runtime_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, uid: int | None = None) -> Layout:
        env = os.environ if env is None else env
        uid = os.getuid() if uid is None else uid
        home = Path(env.get("HOME") or Path.home())
        state_home = Path(rt.state_home(env, str(home)))
        return cls(
            config_dir=_xdg(env, "XDG_CONFIG_HOME", home / ".config") / APP,
            state_dir=state_home / APP,
            cache_dir=_xdg(env, "XDG_CACHE_HOME", home / ".cache") / APP,
            runtime_dir=Path(rt.runtime_dir(env, uid, str(state_home / APP / "run"))),
        )

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "bangerd.log"

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / rt.SOCKET_NAME

    @property
    def lock_path(self) -> Path:
        """One daemon per socket: the lock beside it."""
        return self.runtime_dir / "bangerd.lock"

    @property
    def state_lock_path(self) -> Path:
        """One daemon per state dir, whatever its runtime dir (issue 14 item 1)."""
        return self.state_dir / "bangerd.lock"

    @property
    def start_log_path(self) -> Path:
        """Where a daemon started by the CLI writes stderr before its log is set up."""
        return self.runtime_dir / "bangerd.start.log"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def kernels_dir(self) -> Path:
        return self.state_dir / "kernels"

    @property
    def vms_dir(self) -> Path:
        return self.state_dir / "vms"

    @property
    def ssh_dir(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def oci_cache_dir(self) -> Path:
        return self.cache_dir / "oci"

    def artifact_roots(self) -> tuple[Path, ...]:
        """Directories whose entries are published crash-safely (see banger.host.publish)."""
        return (self.images_dir, self.kernels_dir, self.vms_dir)


def _xdg(env: Mapping[str, str], name: str, default: Path) -> Path:
    return Path(rt.xdg(env, name, str(default)))


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) so that only the owner can enter it (mode 0700).

    An existing directory owned by someone else is refused: a socket or key inside it
    could be reached or replaced by that user.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a file or a dangling symlink: refused below, naming the path
    except (PermissionError, NotADirectoryError) as exc:
        # Other errors (ENOSPC, ...) propagate: callers turn those into space errors.
        raise PermissionDenied(
            f"cannot create {path}: {exc.strerror}",
            hint="check that you own its parent, or point XDG_RUNTIME_DIR / XDG_STATE_HOME "
            "elsewhere",
        ) from exc
    try:
        st = path.lstat()
    except OSError as exc:
        raise PermissionDenied(f"cannot inspect {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionDenied(
            f"{path} is not a directory",
            hint="banger did not make it: remove it if nothing of yours needs it; banger "
            "recreates the directory",
        )
    if st.st_uid != os.geteuid():
        raise PermissionDenied(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})",
            hint="remove it or point XDG_RUNTIME_DIR / XDG_STATE_HOME elsewhere",
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
    return path
