"""Crash-safe publication of artifacts (images, kernels, VM dirs): SPEC §2, ADVERSARIAL 92.

Owns: the staging area ``<root>/.staging/`` and the protocol around it: build inside a
``<name>.<token>.partial`` directory on the same filesystem, fsync every file and
directory in it, rename it into place without replacing anything, fsync the parent. A
crash at any point leaves either no entry or the complete one; leftovers in ``.staging``
are removed at the next daemon start. Removal is the mirror image: rename into
``.staging`` as ``<name>.<token>.trash`` (atomic disappearance), then delete.
Must not: follow a symlink found inside a tree it walks or deletes, delete anything in
``.staging`` that does not carry our name pattern (ADVERSARIAL 93), or touch the state
database (the caller writes the row after ``commit``).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from banger.errors import AlreadyExists, InvalidArgument, StateError, UnsupportedHost
from banger.host.paths import ensure_private_dir

log = logging.getLogger(__name__)

STAGING_DIR = ".staging"
# <name>.<16 hex>.partial|trash: only entries of exactly this shape are ever cleaned up.
_LEFTOVER = re.compile(r"^[^/]+\.[0-9a-f]{16}\.(partial|trash)$")
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
# Opening for fsync must never block (a FIFO swapped in) nor follow a symlink.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class Step(StrEnum):
    """Points of ``Staging.commit`` at which the ``on_step`` failpoint is called."""

    FILES_SYNCED = "files_synced"
    RENAMED = "renamed"
    PARENT_SYNCED = "parent_synced"


OnStep = Callable[[str], None]


class Staging:
    """A staging directory being filled; ``commit`` publishes it, once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.committed = False

    def commit(self, final: Path, *, on_step: OnStep | None = None) -> Path:
        """Publish the staging directory as ``final``; ``AlreadyExists`` if it is taken.

        ``final`` must be on the staging filesystem (normally ``root/<name>``).
        """
        if self.committed:
            raise RuntimeError(f"{self.path} was already committed")
        step = on_step or _no_step
        try:
            fsync_tree(self.path)
            step(Step.FILES_SYNCED)
            rename_noreplace(self.path, final)
        except AlreadyExists:
            remove_tree(self.path)
            raise
        except OSError as exc:
            raise _publish_error(exc, final) from exc
        # From here the artifact is in place: an exception must not remove anything.
        self.committed = True
        step(Step.RENAMED)
        try:
            fsync_dir(final.parent)
        except OSError as exc:
            raise _publish_error(exc, final) from exc
        step(Step.PARENT_SYNCED)
        return final


def _no_step(step: str) -> None:
    del step


@contextmanager
def staging(root: Path, name: str) -> Iterator[Staging]:
    """Create ``root/.staging/<name>.<token>.partial``; remove it unless committed."""
    _check_name(name)
    area = _staging_area(root)
    path = _make_staging_dir(area, name)
    stage = Staging(path)
    try:
        yield stage
    finally:
        if not stage.committed:
            remove_tree(path)


def _check_name(name: str) -> None:
    if not name or name in {".", ".."} or "/" in name or "\0" in name or name.startswith("."):
        raise InvalidArgument(f"invalid artifact name {name!r}")


def _staging_area(root: Path) -> Path:
    ensure_private_dir(root)
    return ensure_private_dir(root / STAGING_DIR)


def _fresh_name(area: Path, name: str, suffix: str) -> Path:
    return area / f"{name}.{secrets.token_hex(8)}{suffix}"


def _make_staging_dir(area: Path, name: str) -> Path:
    while True:
        path = _fresh_name(area, name, ".partial")
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue  # 64 random bits collided: draw again
        except OSError as exc:
            raise _publish_error(exc, area.parent / name) from exc
        return path


# -- durability -------------------------------------------------------------------------


def fsync_tree(top: Path) -> None:
    """fsync every regular file and directory under ``top``, never following symlinks.

    Directories are opened relative to their parent's fd with ``O_NOFOLLOW``, so a
    component swapped for a symlink mid-walk fails the open instead of leading outside.
    Symlinks, FIFOs, sockets and devices are skipped: their directory entry is what
    matters, and that is synced with the directory.
    """
    top_fd = os.open(top, _OPEN_FLAGS | os.O_DIRECTORY)
    pending = [top_fd]
    try:
        while pending:
            dir_fd = pending.pop()
            try:
                pending.extend(_sync_entries(dir_fd))
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        for fd in pending:
            os.close(fd)


def _sync_entries(dir_fd: int) -> list[int]:
    """fsync the regular files in ``dir_fd``; return opened fds of its subdirectories."""
    subdirs: list[int] = []
    try:
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(os.open(entry.name, _OPEN_FLAGS | os.O_DIRECTORY, dir_fd=dir_fd))
                elif entry.is_file(follow_symlinks=False):
                    _fsync_file(entry.name, dir_fd)
    except BaseException:
        for fd in subdirs:
            os.close(fd)
        raise
    return subdirs


def _fsync_file(name: str, dir_fd: int) -> None:
    fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, unlinks) durable."""
    fd = os.open(path, _OPEN_FLAGS | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- renaming without replacing ---------------------------------------------------------


def _load_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "renameat2", None)  # glibc >= 2.28, musl >= 1.2.x
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_RENAMEAT2 = _load_renameat2()


def _renameat2(src: Path, dst: Path, flags: int) -> int | None:
    """renameat2(2): 0 on success, the errno on failure, None without the call.

    ENOSYS (kernel < 3.15) and EINVAL (a filesystem without the flag) come back as None
    too: the caller then takes its fallback.
    """
    if _RENAMEAT2 is None:
        return None
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return 0
    err = ctypes.get_errno()
    return None if err in {errno.ENOSYS, errno.EINVAL} else err


def rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) ``src`` to ``dst`` atomically, or ``AlreadyExists`` if ``dst`` exists.

    ``os.rename`` would silently replace a file or an empty directory at ``dst``.
    """
    err = _renameat2(src, dst, _RENAME_NOREPLACE)
    if err == 0:
        return
    if err == errno.EEXIST:
        raise AlreadyExists(f"{dst} already exists")
    if err is not None:
        raise OSError(err, os.strerror(err), str(src), None, str(dst))
    rename_fallback(src, dst)


def rename_exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (RENAME_EXCHANGE); False when unsupported.

    Raises ``OSError`` for any other failure (one side missing, permissions).
    """
    err = _renameat2(a, b, _RENAME_EXCHANGE)
    if err is None:
        return False
    if err:
        raise OSError(err, os.strerror(err), str(a), None, str(b))
    return True


def rename_fallback(src: Path, dst: Path) -> None:
    """``rename_noreplace`` without renameat2: link+unlink for files, checked rename for dirs.

    link(2) fails atomically on an existing name. A directory cannot be hard-linked; the
    remaining race is an *empty* directory appearing at ``dst`` between the check and
    rename(2), which rename would replace (a non-empty one or a file makes it fail).
    """
    if not stat.S_ISDIR(os.lstat(src).st_mode):
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError as exc:
            raise AlreadyExists(f"{dst} already exists") from exc
        src.unlink()
        return
    if os.path.lexists(dst):
        raise AlreadyExists(f"{dst} already exists")
    try:
        src.rename(dst)
    except OSError as exc:
        if exc.errno in {errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR}:
            raise AlreadyExists(f"{dst} already exists") from exc
        raise


# -- removal ----------------------------------------------------------------------------


def remove_tree(path: Path) -> None:
    """Remove a file, symlink or directory tree at ``path``; absent is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink(missing_ok=True)
        return
    _require_safe_rmtree()
    shutil.rmtree(path)


def _require_safe_rmtree() -> None:
    # rmtree is only immune to a symlink swapped in mid-walk when it works with dir fds.
    if not shutil.rmtree.avoids_symlink_attacks:
        raise UnsupportedHost("this Python's shutil.rmtree can be tricked into following symlinks")


def remove_published(path: Path) -> bool:
    """Remove a published entry: it disappears atomically, then is deleted.

    Returns False when there was nothing at ``path``. A crash while deleting leaves a
    ``*.trash`` entry in ``.staging`` that ``cleanup_leftovers`` finishes off.
    """
    trash = retire_published(path)
    if trash is None:
        return False
    try:
        remove_tree(trash)
    except OSError as exc:
        raise StateError(f"cannot remove {path}: {exc.strerror}", details=str(exc)) from exc
    return True


def retire_published(path: Path) -> Path | None:
    """The first half of a removal: ``path`` disappears atomically into ``.staging`` as a
    ``*.trash`` entry, whose path is returned (None when there was nothing at ``path``).

    The name is free again at once; deleting the trash (``remove_tree``) may come later,
    and ``cleanup_leftovers`` finishes it after a crash.
    """
    if path.name in {"", ".", "..", STAGING_DIR}:
        raise InvalidArgument(f"refusing to remove {path}")
    try:
        area = _staging_area(path.parent)
        while True:
            trash = _fresh_name(area, path.name, ".trash")
            try:
                rename_noreplace(path, trash)
                break
            except AlreadyExists:
                continue  # 64 random bits collided: draw again
        fsync_dir(path.parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot remove {path}: {exc.strerror}", details=str(exc)) from exc
    return trash


def cleanup_leftovers(roots: Iterable[Path]) -> list[Path]:
    """Remove interrupted stagings and removals under each ``<root>/.staging/``.

    For daemon start-up, before any staging begins. Only entries named like ours
    (``<name>.<16 hex>.partial`` or ``.trash``) go; anything else is left alone and a
    ``.staging`` that is not a real directory is not entered (ADVERSARIAL 93).
    """
    removed: list[Path] = []
    for root in roots:
        area = root / STAGING_DIR
        try:
            area_fd = os.open(area, _OPEN_FLAGS | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("not cleaning %s: %s", area, exc.strerror)
            continue
        try:
            removed.extend(area / name for name in _remove_ours(area_fd, area))
        finally:
            os.close(area_fd)
    return removed


def _remove_ours(area_fd: int, area: Path) -> list[str]:
    removed: list[str] = []
    with os.scandir(area_fd) as entries:
        names = [e.name for e in entries if _LEFTOVER.match(e.name)]
    for name in names:
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=area_fd, follow_symlinks=False).st_mode):
                _require_safe_rmtree()
                shutil.rmtree(name, dir_fd=area_fd)
            else:
                os.unlink(name, dir_fd=area_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove leftover %s: %s", area / name, exc.strerror)
            continue
        removed.append(name)
    return removed


# -- small files ------------------------------------------------------------------------


def write_file_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new content.

    For small files such as manifests. The temporary file sits in the same directory so
    that rename(2) is atomic; a crash can leave a ``.<name>.<token>.tmp`` behind.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
        try:
            os.fchmod(fd, mode)  # the umask must not alter the mode asked for
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _publish_error(exc, path) from exc


def _publish_error(exc: OSError, final: Path) -> StateError:
    if exc.errno in {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}:
        hint = f"free disk space on the filesystem holding {final.parent}, then retry"
    elif exc.errno == errno.EXDEV:
        hint = f"staging and {final.parent} must be on the same filesystem"
    else:
        hint = f"check that you own {final.parent}"
    return StateError(f"cannot publish {final}: {exc.strerror}", details=str(exc), hint=hint)
