"""The booted kernel's modules copied into a VM's rootfs copy (issue 10;
docs/explanation/kernel-modules.md), on real ext4 images with real mkfs.ext4, debugfs and
e2fsck; everything is read back with debugfs itself, never through the code under test.
ADVERSARIAL 30 (nothing in the source tree is followed on the host: its symlinks stay
behind) and 109 (a rootfs too small for the modules is told apart from a host error: the
VM boots without them, nothing is half-copied).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from banger.disks.modules import install_modules
from banger.errors import InvalidArgument
from banger.host.runner import Runner

pytestmark = pytest.mark.component

VERSION = "6.1.0-99-test-amd64"


def _mkfs(path: Path, size_mib: int, tree: Path | None = None) -> Path:
    subprocess.run(["truncate", "-s", f"{size_mib}M", str(path)], check=True)
    argv = ["mkfs.ext4", "-q", "-F", *(["-d", str(tree)] if tree else []), str(path)]
    subprocess.run(argv, check=True)
    return path


def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    ).stdout


def _owner_mode(image: Path, path: str) -> tuple[str, int, int, int] | None:
    out = _debugfs(image, f'stat "{path}"')
    kind = re.search(r"^Inode: \d+\s+Type: (.+?)\s+Mode:\s+([0-7]+)", out, re.MULTILINE)
    owner = re.search(r"^User:\s+(\d+)\s+Group:\s+(\d+)", out, re.MULTILINE)
    if not kind or not owner:
        return None
    return kind[1], int(kind[2], 8), int(owner[1]), int(owner[2])


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    """A small lib/modules/<version> tree, owned by whoever runs the test, with a symlink
    out of it (``build -> /usr/src/...`` in a real package) that must not be followed."""
    tree = tmp_path / "store" / "modules"
    (tree / "kernel" / "fs" / "overlayfs").mkdir(parents=True)
    (tree / "kernel" / "fs" / "overlayfs" / "overlay.ko").write_bytes(os.urandom(300_000))
    (tree / "modules.dep").write_text("kernel/fs/overlayfs/overlay.ko:\n")
    (tree / "modules.alias").write_text("alias fs-overlay overlay\n")
    secret = tmp_path / "secret"
    secret.write_text("HOST SECRET")
    (tree / "build").symlink_to(secret)
    (tree / "kernel" / "linked").symlink_to(tmp_path)
    os.chmod(tree / "modules.dep", 0o600)  # the guest still gets 0644 root:root
    return tree


def test_modules_land_in_lib_modules_owned_by_root_and_intact(
    tmp_path: Path, modules: Path
) -> None:
    image = _mkfs(tmp_path / "rootfs.ext4", 64)
    done = install_modules(image, modules, VERSION, Runner())
    assert done.copied and done.files == 3 and done.guest_dir == f"/lib/modules/{VERSION}"
    base = f"/lib/modules/{VERSION}"
    assert _owner_mode(image, base) == ("directory", 0o755, 0, 0)
    assert _owner_mode(image, f"{base}/modules.dep") == ("regular", 0o644, 0, 0)
    assert _owner_mode(image, f"{base}/kernel/fs/overlayfs") == ("directory", 0o755, 0, 0)
    ko = subprocess.run(
        ["debugfs", "-R", f"cat {base}/kernel/fs/overlayfs/overlay.ko", str(image)],
        capture_output=True,
        check=True,
    ).stdout
    want = (modules / "kernel" / "fs" / "overlayfs" / "overlay.ko").read_bytes()
    assert hashlib.sha256(ko).digest() == hashlib.sha256(want).digest()
    # Symlinks in the store are not copied, and nothing they point at is read.
    assert _owner_mode(image, f"{base}/build") is None
    assert _owner_mode(image, f"{base}/kernel/linked") is None
    assert "HOST SECRET" not in _debugfs(image, f"ls -l {base}")
    fsck = subprocess.run(
        ["e2fsck", "-fn", str(image)], capture_output=True, text=True, check=False
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    # Again: the version is there, nothing is copied.
    again = install_modules(image, modules, VERSION, Runner())
    assert not again.copied and "already" in again.describe()


def test_a_merged_usr_image_gets_them_in_usr_lib_modules(tmp_path: Path, modules: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr" / "lib").mkdir(parents=True)
    (tree / "lib").symlink_to("usr/lib")  # Debian bookworm's merged /usr
    image = _mkfs(tmp_path / "rootfs.ext4", 64, tree)
    done = install_modules(image, modules, VERSION, Runner())
    assert done.guest_dir == f"/usr/lib/modules/{VERSION}"
    assert _owner_mode(image, f"/usr/lib/modules/{VERSION}/modules.dep") is not None
    lib = _owner_mode(image, "/lib")
    assert lib is not None and lib[0] == "symlink"  # left as it was


def test_a_rootfs_without_room_boots_without_modules(tmp_path: Path) -> None:
    tree = tmp_path / "big"
    tree.mkdir()
    (tree / "modules.dep").write_text("")
    (tree / "huge.ko").write_bytes(b"\0" * (40 << 20))  # more than a 32 MiB image holds
    image = _mkfs(tmp_path / "tiny.ext4", 32)
    done = install_modules(image, tree, VERSION, Runner())
    assert not done.copied and done.no_room and "do not fit" in done.describe()
    assert _owner_mode(image, "/lib/modules") is None  # nothing half-copied


def test_a_version_that_is_not_one_path_component_is_refused(tmp_path: Path, modules: Path) -> None:
    image = _mkfs(tmp_path / "rootfs.ext4", 64)
    for bad in ("../../etc", "a/b", "", ".hidden", "x\ny"):
        with pytest.raises(InvalidArgument):
            install_modules(image, modules, bad, Runner())
