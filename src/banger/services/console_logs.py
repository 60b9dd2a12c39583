"""Keeping a VM's console and VMM logs bounded however much the guest writes (ADVERSARIAL 102).

Owns: capping one log in place — once it stores more than ``LOG_CAP_BYTES``, its last
``LOG_CAP_BYTES`` go to ``<name>.1`` (replacing the previous one: temp file, fsync,
rename) and the live file is truncated to zero — and bounded reads of a log's tail across
the live file and its ``.1``. Must not: follow a symlink or open anything but a regular
file, read more than a bounded amount at once, create directories, or know which VMM
writes the file.

Writers keep their file open, so the live file is truncated, never renamed. QEMU's
console chardev (``append=on``) and Firecracker's stdout (``banger.vmm.spawn``) are opened
with O_APPEND: after ftruncate(2) their next write lands at offset 0, no hole. Firecracker's
``/logger`` file is opened without O_APPEND: its next write lands at its old offset and
the file starts with a hole. The hole takes no space, so the cap counts allocated bytes
(``st_blocks``), and reads skip holes (``SEEK_DATA``).

Bytes the VMM writes after the last read of the live file and before the truncation are
lost: the tail is copied and fsynced first, then the few bytes written meanwhile are read
again just before ftruncate(2), so the window is one pread(2). See
docs/explanation/console-logs.md.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from banger.errors import StateError
from banger.host.publish import fsync_dir

log = logging.getLogger("banger.console_logs")

#: The live file is cut once it stores more than this; ``.1`` keeps as much again. The
#: figure is libvirt's (virtlogd.conf ``max_size``): far above a boot's console output.
LOG_CAP_BYTES = 2 * 1024 * 1024
#: Written during the fsync of ``.1``, re-read just before the cut; beyond this is lost.
LATE_BYTES_MAX = 64 * 1024
ROTATED_SUFFIX = ".1"
WARN_INTERVAL_S = 60.0

# Never block on a FIFO or take a terminal swapped in, never follow a symlink.
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_last_warned: dict[Path, float] = {}


@dataclass(frozen=True)
class Rotation:
    path: Path
    #: Bytes now in ``<name>.1``.
    kept_bytes: int
    #: Older bytes of the live file that went nowhere (more than ``.1`` keeps).
    dropped_bytes: int


@dataclass(frozen=True)
class LogSlice:
    data: bytes
    #: Where the next read of the live file continues.
    offset: int
    #: The live file's size (apparent: it may start with a hole).
    size: int


def rotated_path(path: Path) -> Path:
    return path.with_name(path.name + ROTATED_SUFFIX)


def cap_logs(paths: Iterable[Path], *, cap_bytes: int = LOG_CAP_BYTES) -> list[Rotation]:
    """``cap_log`` each path; a missing file is skipped, a refused one warned about."""
    done: list[Rotation] = []
    for path in paths:
        try:
            rotation = cap_log(path, cap_bytes=cap_bytes)
        except FileNotFoundError:
            continue  # not booted yet, or the VM is being deleted
        except (OSError, StateError) as exc:
            _warn_now_and_then(path, exc)
            continue
        if rotation is not None:
            done.append(rotation)
    return done


def cap_log(path: Path, *, cap_bytes: int = LOG_CAP_BYTES) -> Rotation | None:
    """If ``path`` stores more than ``cap_bytes``: its last ``cap_bytes`` (plus what is
    written meanwhile, up to ``LATE_BYTES_MAX``) replace ``<path>.1`` and ``path`` is
    truncated to zero. None when nothing had to be done."""
    fd = _open_regular(path, os.O_RDWR)
    try:
        st = os.fstat(fd)
        # st_size alone would count a hole; st_blocks alone, speculative preallocation.
        if min(st.st_size, st.st_blocks * 512) <= cap_bytes:
            return None
        return _rotate(fd, path, st.st_size, cap_bytes)
    finally:
        os.close(fd)


def _rotate(fd: int, path: Path, end: int, keep_bytes: int) -> Rotation:
    first = _data_from(fd, 0, end)
    start = max(first, end - keep_bytes)
    tail = _pread(fd, end - start, start)
    tmp = path.with_name(f".{path.name}{ROTATED_SUFFIX}.tmp")
    out = _open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0o600)
    try:
        _write_all(out, tail)
        os.fsync(out)  # the slow part, done before the cut so that the window stays short
        late = _pread(fd, min(max(0, os.fstat(fd).st_size - end), LATE_BYTES_MAX), end)
        os.ftruncate(fd, 0)
        _write_all(out, late)
        os.fsync(out)
    except BaseException:
        os.close(out)
        tmp.unlink(missing_ok=True)
        raise
    os.close(out)
    tmp.replace(rotated_path(path))
    fsync_dir(path.parent)
    return Rotation(path, kept_bytes=len(tail) + len(late), dropped_bytes=start - first)


def read_slice(path: Path, offset: int | None, tail_bytes: int, *, limit: int) -> LogSlice:
    """From ``offset`` of the live file (at most ``limit`` bytes), or its last
    ``tail_bytes`` preceded by the end of ``.1`` when the live file holds fewer.

    An ``offset`` past the end means the file was cut since that read: start again at 0.
    """
    try:
        fd = _open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return LogSlice(
            _last_bytes(rotated_path(path), tail_bytes) if offset is None else b"", 0, 0
        )
    try:
        size = os.fstat(fd).st_size
        if offset is not None:
            start = _data_from(fd, offset if offset <= size else 0, size)
            data = _pread(fd, min(limit, size - start), start)
            return LogSlice(data, start + len(data), size)
        first = _data_from(fd, 0, size)
        start = max(first, size - tail_bytes)
        data = _pread(fd, min(limit, size - start), start)
    finally:
        os.close(fd)
    offset = start + len(data)
    if start == first and len(data) < tail_bytes:
        data = _last_bytes(rotated_path(path), min(limit, tail_bytes) - len(data)) + data
    return LogSlice(data, offset, size)


def _last_bytes(path: Path, count: int) -> bytes:
    """The last ``count`` bytes of ``path`` holding data; empty when it is absent."""
    if count <= 0:
        return b""
    try:
        fd = _open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return b""
    try:
        size = os.fstat(fd).st_size
        start = max(_data_from(fd, 0, size), size - count)
        return _pread(fd, size - start, start)
    finally:
        os.close(fd)


def _open_regular(path: Path, flags: int, *, mode: int = 0o600) -> int:
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(f"{path} is a symlink: refusing to follow it") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StateError(f"{path} is not a regular file: refusing to use it")
    return fd


def _data_from(fd: int, offset: int, end: int) -> int:
    """The first offset at or after ``offset`` that is not in a hole (``end`` if none)."""
    if offset >= end:
        return end
    try:
        pos = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only a hole from here on
            return end
        raise
    if pos > 0 and os.lseek(fd, pos - 1, os.SEEK_HOLE) == pos - 1:
        # Holes are whole blocks: the block after one starts with zeros nobody wrote.
        head = os.pread(fd, min(end - pos, os.fstat(fd).st_blksize), pos)
        pos += len(head) - len(head.lstrip(b"\0"))
    return min(pos, end)


def _pread(fd: int, count: int, offset: int) -> bytes:
    """Up to ``count`` bytes at ``offset``; fewer only at the end of the file."""
    parts: list[bytes] = []
    while count > 0:
        chunk = os.pread(fd, count, offset)
        if not chunk:
            break
        parts.append(chunk)
        count -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _warn_now_and_then(path: Path, exc: BaseException) -> None:
    """A log that cannot be capped is warned about once a minute, not once a pass."""
    now = time.monotonic()
    for old in [p for p, t in _last_warned.items() if now - t > WARN_INTERVAL_S]:
        del _last_warned[old]
    if path in _last_warned:
        return
    _last_warned[path] = now
    brief = exc.brief if isinstance(exc, StateError) else str(exc)
    log.warning("cannot bound a VM log", extra={"fields": {"path": str(path), "error": brief}})
