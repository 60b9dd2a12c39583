"""The host commands and lookups ``banger system`` needs, under an install root.

Owns: the install root (``/`` or ``--root DIR``: every file path is written under it,
users and groups of ``/`` are looked up through NSS and those of another root in its
``etc/group``), the group steps (``groupadd``/``gpasswd``/``groupdel``, with their
chroot options under another root) and ``systemctl``, all through the ``Runner``; and
writing a root-owned file crash-safely.

Must not: run systemctl under another root (the units there are not this host's).
"""

from __future__ import annotations

import grp
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from banger.errors import ConfigError, UnsupportedHost
from banger.host.runner import Runner
from banger.system.install_manifest import fsync_dir

SYSTEMD_MARKER = Path("/run/systemd/system")
SYSTEMCTL_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class HostRoot:
    root: Path
    runner: Runner

    @property
    def is_host(self) -> bool:
        return self.root == Path("/")

    def at(self, path: Path) -> Path:
        """``path`` (absolute, as the installed system sees it) under the install root."""
        return self.root / path.relative_to("/")

    def systemd_running(self) -> bool:
        """PID 1 is systemd (sd_booted(3)'s test); never true under another root."""
        return self.is_host and SYSTEMD_MARKER.is_dir()

    # -- groups -----------------------------------------------------------------------

    def groups_available(self) -> bool:
        return self.is_host or self.at(Path("/etc/group")).is_file()

    def group_members(self, name: str) -> list[str] | None:
        """Members of group ``name`` (None: no such group)."""
        if self.is_host:
            try:
                return list(grp.getgrnam(name).gr_mem)
            except KeyError:
                return None
        group_file = self.at(Path("/etc/group"))
        for line in group_file.read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 4 and fields[0] == name:
                return [m for m in fields[3].split(",") if m]
        return None

    def add_group(self, name: str) -> None:
        self.runner.run(["groupadd", "--system", *self._chroot("-R"), name])

    def delete_group(self, name: str) -> None:
        self.runner.run(["groupdel", *self._chroot("-R"), name])

    def add_member(self, group: str, user: str) -> None:
        self.runner.run(["gpasswd", *self._chroot("-Q"), "-a", user, group])

    def remove_member(self, group: str, user: str) -> None:
        self.runner.run(["gpasswd", *self._chroot("-Q"), "-d", user, group])

    def _chroot(self, flag: str) -> list[str]:
        return [] if self.is_host else [flag, str(self.root)]

    # -- systemd ----------------------------------------------------------------------

    def systemctl(self, *args: str, ok_codes: tuple[int, ...] = (0,)) -> str:
        return self.runner.run(
            ["systemctl", *args], timeout_s=SYSTEMCTL_TIMEOUT_S, ok_codes=ok_codes
        ).text.strip()

    def unit_state(self, unit: str) -> dict[str, str]:
        if not self.systemd_running():
            return {"active": "unknown", "enabled": "unknown"}
        # is-active / is-enabled exit non-zero for every state but the good one.
        any_code = tuple(range(256))
        return {
            "active": self.systemctl("is-active", unit, ok_codes=any_code) or "unknown",
            "enabled": self.systemctl("is-enabled", unit, ok_codes=any_code) or "unknown",
        }


def scripts_dir() -> Path:
    """Where this interpreter's console scripts are (``.venv/bin``, ``/usr/local/bin``…)."""
    return Path(sysconfig.get_path("scripts")).absolute()


def installed_script(name: str) -> Path:
    path = scripts_dir() / name
    if not os.access(path, os.X_OK):
        raise UnsupportedHost(
            f"{path} is missing: this banger installation has no {name}",
            hint="reinstall banger (scripts/setup.sh, or pip install) and run the "
            "`banger` of that installation",
        )
    return path


def write_root_file(path: Path, content: str, mode: int = 0o644) -> None:
    """Write ``path`` as root:root ``mode``, whole or not at all (rename over the old one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(content.encode())
        f.flush()
        os.fchown(f.fileno(), 0, 0)
        os.fchmod(f.fileno(), mode)
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def read_if_regular(path: Path) -> str | None:
    """The text of ``path`` if it is a regular file; None if absent; refuses anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if not path.is_file() or path.is_symlink():
        raise ConfigError(
            f"{path} exists and is not a regular file: banger system leaves it alone",
            hint=f"move it away, then run the command again (st_mode {st.st_mode:o})",
        )
    return path.read_text(errors="replace")
