"""The per-VM ``/root`` work disk (SPEC §3 Disks), made without cost in proportion to its size.

Owns: making a VM's work disk — the image's work seed cloned and grown (sparse
``truncate`` + offline ``resize2fs``), or, without a seed, a blank ext4 made by
``mkfs.ext4`` right at the size asked for (measured faster than growing a cached small
seed, see docs/explanation/disks.md) — and growing an existing work disk later
(``vm set --disk-size``).
Must not: mount, need root, shrink a filesystem, or touch a disk a running VM uses (the
caller stops the VM first). Blocking: call from a worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from banger.disks.clone import clone_file
from banger.disks.ext4edit import run_debugfs
from banger.errors import AlreadyExists, CommandFailed, InvalidArgument, StateError
from banger.host.runner import Runner
from banger.model.units import MIB, format_size

WORK_LABEL = "banger-work"
#: Smallest work disk: below this mke2fs's own choices (journal, inode count) degenerate.
MIN_DISK_BYTES = 64 * MIB
#: Size of a blank seed made on its own (``make_blank_seed`` without ``size_bytes``).
BLANK_SEED_BYTES = 256 * MIB
#: Why each option is there: docs/explanation/disks.md ("Blank work disks").
MKFS_OPTIONS = (
    "-t", "ext4",
    "-b", "4096",  # never the 1 KiB blocks mke2fs picks for small filesystems
    "-T", "default",  # nor the "small" profile's 128-byte inodes (dates end in 2038)
    "-m", "0",  # everything in the guest runs as root: a reserve only hides space in df
    # discard punches the file's holes and lets mke2fs mark every inode table zeroed
    # (the guest then has none to zero); lazy_*: write neither tables nor journal.
    "-E", "root_owner=0:0,discard,lazy_itable_init=1,lazy_journal_init=1",
)  # fmt: skip
MKFS_TIMEOUT_S = 60.0
#: Growing by 16 TiB takes seconds, not minutes; e2fsck time follows the data on disk.
RESIZE_TIMEOUT_S = 600.0

#: resize2fs zeroes every new inode table itself unless this file exists (it reads it as
#: "the kernel will do it lazily"): with ext4 not loaded, growth costs writes in
#: proportion to the size.
LAZY_ITABLE_INIT_FLAG = Path("/sys/fs/ext4/features/lazy_itable_init")
log = logging.getLogger(__name__)

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# ext4 block group flags (fs/ext4/ext4.h).
_BG_INODE_UNINIT, _BG_BLOCK_UNINIT, _BG_ITABLE_ZEROED = 0x1, 0x2, 0x4
_GROUP_CSUM = re.compile(r"^Filesystem features:.*\b(metadata_csum|uninit_bg)\b", re.MULTILINE)
_STATS_GROUP = re.compile(
    r"^ Group\s+(?P<group>\d+): block bitmap at \d+, inode bitmap at \d+, "
    r"inode table at (?P<table>\d+)\n[^\n]*\n(?:\s+\[(?P<flags>[^\]\n]*)\])?",
    re.MULTILINE,
)
_DUMPE2FS_FIELD = re.compile(r"^([A-Za-z ]+):\s+(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Geometry:
    """What ``dumpe2fs -h`` says about a filesystem image."""

    block_size: int
    block_count: int
    clean: bool  # cleanly unmounted, no errors recorded, no journal left to replay

    @property
    def fs_bytes(self) -> int:
        return self.block_size * self.block_count


def read_geometry(image: Path, runner: Runner) -> Geometry:
    try:
        result = runner.run(["dumpe2fs", "-h", image], timeout_s=MKFS_TIMEOUT_S)
    except CommandFailed as exc:
        raise InvalidArgument(
            f"{image} is not a usable ext4 filesystem", details=exc.details
        ) from exc
    fields = dict(_DUMPE2FS_FIELD.findall(result.text))
    try:
        block_size = int(fields["Block size"])
        block_count = int(fields["Block count"])
    except (KeyError, ValueError) as exc:
        raise InvalidArgument(f"dumpe2fs gave no block geometry for {image}") from exc
    clean = (
        fields.get("Filesystem state", "").strip() == "clean"
        and "needs_recovery" not in fields.get("Filesystem features", "").split()
    )
    return Geometry(block_size, block_count, clean)


# -- blank filesystems -------------------------------------------------------------------


def make_blank_seed(path: Path, runner: Runner, *, size_bytes: int = BLANK_SEED_BYTES) -> Geometry:
    """Create ``path`` (must not exist) as an empty ext4 of ``size_bytes``, file mode 0600.

    Root dir 0755 root:root (``root_owner``: mke2fs would otherwise give it to whoever
    runs mkfs), label ``banger-work``. Only metadata is written (a few MiB at 1 TiB): the
    file stays sparse, and the time taken hardly depends on the size.
    """
    check_size(size_bytes, MIN_DISK_BYTES, "the smallest work disk")
    try:
        fd = os.open(path, _CREATE_FLAGS, 0o600)
    except FileExistsError as exc:
        raise AlreadyExists(f"{path} already exists") from exc
    except OSError as exc:
        raise _io_error(exc, path) from exc
    try:
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, size_bytes)
            argv: list[str | Path] = ["mkfs.ext4", "-q", "-F", "-L", WORK_LABEL, *MKFS_OPTIONS]
            runner.run([*argv, path], timeout_s=MKFS_TIMEOUT_S)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _io_error(exc, path) from exc
        raise
    return Geometry(block_size=4096, block_count=size_bytes // 4096, clean=True)


# -- work disks -------------------------------------------------------------------------------


def create_work_disk(dst: Path, size_bytes: int, *, seed: Path | None, runner: Runner) -> None:
    """Make ``dst`` (must not exist): ``seed`` grown to ``size_bytes``, else a blank ext4.

    Neither time nor host disk space grows in proportion to ``size_bytes`` (figures in
    docs/explanation/disks.md). A size below the seed's filesystem is refused before
    anything is made; so is one below ``MIN_DISK_BYTES``.
    """
    if seed is None:
        make_blank_seed(dst, runner, size_bytes=size_bytes)
        return
    geometry = read_geometry(seed, runner)
    check_size(size_bytes, max(geometry.fs_bytes, MIN_DISK_BYTES), f"the work seed {seed}")
    clone_file(seed, dst)
    try:
        if not geometry.clean:
            fsck(dst, runner)
        _grow(dst, size_bytes, geometry, runner)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def grow_work_disk(path: Path, size_bytes: int, *, runner: Runner) -> None:
    """Grow an existing (stopped VM's) work disk to ``size_bytes``; never shrinks.

    The guest has written to it since it was made, so it is checked first (``e2fsck -p``
    takes time in proportion to the files on it, not to its size).
    """
    geometry = read_geometry(path, runner)
    check_size(size_bytes, geometry.fs_bytes, f"the work disk as it is ({path.name})")
    if size_bytes // geometry.block_size == geometry.block_count:
        return
    fsck(path, runner)
    _grow(path, size_bytes, geometry, runner)


def check_size(size_bytes: int, minimum_bytes: int, what: str) -> None:
    """Refuse ``size_bytes`` below ``minimum_bytes`` (``what``: the thing it must hold)."""
    if size_bytes >= minimum_bytes:
        return
    raise InvalidArgument(
        f"a disk size of {format_size(size_bytes)} is smaller than {what} "
        f"({format_size(minimum_bytes)})",
        hint=f"ask for at least {format_size(minimum_bytes)}",
    )


def fsck(image: Path, runner: Runner) -> None:
    """``e2fsck -f -p``: replay the journal, fix what is safe to fix, or fail."""
    try:
        # 1 = errors corrected, 2 = corrected, "reboot" (meaningless for an image file).
        runner.run(["e2fsck", "-f", "-p", image], ok_codes=(0, 1, 2), timeout_s=RESIZE_TIMEOUT_S)
    except CommandFailed as exc:
        raise StateError(
            f"{image.name} has filesystem errors e2fsck cannot fix on its own",
            details=exc.details,
            hint=f"run `e2fsck -f {image}` by hand",
        ) from exc


def _grow(path: Path, size_bytes: int, geometry: Geometry, runner: Runner) -> None:
    """Sparse-extend the file, then grow the filesystem to fill it (whole blocks)."""
    try:
        os.truncate(path, size_bytes)
    except OSError as exc:
        raise _io_error(exc, path) from exc
    blocks = size_bytes // geometry.block_size
    if blocks > geometry.block_count:
        if not LAZY_ITABLE_INIT_FLAG.exists():
            log.warning(
                "%s is missing (ext4 not loaded on this host): resize2fs will write the new "
                "inode tables in full, about 1.6%% of %s",
                LAZY_ITABLE_INIT_FLAG,
                format_size(size_bytes),
            )
        # -f: a seed that was mounted since its last check is refused without it; its
        # state was checked above (clean, or just fsck'd).
        runner.run(["resize2fs", "-f", path, str(blocks)], timeout_s=RESIZE_TIMEOUT_S)
        mark_zeroed_inode_tables(path, runner)


def mark_zeroed_inode_tables(image: Path, runner: Runner) -> int:
    """Flag ITABLE_ZEROED on every group whose inode table is a hole; return how many.

    resize2fs leaves new groups without the flag (it assumes the guest kernel's
    ext4lazyinit will zero their tables after mount). That would make every VM write
    about 1.6% of its disk size in zeroes, in the background, into the host file. The
    tables read as zeroes already when they lie in holes of the sparse file, so the flag
    is the truth; a table holding any data is left alone.
    """
    stats = run_debugfs(image, runner, ["stats"], write=False)
    if not _GROUP_CSUM.search(stats):
        return 0  # without group checksums there is no lazy init to skip
    block_size = int(_field(stats, "Block size"))
    table_bytes = int(_field(stats, "Inode blocks per group")) * block_size
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        groups = [
            (group, flags)
            for group, table, flags in _groups(stats)
            if _is_hole(fd, table * block_size, table * block_size + table_bytes)
        ]
    finally:
        os.close(fd)
    lines: list[str] = []
    for group, flags in groups:
        lines += [
            f"set_bg {group} flags {flags | _BG_ITABLE_ZEROED}",
            f"set_bg {group} checksum calc",
        ]
    if lines:
        run_debugfs(image, runner, lines, write=True)
    return len(groups)


def _field(text: str, name: str) -> str:
    match = re.search(rf"^{name}:\s+(\S+)", text, re.MULTILINE)
    if match is None:
        raise CommandFailed(f"debugfs stats printed no {name!r}")
    return match.group(1)


def _groups(stats: str) -> list[tuple[int, int, int]]:
    """(group, first inode table block, INODE_UNINIT|BLOCK_UNINIT flags) per group.

    debugfs prints those two flags by name and never ITABLE_ZEROED, the only other one.
    """
    groups: list[tuple[int, int, int]] = []
    for match in _STATS_GROUP.finditer(stats):
        flags = match.group("flags") or ""
        value = (_BG_INODE_UNINIT if "Inode not init" in flags else 0) | (
            _BG_BLOCK_UNINIT if "Block not init" in flags else 0
        )
        groups.append((int(match.group("group")), int(match.group("table")), value))
    return groups


def _is_hole(fd: int, start: int, end: int) -> bool:
    try:
        return os.lseek(fd, start, os.SEEK_DATA) >= end
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data at or after start
            return True
        raise


def _io_error(exc: OSError, path: Path) -> StateError:
    if exc.errno in {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}:
        hint = f"free space on the filesystem holding {path.parent}, then retry"
    else:
        hint = f"check that you own {path.parent}"
    return StateError(f"cannot write {path}: {exc.strerror}", details=str(exc), hint=hint)
