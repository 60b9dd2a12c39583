"""Real guest artifacts for the VM (e2e) tests, built once and cached.

Everything lives under ``$BANGER_TEST_CACHE`` (default ``/var/tmp/banger-test-cache``)::

    <cache>/.locks/<artifact>.lock       fcntl lock: one builder per artifact at a time
    <cache>/kernel/<key>/import/         boot/vmlinuz-<v>, lib/modules/<v> (depmod'ed)
    <cache>/initrd/<key>/initrd.img      busybox + virtio modules for that kernel
    <cache>/tiny-rootfs/<key>/rootfs.ext4
    <cache>/debian-rootfs/<key>/rootfs.ext4
    <cache>/ssh-key/<key>/id_ed25519{,.pub}
    <cache>/<artifact>/<key>/build.json  how long the build took

``<key>`` is the artifact's recipe version (plus the kernel version for the initrd): change
a recipe below and bump its version, and the artifact is rebuilt. An artifact is built in
``<cache>/<artifact>/.tmp-*`` and renamed into place, so a crash never leaves a half
artifact that counts; stale temp dirs and older versions are removed under the lock.

Nothing is installed on the host: the kernel comes from ``apt-get download`` +
``dpkg-deb -x``, the Debian rootfs from ``debootstrap`` (Debian's archive only).
The host tools come from ``scripts/test-deps.sh``.

Treat the returned paths as read-only: boot a ``cp --sparse=always`` copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

KERNEL_RECIPE = "k1"
INITRD_RECIPE = "i2"
TINY_RECIPE = "t2"
DEBIAN_RECIPE = "d2"
SSH_KEY_RECIPE = "s1"

KERNEL_PACKAGE = "linux-image-cloud-amd64"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES = "systemd-sysv,udev,openssh-server,iproute2,python3-minimal"

# Loaded in this order by the initrd (virtio_ring before virtio; failover before
# net_failover before virtio_net); paths are relative to lib/modules/<v>/kernel.
INITRD_MODULES = (
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

_BUSYBOX = Path("/bin/busybox")  # busybox-static
AGENT_SRC = Path(__file__).resolve().parents[1] / "src" / "banger" / "guest"
_DROPBEAR_BINARIES = ("/usr/sbin/dropbear", "/usr/bin/dropbearconvert", "/usr/bin/dropbearkey")


@dataclass(frozen=True)
class CloudKernel:
    """Debian's cloud kernel unpacked into the cache (never installed on the host)."""

    vmlinuz: Path
    modules_dir: Path
    version: str
    import_dir: Path  # boot/vmlinuz-<v> + lib/modules/<v>: what `banger kernel import` reads


def cache_dir() -> Path:
    return Path(os.environ.get("BANGER_TEST_CACHE", "/var/tmp/banger-test-cache"))


# --- the public API ---------------------------------------------------------------------


def cloud_kernel() -> CloudKernel:
    out = _artifact("kernel", KERNEL_RECIPE, _build_kernel)
    version = (out / "version").read_text().strip()
    imp = out / "import"
    return CloudKernel(
        vmlinuz=imp / "boot" / f"vmlinuz-{version}",
        modules_dir=imp / "lib" / "modules" / version,
        version=version,
        import_dir=imp,
    )


def mini_initrd() -> Path:
    kernel = cloud_kernel()
    key = f"{INITRD_RECIPE}-{kernel.version}"
    out = _artifact("initrd", key, lambda tmp: _build_initrd(tmp, kernel))
    return out / "initrd.img"


def tiny_rootfs() -> Path:
    return _artifact("tiny-rootfs", TINY_RECIPE, _build_tiny_rootfs) / "rootfs.ext4"


def debian_rootfs() -> Path:
    return _artifact("debian-rootfs", DEBIAN_RECIPE, _build_debian_rootfs) / "rootfs.ext4"


def debian_agent_rootfs() -> Path:
    """The Debian rootfs with banger's guest agent installed, as images banger makes carry it."""
    digest = hashlib.sha256()
    for source in sorted(AGENT_SRC.glob("banger[-_]agent*")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    key = f"{DEBIAN_RECIPE}-agent-{digest.hexdigest()[:12]}"
    return _artifact("debian-agent-rootfs", key, _build_debian_agent_rootfs) / "rootfs.ext4"


#: The packages of the systemd container (tests/e2e/test_systemd_units.py): systemd as
#: PID 1, and what banger's setup.sh installs on a host.
SYSTEMD_HOST_PACKAGES = (
    "systemd-sysv,dbus,procps,python3,python3-venv,git,e2fsprogs,fakeroot,iproute2,nftables,"
    "openssh-client,zstd,lz4,busybox-static,qemu-system-x86,kmod,uidmap"
)


def systemd_host_rootfs() -> Path:
    """A Debian bookworm tree to boot with systemd-nspawn (from the host's apt sources,
    as banger's own local image build); never modified: containers get an overlay."""
    key = "s1-" + hashlib.sha256(SYSTEMD_HOST_PACKAGES.encode()).hexdigest()[:12]
    return _artifact("systemd-host", key, _build_systemd_host_rootfs) / "rootfs"


def _build_systemd_host_rootfs(tmp: Path) -> None:
    subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=important",
            f"--include={SYSTEMD_HOST_PACKAGES}",
            "bookworm",
            str(tmp / "rootfs"),
        ],
        check=True,
        timeout=900,
    )


def test_ssh_keypair() -> tuple[Path, Path]:
    out = _artifact("ssh-key", SSH_KEY_RECIPE, _build_ssh_key)
    return out / "id_ed25519", out / "id_ed25519.pub"


test_ssh_keypair.__test__ = False  # type: ignore[attr-defined]  # pytest must not collect it


def build_seconds(artifact: Path) -> float | None:
    """How long the build of a returned artifact path took (from its build.json)."""
    for parent in (artifact, *artifact.parents):
        info = parent / "build.json"
        if info.is_file():
            return float(json.loads(info.read_text())["seconds"])
    return None


# --- cache machinery --------------------------------------------------------------------


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    locks = cache_dir() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{name}.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _artifact(name: str, key: str, build: Callable[[Path], None]) -> Path:
    base = cache_dir() / name
    final = base / key
    if final.is_dir():  # only ever appears complete (atomic rename)
        return final
    with _locked(name):
        if final.is_dir():  # another process built it while we waited
            return final
        base.mkdir(parents=True, exist_ok=True)
        for stale in base.glob(".tmp-*"):  # left by a crashed build (we hold the lock)
            _remove_tree(stale)
        tmp = base / f".tmp-{key}-{os.getpid()}"
        tmp.mkdir()
        started = time.monotonic()
        try:
            build(tmp)
            seconds = round(time.monotonic() - started, 2)
            (tmp / "build.json").write_text(json.dumps({"key": key, "seconds": seconds}) + "\n")
            subprocess.run(["sync", "-f", str(tmp)], check=False)
            tmp.rename(final)
        except BaseException:
            _remove_tree(tmp)
            raise
        for old in base.iterdir():  # older recipe versions
            if old != final and not old.name.startswith("."):
                _remove_tree(old)
    return final


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(prefix) or target == prefix.rstrip("/"):
                found.append(target)
    return found


def _remove_tree(path: Path) -> None:
    """rm -rf that first unmounts anything mounted below (debootstrap's /proc, /sys…)."""
    if not path.exists():
        return
    for target in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False)
    if _mounts_under(path):
        raise RuntimeError(f"refusing to delete {path}: still has mounts below it")
    shutil.rmtree(path, ignore_errors=True)


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a build step; on failure raise with its output."""
    kw.setdefault("capture_output", True)
    proc = subprocess.run(argv, text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout or ''}{proc.stderr or ''}"
        )
    return proc


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        raise RuntimeError(f"missing host tools {missing}: run scripts/test-deps.sh")


# --- kernel -----------------------------------------------------------------------------


def _apt(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """An apt command; if it fails (no package lists yet), apt-get update once and retry."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        return proc
    _run(["apt-get", "update", "-qq"], env=env)
    return _run(argv, cwd=cwd, env=env)


def _build_kernel(tmp: Path) -> None:
    _need_tools("apt-get", "apt-cache", "dpkg-deb", "depmod")
    deps = _apt(["apt-cache", "depends", "--no-recommends", "--no-suggests", KERNEL_PACKAGE])
    match = re.search(r"Depends: (linux-image-[^\s<>]+)", deps.stdout)
    if not match:
        raise RuntimeError(f"cannot tell which kernel {KERNEL_PACKAGE} depends on:\n{deps.stdout}")
    versioned = match.group(1)
    debs = tmp / "debs"
    debs.mkdir()
    with contextlib.suppress(KeyError):  # let apt's sandbox user write here (no warning)
        os.chown(debs, pwd.getpwnam("_apt").pw_uid, 0)
    _apt(["apt-get", "download", "-q", KERNEL_PACKAGE, versioned], cwd=debs)
    (deb,) = debs.glob(f"{versioned}_*.deb")
    imp = tmp / "import"
    _run(["dpkg-deb", "-x", str(deb), str(imp)])
    shutil.rmtree(debs)
    usr_modules = imp / "usr" / "lib" / "modules"
    if not (imp / "lib" / "modules").is_dir() and usr_modules.is_dir():  # merged-/usr packaging
        (imp / "lib").mkdir(exist_ok=True)
        usr_modules.rename(imp / "lib" / "modules")
    (version,) = (p.name for p in (imp / "lib" / "modules").iterdir())
    if not (imp / "boot" / f"vmlinuz-{version}").is_file():
        raise RuntimeError(f"{deb.name} has no boot/vmlinuz-{version}")
    if not (imp / "lib" / "modules" / version / "modules.dep").exists():
        _run(["depmod", "-b", str(imp), version])
    (tmp / "version").write_text(version + "\n")


# --- initrd -----------------------------------------------------------------------------

_INITRD_INIT = r"""#!/bin/busybox sh
# banger test initrd: load the virtio modules, mount root=, optionally apply ip=, switch_root
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
for m in $(/bin/busybox cat /lib/modules/order); do
  /bin/busybox insmod /lib/modules/$m 2>/dev/null
done
ROOT=/dev/vda; FST=ext4; RO=rw; INIT=/sbin/init
for x in $(/bin/busybox cat /proc/cmdline); do
  case $x in
    root=*) ROOT=${x#root=};;
    rootfstype=*) FST=${x#rootfstype=};;
    init=*) INIT=${x#init=};;
    ro) RO=ro;;
  esac
done
i=0; while [ ! -b $ROOT ] && [ $i -lt 500 ]; do /bin/busybox usleep 10000; i=$((i+1)); done
if ! /bin/busybox mount -t $FST -o $RO $ROOT /newroot; then
  echo "mini-initrd: mount $ROOT failed"; exec /bin/busybox sh
fi
# ip=<ip>::<gw>:<mask>:<host>:<dev>:off (the kernel has no CONFIG_IP_PNP), only with initrd_net=1
if /bin/busybox grep -q 'initrd_net=1' /proc/cmdline; then
  for x in $(/bin/busybox cat /proc/cmdline); do case $x in ip=*) IPSPEC=${x#ip=};; esac; done
  if [ -n "$IPSPEC" ]; then
    OIFS=$IFS; IFS=:; set -- $IPSPEC; IFS=$OIFS
    CIP=$1; GW=$3; MASK=$4; DEV=${6:-eth0}
    /bin/busybox ip link set lo up
    /bin/busybox ifconfig $DEV $CIP netmask $MASK up
    [ -n "$GW" ] && /bin/busybox route add default gw $GW
  fi
fi
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev 2>/dev/null || /bin/busybox umount /dev
exec /bin/busybox switch_root /newroot $INIT
"""


def _cpio_gz(tree: Path, out: Path) -> None:
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    listing = "\n".join([".", *names]) + "\n"
    cpio = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
        cwd=tree,
        input=listing.encode(),
        capture_output=True,
        check=True,
    )
    gz = subprocess.run(["gzip", "-1", "-n"], input=cpio.stdout, capture_output=True, check=True)
    out.write_bytes(gz.stdout)


def _build_initrd(tmp: Path, kernel: CloudKernel) -> None:
    _need_tools("cpio", "gzip", str(_BUSYBOX))
    tree = tmp / "tree"
    for sub in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
        (tree / sub).mkdir(parents=True)
    shutil.copy2(_BUSYBOX, tree / "bin" / "busybox")
    order = []
    for rel in INITRD_MODULES:
        src = kernel.modules_dir / "kernel" / rel
        if not src.is_file():
            raise RuntimeError(f"kernel {kernel.version} has no module {rel}")
        shutil.copy2(src, tree / "lib" / "modules" / src.name)
        order.append(src.name)
    _write(tree / "lib" / "modules" / "order", "\n".join(order) + "\n")
    _write(tree / "init", _INITRD_INIT, 0o755)
    _cpio_gz(tree, tmp / "initrd.img")
    shutil.rmtree(tree)


# --- tiny rootfs (busybox init + dropbear) ---------------------------------------------

_TINY_INITTAB = """\
# busybox init. ctrl-alt-del (SIGINT to PID 1, e.g. QMP send-key on an i8042) -> rcK and an
# immediate poweroff; `reboot` (SIGTERM) / `poweroff` (SIGUSR2) -> ::shutdown: (rcK), kill
# everything, reboot()/poweroff(). With reboot=k and QEMU's -no-reboot either ends QEMU.
::sysinit:/etc/init.d/rcS
::respawn:/usr/sbin/dropbear -F -E -p 22 -r /etc/dropbear/dropbear_ed25519_host_key
::ctrlaltdel:/etc/init.d/rcK poweroff
::shutdown:/etc/init.d/rcK
"""

_TINY_RCS = r"""#!/bin/sh
# PID 1's sysinit for the banger tiny test guest
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mounted() { grep -q "^[^ ]* $1 " /proc/mounts 2>/dev/null; }
mounted /proc || mount -t proc proc /proc
mounted /sys || mount -t sysfs sys /sys
mounted /dev || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts -o mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -o remount,rw / 2>/dev/null

IPSPEC=; NS=
for x in $(cat /proc/cmdline); do
  case $x in
    ip=*) IPSPEC=${x#ip=};;
    nameserver=*) NS="$NS ${x#nameserver=}";;
  esac
done
if [ -s /etc/hostname ]; then hostname -F /etc/hostname; fi
ip link set lo up
if [ -n "$IPSPEC" ]; then
  OIFS=$IFS; IFS=:; set -- $IPSPEC; IFS=$OIFS
  CIP=$1; GW=$3; MASK=$4; HOST=$5; DEV=${6:-eth0}
  [ -s /etc/hostname ] || { [ -n "$HOST" ] && hostname "$HOST"; }
  if [ -n "$CIP" ] && [ -n "$MASK" ]; then
    ifconfig "$DEV" "$CIP" netmask "$MASK" up
    [ -n "$GW" ] && { route del default 2>/dev/null; route add default gw "$GW"; }
  fi
fi
if [ -n "$NS" ]; then
  : > /etc/resolv.conf
  for n in $(echo $NS | tr ',' ' '); do echo "nameserver $n" >> /etc/resolv.conf; done
fi

# the work disk: /etc/fstab (banger adds /dev/vdb /root ... nofail), else /dev/vdb if present
mount -a -t nonfs 2>/dev/null
if ! mounted /root && [ -b /dev/vdb ]; then mount -t ext4 /dev/vdb /root; fi

mkdir -p /etc/dropbear
KEY=/etc/dropbear/dropbear_ed25519_host_key
if [ -s /etc/ssh/ssh_host_ed25519_key ]; then
  rm -f $KEY
  dropbearconvert openssh dropbear /etc/ssh/ssh_host_ed25519_key $KEY 2>/dev/null
fi
[ -s $KEY ] || dropbearkey -t ed25519 -f $KEY >/dev/null 2>&1
echo "tiny-init: up as $(hostname) ($CIP), starting dropbear"
"""

_TINY_RCK = """#!/bin/sh
# ::shutdown: (then busybox init kills everything and reboots / powers off), or
# ::ctrlaltdel: with "poweroff" (then power off at once: nothing else needs stopping)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
echo "tiny-init: shutting down"
sync
umount -a -r -t nodevtmpfs,noproc,nosysfs,nodevpts,notmpfs 2>/dev/null
mount -o remount,ro / 2>/dev/null
sync
[ "$1" = poweroff ] && exec poweroff -f
exit 0
"""


def _ldd_files(binary: str) -> set[str]:
    out = _run(["ldd", binary]).stdout
    files = set()
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            files.add(m.group(1))
    return files


def _copy_into(tree: Path, path: str) -> None:
    dest = tree / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(path), dest)  # the file, not a symlink to it


def _mkfs_ext4(tree: Path, image: Path, size: str, label: str) -> None:
    _run(["truncate", "-s", size, str(image)])
    _run(
        [
            "mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0",
            "-d", str(tree), str(image),
        ]
    )  # fmt: skip


def _build_tiny_rootfs(tmp: Path) -> None:
    _need_tools(str(_BUSYBOX), *_DROPBEAR_BINARIES, "ldd", "mkfs.ext4")
    tree = tmp / "tree"
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "etc/ssh", "etc/dropbear",
                "proc", "sys", "dev", "run", "tmp", "var/log", "home", "mnt"):  # fmt: skip
        (tree / sub).mkdir(parents=True, exist_ok=True)
    (tree / "root").mkdir(mode=0o755)
    (tree / "root").chmod(0o755)
    (tree / "tmp").chmod(0o1777)
    (tree / "var" / "run").symlink_to("/run")
    shutil.copy2(_BUSYBOX, tree / "bin" / "busybox")
    applets = _run([str(_BUSYBOX), "--list-full"]).stdout.split()
    for applet in applets:
        link = tree / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    libs: set[str] = set()
    for binary in _DROPBEAR_BINARIES:
        _copy_into(tree, binary)
        libs |= _ldd_files(binary)
    for lib in sorted(libs):
        _copy_into(tree, lib)
    etc = tree / "etc"
    _write(etc / "passwd", "root:x:0:0:root:/root:/bin/sh\n")
    _write(etc / "shadow", "root:*:19000:0:99999:7:::\n", 0o600)
    _write(etc / "group", "root:x:0:\ntty:x:5:\n")
    _write(etc / "shells", "/bin/sh\n/bin/ash\n")
    _write(etc / "hostname", "tiny\n")
    _write(etc / "hosts", "127.0.0.1 localhost\n")
    _write(etc / "fstab", "/dev/vda / ext4 rw 0 0\n")
    _write(etc / "resolv.conf", "")
    _write(etc / "profile", "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n")
    _write(etc / "inittab", _TINY_INITTAB)
    _write(etc / "init.d" / "rcS", _TINY_RCS, 0o755)
    _write(etc / "init.d" / "rcK", _TINY_RCK, 0o755)
    _mkfs_ext4(tree, tmp / "rootfs.ext4", "64M", "tinyroot")
    shutil.rmtree(tree)


# --- Debian rootfs (debootstrap, systemd) ----------------------------------------------

_HOSTKEY_UNIT = """\
[Unit]
Description=Generate an SSH host key when none was injected
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
RequiredBy=ssh.service
"""

_RESOLV_UNIT = """\
[Unit]
Description=Write /etc/resolv.conf from the nameserver= kernel argument
DefaultDependencies=no
After=local-fs.target
Before=network.target ssh.service
ConditionKernelCommandLine=nameserver

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for x in $(cat /proc/cmdline); do case $x in nameserver=*) \
echo "nameserver $${x#nameserver=}";; esac; done | tr , "\\n" > /etc/resolv.conf'

[Install]
WantedBy=sysinit.target
"""

# sshd reads /root/.ssh/authorized_keys from the work disk: start it after that mount
# (ordering only, so a missing work disk never holds ssh back).
_SSH_AFTER_ROOT = "[Unit]\nAfter=root.mount\n"


def _build_debian_rootfs(tmp: Path) -> None:
    _need_tools("debootstrap", "chroot", "mkfs.ext4")
    tree = tmp / "tree"
    try:
        _run(
            [
                "debootstrap", "--variant=minbase", f"--include={DEBIAN_PACKAGES}",
                DEBIAN_SUITE, str(tree), DEBIAN_MIRROR,
            ],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )  # fmt: skip
        _configure_debian(tree)
        _mkfs_ext4(tree, tmp / "rootfs.ext4", "1G", "debroot")
    finally:
        _remove_tree(tree)


def _build_debian_agent_rootfs(tmp: Path) -> None:
    _run(["cp", "--sparse=always", str(debian_rootfs()), str(tmp / "rootfs.ext4")])
    install_agent(tmp / "rootfs.ext4")


def install_agent(rootfs: Path) -> None:
    """What an image with the agent holds: the file (0755) and the enabled unit."""
    agent, unit = AGENT_SRC / "banger_agent.py", AGENT_SRC / "banger-agent.service"
    wants = "/etc/systemd/system/multi-user.target.wants/banger-agent.service"
    script = f"""\
mkdir /usr/local/lib/banger
write {agent} /usr/local/lib/banger/banger-agent
sif /usr/local/lib/banger/banger-agent mode 0100755
write {unit} /etc/systemd/system/banger-agent.service
sif /etc/systemd/system/banger-agent.service mode 0100644
symlink {wants} /etc/systemd/system/banger-agent.service
"""
    subprocess.run(
        ["debugfs", "-w", "-f", "-", str(rootfs)],
        input=script,
        capture_output=True,
        text=True,
        check=True,
    )
    listing = subprocess.run(
        ["debugfs", "-R", "stat /usr/local/lib/banger/banger-agent", str(rootfs)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Mode:  0755" in listing


def _configure_debian(root: Path) -> None:
    """recipes/configure-deb.sh + trim-deb.sh, without any baked key."""
    etc = root / "etc"

    def systemctl(*args: str) -> None:
        _run(["chroot", str(root), "systemctl", *args])

    _write(etc / "hostname", "debian\n")
    _write(etc / "hosts", "127.0.0.1 localhost\n127.0.1.1 debian\n")
    # banger appends "/dev/vdb /root ext4 defaults,nofail 0 0" to a VM's copy
    _write(etc / "fstab", "/dev/vda / ext4 rw,noatime 0 0\n")
    _write(etc / "resolv.conf", "")  # debootstrap copied the host's
    # no authorized_keys: the work disk (vdb, mounted on /root) brings them
    shutil.rmtree(root / "root" / ".ssh", ignore_errors=True)
    # network: systemd-network-generator turns ip= into /run/systemd/network/*.network
    systemctl("enable", "systemd-networkd.service", "systemd-network-generator.service")
    _write(etc / "systemd" / "system" / "banger-resolv.service", _RESOLV_UNIT)
    systemctl("enable", "banger-resolv.service")
    # per-clone identity: empty machine-id, no shared host keys (fallback unit makes one)
    _write(etc / "machine-id", "", 0o444)
    (root / "var" / "lib" / "dbus" / "machine-id").unlink(missing_ok=True)
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    _write(etc / "systemd" / "system" / "ssh-hostkey-gen.service", _HOSTKEY_UNIT)
    systemctl("enable", "ssh-hostkey-gen.service")
    _write(
        etc / "ssh" / "sshd_config.d" / "10-hostkey.conf", "HostKey /etc/ssh/ssh_host_ed25519_key\n"
    )
    _write(etc / "systemd" / "system" / "ssh.service.d" / "10-after-root.conf", _SSH_AFTER_ROOT)
    # trim
    for unit in ("e2scrub_reap.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                 "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer",
                 "systemd-pstore.service"):  # fmt: skip
        with contextlib.suppress(RuntimeError):  # not every one exists in minbase
            systemctl("disable", unit)
    systemctl("mask", "getty@tty1.service", "getty-static.service")
    # ~1 s each under TCG and useless here (the image has no kernel modules of its own)
    systemctl(
        "mask", "modprobe@.service", "systemd-modules-load.service",
        "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "dev-hugepages.mount",
    )  # fmt: skip
    _write(etc / "systemd" / "journald.conf.d" / "volatile.conf", "[Journal]\nStorage=volatile\n")
    for deb in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()
    for binfile in (root / "var" / "cache" / "apt").glob("*.bin"):
        binfile.unlink()
    lists = root / "var" / "lib" / "apt" / "lists"
    shutil.rmtree(lists, ignore_errors=True)
    lists.mkdir()
    (lists / "partial").mkdir()


# --- ssh key ----------------------------------------------------------------------------


def _build_ssh_key(tmp: Path) -> None:
    _need_tools("ssh-keygen")
    key = tmp / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "banger-test", "-f", str(key)])
    key.chmod(0o600)
    (tmp / "id_ed25519.pub").chmod(0o644)
