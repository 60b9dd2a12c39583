"""Creating one tar entry in the tree, with the metadata its header carries.

Owns: what a header says about an inode (``Meta``: mode with setuid/setgid/sticky, owner,
mtime, ``SCHILY.xattr.*`` extended attributes such as ``security.capability``) and its
checks (owner and device numbers in range, ADVERSARIAL 24), creating regular files,
directories, symlinks (target kept verbatim: it is the guest's path), hardlinks (to the
inode inside the tree, never following a symlink: 8-10, 21), device nodes and FIFOs, and
replacing whatever was at the name before: the old entry is unlinked (a directory
removed without following links) and the new one created with ``O_EXCL``, so nothing is
ever written through an old symlink or hardlink (9, 13). Directory modes, owners and
mtimes are applied last (``DirMetadata``): a 0555 directory must still take its children.
Must not: open anything but a regular file it has just created or a directory (a FIFO
or device is never opened: 24), or resolve names (``banger.oci.pathres`` does).

Order of metadata calls, and why: chown first (the kernel drops setuid bits and
``security.capability`` on chown), then xattrs, then chmod, then the times.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO

from banger.oci.pathres import DIR_FLAGS, MAX_LINK_TARGET_BYTES, Dir, Parts, Refused, Tree

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK_BYTES = 1 << 20
_ZEROS = bytes(_CHUNK_BYTES)
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown
_MAX_MTIME_S = 2**34 - 1  # ext4 with 256-byte inodes stores times up to year 2446
_MAX_MAJOR = 2**12 - 1  # Linux dev_t: 12-bit major, 20-bit minor
_MAX_MINOR = 2**20 - 1
_XATTR_PREFIX = "SCHILY.xattr."
_MAX_XATTR_VALUE_BYTES = 65536  # XATTR_SIZE_MAX


class OwnerMode(StrEnum):
    """What the flattener may do that needs (fake) root."""

    #: chown, mknod and every xattr namespace are done; a refusal is an error. Inside
    #: fakeroot these calls are recorded by fakeroot; as real root they are real.
    APPLY = "apply"
    #: For an ordinary user outside fakeroot: owners, device nodes and xattrs outside
    #: ``user.`` are counted in ``skipped`` and not applied; directories keep u+rwx.
    SKIP = "skip"


@dataclass(frozen=True)
class Meta:
    mode: int
    uid: int
    gid: int
    mtime_ns: int | None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


IMPLIED_DIR = Meta(mode=0o755, uid=0, gid=0, mtime_ns=None)


def meta_of(member: tarfile.TarInfo) -> Meta:
    for what, value in (("uid", member.uid), ("gid", member.gid)):
        if not 0 <= value <= _MAX_ID:
            raise Refused(f"{what} {value} is out of range")
    return Meta(
        member.mode & 0o7777, member.uid, member.gid, _mtime_ns(member.mtime), _xattrs(member)
    )


def _mtime_ns(mtime: float) -> int:
    # Out-of-range times are clamped, not refused: they harm nothing and images have them.
    if not math.isfinite(mtime):
        return 0
    return int(min(max(mtime, 0), _MAX_MTIME_S) * 1_000_000_000)


def _xattrs(member: tarfile.TarInfo) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for key, value in member.pax_headers.items():
        if not key.startswith(_XATTR_PREFIX):
            continue
        name = key[len(_XATTR_PREFIX) :].encode("utf-8", "surrogateescape")
        data = value.encode("utf-8", "surrogateescape")
        if not name or b"\0" in name or len(name) > 255 or len(data) > _MAX_XATTR_VALUE_BYTES:
            raise Refused(f"invalid extended attribute {name[:64]!r}")
        found[name] = data
    return found


def link_target(member: tarfile.TarInfo) -> bytes:
    target = member.linkname.encode("utf-8", "surrogateescape")
    if not target or b"\0" in target or len(target) > MAX_LINK_TARGET_BYTES:
        raise Refused("the symlink target is empty, has a NUL byte or is too long")
    return target


def device_numbers(member: tarfile.TarInfo) -> int:
    major, minor = member.devmajor, member.devminor
    if not (0 <= major <= _MAX_MAJOR and 0 <= minor <= _MAX_MINOR):
        raise Refused(f"device number {major}:{minor} is out of range")
    return os.makedev(major, minor)


@dataclass
class Counts:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    devices: int = 0
    fifos: int = 0
    skipped: int = 0


class Writer:
    """Creates entries in a directory of the tree; ``owners`` says what may be faked."""

    def __init__(
        self, owners: OwnerMode, counts: Counts, *, on_removed: Callable[[], None]
    ) -> None:
        self.owners = owners
        self.counts = counts
        self._on_removed = on_removed  # a dir or symlink went: cached paths are stale

    def clear(self, parent: Dir, name: bytes, *, keep_dir: bool) -> bool:
        """Remove what is at ``name`` (True: a directory is there and is kept)."""
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent.fd)
            if stat.S_ISLNK(st.st_mode):
                self._on_removed()
        elif keep_dir:
            return True
        else:
            # dir_fd-relative rmtree never follows a symlink (avoids_symlink_attacks).
            shutil.rmtree(os.fsdecode(name), dir_fd=parent.fd)
            self._on_removed()
        return False

    def regular(self, parent: Dir, name: bytes, data: IO[bytes], size: int, meta: Meta) -> None:
        self.clear(parent, name, keep_dir=False)
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent.fd)
        try:
            _copy(data, fd, size)
            if self.owners is OwnerMode.APPLY:
                os.fchown(fd, meta.uid, meta.gid)
            self._set_xattrs(fd, meta, plain=True)
            os.fchmod(fd, meta.mode)
            if meta.mtime_ns is not None:
                os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
        finally:
            os.close(fd)
        self.counts.files += 1

    def directory(self, parent: Dir, name: bytes, meta: Meta) -> os.stat_result:
        """Create (or keep) a directory; its mode, owner and mtime come in ``DirMetadata``."""
        if not self.clear(parent, name, keep_dir=True):
            os.mkdir(name, 0o700, dir_fd=parent.fd)
        fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
        try:
            self._set_xattrs(fd, meta, plain=True)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self.counts.dirs += 1
        return st

    def symlink(self, parent: Dir, name: bytes, target: bytes, meta: Meta) -> None:
        self.clear(parent, name, keep_dir=False)
        os.symlink(target, name, dir_fd=parent.fd)
        self._finish_node(parent, name, meta, chmod=False)
        self.counts.symlinks += 1

    def hardlink(self, source: Dir, source_name: bytes, parent: Dir, name: bytes) -> None:
        """Link ``name`` to the inode at ``source_name``; the link gets no metadata of its own."""
        try:
            st = os.stat(source_name, dir_fd=source.fd, follow_symlinks=False)
        except FileNotFoundError:
            raise Refused("the hardlink target does not exist") from None
        if stat.S_ISDIR(st.st_mode):
            raise Refused("the hardlink target is a directory")
        if source.path == parent.path and source_name == name:
            return  # a link to itself: already true
        self.clear(parent, name, keep_dir=False)
        try:
            # follow_symlinks=False: linkat(2) without AT_SYMLINK_FOLLOW, a link to a
            # symlink is a link to the symlink's own inode (ADVERSARIAL 10).
            os.link(
                source_name, name, src_dir_fd=source.fd, dst_dir_fd=parent.fd, follow_symlinks=False
            )
        except FileNotFoundError:
            raise Refused("the hardlink replaced the directory holding its own target") from None
        self.counts.hardlinks += 1

    def node(self, parent: Dir, name: bytes, member: tarfile.TarInfo, meta: Meta) -> None:
        """A device node or FIFO: created, never opened."""
        if member.isfifo():
            self.clear(parent, name, keep_dir=False)
            os.mkfifo(name, 0o600, dir_fd=parent.fd)
            self.counts.fifos += 1
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = device_numbers(member)
            self.clear(parent, name, keep_dir=False)
            if self.owners is OwnerMode.SKIP:
                self.counts.skipped += 1
                return
            os.mknod(name, kind | 0o600, device, dir_fd=parent.fd)
            self.counts.devices += 1
        self._finish_node(parent, name, meta, chmod=True)

    def dir_xattrs(self, fd: int, meta: Meta) -> None:
        self._set_xattrs(fd, meta, plain=True)

    def _finish_node(self, parent: Dir, name: bytes, meta: Meta, *, chmod: bool) -> None:
        if self.owners is OwnerMode.APPLY:
            os.chown(name, meta.uid, meta.gid, dir_fd=parent.fd, follow_symlinks=False)
        if meta.xattrs:
            # No fd for a symlink or FIFO; the fd's /proc link names the directory, and
            # follow_symlinks=False keeps lsetxattr on the entry itself.
            self._set_xattrs(b"/proc/self/fd/%d/%s" % (parent.fd, name), meta, plain=False)
        if chmod:  # just created by us as a node, never a symlink: chmod cannot follow
            os.chmod(name, meta.mode, dir_fd=parent.fd)
        if meta.mtime_ns is not None:
            times = (meta.mtime_ns, meta.mtime_ns)
            os.utime(name, ns=times, dir_fd=parent.fd, follow_symlinks=False)

    def _set_xattrs(self, target: int | bytes, meta: Meta, *, plain: bool) -> None:
        for key, value in meta.xattrs.items():
            # An ordinary user may only set user.* xattrs, and only on files and dirs.
            if self.owners is OwnerMode.SKIP and not (plain and key.startswith(b"user.")):
                self.counts.skipped += 1
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ERANGE, errno.E2BIG):
                    raise Refused(f"the kernel refuses extended attribute {key[:64]!r}") from exc
                if exc.errno != errno.EOPNOTSUPP:
                    raise
                self.counts.skipped += 1  # a namespace this kernel does not know


def _copy(data: IO[bytes], fd: int, size: int) -> None:
    """Copy ``size`` bytes; all-zero chunks become holes (mkfs.ext4 -d keeps them sparse)."""
    remaining = size
    while remaining:
        chunk = data.read(min(_CHUNK_BYTES, remaining))
        if not chunk:
            raise tarfile.ReadError("unexpected end of data")
        if chunk == _ZEROS[: len(chunk)]:
            os.lseek(fd, len(chunk), os.SEEK_CUR)
        else:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        remaining -= len(chunk)
    os.ftruncate(fd, size)


@dataclass(frozen=True)
class _Pending:
    ino: int
    meta: Meta


class DirMetadata:
    """Directory modes, owners and mtimes, applied after the last layer, deepest first."""

    def __init__(self) -> None:
        self._dirs: dict[Parts, _Pending] = {}

    def record(self, path: Parts, ino: int, meta: Meta) -> None:
        self._dirs[path] = _Pending(ino, meta)

    def apply(self, tree: Tree, owners: OwnerMode) -> None:
        for path in sorted(self._dirs, key=len, reverse=True):
            pending = self._dirs[path]
            fd = tree.open_exact(path)  # follows nothing: a dir replaced by a link is skipped
            if fd is None:
                continue
            try:
                if os.fstat(fd).st_ino == pending.ino:  # a later layer may have replaced it
                    _apply_dir(fd, pending.meta, owners)
            finally:
                os.close(fd)


def _apply_dir(fd: int, meta: Meta, owners: OwnerMode) -> None:
    if owners is OwnerMode.APPLY:
        os.fchown(fd, meta.uid, meta.gid)
        os.fchmod(fd, meta.mode)
    else:
        os.fchmod(fd, meta.mode | 0o700)  # the owner must be able to remove the tree
    if meta.mtime_ns is not None:
        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
