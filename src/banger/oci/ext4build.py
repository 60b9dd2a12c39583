"""Building a rootfs ext4 image from layers, without root and without mounting (SPEC §5).

Owns: ``build_rootfs_image``. Everything that must see fake ownership happens in ONE
fakeroot session, ``fakeroot -- python -m banger.oci.flatten_worker``: the layers are
flattened into ``work_dir/tree`` (chown, mknod and security xattrs are recorded by
fakeroot, never done for real), the optional ``inject`` hook adds files (root-owned,
being in the session), and ``mkfs.ext4 -d`` copies the tree into a sparse image while
fakeroot answers its stat and getxattr calls from that record. A daemon that runs as
root skips fakeroot (``fakeroot=None`` decides by the euid): the same worker does the
chowns and mknods for real inside ``work_dir`` (mode 0700, root's), as ``umoci unpack``
does, because every faked call is a round trip to ``faked`` — 2/3 of a Debian build's
time (docs/explanation/flattening.md, "Measured"). Also the image size rule
(``size_bytes``, else max(tree * 1.25, 1 GiB)), a sizing walk that follows no symlink
(ADVERSARIAL 30), telling an image too small for its tree (109) from a full host
filesystem (106, 108), and removing the tree afterwards. Nothing of the session outlives
the daemon: Runner's PDEATHSIG takes the fakeroot script, the worker follows the script
and stops faked (``flatten_worker.die_with_session``), mkfs follows the worker (94).
Must not: run a host command except through ``Runner``, chown for real when not root, or mount. The
session steps (``run_session``) run in the worker process, never in the daemon.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from banger.errors import (
    BangerError,
    CommandFailed,
    ImageTooSmall,
    InvalidArgument,
    error_from_payload,
)
from banger.host.publish import remove_tree
from banger.host.runner import Runner
from banger.model.limits import IMAGE_SIZE_MIN_BYTES
from banger.oci.flatten import DEFAULT_LIMITS, Layer, Limits, OwnerMode, flatten_layers, no_space
from banger.oci.pathres import DIR_FLAGS

log = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20
BLOCK_BYTES = 4096
MIN_IMAGE_BYTES = 1 * GIB
SIZE_FACTOR = 1.25
#: mke2fs.conf's inode_ratio for ``-T default``: one inode per 16 KiB of image.
INODE_RATIO_BYTES = 16384
#: The largest journal mke2fs makes for images up to 16 GiB, written in full.
JOURNAL_BYTES = 64 * MIB
DEFAULT_TIMEOUT_S = 3600.0
TREE_DIR = "tree"
#: The variables a fakeroot session lives in; the worker passes them on to mkfs.ext4,
#: which Runner would otherwise start with a clean environment, outside the session.
FAKEROOT_ENV = ("FAKEROOTKEY", "FAKED_MODE", "LD_PRELOAD", "LD_LIBRARY_PATH")
_INJECT = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", re.ASCII)
# What mkfs.ext4 -d says when the image (not the host) is full.
_IMAGE_FULL = re.compile(
    r"Could not allocate (block|inode)|No free space in the directory|too small", re.IGNORECASE
)
_HOST_FULL = re.compile(r"No space left on device|Disk quota exceeded|short write", re.IGNORECASE)


@dataclass(frozen=True)
class BuildResult:
    size_bytes: int  # apparent size of the sparse image
    tree_bytes: int  # what the flattened tree needs in 4 KiB blocks
    inodes: int
    seconds: float


def build_rootfs_image(
    layers: Sequence[Layer],
    out: Path,
    *,
    size_bytes: int | None,
    runner: Runner,
    work_dir: Path,
    inject: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    fakeroot: bool | None = None,
) -> BuildResult:
    """Flatten ``layers`` and write the ext4 image ``out``; blocking (use a thread).

    ``work_dir`` must be an existing directory of the caller's on the staging filesystem;
    the tree is made and removed in it. ``inject`` is ``"module:function"``, called as
    ``function(tree)`` inside the fakeroot session after flattening. ``fakeroot``: run
    the worker in a fakeroot session; ``None`` means unless this process is root.
    """
    started = time.monotonic()
    if inject is not None and _INJECT.fullmatch(inject) is None:
        raise InvalidArgument(f"inject must look like 'package.module:function', not {inject!r}")
    if size_bytes is not None and size_bytes < IMAGE_SIZE_MIN_BYTES:
        raise InvalidArgument(
            f"an image size of {size_bytes} bytes is below the "
            f"{IMAGE_SIZE_MIN_BYTES // MIB} MiB minimum"
        )
    request = _request(
        layers,
        out=out,
        work_dir=work_dir,
        size_bytes=size_bytes,
        inject=inject,
        limits=limits,
        timeout_s=timeout_s,
    )
    try:
        fake = os.geteuid() != 0 if fakeroot is None else fakeroot
        reply = _run_worker(runner, request, work_dir, timeout_s, fake=fake)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    finally:
        _remove_tree(work_dir / TREE_DIR)
    times = f"flatten {reply['flatten_ms']} ms, mkfs.ext4 {reply['mkfs_ms']} ms"
    log.info("built %s (%d inodes): %s", out, reply["inodes"], times)
    return BuildResult(
        size_bytes=int(reply["size_bytes"]),
        tree_bytes=int(reply["tree_bytes"]),
        inodes=int(reply["inodes"]),
        seconds=time.monotonic() - started,
    )


def _request(
    layers: Sequence[Layer],
    *,
    out: Path,
    work_dir: Path,
    size_bytes: int | None,
    inject: str | None,
    limits: Limits,
    timeout_s: float,
) -> dict[str, Any]:
    # Paths are absolute: the worker runs in work_dir.
    return {
        "layers": [
            {
                "path": str(x.path.absolute()),
                "media_type": x.media_type,
                "diff_id": None if x.diff_id is None else str(x.diff_id),
            }
            for x in layers
        ],
        "tree": str((work_dir / TREE_DIR).absolute()),
        "out": str(out.absolute()),
        "size_bytes": size_bytes,
        "inject": inject,
        "limits": asdict(limits),
        "timeout_s": timeout_s,
    }


def _run_worker(
    runner: Runner, request: dict[str, Any], cwd: Path, timeout_s: float, *, fake: bool
) -> dict[str, Any]:
    argv = [sys.executable, "-m", "banger.oci.flatten_worker"]
    if fake:
        # --die-with-parent: flatten_worker.DIE_WITH_PARENT (not imported here). As root
        # the worker is Runner's own child, and Runner's PDEATHSIG reaches it directly.
        argv = ["fakeroot", "--", *argv, "--die-with-parent"]
    result = runner.run(
        argv,
        input_bytes=json.dumps(request).encode(),
        timeout_s=timeout_s + 60,  # the worker's own mkfs timeout fires first
        cwd=cwd,
    )
    lines = result.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1]) if lines else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise CommandFailed(
            "the flatten worker gave no reply",
            details=result.stderr.decode(errors="replace")[-2000:] or None,
        )
    if not reply.get("ok"):
        raise error_from_payload(reply.get("payload"), status=500)
    return dict(reply["result"])


def _remove_tree(tree: Path) -> None:
    try:
        remove_tree(tree)  # dir-fd rmtree: never follows a symlink in the tree (30)
    except OSError as exc:
        log.warning("cannot remove %s: %s", tree, exc.strerror)


# -- inside the fakeroot session (banger.oci.flatten_worker) ------------------------------


@dataclass(frozen=True)
class TreeUsage:
    bytes: int
    inodes: int


def run_session(request: dict[str, Any]) -> dict[str, int]:
    """The worker's job: flatten, inject, size, mkfs. Returns the reply's result."""
    started = time.monotonic()
    tree, out = Path(request["tree"]), Path(request["out"])
    layers = [Layer(Path(x["path"]), x["media_type"], x["diff_id"]) for x in request["layers"]]
    flatten_layers(layers, tree, limits=Limits(**request["limits"]), owners=OwnerMode.APPLY)
    if request["inject"]:
        _load_inject(request["inject"])(tree)
    usage = tree_usage(tree)
    size = request["size_bytes"] or default_size(usage.bytes)
    flattened = time.monotonic()
    runner = Runner(extra_env={k: os.environ[k] for k in FAKEROOT_ENV if k in os.environ})
    make_ext4(tree, out, size, usage, runner, timeout_s=float(request["timeout_s"]))
    return {
        "size_bytes": size,
        "tree_bytes": usage.bytes,
        "inodes": usage.inodes,
        "flatten_ms": int((flattened - started) * 1000),
        "mkfs_ms": int((time.monotonic() - flattened) * 1000),
    }


def _load_inject(spec: str) -> Callable[[Path], None]:
    module_name, _, function = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise InvalidArgument(f"inject hook {spec!r} cannot be loaded: {exc}") from exc
    if not callable(found):
        raise InvalidArgument(f"inject hook {spec!r} is not a function")
    return found  # type: ignore[no-any-return]


def default_size(tree_bytes: int) -> int:
    """max(tree * 1.25, 1 GiB), rounded up to whole MiB."""
    wanted = max(math.ceil(tree_bytes * SIZE_FACTOR), MIN_IMAGE_BYTES)
    return -(-wanted // MIB) * MIB


def tree_usage(tree: Path) -> TreeUsage:
    """Blocks and inodes the tree will take in ext4; walks by dir fd, follows no symlink."""
    total, inodes = BLOCK_BYTES, 1
    seen: set[int] = set()
    pending = [os.open(tree, DIR_FLAGS)]
    try:
        while pending:
            fd = pending.pop()
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        st = entry.stat(follow_symlinks=False)
                        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                            if st.st_ino in seen:
                                continue  # another name of a hardlinked inode
                            seen.add(st.st_ino)
                        inodes += 1
                        total += _blocks(st)
                        if stat.S_ISDIR(st.st_mode):
                            pending.append(os.open(entry.name, DIR_FLAGS, dir_fd=fd))
            finally:
                os.close(fd)
    finally:
        for fd in pending:
            os.close(fd)
    return TreeUsage(total, inodes)


def _blocks(st: os.stat_result) -> int:
    def whole(n: int) -> int:
        return -(-n // BLOCK_BYTES) * BLOCK_BYTES

    if stat.S_ISREG(st.st_mode):  # holes stay holes: mkfs -d skips zero blocks
        return min(whole(st.st_size), whole(st.st_blocks * 512))
    if stat.S_ISDIR(st.st_mode):
        return max(BLOCK_BYTES, whole(st.st_size))
    if stat.S_ISLNK(st.st_mode) and st.st_size >= 60:  # shorter targets live in the inode
        return BLOCK_BYTES
    return 0


def make_ext4(
    tree: Path, out: Path, size: int, usage: TreeUsage, runner: Runner, *, timeout_s: float
) -> None:
    """``mkfs.ext4 -d`` into a fresh sparse file of ``size`` bytes; removed on failure."""
    needed = usage.bytes + JOURNAL_BYTES
    vfs = os.statvfs(out.parent)
    if vfs.f_bavail * vfs.f_frsize < needed:
        raise no_space(out.parent, doing="building the ext4 image", needed_bytes=needed)
    argv: list[str | Path] = ["mkfs.ext4", "-q", "-F", "-d", tree, "-E", "root_owner=0:0"]
    argv += ["-b", str(BLOCK_BYTES), "-T", "default"]
    wanted_inodes = math.ceil(usage.inodes * SIZE_FACTOR) + 1024
    if wanted_inodes > size // INODE_RATIO_BYTES:  # many small files: more than the ratio gives
        argv += ["-N", str(wanted_inodes)]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    try:
        runner.run([*argv, out], timeout_s=timeout_s)
    except CommandFailed as exc:
        out.unlink(missing_ok=True)
        raise _mkfs_error(exc, out, size, usage) from exc


def _mkfs_error(exc: CommandFailed, out: Path, size: int, usage: TreeUsage) -> BangerError:
    said = exc.details or ""
    if _HOST_FULL.search(said):
        return no_space(out.parent, doing="building the ext4 image", needed_bytes=usage.bytes)
    if _IMAGE_FULL.search(said):
        return ImageTooSmall(
            f"an image of {size >> 20} MiB is too small for the flattened tree "
            f"({usage.bytes >> 20} MiB in {usage.inodes} inodes)",
            details=said,
            hint=f"ask for a larger size (at least {default_size(usage.bytes) >> 20} MiB)",
        )
    return exc
