"""The blob cache: ``~/.cache/banger/oci/blobs/sha256/<hex>``, verified, shared by pulls.

Owns: where a blob lives (OCI image layout), downloading one into a ``<hex>.<token>
.partial`` file in the same directory while hashing and counting it, committing it by
an atomic rename only when both size and digest match the descriptor (ADVERSARIAL 32:
the error shows expected and actual, nothing is cached on a mismatch), retrying a body
cut off mid-way, one download per blob even when pulls overlap (a per-digest lock in
the process plus an ``fcntl`` lock across processes, 117), removing partial files
nobody is writing, and clear disk-full and out-of-inodes errors (106, 108). A cached blob
is hashed again before it is handed out: one whose bytes no longer match its digest (bit
rot, a disk error) is evicted and downloaded again, and the caller is told the local
cache was damaged (issue 14 item 20) — never an error that blames the image.
Must not: speak HTTP (it reads from a stream the caller opens) or trust a partial file:
only an exact ``<hex>`` name with the expected size counts as cached.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from banger.errors import BadResponse, BangerError, StateError, Timeout
from banger.host.paths import ensure_private_dir
from banger.host.publish import fsync_dir, write_file_atomic
from banger.model.units import format_size
from banger.oci.digest import Digest, Hasher
from banger.oci.http_transport import RetryPolicy

log = logging.getLogger("banger.oci.blobcache")

CHUNK_BYTES = 1 << 20
_PARTIAL = re.compile(r"^([0-9a-f]{64})\.[0-9a-f]{16}\.partial$")
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}\n'

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


class BlobStream(Protocol):
    def read(self, size: int) -> bytes: ...

    def close(self) -> None: ...


Opener = Callable[[], BlobStream]
#: Called with the number of bytes of this blob received so far.
OnBytes = Callable[[int], None]


@dataclass(frozen=True)
class Fetched:
    path: Path
    downloaded: bool
    #: The cached copy did not match its digest: it was evicted and downloaded again.
    repaired: bool = False


class BlobCache:
    """The cache under ``root`` (``Layout.oci_cache_dir``)."""

    def __init__(
        self,
        root: Path,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.root = root
        self.blobs_dir = root / "blobs" / "sha256"
        self.locks_dir = root / "locks"
        self._retry = retry or RetryPolicy()
        self._sleep = sleep

    def ensure_dirs(self) -> None:
        try:
            for path in (self.root, self.root / "blobs", self.blobs_dir, self.locks_dir):
                ensure_private_dir(path)
            if not (self.root / "oci-layout").exists():
                write_file_atomic(self.root / "oci-layout", _OCI_LAYOUT, mode=0o600)
        except OSError as exc:
            raise space_error(exc, self.root, 0) from exc

    def path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.hex

    def lookup(self, digest: Digest, size: int) -> Path | None:
        """The cached blob when it is there with the expected size."""
        path = self.path(digest)
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        if st.st_size == size and path.is_file() and not path.is_symlink():
            return path
        return None

    def fetch(
        self, digest: Digest, size: int, opener: Opener, *, on_bytes: OnBytes | None = None
    ) -> Fetched:
        """The blob's cached path, downloading it first unless another pull has.

        A cached copy is verified (under the lock, so no download is replacing it); a
        damaged one is evicted and downloaded again (``Fetched.repaired``).
        """
        self.ensure_dirs()
        with self._locked(digest):
            repaired = False
            found = self.lookup(digest, size)
            if found is not None:  # cached earlier, or the pull we waited for brought it
                if self._intact(found, digest):
                    return Fetched(found, downloaded=False)
                self._evict(found, digest)
                repaired = True
            self._remove_stray(digest)
            path = self._download_retrying(digest, size, opener, on_bytes)
            return Fetched(path, downloaded=True, repaired=repaired)

    def read(self, digest: Digest, size: int, opener: Opener) -> bytes:
        """A small blob (an image config), through the cache."""
        return self.fetch(digest, size, opener).path.read_bytes()

    def _intact(self, path: Path, digest: Digest) -> bool:
        hasher = Hasher()
        try:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    hasher.update(chunk)
        except OSError as exc:  # an unreadable sector is damage too
            log.warning("cannot read cached blob %s: %s", digest.short, exc)
            return False
        return hasher.digest() == digest

    def _evict(self, path: Path, digest: Digest) -> None:
        log.warning(
            "cached blob %s does not match its digest: the local cache was damaged; "
            "evicting it and downloading it again",
            digest.short,
        )
        try:
            path.unlink(missing_ok=True)
            fsync_dir(self.blobs_dir)
        except OSError as exc:
            raise StateError(
                f"the cached blob {path} is damaged and cannot be removed: {exc.strerror}",
                hint=f"remove {path} by hand, then pull again",
            ) from exc

    # -- downloading ------------------------------------------------------------------

    def _download_retrying(
        self, digest: Digest, size: int, opener: Opener, on_bytes: OnBytes | None
    ) -> Path:
        for attempt in range(1, self._retry.attempts + 1):
            try:
                return self._download(digest, size, opener, on_bytes)
            except (ConnectionError, TimeoutError) as exc:
                if attempt == self._retry.attempts:
                    raise _stream_error(exc, digest) from exc
                delay = self._retry.delay_s(attempt)
                log.info("blob %s interrupted (%s); retrying in %.1fs", digest.short, exc, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _download(
        self, digest: Digest, size: int, opener: Opener, on_bytes: OnBytes | None
    ) -> Path:
        partial = self.blobs_dir / f"{digest.hex}.{secrets.token_hex(8)}.partial"
        final = self.path(digest)
        try:
            fd = os.open(partial, _OPEN_NEW, 0o600)
        except OSError as exc:
            raise space_error(exc, partial, size) from exc
        try:
            try:
                hasher = _copy(
                    opener, fd, size=size, digest=digest, on_bytes=on_bytes, path=partial
                )
                os.fsync(fd)
            finally:
                os.close(fd)
            _verify(hasher, digest, size)
            partial.rename(final)
            fsync_dir(self.blobs_dir)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return final

    # -- locking and leftovers --------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, digest: Digest) -> Iterator[None]:
        with _thread_lock(digest.hex):
            fd = os.open(
                self.locks_dir / f"{digest.hex}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _remove_stray(self, digest: Digest) -> None:
        """Partials of ``digest`` left by a crash (we hold its lock: nobody writes them)."""
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.blobs_dir):
                match = _PARTIAL.match(entry.name)
                if match and match.group(1) == digest.hex:
                    Path(entry.path).unlink(missing_ok=True)

    def clean_partials(self) -> list[Path]:
        """Remove every partial file whose digest nobody is downloading right now."""
        removed: list[Path] = []
        try:
            names = [e.name for e in os.scandir(self.blobs_dir) if _PARTIAL.match(e.name)]
        except FileNotFoundError:
            return removed
        for name in names:
            hex_digest = name.split(".", 1)[0]
            if _try_remove_unlocked(self.blobs_dir / name, self.locks_dir / f"{hex_digest}.lock"):
                removed.append(self.blobs_dir / name)
        return removed


def _try_remove_unlocked(partial: Path, lock_path: Path) -> bool:
    guard = _get_thread_lock(partial.name.split(".", 1)[0])
    if not guard.acquire(blocking=False):
        return False
    try:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            partial.unlink(missing_ok=True)
        finally:
            os.close(fd)
        return True
    finally:
        guard.release()


def _get_thread_lock(hex_digest: str) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(hex_digest, threading.Lock())


@contextlib.contextmanager
def _thread_lock(hex_digest: str) -> Iterator[None]:
    with _get_thread_lock(hex_digest):
        yield


def _copy(
    opener: Opener, fd: int, *, size: int, digest: Digest, on_bytes: OnBytes | None, path: Path
) -> Hasher:
    hasher = Hasher()
    stream = opener()
    try:
        # One byte past the expected size is enough to know it is too long.
        while chunk := stream.read(min(CHUNK_BYTES, size + 1 - hasher.size)):
            hasher.update(chunk)
            if hasher.size > size:
                raise _mismatch(digest, size, f"more than {size} bytes", None)
            _write_all(fd, chunk, path, size)
            if on_bytes is not None:
                on_bytes(hasher.size)
    finally:
        stream.close()
    return hasher


def _write_all(fd: int, chunk: bytes, path: Path, size: int) -> None:
    view = memoryview(chunk)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise space_error(exc, path, size) from exc


def _verify(hasher: Hasher, digest: Digest, size: int) -> None:
    if hasher.size != size:
        raise _mismatch(digest, size, f"{hasher.size} bytes", hasher.digest())
    actual = hasher.digest()
    if actual != digest:
        raise BadResponse(
            f"blob {digest.short} does not match its digest: expected {digest}, got {actual}",
            hint="the registry sent corrupted data; nothing was cached",
        )


def _mismatch(digest: Digest, size: int, got: str, actual: Digest | None) -> BadResponse:
    return BadResponse(
        f"blob {digest.short} has the wrong size: expected {size} bytes, got {got}",
        details=f"expected {digest}" + (f", got {actual}" if actual else ""),
        hint="the registry sent a truncated or altered blob; nothing was cached",
    )


def _stream_error(exc: BaseException, digest: Digest) -> BangerError:
    if isinstance(exc, TimeoutError):
        return Timeout(f"downloading blob {digest.short} timed out: {exc}")
    return BadResponse(f"downloading blob {digest.short} failed: {exc}")


def space_error(exc: OSError, path: Path, needed: int) -> BangerError:
    """An OS error while writing under ``path`` as a clear StateError (106, 108)."""
    where = f"the filesystem holding {path.parent}"
    if exc.errno in {errno.ENOSPC, errno.EDQUOT}:
        free, inodes = _free(path.parent)
        if inodes == 0:
            return StateError(
                f"no free inodes left on {where}",
                details=str(exc),
                hint="delete files (many small ones) on that filesystem, then pull again",
            )
        return StateError(
            f"no space left on {where}: {format_size(needed)} needed, {format_size(free)} free",
            details=str(exc),
            hint="free disk space there (`banger image delete` removes images), then retry",
        )
    if exc.errno == errno.EFBIG:
        return StateError(f"file too large for {where} or the process limit", details=str(exc))
    return StateError(f"cannot write {path}: {exc.strerror or exc}", details=str(exc))


def _free(path: Path) -> tuple[int, int]:
    """Free bytes and inodes (for the unprivileged) of the filesystem holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0, -1
    return st.f_bavail * st.f_frsize, st.f_favail if st.f_files else -1
