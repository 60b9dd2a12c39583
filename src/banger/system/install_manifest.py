"""What ``banger system install`` created, so that uninstall removes exactly that.

Owns: the manifest (``/etc/banger/installed.json`` under the install root), its format,
and writing it crash-safely (a temporary file in the same directory, fsync, rename,
fsync of the directory): after a crash it is the old record or the new one, never half.
Install records each thing *before* creating it, so a crash leaves at worst a record of
something that does not exist, which uninstall skips.

Must not: record anything install found already there (a group that existed, a
directory the owner had): uninstall leaves those alone.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from banger.errors import ConfigError

FORMAT = 1
_HINT = "fix or remove it by hand; `banger system uninstall` reads it"


@dataclass
class Manifest:
    owner: str
    #: Files written (host paths as seen inside the install root).
    files: list[str] = field(default_factory=list)
    #: Directories created as root, parents first.
    dirs: list[str] = field(default_factory=list)
    #: The owner's directories created (as the owner), parents first; removed only if empty.
    owner_dirs: list[str] = field(default_factory=list)
    #: Units enabled with systemctl (none when installed under another root).
    units: list[str] = field(default_factory=list)
    group: str = ""
    group_created: bool = False
    #: Users added to an existing group (a created group goes with its members).
    members_added: list[str] = field(default_factory=list)

    def note(self, kind: str, value: str) -> bool:
        """Add ``value`` to the list ``kind``; False when it was there already."""
        items: list[str] = getattr(self, kind)
        if value in items:
            return False
        items.append(value)
        return True


def load(path: Path) -> Manifest | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data: Any = json.loads(raw)
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise ValueError("unknown format")
        manifest = Manifest(**data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"install manifest {path} is unreadable: {exc}", hint=_HINT) from None
    paths = ("files", "dirs", "owner_dirs")
    for kind in (*paths, "units", "members_added"):
        items = getattr(manifest, kind)
        if not isinstance(items, list) or not all(
            isinstance(i, str) and (i.startswith("/") or kind not in paths) for i in items
        ):
            raise ConfigError(f"install manifest {path}: bad {kind}", hint=_HINT)
    return manifest


def save(path: Path, manifest: Manifest) -> None:
    data = json.dumps({"format": FORMAT, **asdict(manifest)}, indent=2).encode() + b"\n"
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fchmod(f.fileno(), 0o644)
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)  # a crash's leftover
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fsync_dir(path.parent)
