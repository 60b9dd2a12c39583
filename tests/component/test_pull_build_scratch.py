"""Where ``pull_steps.build_rootfs`` flattens: in RAM when the tree fits, on disk when it
does not, and again on disk when the RAM tmpfs fills mid-build (the estimate was low).

Real flattening and mkfs.ext4; the "RAM" is a small tmpfs mounted by the test (root).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.host.runner import Runner
from banger.images import pull_steps
from banger.oci.digest import parse_digest
from banger.oci.flatten import Layer
from banger.oci.manifest import Descriptor, ImageConfig, ImageManifest
from banger.oci.reference import parse_reference
from tests.layers import directory, file, write_layer

pytestmark = [
    pytest.mark.component,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs"),
]

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZERO_DIGEST = "sha256:" + "0" * 64
#: What make_bootable needs to find in an image.
SHELL = [file("bin/sh", b"\x7fELF sh", mode=0o755)]


@pytest.fixture
def small_ram(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "ram"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def resolved_for(layer: Layer) -> pull_steps.Resolved:
    ref = parse_reference("registry.test/img:v1")
    desc = Descriptor(GZIP, parse_digest(ZERO_DIGEST), layer.path.stat().st_size)
    assert layer.diff_id is not None
    manifest = ImageManifest("application/vnd.oci.image.manifest.v1+json", desc, (desc,))
    config = ImageConfig("linux", "amd64", (parse_digest(str(layer.diff_id)),))
    return pull_steps.Resolved(ref, ref, parse_digest(ZERO_DIGEST), manifest, config)


def build(tmp_path: Path, layer: Layer, ram: Path) -> tuple[list[Path], Path]:
    """Build; returns the work dirs the flattener was given, and the image."""
    stage = tmp_path / "stage"
    stage.mkdir()
    seen: list[Path] = []
    pull_steps.build_rootfs(
        resolved_for(layer),
        [layer.path],
        stage,
        size_bytes=None,
        runner=Runner(extra_env={"PYTHONPATH": str(REPO)}),
        on_work_dir=seen.append,
        ram_base=ram,
    )
    assert sorted(p.name for p in stage.iterdir()) == [pull_steps.ROOTFS]  # no work dir left
    assert list(ram.iterdir()) == []  # no scratch left
    return seen, stage / pull_steps.ROOTFS


def cat(image: Path, path: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=True
    ).stdout


def test_a_small_tree_is_flattened_in_ram(tmp_path: Path, small_ram: Path) -> None:
    layer = write_layer(
        tmp_path / "l.tar.gz",
        [*SHELL, directory("etc/"), file("etc/hostname", b"box\n", uid=0)],
        compression="gzip",
    )
    seen, image = build(tmp_path, layer, small_ram)
    assert [p.parent for p in seen] == [small_ram]
    assert seen[0].name.startswith(f"banger-scratch.{os.getuid()}.{os.getpid()}.")
    assert cat(image, "/etc/hostname") == b"box\n"


def test_a_tree_larger_than_estimated_is_built_again_on_disk(
    tmp_path: Path, small_ram: Path
) -> None:
    # 24 MiB of one letter compress to ~24 KiB: the estimate fits 16 MiB, the tree does
    # not (letters would not do: the flattener leaves holes for them).
    letters = b"a" * MIB
    layer = write_layer(
        tmp_path / "l.tar.gz",
        [*SHELL, *(file(f"z/{i}", letters) for i in range(24)), file("etc/hostname", b"box\n")],
        compression="gzip",
    )
    seen, image = build(tmp_path, layer, small_ram)
    assert [p.parent for p in seen] == [small_ram, tmp_path / "stage"]
    assert cat(image, "/etc/hostname") == b"box\n"
    assert cat(image, "/z/23") == letters


def test_a_tree_that_cannot_fit_goes_to_disk_at_once(tmp_path: Path, small_ram: Path) -> None:
    data = os.urandom(MIB)  # incompressible: 12 MiB compressed, estimated far above 16 MiB
    layer = write_layer(
        tmp_path / "l.tar.gz",
        [*SHELL, *(file(f"r/{i}", data) for i in range(12))],
        compression="gzip",
    )
    seen, image = build(tmp_path, layer, small_ram)
    assert [p.parent for p in seen] == [tmp_path / "stage"]
    assert cat(image, "/r/11") == data
