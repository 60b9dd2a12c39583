"""Typed rows of the state database: what a kernel, an image and a VM look like on disk.

Owns: the frozen record dataclasses mirroring the tables of ``banger.state.migrations``
and the ``VmState`` vocabulary.
Must not: touch SQLite or the filesystem; conversion to and from rows lives in
``banger.state.repo``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class VmState(StrEnum):
    """Lifecycle states stored in ``vms.state`` (migration 1 has a CHECK on this list)."""

    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


def not_running(name: str, state: str) -> tuple[str, str]:
    """The message and hint for "this needs VM ``name`` running", in every layer alike."""
    hint = f"`banger vm start {name}`"
    if state == VmState.ERROR:
        hint += f" (`banger vm show {name}` shows the error it stopped with)"
    if state == VmState.RUNNING:  # the row is behind: its VMM has just gone
        return f"VM {name!r} is not running: its VMM process has exited", hint
    return f"VM {name!r} is in state {state}, not running", hint


def utc_now() -> datetime:
    """The timestamp every record uses: timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class KernelRecord:
    """A kernel in the local store ``kernels/<name>/`` (SPEC §6)."""

    name: str
    arch: str
    source: str
    dir_path: str
    imported_at: datetime
    distro: str | None = None
    version: str | None = None
    sha256: str | None = None
    has_initrd: bool = False
    has_modules: bool = False


@dataclass(frozen=True, kw_only=True)
class ImageRecord:
    """An image: rootfs plus optional work seed, kernel, initrd and modules (SPEC §5).

    ``kernel_name`` points at a stored kernel; ``kernel_path`` is a host path given to
    ``image register``. ``id`` is ``None`` until the row is inserted.
    """

    name: str
    managed: bool
    rootfs_path: str
    source: str
    created_at: datetime
    id: int | None = None
    work_seed_path: str | None = None
    kernel_name: str | None = None
    kernel_path: str | None = None
    initrd_path: str | None = None
    modules_path: str | None = None
    source_digest: str | None = None
    size_bytes: int | None = None
    #: Guest path passed as ``init=`` (banger's first-boot init for pulled images).
    init_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class VmRecord:
    """A VM row (SPEC §3). ``id`` is ``None`` until the row is inserted.

    ``pid_start_ticks`` is field 22 of ``/proc/<pid>/stat`` and ``boot_id`` the host's
    ``/proc/sys/kernel/random/boot_id`` when the VMM started: together they tell our VMM
    from a process that reused its pid, or a pid from before a host reboot.
    """

    name: str
    image_id: int | None
    state: VmState
    vcpu: int
    memory_mib: int
    disk_size_bytes: int
    created_at: datetime
    updated_at: datetime
    id: int | None = None
    vmm: str | None = None
    nat: bool = False
    ip: str | None = None
    mac: str | None = None
    tap: str | None = None
    vm_dir: str | None = None
    pid: int | None = None
    pid_start_ticks: int | None = None
    boot_id: str | None = None
    last_error: str | None = None
    stopped_at: datetime | None = None
    #: Rootless VMs (user-mode networking, no ``ip``/``tap``): the 127.0.0.1 port
    #: forwarded to the guest's port 22.
    ssh_port: int | None = None
    #: A warm-pool VM: booted ahead of a create, not the user's until it is claimed.
    #: Daemon-internal: not part of the API's VM record (``services.inventory``).
    pool: bool = field(default=False, metadata={"internal": True})
