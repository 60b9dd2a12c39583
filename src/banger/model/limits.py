"""The bounds of what a client may ask for, each written once.

Owns: the numeric limits and closed choices of the API's requests (VM sizes, boot
timeout, image size, signals, VMMs). The click options, the pydantic models of
``banger.api.models``, the config's schema and the services all read them from here, so
the CLI's early check and the daemon's check cannot disagree.
Each ranged quantity a user types is also a ``Bound``: its range and the unit its number
is in, so every check (CLI flag, config key, SDK argument, API field) words the same limit
the same way (``banger.model.units.check_bound``).
Must not: import anything but the standard library; hold behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

#: What a bounded number counts: bytes and MiB are shown as sizes ("256 MiB").
Unit = Literal["bytes", "MiB", "vCPU", "seconds"]


@dataclass(frozen=True)
class Bound:
    """An inclusive range of one quantity, in ``unit``."""

    low: int
    high: int
    unit: Unit


MIB: Final = 1 << 20

VCPU_MIN: Final = 1
VCPU_MAX: Final = 64

MEMORY_MIB_MIN: Final = 128
MEMORY_MIB_MAX: Final = 1 << 20  # 1 TiB

#: The per-VM /root work disk.
DISK_SIZE_MIN_BYTES: Final = 256 * MIB
DISK_SIZE_MAX_BYTES: Final = 16 << 40

#: rootfs.ext4 of a pulled image: the image builder's floor (journal and metadata).
IMAGE_SIZE_MIN_BYTES: Final = 64 * MIB
IMAGE_SIZE_MAX_BYTES: Final = 2 << 40

#: Ready VMs one warm pool keeps (per image).
POOL_SIZE_MAX: Final = 16

BOOT_TIMEOUT_S_MIN: Final = 1
BOOT_TIMEOUT_S_MAX: Final = 3600
BOOT_TIMEOUT_S_DEFAULT: Final = 300

VCPU: Final = Bound(VCPU_MIN, VCPU_MAX, "vCPU")
MEMORY_MIB: Final = Bound(MEMORY_MIB_MIN, MEMORY_MIB_MAX, "MiB")
DISK_SIZE: Final = Bound(DISK_SIZE_MIN_BYTES, DISK_SIZE_MAX_BYTES, "bytes")
IMAGE_SIZE: Final = Bound(IMAGE_SIZE_MIN_BYTES, IMAGE_SIZE_MAX_BYTES, "bytes")
BOOT_TIMEOUT_S: Final = Bound(BOOT_TIMEOUT_S_MIN, BOOT_TIMEOUT_S_MAX, "seconds")

#: Signals ``vm kill`` may send to a VMM process (names without ``SIG``).
SIGNALS: Final = ("KILL", "TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT")
DEFAULT_SIGNAL: Final = "KILL"

#: VMMs a client may force.
VMMS: Final = ("firecracker", "qemu")

#: Where a VM's log comes from.
LOG_SOURCES: Final = ("console", "vmm")

#: Bounds of names as they travel in a request (the strict rules are the services').
VM_NAME_MAX: Final = 255
IMAGE_REF_NAME_MAX: Final = 128
URL_NAME_MAX: Final = 128
HOST_PATH_MAX: Final = 8192

#: ``vm exec``: what one OPEN frame can carry (``banger.guest.exec_frames`` has the same
#: bounds; the whole command, directory and environment must also fit in 64 KiB).
EXEC_ARGV_MAX: Final = 4096
EXEC_ENV_MAX: Final = 1024
EXEC_FIELD_MAX: Final = 64 * 1024
#: The guest's timer is milliseconds in a u32: about 49 days.
EXEC_TIMEOUT_S_MAX: Final = 4_000_000
