"""Paths inside the tree being built, resolved the way the guest will see them.

Owns: turning a tar entry name into components (a leading ``/`` stripped, ``.`` dropped,
``..`` applied lexically, and a name that climbs above the root refused: ADVERSARIAL 1,
2), and ``Tree``, which walks components from the root one directory fd at a time. A
symlink met as a *parent* is resolved as if the process were chrooted into the tree: an
absolute target restarts at the root (3, 15, 22), ``..`` pops the walk's own fd stack
(the kernel never sees a ``..``), at most ``max_link_depth`` links are followed, and a
target that climbs above the root is refused as an escape (4, 6, 8). The last component
is never resolved here: callers act on it with ``dir_fd`` and no following.
Must not: follow a symlink on the host. Every ``open`` is relative to a directory fd
inside the tree and carries ``O_NOFOLLOW``; a symlink is only ever read with readlink.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from banger.oci.oci_limits import MAX_NAME_BYTES

Parts = tuple[bytes, ...]
#: O_NONBLOCK: opening a FIFO that was swapped in must fail (ENOTDIR), never wait.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
MAX_LINK_TARGET_BYTES = 4095  # ext4 keeps a symlink target in one block


class Refused(Exception):
    """An entry breaks a rule; the flattener adds the layer and entry name to the error."""


@dataclass(frozen=True)
class Dir:
    """An open directory inside the tree and its path from the root (no symlinks in it)."""

    fd: int
    path: Parts


def split_name(name: str, *, max_path_bytes: int) -> Parts:
    """Components of a tar entry name (or hardlink target), relative to the tree root."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise Refused("the name is not a byte string tar can carry") from exc
    if b"\0" in raw:
        raise Refused("the name contains a NUL byte")
    if len(raw) > max_path_bytes:
        raise Refused(f"the name is longer than {max_path_bytes} bytes")
    parts: list[bytes] = []
    for comp in raw.split(b"/"):
        if comp in (b"", b"."):
            continue
        if comp == b"..":
            if not parts:
                raise Refused("the name climbs above the image root with '..'")
            parts.pop()
            continue
        if len(comp) > MAX_NAME_BYTES:
            raise Refused(f"a component is longer than {MAX_NAME_BYTES} bytes")
        parts.append(comp)
    return tuple(parts)


def show(path: Sequence[bytes]) -> str:
    return "/" + b"/".join(path).decode("utf-8", "backslashreplace")


class Tree:
    """The root of the tree being built, and path resolution inside it."""

    def __init__(
        self,
        root_fd: int,
        *,
        max_link_depth: int,
        on_mkdir: Callable[[Parts, os.stat_result], None],
    ) -> None:
        self.root_fd = root_fd
        self._max_links = max_link_depth
        self._on_mkdir = on_mkdir
        # Tar entries come directory by directory: the last parent is kept open, which
        # saves a walk from the root per entry (measured: ~2x on 20 000 small files).
        self._cached: tuple[Parts, Dir] | None = None
        self._stale = False

    def parent(self, parts: Parts, *, create: bool) -> Dir | None:
        """The directory that holds ``parts[-1]`` (None if missing and not ``create``).

        The tree owns the returned fd: it stays open until the next ``parent`` call.
        """
        key = parts[:-1]
        if self._cached is not None:
            if not self._stale and self._cached[0] == key:
                return self._cached[1]
            os.close(self._cached[1].fd)
            self._cached = None
        self._stale = False
        found = self.open_dir(key, create=create)
        if found is not None:
            self._cached = (key, found)
        return found

    def invalidate(self) -> None:
        """A directory or symlink was removed: names may resolve differently from now on."""
        self._stale = True

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1].fd)
            self._cached = None

    @contextlib.contextmanager
    def lookup_parent(self, parts: Parts) -> Iterator[Dir | None]:
        """Like ``parent`` without creating, with an fd of its own (closed on exit)."""
        found = self.open_dir(parts[:-1], create=False)
        try:
            yield found
        finally:
            if found is not None:
                os.close(found.fd)

    @contextlib.contextmanager
    def directory(self, parts: Parts, *, create: bool) -> Iterator[Dir | None]:
        found = self.open_dir(parts, create=create)
        try:
            yield found
        finally:
            if found is not None:
                os.close(found.fd)

    def open_dir(self, parts: Parts, *, create: bool) -> Dir | None:
        """Resolve ``parts`` as a directory; the caller closes the returned fd.

        Missing directories are made (mode 0755, reported to ``on_mkdir``) when ``create``;
        otherwise a missing or non-directory component gives None.
        """
        names: list[bytes] = []
        fds: list[int] = []
        todo = list(reversed(parts))  # a stack: a symlink's target is pushed on top
        links = 0
        try:
            while todo:
                comp = todo.pop()
                if comp in (b"", b"."):
                    continue
                if comp == b"..":
                    if not fds:  # names are cleaned lexically, so this came from a link
                        raise Refused(f"a symlink on the way leaves the image root ({show(names)})")
                    os.close(fds.pop())
                    names.pop()
                    continue
                step = self._step(fds[-1] if fds else self.root_fd, names, comp, create=create)
                if step is None:
                    return None
                if isinstance(step, bytes):
                    links += 1
                    if links > self._max_links:
                        raise Refused(f"more than {self._max_links} symlinks on the way")
                    if step.startswith(b"/"):  # the guest's root is the tree's root
                        while fds:
                            os.close(fds.pop())
                        names.clear()
                    todo.extend(reversed(step.split(b"/")))
                    continue
                fds.append(step)
                names.append(comp)
            return Dir(fds.pop() if fds else os.dup(self.root_fd), tuple(names))
        finally:
            for fd in fds:
                os.close(fd)

    def _step(
        self, cur: int, names: list[bytes], comp: bytes, *, create: bool
    ) -> int | bytes | None:
        """Open child ``comp`` of ``cur`` as a directory; a symlink gives its target."""
        try:
            return os.open(comp, DIR_FLAGS, dir_fd=cur)
        except FileNotFoundError:
            if not create:
                return None
            return self._mkdir(cur, (*names, comp))
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
        st = os.stat(comp, dir_fd=cur, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            return os.readlink(comp, dir_fd=cur)
        if create:
            raise Refused(f"{show((*names, comp))} exists and is not a directory")
        return None

    def _mkdir(self, cur: int, path: Parts) -> int:
        os.mkdir(path[-1], 0o755, dir_fd=cur)
        fd = os.open(path[-1], DIR_FLAGS, dir_fd=cur)
        self._on_mkdir(path, os.fstat(fd))
        return fd

    def open_exact(self, path: Parts) -> int | None:
        """Open the directory at exactly ``path``, following no symlink at all (or None)."""
        fd = os.dup(self.root_fd)
        for comp in path:
            try:
                child = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except OSError:
                os.close(fd)
                return None
            os.close(fd)
            fd = child
        return fd
