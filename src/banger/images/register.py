"""Registering host files as an image, and promoting one to daemon-owned copies (SPEC §5).

Owns: the checks on every path a user hands in (absolute, not too long, existing, a
regular file or a directory as the role needs: never a FIFO, a device such as
``/dev/zero`` or a directory where a file is expected; ADVERSARIAL 48), the ext4
superblock check of a rootfs or work seed, the rules between ``--kernel`` and
``--kernel-ref``, the unmanaged ``ImageRecord`` a registration makes, and the copying
of a promotion into a staging directory of ``images/<name>/``.
Must not: write the state database (the service does), or ever modify, move or delete
the user's files: a registered image only points at them.

A promoted image directory holds ``rootfs.ext4``, optionally ``work-seed.ext4``,
``vmlinux`` or ``vmlinuz`` (by format), ``initrd.img`` and ``modules/``. Disk images are
cloned (reflink or sparse copy, ``banger.disks.clone``), so a promotion costs the data
in them, not their size.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from banger.disks.clone import clone_file
from banger.errors import InvalidArgument
from banger.kernels.store import copy_file, copy_tree
from banger.kernels.vmlinux import KernelFormat, kernel_format
from banger.model.artifact_names import validate_name
from banger.model.records import ImageRecord, utc_now

PATH_MAX = 4096
NAME_MAX = 255
EXT4_MAGIC_OFFSET = 1080
EXT4_MAGIC = b"\x53\xef"  # 0xEF53, little-endian: shared by ext2, ext3 and ext4
ROOTFS = "rootfs.ext4"
WORK_SEED = "work-seed.ext4"
INITRD = "initrd.img"
MODULES = "modules"
SOURCE_REGISTER = "register"
_QCOW_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class Registration:
    """What ``image register`` was asked; paths are strings exactly as received."""

    name: str
    rootfs: str
    kernel: str | None = None
    kernel_ref: str | None = None
    initrd: str | None = None
    modules: str | None = None
    work_seed: str | None = None


def check_path(value: str, what: str, *, directory: bool = False) -> Path:
    """``value`` as a Path when it names an existing regular file (or directory).

    Only ``stat`` is used, so a FIFO or a device is recognised without opening it.
    """
    if "\0" in value or not value:
        raise InvalidArgument(f"{what}: invalid path {value[:60]!r}")
    if not value.startswith("/"):
        raise InvalidArgument(
            f"{what} must be an absolute path, not {value[:200]!r}",
            hint="the CLI makes relative paths absolute; API clients must do the same",
        )
    encoded = os.fsencode(value)
    if len(encoded) >= PATH_MAX or any(len(p) > NAME_MAX for p in encoded.split(b"/")):
        raise InvalidArgument(
            f"{what}: path is longer than the system allows "
            f"({PATH_MAX - 1} bytes, {NAME_MAX} per component)"
        )
    try:
        st = Path(value).stat()
    except OSError as exc:
        raise _stat_error(exc, value, what) from exc
    if directory:
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"{what} {value} is {_kind(st.st_mode)}, not a directory")
    elif not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{what} {value} is {_kind(st.st_mode)}, not a regular file")
    return Path(value)


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    )
    return next((label for test, label in kinds if test(mode)), "not a file")


def _stat_error(exc: OSError, value: str, what: str) -> InvalidArgument:
    if exc.errno == errno.ENOENT:
        return InvalidArgument(f"{what} {value} does not exist")
    if exc.errno == errno.ENOTDIR:
        return InvalidArgument(f"{what} {value}: a parent is not a directory")
    if exc.errno == errno.EACCES:
        return InvalidArgument(f"{what} {value}: permission denied", hint="check its mode")
    return InvalidArgument(f"{what} {value}: {exc.strerror}")


def check_ext4(path: Path, what: str) -> None:
    """``InvalidArgument`` unless ``path`` starts with an ext2/3/4 superblock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{what} {path} is not a regular file")
        magic = os.pread(fd, 2, EXT4_MAGIC_OFFSET)
        head = os.pread(fd, 4, 0)
    finally:
        os.close(fd)
    if magic == EXT4_MAGIC:
        return
    hint = "make one with `mkfs.ext4 -d DIR FILE SIZE`"
    if head == _QCOW_MAGIC:
        hint = f"it is a qcow2 image: `qemu-img convert -O raw {path} OUT.ext4`"
    raise InvalidArgument(
        f"{what} {path} is not an ext4 image (no superblock magic at byte 1080)", hint=hint
    )


def check_kernel(path: Path) -> KernelFormat:
    fmt = kernel_format(path)
    if fmt is KernelFormat.UNKNOWN:
        raise InvalidArgument(
            f"kernel {path} is neither a bzImage nor an x86-64 ELF vmlinux",
            hint="pass the vmlinuz/bzImage or vmlinux of an x86_64 kernel",
        )
    return fmt


def _opt(value: str | None, what: str, *, directory: bool = False) -> str | None:
    return None if value is None else str(check_path(value, what, directory=directory))


def build_record(reg: Registration) -> ImageRecord:
    """The unmanaged image row for ``reg``; every rule is checked before anything is made."""
    validate_name(reg.name, kind="image")
    _check_kernel_choice(reg)
    rootfs = check_path(reg.rootfs, "rootfs")
    check_ext4(rootfs, "rootfs")
    work_seed = _opt(reg.work_seed, "work seed")
    if work_seed is not None:
        check_ext4(Path(work_seed), "work seed")
    if reg.kernel is not None:
        check_kernel(check_path(reg.kernel, "kernel"))
    return ImageRecord(
        name=reg.name,
        managed=False,
        rootfs_path=str(rootfs),
        source=SOURCE_REGISTER,
        created_at=utc_now(),
        work_seed_path=work_seed,
        kernel_name=reg.kernel_ref,
        kernel_path=reg.kernel,
        initrd_path=_opt(reg.initrd, "initrd"),
        modules_path=_opt(reg.modules, "modules", directory=True),
        size_bytes=rootfs.stat().st_size,
    )


def _check_kernel_choice(reg: Registration) -> None:
    if reg.kernel is not None and reg.kernel_ref is not None:
        raise InvalidArgument("give --kernel PATH or --kernel-ref NAME, not both")
    if reg.kernel is None and reg.kernel_ref is None:
        raise InvalidArgument(
            "an image needs a kernel",
            hint="add --kernel PATH (a vmlinuz or vmlinux) or --kernel-ref NAME "
            "(see `banger kernel list`)",
        )
    if reg.kernel_ref is not None:
        validate_name(reg.kernel_ref)
        if reg.initrd is not None or reg.modules is not None:
            raise InvalidArgument(
                "--initrd and --modules go with --kernel; a stored kernel brings its own"
            )


# -- promotion --------------------------------------------------------------------------


def recheck(image: ImageRecord) -> None:
    """The registered files must still be what they were before they are copied."""
    check_ext4(check_path(image.rootfs_path, "rootfs"), "rootfs")
    if image.work_seed_path:
        check_ext4(check_path(image.work_seed_path, "work seed"), "work seed")
    if image.kernel_path:
        check_kernel(check_path(image.kernel_path, "kernel"))
    if image.initrd_path:
        check_path(image.initrd_path, "initrd")
    if image.modules_path:
        check_path(image.modules_path, "modules", directory=True)


def copy_rootfs(image: ImageRecord, stage_dir: Path) -> str:
    method = clone_file(Path(image.rootfs_path), stage_dir / ROOTFS)
    return f"{ROOTFS} ({method})"


def copy_rest(image: ImageRecord, stage_dir: Path) -> list[str]:
    """Copy the work seed, kernel, initrd and modules that the image points at."""
    copied: list[str] = []
    if image.work_seed_path:
        method = clone_file(Path(image.work_seed_path), stage_dir / WORK_SEED)
        copied.append(f"{WORK_SEED} ({method})")
    if image.kernel_path:
        kernel = Path(image.kernel_path)
        name = "vmlinux" if kernel_format(kernel) is KernelFormat.ELF else "vmlinuz"
        copy_file(kernel, stage_dir / name)
        copied.append(name)
    if image.initrd_path:
        copy_file(Path(image.initrd_path), stage_dir / INITRD)
        copied.append(INITRD)
    if image.modules_path:
        files, _ = copy_tree(Path(image.modules_path), stage_dir / MODULES)
        copied.append(f"{MODULES}/ ({files} files)")
    return copied


def promoted(image: ImageRecord, final: Path) -> ImageRecord:
    """``image`` pointing at its copies, once they are published in ``final``."""

    def moved(path: str | None, name: str) -> str | None:
        return None if path is None else str(final / name)

    kernel_file = "vmlinux" if (final / "vmlinux").exists() else "vmlinuz"
    return replace(
        image,
        managed=True,
        source=f"promote:{image.rootfs_path}",
        rootfs_path=str(final / ROOTFS),
        work_seed_path=moved(image.work_seed_path, WORK_SEED),
        kernel_path=moved(image.kernel_path, kernel_file),
        initrd_path=moved(image.initrd_path, INITRD),
        modules_path=moved(image.modules_path, MODULES),
    )
