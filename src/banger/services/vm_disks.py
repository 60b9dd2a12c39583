"""A VM's files: its copy-on-write rootfs, its /root work disk and its identity.

Owns: building ``vms/<name>/`` in a staging dir and publishing it crash-safely (SPEC §2),
growing the work disk, and the per-VM socket dir. Runs in a worker thread (blocking I/O).
Must not: touch rows or VMM processes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from banger.disks import identity as ident
from banger.disks.clone import clone_file
from banger.disks.workdisk import create_work_disk
from banger.disks.workdisk import grow_work_disk as grow_disk
from banger.host.paths import ensure_private_dir
from banger.host.publish import staging
from banger.model.records import ImageRecord, VmRecord
from banger.services.context import DaemonContext
from banger.services.vm_paths import VmPaths


def build(ctx: DaemonContext, vm: VmRecord, paths: VmPaths, image: ImageRecord) -> str:
    """Create and publish the VM dir; returns a one-line account of what was done."""
    runner = ctx.runner
    public_key = ident.ensure_managed_key(ctx.config.ssh_key_file(), runner)
    seed = Path(image.work_seed_path) if image.work_seed_path else None
    with (
        staging(ctx.layout.vms_dir, vm.name) as stage,
        tempfile.TemporaryDirectory(dir=ctx.layout.state_dir, prefix=".keys-") as keys,
    ):
        rootfs = stage.path / paths.rootfs.name
        method = clone_file(Path(image.rootfs_path), rootfs)
        create_work_disk(
            stage.path / paths.work_disk.name, vm.disk_size_bytes, seed=seed, runner=runner
        )
        identity = ident.make_identity(vm.name, public_key, runner, Path(keys))
        ident.inject_rootfs(rootfs, identity, runner)
        ident.inject_workdisk(stage.path / paths.work_disk.name, identity, runner)
        host_key = identity.host_key_public.decode().split()
        line = f"{vm.ip} {host_key[0]} {host_key[1]}\n"
        (stage.path / paths.known_hosts.name).write_text(line)
        stage.commit(paths.vm_dir)
    return f"rootfs {method.value} clone, work disk {vm.disk_size_bytes // 1024**2} MiB"


def prepare_run_dir(paths: VmPaths) -> None:
    """A fresh private socket dir: a dead VMM's sockets must not be mistaken for live ones."""
    shutil.rmtree(paths.run_dir, ignore_errors=True)
    ensure_private_dir(paths.run_dir.parent)
    ensure_private_dir(paths.run_dir)


def grow_work_disk(ctx: DaemonContext, paths: VmPaths, size_bytes: int) -> None:
    grow_disk(paths.work_disk, size_bytes, runner=ctx.runner)
