"""The booted kernel's modules in a VM's root filesystem (docs/explanation/kernel-modules.md).

Owns: copying a stored kernel's ``modules/`` tree (``lib/modules/<version>`` with its
``modules.dep``) into a VM's fresh rootfs copy before boot, with ``debugfs`` (no mount,
no root), at ``/lib/modules/<version>`` — or ``/usr/lib/modules/<version>`` when the image
has a merged ``/usr`` (``/lib -> usr/lib``): banger never resolves a guest symlink on the
host. Nothing is copied when the image already has that version's ``modules.dep`` (a
catalog image built with the kernel's modules, or a previous copy).
Must not: touch an image's own rootfs (only a VM's copy), follow symlinks in the source
tree (only regular files and directories are copied), or need root.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from banger.disks.ext4edit import Ext4Editor
from banger.errors import InvalidArgument
from banger.host.runner import Runner

#: A kernel release as ``uname -r`` prints it: one path component, nothing odd.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}", re.ASCII)
MERGED_LIB_TARGETS = ("usr/lib", "/usr/lib")


@dataclass(frozen=True)
class ModulesResult:
    guest_dir: str
    files: int
    bytes: int
    copied: bool
    no_room: bool = False

    def describe(self) -> str:
        if self.no_room:
            return (
                f"no kernel modules: {self.bytes >> 20} MiB do not fit in the rootfs's"
                " free space (a larger image or --size would have them)"
            )
        if not self.copied:
            return f"modules already in {self.guest_dir}"
        return f"{self.files} modules files ({self.bytes >> 20} MiB) into {self.guest_dir}"


def modules_base(editor: Ext4Editor) -> str:
    """``/lib/modules``, or ``/usr/lib/modules`` when ``/lib`` is a symlink (merged /usr)."""
    lib = editor.stat("/lib")
    if lib is None or lib.kind == "directory":
        return "/lib/modules"
    usr_lib = editor.stat("/usr/lib")
    if lib.kind == "symlink" and usr_lib is not None and usr_lib.kind == "directory":
        return "/usr/lib/modules"
    raise InvalidArgument(
        f"cannot place kernel modules: /lib in {editor.image.name} is a {lib.kind}"
        " and /usr/lib is not a directory"
    )


def install_modules(image: Path, modules: Path, version: str, runner: Runner) -> ModulesResult:
    """Copy the host tree ``modules`` (the content of ``lib/modules/<version>``) into the
    ext4 ``image``; a no-op when ``<version>/modules.dep`` is already there."""
    if not _VERSION.fullmatch(version):
        raise InvalidArgument(f"kernel version {version!r} cannot name a modules directory")
    editor = Ext4Editor(image, runner)
    guest_dir = f"{modules_base(editor)}/{version}"
    if editor.stat(f"{guest_dir}/modules.dep") is not None:
        return ModulesResult(guest_dir, 0, 0, copied=False)
    dirs, regular = _walk(modules)
    size = sum(st.st_size for _, st in regular.values())
    # A tiny rootfs (a 64 MiB busybox guest) has no room for ~90 MiB of modules: it boots
    # without them rather than failing with ENOSPC half way through the copy.
    if free_bytes(image, runner) < size + size // 8 + (8 << 20):
        return ModulesResult(guest_dir, len(regular), size, copied=False, no_room=True)
    editor.mkdir(guest_dir, mode=0o755)
    for rel in dirs:
        editor.mkdir(f"{guest_dir}/{rel}", mode=0o755)
    for rel, (host, _) in regular.items():
        editor.copy_file(f"{guest_dir}/{rel}", host, mode=0o644)
    editor.apply()
    return ModulesResult(guest_dir, len(regular), size, copied=True)


def _walk(modules: Path) -> tuple[list[str], dict[str, tuple[Path, os.stat_result]]]:
    """Directories (parents first) and regular files below ``modules``, as relative
    POSIX paths; symlinks and special files stay behind, none is followed."""
    dirs: list[str] = []
    regular: dict[str, tuple[Path, os.stat_result]] = {}
    for dirpath, dirnames, filenames in os.walk(modules, followlinks=False):
        here = Path(dirpath)
        rel = here.relative_to(modules)
        for name in sorted(dirnames):
            if not (here / name).is_symlink():
                dirs.append((rel / name).as_posix())
        for name in sorted(filenames):
            st = (here / name).lstat()
            if stat.S_ISREG(st.st_mode):
                regular[(rel / name).as_posix()] = (here / name, st)
    return dirs, regular


def free_bytes(image: Path, runner: Runner) -> int:
    """Free space of the ext4 ``image`` for files, from its superblock (``dumpe2fs -h``)."""
    text = runner.run(["dumpe2fs", "-h", image], timeout_s=60).text
    fields = {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in text.splitlines())
    }
    try:
        free = int(fields["Free blocks"]) - int(fields.get("Reserved block count", "0"))
        return max(free, 0) * int(fields["Block size"])
    except (KeyError, ValueError) as exc:
        raise InvalidArgument(f"dumpe2fs did not describe {image.name}") from exc
