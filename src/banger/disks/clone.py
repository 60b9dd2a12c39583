"""Cheap copies of disk image files: reflink where the filesystem can, sparse copy otherwise.

Owns: ``clone_file`` — a new file that reads exactly like the source, made with the
FICLONE ioctl (shared extents, O(1) in the file size) when the filesystem supports it
(btrfs, XFS with reflink, bcachefs, …), else by copying only the data ranges that
SEEK_DATA/SEEK_HOLE report, so that a 64 GiB image holding 300 MB costs 300 MB of I/O
and of disk space. The destination is created exclusively (0600), fsynced, and removed
again on any failure.
Must not: copy a hole byte by byte, replace an existing file, follow a symlink at the
destination, or publish anything (callers clone into a staging directory; see
``banger.host.publish``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from enum import StrEnum
from pathlib import Path

from banger.errors import AlreadyExists, InvalidArgument, StateError

#: _IOW(0x94, 9, int) from linux/fs.h: share all extents of the source fd.
FICLONE = 0x40049409
#: FICLONE answers these when the filesystem (or the pair of filesystems) cannot share
#: extents; ENOTTY comes from filesystems that do not know the ioctl at all.
_NO_REFLINK = frozenset({errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY})
#: copy_file_range answers these where it cannot work (old kernels, some filesystems,
#: cross-filesystem copies before Linux 5.3); read/write then does the same job.
_NO_COPY_RANGE = frozenset({errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOSYS})
_CHUNK_BYTES = 8 * 1024 * 1024
_SOURCE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_DEST_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class CloneMethod(StrEnum):
    REFLINK = "reflink"
    SPARSE = "sparse"


def clone_file(src: Path, dst: Path) -> CloneMethod:
    """Make ``dst`` (must not exist) a copy of the regular file ``src``; say how.

    Blocking: the sparse path does I/O proportional to the data in ``src``.
    """
    src_fd = _open_source(src)
    try:
        dst_fd = _create_exclusive(dst)
        try:
            method = _fill(src_fd, dst_fd)
            os.fsync(dst_fd)
        except BaseException as exc:
            dst.unlink(missing_ok=True)  # we created it: a partial copy must not survive
            if isinstance(exc, OSError):
                raise _copy_error(exc, src, dst) from exc
            raise
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return method


def _open_source(src: Path) -> int:
    # O_NONBLOCK: a FIFO planted in place of an image must not hang the daemon.
    try:
        fd = os.open(src, _SOURCE_FLAGS)
    except OSError as exc:
        raise StateError(
            f"cannot read {src}: {exc.strerror}",
            details=str(exc),
            hint=f"check that {src} exists and is readable",
        ) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgument(f"{src} is not a regular file", hint="disk images are plain files")
    return fd


def _create_exclusive(dst: Path) -> int:
    try:
        fd = os.open(dst, _DEST_FLAGS, 0o600)
    except FileExistsError as exc:
        raise AlreadyExists(f"{dst} already exists", hint="remove it or pick another path") from exc
    except OSError as exc:
        raise StateError(
            f"cannot create {dst}: {exc.strerror}",
            details=str(exc),
            hint=f"check that you own {dst.parent}",
        ) from exc
    try:
        os.fchmod(fd, 0o600)  # the umask must not widen or narrow the mode asked for
    except OSError:
        os.close(fd)
        dst.unlink(missing_ok=True)
        raise
    return fd


def _fill(src_fd: int, dst_fd: int) -> CloneMethod:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno not in _NO_REFLINK:
            raise
    else:
        return CloneMethod.REFLINK
    sparse_copy(src_fd, dst_fd)
    return CloneMethod.SPARSE


def sparse_copy(src_fd: int, dst_fd: int, *, use_copy_range: bool = True) -> None:
    """Copy the data ranges of ``src_fd`` into the empty ``dst_fd``; keep holes and size.

    ``use_copy_range=False`` goes straight to read/write (the path taken where
    copy_file_range does not work).
    """
    size = os.fstat(src_fd).st_size
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset: the rest is one hole
                break
            raise
        end = min(os.lseek(src_fd, start, os.SEEK_HOLE), size)
        use_copy_range = _copy_range(src_fd, dst_fd, start, end, use_copy_range=use_copy_range)
        offset = end
    # Extends over a trailing hole without writing it; the apparent size is the source's.
    os.ftruncate(dst_fd, size)


def _copy_range(src_fd: int, dst_fd: int, start: int, end: int, *, use_copy_range: bool) -> bool:
    """Copy bytes [start, end); return whether copy_file_range is still worth trying."""
    pos = start
    while pos < end:
        count = min(_CHUNK_BYTES, end - pos)
        done = 0
        if use_copy_range:
            try:
                # In-kernel copy: no round trip through user space, and on filesystems
                # such as NFS 4.2 or XFS it can be a server-side or shared-extent copy.
                done = os.copy_file_range(src_fd, dst_fd, count, pos, pos)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                use_copy_range = False
        if done == 0:
            done = _read_write(src_fd, dst_fd, count, pos)
        if done == 0:
            break  # the source shrank under us: stop at its new end
        pos += done
    return use_copy_range


def _read_write(src_fd: int, dst_fd: int, count: int, pos: int) -> int:
    data = os.pread(src_fd, count, pos)
    view = memoryview(data)
    written = pos
    while view:
        n = os.pwrite(dst_fd, view, written)
        view = view[n:]
        written += n
    return len(data)


def _copy_error(exc: OSError, src: Path, dst: Path) -> StateError:
    if exc.errno in {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}:
        hint = f"free space on the filesystem holding {dst.parent}, then retry"
    else:
        hint = f"check that {src} is readable and {dst.parent} writable"
    return StateError(f"cannot copy {src} to {dst}: {exc.strerror}", details=str(exc), hint=hint)
