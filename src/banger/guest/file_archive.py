"""The directory archive of ``vm cp``: written from a host tree, read into a host tree.

A record per entry, depth first, then an end record (docs/explanation/guest-files.md):

    [type u8][mode u32][size u64][mtime_ns i64][name_len u16][link_len u16] name link data

types 1 dir, 2 file (``size`` bytes of data follow), 3 symlink (``link`` is its target),
0 end. Names are relative paths with ``/`` between components. The guest agent
(``banger_agent.py``) has its own copy of the format (``fa_record``, ``file_pack``,
``file_unpack``); tests/unit/test_file_archive.py checks that the two agree.

Reading is the hostile direction: the archive comes from a guest and lands in a host
directory the user chose. Every name must be relative and normalised (ADVERSARIAL 1, 2);
each parent is opened component by component with ``O_NOFOLLOW`` under the destination's
fd, so no member is written through a symlink, whichever member planted it (3, 4, 6);
a member replaces a file or link but never a directory of the other type (13); sizes,
entry counts and name lengths are bounded and a cut, overlong or trailing-garbage archive
is refused (27, 28); symlinks are created as they are and never followed (64); modes
lose setuid, setgid and sticky bits, and directories stay owner-writable.
Owns: both directions of the format on the host. Must not: follow a link, write outside
the destination, or trust a header.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from banger.errors import BadResponse, BangerError, InvalidArgument
from banger.model.guest_paths import ARCHIVE_MAX_ENTRIES, MAX_PATH_BYTES, check_relative_name

HEADER = struct.Struct(">BIQqHH")
END, DIR, FILE, SYMLINK = 0, 1, 2, 3
MAX_DEPTH = 64
CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Progress = Callable[[int], None]


def record(
    kind: int, name: bytes, *, mode: int = 0, size: int = 0, mtime_ns: int = 0, link: bytes = b""
) -> bytes:
    return HEADER.pack(kind, mode, size, mtime_ns, len(name), len(link)) + name + link


@dataclass
class Summary:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    skipped: int = 0
    data_bytes: int = 0


# -- host tree -> archive ----------------------------------------------------------------


def pack_directory(root: Path, out: BinaryIO, *, progress: Progress | None = None) -> Summary:
    """The tree under ``root`` (not following links; devices, fifos, sockets skipped)."""
    summary = Summary()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _pack_dir(fd, b"", 0, out, summary, progress)
    finally:
        os.close(fd)
    out.write(record(END, b""))
    return summary


def _pack_dir(  # noqa: PLR0917 - a recursion carrying its context
    dir_fd: int,
    prefix: bytes,
    depth: int,
    out: BinaryIO,
    summary: Summary,
    progress: Progress | None,
) -> None:
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"the tree is deeper than {MAX_DEPTH} levels")
    with os.scandir(dir_fd) as entries:
        names = sorted(os.fsencode(entry.name) for entry in entries)
    for name in names:
        rel = prefix + name
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            _pack_file(dir_fd, name, rel, st, out, progress)
            summary.files += 1
            summary.data_bytes += st.st_size
        elif stat.S_ISLNK(st.st_mode):
            link = os.readlink(name, dir_fd=dir_fd)
            out.write(record(SYMLINK, rel, mode=0o777, mtime_ns=st.st_mtime_ns, link=link))
            summary.symlinks += 1
        elif stat.S_ISDIR(st.st_mode):
            out.write(record(DIR, rel, mode=mode, mtime_ns=st.st_mtime_ns))
            summary.dirs += 1
            sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _pack_dir(sub, rel + b"/", depth + 1, out, summary, progress)
            finally:
                os.close(sub)
        else:
            summary.skipped += 1


def _pack_file(  # noqa: PLR0917 - one member's context
    dir_fd: int,
    name: bytes,
    rel: bytes,
    st: os.stat_result,
    out: BinaryIO,
    progress: Progress | None,
) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        size = st.st_size
        out.write(
            record(FILE, rel, mode=stat.S_IMODE(st.st_mode), size=size, mtime_ns=st.st_mtime_ns)
        )
        left = size
        while left > 0:  # exactly the size announced: a file that shrank meanwhile is padded
            data = os.read(fd, min(CHUNK, left)) or bytes(min(CHUNK, left))
            out.write(data)
            left -= len(data)
            if progress is not None:
                progress(len(data))
    finally:
        os.close(fd)


# -- archive -> host tree ----------------------------------------------------------------


class _Source:
    """The archive stream, counting every byte against ``max_bytes``."""

    def __init__(self, src: BinaryIO, max_bytes: int, progress: Progress | None) -> None:
        self._src = src
        self.left = max_bytes
        self._limit = max_bytes
        self._progress = progress

    def read(self, size: int) -> bytes:
        if size > self.left:
            raise BadResponse(
                f"the archive is larger than {self._limit} bytes",
                hint="raise the limit (--max-size)",
            )
        buf = bytearray()
        while len(buf) < size:
            data = self._src.read(min(CHUNK, size - len(buf)))
            if not data:
                raise BadResponse("the archive is cut short")
            buf += data
        self.left -= size
        if self._progress is not None:
            self._progress(size)
        return bytes(buf)


def extract_archive(
    src: BinaryIO,
    dest: Path,
    *,
    max_bytes: int,
    max_entries: int = ARCHIVE_MAX_ENTRIES,
    progress: Progress | None = None,
) -> Summary:
    """Create the archive's tree under the existing directory ``dest``."""
    source = _Source(src, max_bytes, progress)
    summary = Summary()
    dirs: list[tuple[bytes, int]] = []
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for count in range(max_entries + 1):
            kind, mode, size, _, name_len, link_len = HEADER.unpack(source.read(HEADER.size))
            if kind == END:
                break
            if count == max_entries:
                raise BadResponse(f"the archive has more than {max_entries} entries")
            if kind not in (DIR, FILE, SYMLINK) or mode > 0o7777 or link_len > MAX_PATH_BYTES:
                raise BadResponse(f"bad archive record (type {kind}, mode {mode:o})")
            if kind != FILE and size:
                raise BadResponse("an archive record that is not a file has data")
            try:
                name = check_relative_name(source.read(name_len))
            except InvalidArgument as exc:
                raise BadResponse(exc.brief) from exc
            link = source.read(link_len)
            if kind == SYMLINK and (not link or b"\0" in link):
                raise BadResponse(f"bad symlink target in the archive for {name[:200]!r}")
            _extract_member(root, (kind, mode, size), name, link, source, summary)
            if kind == DIR:
                dirs.append((name, mode))
        if src.read(1):
            raise BadResponse("the archive has bytes after its end")
        for name, mode in reversed(dirs):  # last, so that a read-only dir could be filled
            parent, leaf = _open_parent(root, name)
            try:
                os.chmod(leaf, (mode & 0o777) | 0o700, dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)
    finally:
        os.close(root)
    return summary


def _open_parent(root: int, name: bytes) -> tuple[int, bytes]:
    """The parent directory of ``name`` under ``root``, never through a symlink."""
    *parents, leaf = name.split(b"/")
    fd = os.dup(root)
    try:
        for part in parents:
            try:
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:  # ELOOP / ENOTDIR: a link or a file in the way
                raise BadResponse(
                    f"the archive writes {name[:200]!r} through something that is not a directory"
                ) from exc
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd, leaf


def _extract_member(  # noqa: PLR0917 - one member's context
    root: int,
    head: tuple[int, int, int],
    name: bytes,
    link: bytes,
    source: _Source,
    summary: Summary,
) -> None:
    kind, mode, size = head
    parent, leaf = _open_parent(root, name)
    try:
        try:
            existing = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode) != (kind == DIR):
            raise BadResponse(f"the archive replaces {name[:200]!r} with another type")
        if kind == DIR:
            if existing is None:
                os.mkdir(leaf, 0o700, dir_fd=parent)
            summary.dirs += 1
            return
        if existing is not None:
            os.unlink(leaf, dir_fd=parent)  # a file or a link: the link itself goes
        if kind == SYMLINK:
            os.symlink(link, leaf, dir_fd=parent)
            summary.symlinks += 1
            return
        _write_file(parent, leaf, mode, size, source)
        summary.files += 1
        summary.data_bytes += size
    except OSError as exc:
        raise _host_error(exc, name) from exc
    finally:
        os.close(parent)


def _write_file(parent: int, leaf: bytes, mode: int, size: int, source: _Source) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(leaf, flags, 0o600, dir_fd=parent)
    try:
        left = size
        while left > 0:
            data = source.read(min(CHUNK, left))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            left -= len(data)
        os.fchmod(fd, mode & 0o777)
    finally:
        os.close(fd)


def _host_error(exc: OSError, name: bytes) -> BangerError:
    return BangerError(f"cannot write {os.fsdecode(name)[:200]!r} on the host: {exc.strerror}")
