"""A VM's files: its copy-on-write rootfs, its /root work disk and its identity.

Owns: building ``vms/<name>/`` in a staging dir and publishing it crash-safely (SPEC §2),
growing the work disk, and the per-VM socket dir. Runs in a worker thread (blocking I/O).
Must not: touch rows or VMM processes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from banger.disks import workdisk
from banger.disks.clone import clone_file
from banger.disks.identity import ensure_managed_key, inject_rootfs, inject_workdisk, make_identity
from banger.disks.modules import install_modules
from banger.disks.workdisk import create_work_disk
from banger.host.paths import ensure_private_dir
from banger.host.publish import staging
from banger.host.runner import Runner
from banger.model.records import ImageRecord, KernelRecord, VmRecord
from banger.services.context import DaemonContext
from banger.services.vm_addresses import ssh_target
from banger.services.vm_paths import VmPaths


def build(
    ctx: DaemonContext,
    vm: VmRecord,
    paths: VmPaths,
    image: ImageRecord,
    kernel: KernelRecord | None = None,
) -> str:
    """Create and publish the VM dir; returns a one-line account of what was done."""
    runner = ctx.runner
    public_key = ensure_managed_key(ctx.config.ssh_key_file(), runner)
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
        identity = make_identity(vm.name, public_key, runner, Path(keys))
        inject_rootfs(rootfs, identity, runner)
        modules = _install_modules(rootfs, image, kernel, runner)
        inject_workdisk(stage.path / paths.work_disk.name, identity, runner)
        host_key = identity.host_key_public.decode().split()
        target = ssh_target(vm)
        assert target is not None  # every VM row has an address or a port
        line = f"{target.known_hosts_name} {host_key[0]} {host_key[1]}\n"
        (stage.path / paths.known_hosts.name).write_text(line)
        stage.commit(paths.vm_dir)
    done = f"rootfs {method.value} clone, work disk {vm.disk_size_bytes // 1024**2} MiB"
    return f"{done}, {modules}" if modules else done


def _install_modules(
    rootfs: Path, image: ImageRecord, kernel: KernelRecord | None, runner: Runner
) -> str | None:
    """The booted kernel's modules into the VM's rootfs copy (kernel-modules.md)."""
    if kernel is not None:
        tree = Path(kernel.dir_path) / "modules"
        if not kernel.has_modules or kernel.version is None or not tree.is_dir():
            return None
        return install_modules(rootfs, tree, kernel.version, runner).describe()
    given = Path(image.modules_path) if image.modules_path else None
    # `image register --modules DIR` names lib/modules/<version>; a promoted copy is
    # called `modules` and its version is unknown here, so it is left out.
    if given is not None and given.name != "modules" and (given / "modules.dep").is_file():
        return install_modules(rootfs, given, given.name, runner).describe()
    return None


def prepare_run_dir(paths: VmPaths) -> None:
    """A fresh private socket dir: a dead VMM's sockets must not be mistaken for live ones."""
    shutil.rmtree(paths.run_dir, ignore_errors=True)
    ensure_private_dir(paths.run_dir.parent)
    ensure_private_dir(paths.run_dir)


def grow_work_disk(ctx: DaemonContext, paths: VmPaths, size_bytes: int) -> None:
    workdisk.grow_work_disk(paths.work_disk, size_bytes, runner=ctx.runner)
