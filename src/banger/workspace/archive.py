"""The tar stream a workspace or a file sync travels in, and the safe host reads behind it.

Owns: ``RootDir`` — a directory opened once, below which every path is reached one
component at a time with ``O_NOFOLLOW`` relative to its parent's fd, so a symlink swapped
in after we looked cannot make us read outside it (ADVERSARIAL 60); a regular file is
opened ``O_PATH`` first, checked with ``fstat`` and only then reopened for reading, so a
FIFO or device never blocks us (61). ``TarWriter`` streams GNU tar entries whose names
are the exact bytes git or the directory listing gave (67), symlinks as symlinks with
their target verbatim (66), files with exactly the size ``fstat`` saw (62). And the guest
side: ``unpack_script``, the shell that puts a workspace archive in place in the guest.

Must not: dereference a symlink below the root, follow a name that came from a guest, or
hold a whole file in memory.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shlex
import stat
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from banger.workspace import EXIT_EXISTS

READ_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Kind(StrEnum):
    FILE = "file"
    SYMLINK = "symlink"
    DIR = "dir"


@dataclass(frozen=True)
class Item:
    """One thing found below a root: ``rel`` is its path (bytes, ``/``-separated)."""

    rel: bytes
    kind: Kind
    mode: int
    size: int = 0
    mtime: float = 0.0
    target: bytes | None = None  # symlinks only


class Unsafe(Exception):
    """A path below the root that goes through a symlink or a non-directory."""


class RootDir:
    """A directory opened once; ``rel`` paths below it never follow symlinks.

    Directory fds along the current path are kept on a stack, so walking a sorted list
    costs one ``openat`` per new directory and never more fds than the path is deep.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._stack: list[tuple[bytes, int]] = []

    def close(self) -> None:
        for _, fd in self._stack:
            os.close(fd)
        self._stack = []
        os.close(self.fd)

    def __enter__(self) -> RootDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def parent(self, rel: bytes, *, create: bool = False) -> tuple[int, bytes]:
        """The fd of ``rel``'s directory and its last component; ``create`` makes missing
        directories (0755) on the way, still refusing to pass through a symlink."""
        parts = rel.split(b"/")
        if not rel or rel.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts):
            raise Unsafe(f"not a plain relative path: {rel!r}")
        dirs, leaf = parts[:-1], parts[-1]
        keep = 0
        while keep < min(len(dirs), len(self._stack)) and self._stack[keep][0] == dirs[keep]:
            keep += 1
        for _, fd in self._stack[keep:]:
            os.close(fd)
        del self._stack[keep:]
        for name in dirs[keep:]:
            parent = self._stack[-1][1] if self._stack else self.fd
            try:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=parent)
                self._stack.append((name, os.open(name, _DIR_FLAGS, dir_fd=parent)))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Unsafe(f"{os.fsdecode(name)!r} is a symlink or not a directory") from exc
                raise
        return (self._stack[-1][1] if self._stack else self.fd), leaf

    def lstat(self, rel: bytes) -> os.stat_result | None:
        """``lstat`` below the root; None when it does not exist."""
        try:
            parent, leaf = self.parent(rel)
            return os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def readlink(self, rel: bytes) -> bytes:
        parent, leaf = self.parent(rel)
        return os.readlink(leaf, dir_fd=parent)

    def open_regular(self, rel: bytes, expect: os.stat_result | None = None) -> int:
        """A read fd on a regular file, or ``Unsafe`` if it is (now) anything else."""
        parent, leaf = self.parent(rel)
        pfd = os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            st = os.fstat(pfd)
            if not stat.S_ISREG(st.st_mode):
                raise Unsafe("not a regular file (any more)")
            if expect is not None and (st.st_ino, st.st_dev) != (expect.st_ino, expect.st_dev):
                raise Unsafe("replaced while being copied")
            return os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(pfd)

    def listdir(self, rel: bytes) -> list[bytes]:
        """Names in a directory below the root (``b""`` is the root itself), sorted."""
        if rel == b"":
            return sorted(os.fsencode(n) for n in os.listdir(self.fd))  # noqa: PTH208 (an fd)
        parent, leaf = self.parent(rel)
        fd = os.open(leaf, _DIR_FLAGS, dir_fd=parent)
        try:
            return sorted(os.fsencode(n) for n in os.listdir(fd))  # noqa: PTH208 (an fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Unsafe("a symlink or not a directory") from exc
            raise
        finally:
            os.close(fd)


def display(rel: bytes) -> str:
    """A path as text for messages: control characters and backslashes escaped, the rest
    as the filesystem spells it (so a name with a newline stays on one line)."""
    text = os.fsdecode(rel)
    if not any(c in text for c in '\\"') and text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif not ch.isprintable():
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def classify(root: RootDir, rel: bytes) -> Item | str | None:
    """What ``rel`` is, an ``Item`` to copy, a reason it is skipped, or None if gone."""
    try:
        st = root.lstat(rel)
        if st is None:
            return None
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            return Item(rel, Kind.SYMLINK, 0o777, 0, st.st_mtime, root.readlink(rel))
        kind = Kind.FILE if stat.S_ISREG(mode) else Kind.DIR if stat.S_ISDIR(mode) else None
    except Unsafe as exc:
        return f"{display(rel)}: skipped, {exc}"
    except PermissionError:
        return f"{display(rel)}: skipped, permission denied"
    if kind is None:
        return f"{display(rel)}: skipped, {_special(mode)}"
    size = st.st_size if kind is Kind.FILE else 0
    return Item(rel, kind, stat.S_IMODE(mode), size, st.st_mtime)


def _special(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"


def walk(
    root: RootDir, rel: bytes = b"", *, depth: int = 0, max_depth: int = 64
) -> Iterator[Item | str]:
    """Everything below ``rel`` (not ``rel`` itself), parents before children; symlinks
    are yielded as symlinks and never descended into; skips are yielded as reasons."""
    if depth > max_depth:
        yield f"{display(rel)}: skipped, nested deeper than {max_depth} directories"
        return
    try:
        names = root.listdir(rel)
    except (Unsafe, PermissionError) as exc:
        yield f"{display(rel)}: skipped, {exc.strerror if isinstance(exc, OSError) else exc}"
        return
    for name in names:
        child = rel + b"/" + name if rel else name
        found = classify(root, child)
        if found is None:
            continue
        yield found
        if isinstance(found, Item) and found.kind is Kind.DIR:
            yield from walk(root, child, depth=depth + 1, max_depth=max_depth)


class _ExactReader(io.RawIOBase):
    """Exactly ``size`` bytes of an fd: a file that grew is cut, one that shrank is
    padded with zeros, so the tar stays well-formed (62); ``changed`` tells which."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.left, self.changed = fd, size, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self.left)
        if want == 0:
            return 0
        data = os.read(self.fd, want)
        if not data:
            self.changed = True
            data = b"\0" * want
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)


class TarWriter:
    """GNU tar to a stream, every entry owned by root; names are exact bytes."""

    def __init__(self, out: IO[bytes]) -> None:
        # Closed by close(): the writer lives across several calls.
        self._tar = tarfile.open(  # noqa: SIM115
            fileobj=out,
            mode="w|",
            format=tarfile.GNU_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
        )
        self.bytes_written = 0
        self.warnings: list[str] = []
        self._now = time.time()

    def close(self) -> None:
        self._tar.close()

    def _info(self, name: bytes, kind: bytes, mode: int, mtime: float | None) -> tarfile.TarInfo:
        info = tarfile.TarInfo(os.fsdecode(name))
        info.type, info.mode = kind, mode
        info.mtime = int(mtime or self._now)  # 0: unknown (a tree read from git)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def add_dir(self, name: bytes, mode: int, mtime: float | None = None) -> None:
        self._tar.addfile(self._info(name, tarfile.DIRTYPE, mode, mtime))

    def add_symlink(self, name: bytes, target: bytes, mtime: float | None = None) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777, mtime)
        info.linkname = os.fsdecode(target)
        self._tar.addfile(info)

    def add_bytes(self, name: bytes, data: bytes, mode: int) -> None:
        info = self._info(name, tarfile.REGTYPE, mode, None)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))
        self.bytes_written += len(data)

    def add_file(self, root: RootDir, item: Item, name: bytes, mode: int) -> bool:
        """Copy a regular file found earlier; False (and a warning) if it changed type."""
        try:
            fd = root.open_regular(item.rel)
        except (Unsafe, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            self.warnings.append(f"{display(item.rel)}: skipped, {reason}")
            return False
        try:
            size = os.fstat(fd).st_size
            info = self._info(name, tarfile.REGTYPE, mode, item.mtime)
            info.size = size
            reader = _ExactReader(fd, size)
            self._tar.addfile(info, io.BufferedReader(reader, READ_CHUNK))
            if reader.changed:
                self.warnings.append(f"{display(item.rel)}: shrank while being copied")
            self.bytes_written += size
        finally:
            os.close(fd)
        return True


def parent_dirs(paths: Iterable[bytes]) -> list[bytes]:
    """Every directory the paths need, parents first, each once."""
    seen: dict[bytes, None] = {}
    for rel in paths:
        parts = rel.split(b"/")[:-1]
        for i in range(1, len(parts) + 1):
            seen.setdefault(b"/".join(parts[:i]), None)
    return list(seen)


def unpack_script(guest_path: str, *, replace: bool, readonly: bool) -> str:
    """The guest side of ``workspace prepare``: the archive on stdin becomes ``guest_path``.

    It unpacks into a fresh staging dir next to the destination and renames it into
    place, so a failure leaves the old tree (or nothing), and nothing that was already in
    the guest (a symlink the guest made, say) is written through. An existing destination
    is refused (exit ``EXIT_EXISTS``) unless ``replace``.
    """
    dest = shlex.quote(guest_path)
    lines = [
        "set -eu",
        f"dest={dest}",
        'parent="${dest%/*}"',
        'if [ -L "$dest" ] || { [ -e "$dest" ] && ! [ -d "$dest" ]; } || '
        '{ [ -d "$dest" ] && [ -n "$(ls -A -- "$dest")" ]; }; then',
        f"  if [ {int(replace)} = 0 ]; then",
        f'    echo "$dest already exists in the guest" >&2; exit {EXIT_EXISTS}',
        "  fi",
        "fi",
        'mkdir -p -- "$parent"',
        'stage=$(mktemp -d "$parent/.banger-workspace.XXXXXX")',
        "trap 'rm -rf -- \"$stage\"' EXIT",
        # ssh going away (banger interrupted) hangs the shell up: clean up then too.
        "trap 'exit 1' HUP INT TERM PIPE",
        'tar -x -o -f - -C "$stage"',
        'chmod 0755 "$stage"',
        'umount -- "$dest" 2>/dev/null || true',
        'rm -rf -- "$dest"',
        'mv -- "$stage" "$dest"',
        "trap - EXIT",
    ]
    if readonly:
        lines += ['mount --bind "$dest" "$dest"', 'mount -o remount,bind,ro "$dest"']
    return "\n".join(lines) + "\n"
