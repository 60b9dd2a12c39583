"""Discovery of a kernel's artifacts in a directory (SPEC §6) on real, small files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from banger.errors import InvalidArgument
from banger.kernels.discover import discover
from banger.model.artifact_names import validate_name
from tests.kernelfiles import compress, fake_elf, make_bzimage

V = "6.1.0-56-cloud-amd64"
BZIMAGE = make_bzimage(compress("gzip", fake_elf(8192)))


def put(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def debian_tree(root: Path, version: str = V) -> Path:
    """The shape of an unpacked linux-image-*.deb."""
    put(root / "boot" / f"vmlinuz-{version}", BZIMAGE)
    put(root / "boot" / f"config-{version}", b"CONFIG_X=y\n")
    put(root / "boot" / f"System.map-{version}", b"ffff T _text\n")
    put(root / "lib" / "modules" / version / "kernel" / "drivers" / "virtio" / "virtio.ko")
    put(root / "lib" / "modules" / version / "modules.order", b"")
    return root


def test_debian_package_layout(tmp_path: Path) -> None:
    found = discover(debian_tree(tmp_path))
    assert found.vmlinuz == tmp_path / "boot" / f"vmlinuz-{V}"
    assert found.vmlinux is None
    assert found.kernel == found.vmlinuz
    assert found.modules == tmp_path / "lib" / "modules" / V
    assert found.initrd is None
    assert found.version == V
    assert found.arch == "x86_64"
    assert found.metadata is None


def test_usrmerged_modules_and_an_initrd(tmp_path: Path) -> None:
    put(tmp_path / "boot" / f"vmlinuz-{V}", BZIMAGE)
    put(tmp_path / "boot" / f"initrd.img-{V}")
    (tmp_path / "usr" / "lib" / "modules" / V).mkdir(parents=True)
    found = discover(tmp_path)
    assert found.initrd == tmp_path / "boot" / f"initrd.img-{V}"
    assert found.modules == tmp_path / "usr" / "lib" / "modules" / V


def test_elf_vmlinux_is_preferred_and_bzimage_kept(tmp_path: Path) -> None:
    put(tmp_path / "boot" / f"vmlinux-{V}", fake_elf(4096))
    put(tmp_path / f"vmlinuz-{V}", BZIMAGE)
    put(tmp_path / "initramfs-linux.img")
    found = discover(tmp_path)
    assert found.vmlinux == tmp_path / "boot" / f"vmlinux-{V}"
    assert found.vmlinuz == tmp_path / f"vmlinuz-{V}"
    assert found.kernel == found.vmlinux
    assert found.initrd == tmp_path / "initramfs-linux.img"
    assert found.version == V


def test_two_bzimages_are_an_error_listing_both(tmp_path: Path) -> None:
    put(tmp_path / "boot" / "vmlinuz-6.1.0-1-amd64", BZIMAGE)
    put(tmp_path / "boot" / "vmlinuz-6.1.0-2-amd64", BZIMAGE)
    with pytest.raises(InvalidArgument, match="2 candidates for the bzImage") as info:
        discover(tmp_path)
    assert info.value.details == "boot/vmlinuz-6.1.0-1-amd64\nboot/vmlinuz-6.1.0-2-amd64"
    assert "banger-kernel.json" in (info.value.hint or "")


def test_two_initrds_and_two_module_trees_are_errors(tmp_path: Path) -> None:
    put(tmp_path / "vmlinuz", BZIMAGE)
    put(tmp_path / "initrd.img")
    put(tmp_path / "boot" / "initramfs-x.img")
    with pytest.raises(InvalidArgument, match="candidates for the initrd"):
        discover(tmp_path)
    (tmp_path / "initrd.img").unlink()
    (tmp_path / "lib" / "modules" / "a").mkdir(parents=True)
    (tmp_path / "lib" / "modules" / "b").mkdir(parents=True)
    with pytest.raises(InvalidArgument, match="candidates for the modules"):
        discover(tmp_path)


def test_a_symlink_to_the_same_file_is_one_candidate(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    (tmp_path / "vmlinuz").symlink_to(f"boot/vmlinuz-{V}")
    found = discover(tmp_path)
    assert found.vmlinuz == tmp_path / "boot" / f"vmlinuz-{V}"


def test_symlinks_leading_outside_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    put(outside / "vmlinuz", BZIMAGE)
    (outside / "modules").mkdir()
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "vmlinuz").symlink_to(outside / "vmlinuz")
    (root / "boot" / "vmlinuz-rel").symlink_to("../../outside/vmlinuz")
    with pytest.raises(InvalidArgument, match="no kernel found") as info:
        discover(root)
    assert "skipped symlinks" in (info.value.details or "")
    assert "outside" in (info.value.details or "")
    # A real kernel inside, with modules linked from outside: the link is skipped.
    put(root / "boot" / f"vmlinuz-{V}", BZIMAGE)
    (root / "lib" / "modules").mkdir(parents=True)
    (root / "lib" / "modules" / V).symlink_to(outside / "modules")
    (root / "vmlinuz").unlink()
    (root / "boot" / "vmlinuz-rel").unlink()
    found = discover(root)
    assert found.modules is None
    assert any(V in s for s in found.skipped)


def test_a_symlink_loop_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "vmlinuz").symlink_to("vmlinuz")
    (tmp_path / "initrd.img").symlink_to("initrd.img")
    put(tmp_path / "boot" / f"vmlinuz-{V}", BZIMAGE)
    found = discover(tmp_path)
    assert found.vmlinuz == tmp_path / "boot" / f"vmlinuz-{V}"
    assert found.initrd is None
    assert any("initrd.img" in s for s in found.skipped)


def test_a_symlinked_boot_dir_leading_outside_is_skipped(tmp_path: Path) -> None:
    outside = debian_tree(tmp_path / "outside")
    root = tmp_path / "root"
    root.mkdir()
    (root / "boot").symlink_to(outside / "boot")
    with pytest.raises(InvalidArgument, match="no kernel found"):
        discover(root)


def test_metadata_file_names_the_files_and_describes_the_kernel(tmp_path: Path) -> None:
    put(tmp_path / "k" / "bzImage", BZIMAGE)
    put(tmp_path / "k" / "vmlinuz-other", BZIMAGE)  # would be ambiguous without metadata
    put(tmp_path / "rd.cpio.gz")
    (tmp_path / "mods").mkdir()
    meta = {
        "name": "my-kernel",
        "distro": "debian",
        "arch": "amd64",
        "version": "6.6.1",
        "vmlinuz": "k/bzImage",
        "initrd": "rd.cpio.gz",
        "modules": "mods",
        "unknown_key": [1, 2],
    }
    (tmp_path / "banger-kernel.json").write_text(json.dumps(meta))
    found = discover(tmp_path)
    assert found.vmlinuz == tmp_path / "k" / "bzImage"
    assert found.initrd == tmp_path / "rd.cpio.gz"
    assert found.modules == tmp_path / "mods"
    assert (found.name, found.distro, found.arch, found.version) == (
        "my-kernel",
        "debian",
        "x86_64",
        "6.6.1",
    )
    assert found.metadata == tmp_path / "banger-kernel.json"


def test_a_stored_kernel_directory_imports_as_is(tmp_path: Path) -> None:
    put(tmp_path / "vmlinux", fake_elf(4096))
    put(tmp_path / "vmlinuz", BZIMAGE)
    put(tmp_path / "initrd.img")
    (tmp_path / "modules" / "kernel").mkdir(parents=True)
    manifest = {"name": "a", "arch": "x86_64", "version": V, "sha256": "00", "files": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    found = discover(tmp_path)
    assert (found.vmlinux, found.vmlinuz) == (tmp_path / "vmlinux", tmp_path / "vmlinuz")
    assert found.initrd == tmp_path / "initrd.img"
    assert found.modules == tmp_path / "modules"
    assert found.version == V
    assert found.metadata == tmp_path / "manifest.json"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"version": 6}', "'version' must be a non-empty string"),
        ('{"arch": "aarch64"}', "x86_64 only"),
        ('{"vmlinuz": "/boot/vmlinuz"}', "must be relative"),
        ('{"vmlinuz": "../outside"}', "leads outside"),
        ('{"initrd": "missing.img"}', "does not exist"),
        ('{"version": "../../etc"}', "is not usable"),
        ('{"version": "6.1 x"}', "is not usable"),
    ],
)
def test_bad_metadata_is_a_clear_error(tmp_path: Path, content: str, match: str) -> None:
    root = debian_tree(tmp_path / "root")
    put(tmp_path / "outside", BZIMAGE)
    (root / "banger-kernel.json").write_text(content)
    with pytest.raises(InvalidArgument, match=match):
        discover(root)


def test_oversized_or_special_metadata_file(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    (tmp_path / "banger-kernel.json").write_bytes(b" " * (65 << 10))
    with pytest.raises(InvalidArgument, match="larger than"):
        discover(tmp_path)
    (tmp_path / "banger-kernel.json").unlink()
    os.mkfifo(tmp_path / "banger-kernel.json")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        discover(tmp_path)


def test_kernel_and_modules_of_different_versions(tmp_path: Path) -> None:
    put(tmp_path / "boot" / "vmlinuz-6.1.0-1", BZIMAGE)
    (tmp_path / "lib" / "modules" / "6.1.0-2").mkdir(parents=True)
    wrong = re.escape("version 6.1.0-1 but the modules are for 6.1.0-2")
    with pytest.raises(InvalidArgument, match=wrong):
        discover(tmp_path)


def test_a_file_named_like_a_kernel_that_is_not_one(tmp_path: Path) -> None:
    put(tmp_path / "boot" / "vmlinuz-1", b"#!/bin/sh\n")
    with pytest.raises(InvalidArgument, match="neither a bzImage nor an x86-64 ELF"):
        discover(tmp_path)


def test_a_fifo_named_like_a_kernel_does_not_hang(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    os.mkfifo(tmp_path / "boot" / "vmlinuz-1")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        discover(tmp_path)


def test_empty_missing_and_non_directory_sources(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no kernel found") as info:
        discover(tmp_path)
    assert "boot/vmlinuz-<version>" in (info.value.hint or "")
    with pytest.raises(InvalidArgument, match="cannot read"):
        discover(tmp_path / "absent")
    with pytest.raises(InvalidArgument, match="not a directory"):
        discover(put(tmp_path / "file"))


@pytest.mark.parametrize("name", ["deb", "debian-6.1", "k_1.2-3", "A" * 64, "0"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../x", "a/b", "/abs", ".hidden", "-flag", "a" * 65, "sp ace", "é", "a\0b", 7],
)
def test_invalid_names(name: object) -> None:
    with pytest.raises(InvalidArgument, match="invalid kernel name"):
        validate_name(name)
