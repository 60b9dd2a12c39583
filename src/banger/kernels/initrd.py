"""A small initrd for distribution kernels whose virtio drivers are modules.

Owns: the product version of TESTING.md's ``recipes/mkinitrd.sh``: busybox-static, the
virtio/vsock modules of one kernel (in dependency order, absent ones skipped, ``.ko.xz``
/ ``.ko.zst`` / ``.ko.gz`` decompressed because busybox's insmod takes plain ``.ko``),
an init script, written as a reproducible cpio "newc" archive compressed with gzip.
The archive is produced in Python, so it can hold ``/dev/console`` without root and
every entry has uid 0, mtime 0 and a fixed inode number.
Must not: read anything outside the given modules directory except the busybox binary
(``/bin/busybox`` from Debian's busybox-static).

The init script mounts devtmpfs/proc/sys, loads the modules, waits up to 5 s for the
``root=`` block device, mounts it (``rootfstype=``, ``ro``), applies ``ip=`` when the
command line has ``initrd_net=1`` (the Debian cloud kernel has no CONFIG_IP_PNP, so
nothing else would), and ``switch_root``s to ``init=`` (default ``/sbin/init``).
"""

from __future__ import annotations

import gzip
import lzma
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from banger.errors import CommandFailed, InvalidArgument
from banger.host.runner import Runner
from banger.kernels.vmlinux import is_x86_64_elf

BUSYBOX = Path("/bin/busybox")
BUSYBOX_HINT = "install the static busybox: apt-get install busybox-static"
#: Under ``kernel/`` of a modules tree, in load order: a module comes after what it uses.
MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/char/virtio_console.ko",
    "drivers/char/hw_random/virtio-rng.ko",
    "net/vmw_vsock/vsock.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
)
MAX_MODULE_BYTES = 64 << 20
_PT_INTERP = 3

INIT_SCRIPT = r"""#!/bin/busybox sh
# banger initrd: load virtio modules, mount root=, optional ip=, switch_root to init=.
B=/bin/busybox
$B mount -t devtmpfs dev /dev
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
for m in $($B cat /lib/modules/order); do $B insmod /lib/modules/$m 2>/dev/null; done
ROOT=/dev/vda; FST=ext4; RO=rw; INIT=/sbin/init; NET=0; IPSPEC=
for x in $($B cat /proc/cmdline); do
  case $x in
    root=*) ROOT=${x#root=};; rootfstype=*) FST=${x#rootfstype=};; init=*) INIT=${x#init=};;
    ro) RO=ro;; rw) RO=rw;; initrd_net=1) NET=1;; ip=*) IPSPEC=${x#ip=};;
  esac
done
i=0; while [ ! -b "$ROOT" ] && [ $i -lt 500 ]; do $B usleep 10000; i=$((i+1)); done
if ! $B mount -t "$FST" -o $RO "$ROOT" /newroot; then
  echo "banger-initrd: cannot mount $ROOT"; exec $B sh
fi
# ip=<client>::<gateway>:<netmask>:<hostname>:<device>:off, only with initrd_net=1
if [ $NET = 1 ] && [ -n "$IPSPEC" ]; then
  OIFS=$IFS; IFS=:; set -- $IPSPEC; IFS=$OIFS
  DEV=${6:-eth0}
  $B ip link set lo up
  $B ifconfig "$DEV" "$1" netmask "${4:-255.255.255.0}" up
  [ -n "$3" ] && $B route add default gw "$3"
fi
$B umount /proc /sys
$B mount --move /dev /newroot/dev 2>/dev/null || $B umount /dev
exec $B switch_root /newroot "$INIT"
"""


@dataclass(frozen=True)
class _Entry:
    name: str
    mode: int  # including the file type bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def build_initrd(
    modules_dir: Path, dst: Path, runner: Runner, *, busybox: Path = BUSYBOX
) -> list[str]:
    """Write the initrd for the kernel whose ``lib/modules/<version>`` is ``modules_dir``.

    Returns the module file names included, in load order. ``InvalidArgument`` when the
    directory holds none of them (nothing would find the root disk), ``CommandFailed``
    with an apt hint when the static busybox is missing.
    """
    busybox_elf = _busybox(busybox)
    modules = _collect_modules(modules_dir, runner)
    if not modules:
        raise InvalidArgument(
            f"{modules_dir} has none of the virtio modules an initrd needs",
            hint="point at the lib/modules/<version> directory of the kernel, "
            "or give an initrd of your own",
        )
    entries = _entries(busybox_elf, modules)
    archive = gzip.compress(newc_archive(entries), compresslevel=9, mtime=0)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(archive)
    dst.chmod(0o644)
    return [name for name, _ in modules]


def has_virtio_modules(modules_dir: Path) -> bool:
    """True when ``modules_dir`` holds any of the modules the initrd would load.

    A kernel with its virtio drivers built in has none and needs no initrd.
    """
    base = modules_dir / "kernel"
    suffixes = ("", ".xz", ".zst", ".gz")
    return any(
        (base / rel).with_name(Path(rel).name + sfx).is_file()
        for rel in MODULES
        for sfx in suffixes
    )


def _busybox(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CommandFailed(f"{path} is missing", hint=BUSYBOX_HINT) from exc
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror}", hint=BUSYBOX_HINT) from exc
    if not _is_static_elf(data):
        # Debian's `busybox` package installs a dynamically linked /bin/busybox: it would
        # not run in an initrd that has no libc.
        raise CommandFailed(f"{path} is not a statically linked x86-64 busybox", hint=BUSYBOX_HINT)
    return data


def _is_static_elf(data: bytes) -> bool:
    """An x86-64 ELF without a PT_INTERP program header (no dynamic loader needed)."""
    if len(data) < 64 or not is_x86_64_elf(data):
        return False
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + 4 > len(data):
            return False
        if struct.unpack_from("<I", data, at)[0] == _PT_INTERP:
            return False
    return True


def _collect_modules(modules_dir: Path, runner: Runner) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    base = modules_dir / "kernel"
    for rel in MODULES:
        data = _read_module(base / rel, runner)
        if data is not None:
            found.append((Path(rel).name, data))
    return found


def _read_module(path: Path, runner: Runner) -> bytes | None:
    """The plain ``.ko`` at ``path`` (or its compressed sibling); None when absent."""
    for suffix in ("", ".xz", ".zst", ".gz"):
        candidate = path.with_name(path.name + suffix)
        raw = _read_regular(candidate)
        if raw is None:
            continue
        try:
            if suffix == ".xz":
                return lzma.decompress(raw)
            if suffix == ".gz":
                return gzip.decompress(raw)
            if suffix == ".zst":
                return runner.run(["zstd", "-d", "-q", "-c"], input_bytes=raw).stdout
        except (lzma.LZMAError, OSError, EOFError, CommandFailed) as exc:
            raise InvalidArgument(f"cannot decompress module {candidate}: {exc}") from exc
        return raw
    return None


def _read_regular(path: Path) -> bytes | None:
    """Contents of a regular file reached without following a symlink; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MODULE_BYTES:
            return None
        return f.read(MAX_MODULE_BYTES)


def _entries(busybox: bytes, modules: list[tuple[str, bytes]]) -> list[_Entry]:
    dirs = ["bin", "dev", "lib", "lib/modules", "newroot", "proc", "sys"]
    entries = [_Entry(d, stat.S_IFDIR | 0o755) for d in dirs]
    # The kernel opens /dev/console for init's stdio before init mounts devtmpfs.
    entries.append(_Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(_Entry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    entries.append(_Entry("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode()))
    order = "".join(f"{name}\n" for name, _ in modules).encode()
    entries.append(_Entry("lib/modules/order", stat.S_IFREG | 0o644, order))
    entries.extend(_Entry(f"lib/modules/{n}", stat.S_IFREG | 0o644, d) for n, d in modules)
    return entries


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_archive(entries: list[_Entry]) -> bytes:
    """A cpio "newc" archive (what the kernel unpacks as an initramfs) of ``entries``."""
    out = bytearray()
    for ino, entry in enumerate([*entries, _Entry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode() + b"\0"
        is_trailer = entry.name == "TRAILER!!!"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        fields = (
            0 if is_trailer else ino,
            entry.mode,
            0,  # uid
            0,  # gid
            0 if is_trailer else nlink,
            0,  # mtime
            len(entry.data),
            0,  # devmajor
            0,  # devminor
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,  # check
        )
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)
