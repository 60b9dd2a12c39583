"""The local kernel store: ``kernels/<name>/`` as SPEC §6 describes it.

Owns: kernel name rules, what a stored kernel directory holds and its ``manifest.json``,
filling a staging directory from a ``Discovered`` source (ELF ``vmlinux`` copied or
extracted, the original bzImage kept as ``vmlinuz`` because QEMU boots it directly and
faster, ``initrd.img`` copied or built, ``modules/`` copied), publishing it (atomically
replacing an existing one when asked), and checking a stored kernel against its
manifest (ADVERSARIAL 45: the sha256 of each file is recorded, so a bit flip is found
by ``verify_kernel``).
Must not: touch the state database (the service writes the row after publishing) or
follow a symlink out of the source directory when copying.

Layout of ``kernels/<name>/`` (0700 like every published entry; files 0644, dirs 0755):

    manifest.json   name, distro, arch, version, sha256 (of vmlinux), source,
                    imported_at, initrd_origin (given|built|none), files{...}
    vmlinux         ELF x86-64 kernel (what Firecracker boots)
    vmlinuz         the bzImage it came from, when there was one
    initrd.img      optional
    modules/        optional: the tree of lib/modules/<version>
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from banger.errors import CommandFailed, InvalidArgument, StateError
from banger.host.publish import (
    Staging,
    fsync_dir,
    fsync_tree,
    remove_published,
    rename_exchange,
    write_file_atomic,
)
from banger.host.runner import Runner
from banger.kernels.discover import Discovered
from banger.kernels.initrd import build_initrd, has_virtio_modules
from banger.kernels.vmlinux import extract_vmlinux, is_x86_64_elf, read_head

MANIFEST = "manifest.json"
VMLINUX = "vmlinux"
VMLINUZ = "vmlinuz"
INITRD = "initrd.img"
MODULES = "modules"
MANIFEST_SCHEMA = 1


class InitrdOrigin(StrEnum):
    GIVEN = "given"  # found next to the kernel and copied
    BUILT = "built"  # made by banger.kernels.initrd from the modules
    NONE = "none"


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class KernelBuild:
    """Fills one staging directory from a discovered source, one step at a time.

    Each step returns a line for the progress stream. The caller runs them in order
    (``kernel``, ``modules``, ``initrd``, ``manifest``), off the event loop.
    """

    found: Discovered
    stage_dir: Path
    runner: Runner
    vmlinux_origin: str = ""
    initrd_origin: InitrdOrigin = InitrdOrigin.NONE
    initrd_modules: list[str] = field(default_factory=list)
    modules_note: str | None = None

    def kernel(self) -> str:
        """``vmlinux`` (copied ELF or extracted from the bzImage) and ``vmlinuz``."""
        found = self.found
        if found.vmlinuz is not None:
            copy_file(found.vmlinuz, self.stage_dir / VMLINUZ)
        if found.vmlinux is not None:
            copy_file(found.vmlinux, self.stage_dir / VMLINUX)
            self.vmlinux_origin = "copied"
            return f"copied the ELF {found.vmlinux.name}"
        assert found.vmlinuz is not None
        extract_vmlinux(self.stage_dir / VMLINUZ, self.stage_dir / VMLINUX, self.runner)
        self.vmlinux_origin = "extracted"
        size_mib = (self.stage_dir / VMLINUX).stat().st_size >> 20
        return f"extracted a {size_mib} MiB ELF vmlinux from {found.vmlinuz.name}"

    def modules(self) -> str | None:
        """Copy the modules tree; None when the source has none."""
        if self.found.modules is None:
            return None
        files, size = copy_tree(self.found.modules, self.stage_dir / MODULES)
        detail = f"{files} files, {size >> 20} MiB"
        self.modules_note = self._depmod()
        return f"{detail}; {self.modules_note}" if self.modules_note else detail

    def _depmod(self) -> str | None:
        """Generate modules.dep when the source lacks it (Debian runs depmod at install)."""
        target = self.stage_dir / MODULES
        version = self.found.version
        if (target / "modules.dep").exists() or version is None:
            return None
        base = self.stage_dir / ".depmod"
        link = base / "lib" / "modules" / version
        link.parent.mkdir(parents=True)
        link.symlink_to(target)
        try:
            self.runner.run(["depmod", "-b", base, version], timeout_s=300)
        except CommandFailed as exc:
            return f"no modules.dep ({exc.brief})"
        finally:
            shutil.rmtree(base)
        return "generated modules.dep"

    def initrd(self) -> str | None:
        """Copy the given initrd, or build one when there are modules; None otherwise."""
        dst = self.stage_dir / INITRD
        if self.found.initrd is not None:
            copy_file(self.found.initrd, dst)
            self.initrd_origin = InitrdOrigin.GIVEN
            return f"copied {self.found.initrd.name}"
        if self.found.modules is None:
            return None
        if not has_virtio_modules(self.stage_dir / MODULES):
            return "none: no virtio modules (built into the kernel?)"
        self.initrd_modules = build_initrd(self.stage_dir / MODULES, dst, self.runner)
        self.initrd_origin = InitrdOrigin.BUILT
        size_kib = dst.stat().st_size >> 10
        return f"built a {size_kib} KiB initrd with {len(self.initrd_modules)} virtio modules"

    def manifest(self, name: str, source: str, imported_at: str) -> dict[str, Any]:
        files: dict[str, dict[str, Any]] = {
            entry: {"sha256": sha256_file(self.stage_dir / entry)}
            for entry in (VMLINUX, VMLINUZ, INITRD)
            if (self.stage_dir / entry).is_file()
        }
        files[VMLINUX]["origin"] = self.vmlinux_origin
        if INITRD in files:
            files[INITRD]["origin"] = self.initrd_origin.value
            if self.initrd_modules:
                files[INITRD]["modules"] = self.initrd_modules
        if (self.stage_dir / MODULES).is_dir():
            files[MODULES] = {"note": self.modules_note} if self.modules_note else {}
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "name": name,
            "distro": self.found.distro,
            "arch": self.found.arch,
            "version": self.found.version,
            "sha256": files[VMLINUX]["sha256"],
            "source": source,
            "imported_at": imported_at,
            "initrd_origin": self.initrd_origin.value,
            "files": files,
        }
        data = json.dumps(manifest, indent=2).encode() + b"\n"
        write_file_atomic(self.stage_dir / MANIFEST, data, mode=0o644)
        return manifest


# -- copying ----------------------------------------------------------------------------

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def copy_file(src: Path, dst: Path, *, mode: int = 0o644) -> None:
    """Copy regular file ``src`` (not through a symlink, never blocking) to new ``dst``."""
    try:
        fd = os.open(src, _READ_FLAGS)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {src}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fin:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{src} is not a regular file")
        out = os.open(
            dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode
        )
        with os.fdopen(out, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            os.fchmod(out, mode)


def copy_tree(src: Path, dst: Path) -> tuple[int, int]:
    """Copy directories and regular files of ``src`` into new ``dst``: (files, bytes).

    Symlinks, FIFOs, sockets and devices are skipped: a modules tree needs none of them
    (Debian's ``build`` and ``source`` links point at headers outside the tree).
    """
    files = size = 0
    dst.mkdir(mode=0o755)
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        here = Path(dirpath)
        out = dst / here.relative_to(src)
        for name in dirnames:
            if not (here / name).is_symlink():
                (out / name).mkdir(mode=0o755)
        for name in filenames:
            path = here / name
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue  # removed while we walked: nothing to copy
            if stat.S_ISREG(mode):
                copy_file(path, out / name)
                files += 1
                size += (out / name).stat().st_size
    return files, size


# -- publishing -------------------------------------------------------------------------


def _exchange(a: Path, b: Path) -> bool:
    try:
        return rename_exchange(a, b)
    except OSError as exc:
        raise StateError(f"cannot replace {b}: {exc.strerror}") from exc


def publish_kernel(stage: Staging, final: Path, *, replace: bool) -> None:
    """Publish a filled staging directory as ``final``.

    With ``replace``, an existing ``final`` is swapped out in one rename(2), so a reader
    sees the old kernel or the new one, never a mix; the old tree is then left in the
    staging directory, which the ``staging()`` context removes.
    """
    if replace and os.path.lexists(final):
        fsync_tree(stage.path)
        if _exchange(stage.path, final):
            fsync_dir(final.parent)
            return
        # A filesystem without RENAME_EXCHANGE: remove, then publish (brief gap).
        remove_published(final)
    stage.commit(final)


# -- reading back -----------------------------------------------------------------------


def read_manifest(kernel_dir: Path) -> dict[str, Any] | None:
    """The manifest of a stored kernel; None when it is missing or unreadable."""
    try:
        data = json.loads((kernel_dir / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify_kernel(kernel_dir: Path) -> list[str]:
    """Problems of a stored kernel against its manifest (empty list: intact)."""
    manifest = read_manifest(kernel_dir)
    if manifest is None:
        return [f"{kernel_dir / MANIFEST} is missing or not JSON"]
    problems: list[str] = []
    files = manifest.get("files")
    for entry, info in (files if isinstance(files, dict) else {}).items():
        expected = info.get("sha256") if isinstance(info, dict) else None
        if not isinstance(expected, str):
            continue
        path = kernel_dir / entry
        try:
            actual = sha256_file(path)
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror}")
            continue
        if actual != expected:
            problems.append(f"{path}: sha256 {actual} does not match the manifest's {expected}")
    if not problems and not is_x86_64_elf(read_head(kernel_dir / VMLINUX, 64)):
        problems.append(f"{kernel_dir / VMLINUX} is not an x86-64 ELF")
    return problems
