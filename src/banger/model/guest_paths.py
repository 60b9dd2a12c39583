"""Paths in a guest and names in a directory archive, as banger accepts them (pure).

Owns: the rule that a guest path is absolute and normalised (no empty, ``.`` or ``..``
component, no NUL, bounded), the same rule for an archive member's relative name, and the
bounds of file operations (docs/explanation/guest-files.md). The guest agent applies the
same rules again on its side (``banger_agent.check_guest_path``; a unit test checks they
agree). Must not: do I/O.
"""

from __future__ import annotations

import posixpath
from typing import Final

from banger.errors import InvalidArgument

MAX_PATH_BYTES: Final = 4096
MAX_NAME_BYTES: Final = 255
#: What ``read_file`` and ``vm cp`` take from a guest unless told otherwise.
READ_MAX_BYTES_DEFAULT: Final = 1 << 30
#: The largest single transfer a caller may ask for (read, write, or an archive).
TRANSFER_MAX_BYTES: Final = 64 << 30
#: Directory listings are cut here (``truncated`` says so).
LIST_MAX_ENTRIES: Final = 10_000
#: Entries in one directory archive.
ARCHIVE_MAX_ENTRIES: Final = 1_000_000


def check_guest_path(path: str) -> str:
    """``path`` if it is absolute and normalised; else InvalidArgument saying why."""
    hint = "give an absolute path without '.', '..' or '//', e.g. /root/file.txt"
    if not path.startswith("/"):
        raise InvalidArgument(f"guest path {path[:200]!r} is not absolute", hint=hint)
    if "\0" in path or len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise InvalidArgument("guest path is too long or holds a NUL", hint=hint)
    if path != "/" and (
        path.endswith("/")
        or any(
            part in ("", ".", "..") or len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES
            for part in path[1:].split("/")
        )
    ):
        raise InvalidArgument(f"guest path {path[:200]!r} is not normalised", hint=hint)
    return path


def check_relative_name(name: bytes) -> bytes:
    """An archive member's name: relative, normalised, bounded; else InvalidArgument."""
    if not name or name.startswith(b"/") or b"\0" in name or len(name) > MAX_PATH_BYTES:
        raise InvalidArgument(f"archive member {name[:200]!r} is not a relative path")
    for part in name.split(b"/"):
        if part in (b"", b".", b"..") or len(part) > MAX_NAME_BYTES:
            raise InvalidArgument(f"archive member {name[:200]!r} is not a normalised path")
    return name


def basename(path: str) -> str:
    return posixpath.basename(path)
