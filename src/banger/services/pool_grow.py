"""Growing a claimed warm-pool VM's work disk while its guest runs (issue 12).

Owns: making a running pool VM's ``/root`` disk as big as a create asked — the host file
extended (sparse, never shrunk, never replaced), the running VMM told (QEMU's
``block_resize``, Firecracker's ``PATCH /drives``), the guest's mounted ext4 grown
online (``resize2fs`` once the guest kernel sees the new size, through the
``GuestNamer`` seam: the daemon's exec connection, SSH without an agent) — and the row's
new size, written last; and, first, whether the guest can grow at all
(``why_not_growable``: ``resize2fs`` present). Must not: pick, rename or discard the VM
(``banger.services.pool_claim`` does, and discards a VM whose grow failed), grow a
stopped VM's disk (``banger.disks.workdisk``), or shrink anything.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

from banger.errors import BangerError, StateError
from banger.model.records import VmRecord
from banger.services import vm_boot
from banger.services.vm_paths import VmPaths
from banger.state import repo
from banger.vmm.base import Backend, DriveSpec

if TYPE_CHECKING:
    from banger.services.vms import VmService

#: The work disk in the guest (the second drive; the image's fstab mounts it on /root).
WORK_DEVICE = "/dev/vdb"
#: ``resize2fs`` of a mounted ext4 adds block groups' metadata only: seconds at most.
GROW_TIMEOUT_S = 60.0
#: How long the guest waits for its kernel to read the new capacity (the virtio
#: config-change interrupt is handled on a workqueue, a moment after the VMM's answer).
CAPACITY_WAIT_S = 10.0


def grow_script(sys_root: str = "", wait_s: float = CAPACITY_WAIT_S) -> str:
    """Waits (up to about ``wait_s``) until the kernel sees at least ``$2`` 512-byte
    sectors on ``$1``, then grows the mounted filesystem on it to fill the device.
    ``sys_root`` is for tests (a directory standing for /)."""
    tries = max(1, int(wait_s / 0.05))
    return (
        'set -e; dev="$1"; want="$2"; n=0; '
        f'size="{sys_root}/sys/class/block/${{dev##*/}}/size"; '
        'while read -r have < "$size"; [ "$have" -lt "$want" ]; do '
        f'n=$((n+1)); if [ "$n" -gt {tries} ]; then '
        'echo "the guest kernel sees $have sectors on $dev, not $want" >&2; exit 1; fi; '
        # busybox without fractional sleep: one second at a time.
        "sleep 0.05 2>/dev/null || sleep 1; done; "
        'resize2fs "$dev" >/dev/null'
    )


def grow_argv(size_bytes: int, device: str = WORK_DEVICE) -> list[str]:
    return ["sh", "-c", grow_script(), "sh", device, str(size_bytes // 512)]


#: Before anything is grown: a guest without ``resize2fs`` (busybox, Alpine without
#: e2fsprogs-extra) keeps its pool VM intact instead of losing it to a half-done grow.
CHECK_ARGV = ["sh", "-c", "command -v resize2fs >/dev/null || exit 3"]
CHECK_TIMEOUT_S = 10.0


async def why_not_growable(service: VmService, vm: VmRecord) -> str | None:
    """None when the guest has ``resize2fs``; else why it cannot grow (nothing changed)."""
    try:
        await service.guest_namer.run(
            vm,
            service.ssh_argv_of(vm),
            CHECK_ARGV,
            timeout_s=CHECK_TIMEOUT_S,
            what="looking for resize2fs in the guest",
        )
    except BangerError as exc:
        return exc.brief
    return None


def extend_file(path: Path, size_bytes: int) -> bool:
    """Make ``path`` (which must exist) at least ``size_bytes`` long, sparse; False when
    it already was. Only ``ftruncate`` upwards: a crash leaves the old file or a longer
    one, with the same data. Blocking."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _io_error(exc, path) from exc
    try:
        if os.fstat(fd).st_size >= size_bytes:
            return False
        os.ftruncate(fd, size_bytes)
        os.fsync(fd)
    except OSError as exc:
        raise _io_error(exc, path) from exc
    finally:
        os.close(fd)
    return True


async def grow(
    service: VmService, vm: VmRecord, paths: VmPaths, size_bytes: int
) -> tuple[VmRecord, str]:
    """Grow running ``vm``'s work disk to ``size_bytes``; the caller holds its lock.

    Returns the updated row and how the guest was reached. On failure the disk may be
    bigger than the row says (file, device, or not yet the filesystem): the caller
    discards the VM rather than hand it out.
    """
    await asyncio.to_thread(extend_file, paths.work_disk, size_bytes)
    handle = vm_boot.handle_of(vm, paths)
    if handle is None or vm.vmm is None:
        raise StateError(f"{vm.name} has no VMM process recorded")
    vmm = service.vmms.installed(Backend(vm.vmm))
    drive = DriveSpec(vm_boot.WORK_DRIVE_ID, paths.work_disk)
    await vmm.grow_drive(handle, drive, size_bytes)
    how = await service.guest_namer.run(
        vm,
        service.ssh_argv_of(vm),
        grow_argv(size_bytes),
        timeout_s=GROW_TIMEOUT_S,
        what="growing the guest's /root filesystem",
    )
    row: VmRecord = await service.ctx.db.run(repo.update_vm, vm.name, disk_size_bytes=size_bytes)
    return row, how


def _io_error(exc: OSError, path: Path) -> StateError:
    if exc.errno in {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}:
        hint = f"free space on the filesystem holding {path.parent}, then retry"
    else:
        hint = None
    return StateError(f"cannot grow {path}: {exc.strerror}", details=str(exc), hint=hint)
