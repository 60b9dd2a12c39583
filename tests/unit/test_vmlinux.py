"""bzImage parsing and vmlinux extraction on synthetic, bzImage-shaped files.

The files are built the way the kernel build lays them out (boot/header.S, mkpiggy.c):
setup sectors with the ``HdrS`` header, then the compressed payload followed by the
decompressed size as a little-endian u32. gzip/xz/lzma/bzip2 go through the stdlib;
zstd, lz4 (legacy frame, as the kernel writes it) and lzo through the real tools.
"""

from __future__ import annotations

import bz2
import lzma
import os
import shutil
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from banger.errors import CommandFailed, InvalidArgument
from banger.host.runner import Runner
from banger.kernels import vmlinux as vm
from banger.kernels.vmlinux import KernelFormat, extract_vmlinux, is_elf_vmlinux, kernel_format
from tests.kernelfiles import compress, fake_elf, make_bzimage, run_tool


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


KINDS = ["gzip", "xz", "lzma", "bzip2", "zstd", "lz4", "lzo"]


@pytest.fixture
def runner() -> Runner:
    return Runner()


@pytest.mark.parametrize("kind", KINDS)
def test_extracts_the_elf_of_every_supported_compression(
    kind: str, tmp_path: Path, runner: Runner
) -> None:
    if kind == "lzo" and shutil.which("lzop") is None:
        pytest.skip("lzop is not installed (apt-get install lzop)")
    elf = fake_elf()
    image = write(tmp_path / "vmlinuz", make_bzimage(compress(kind, elf)))
    assert kernel_format(image) is KernelFormat.BZIMAGE
    dst = tmp_path / "vmlinux"
    extract_vmlinux(image, dst, runner)
    assert dst.read_bytes() == elf
    assert stat.S_IMODE(dst.stat().st_mode) == 0o644
    assert is_elf_vmlinux(dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vmlinux", "vmlinuz"]


def test_setup_sects_zero_means_four(tmp_path: Path, runner: Runner) -> None:
    elf = fake_elf()
    image = write(tmp_path / "k", make_bzimage(compress("gzip", elf), setup_sects=0))
    extract_vmlinux(image, tmp_path / "out", runner)
    assert (tmp_path / "out").read_bytes() == elf


def test_kernel_format_tells_elf_bzimage_and_other(tmp_path: Path) -> None:
    assert kernel_format(write(tmp_path / "elf", fake_elf(4096))) is KernelFormat.ELF
    arm = bytearray(fake_elf(4096))
    struct.pack_into("<H", arm, 18, 183)  # EM_AARCH64
    assert kernel_format(write(tmp_path / "arm", bytes(arm))) is KernelFormat.UNKNOWN
    assert kernel_format(write(tmp_path / "txt", b"hello")) is KernelFormat.UNKNOWN
    assert kernel_format(write(tmp_path / "empty", b"")) is KernelFormat.UNKNOWN
    bz = write(tmp_path / "bz", make_bzimage(compress("gzip", fake_elf())))
    assert kernel_format(bz) is KernelFormat.BZIMAGE
    assert not is_elf_vmlinux(bz)


def test_kernel_format_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidArgument, match="not a regular file"):
        kernel_format(fifo)
    with pytest.raises(InvalidArgument, match="not a regular file"):
        extract_vmlinux(fifo, tmp_path / "out", Runner())


def test_kernel_format_of_a_directory_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        kernel_format(tmp_path)
    with pytest.raises(InvalidArgument, match="cannot read"):
        kernel_format(tmp_path / "absent")


def _expect_invalid(image: bytes, tmp_path: Path, match: str | None, runner: Runner) -> None:
    src = write(tmp_path / "vmlinuz", image)
    dst = tmp_path / "vmlinux"
    with pytest.raises(InvalidArgument, match=match):
        extract_vmlinux(src, dst, runner)
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vmlinuz"]


def test_not_a_bzimage(tmp_path: Path, runner: Runner) -> None:
    _expect_invalid(b"garbage" * 200, tmp_path, "not a bzImage", runner)
    _expect_invalid(fake_elf(4096), tmp_path, "not a bzImage", runner)


def test_truncated_file(tmp_path: Path, runner: Runner) -> None:
    image = make_bzimage(compress("gzip", fake_elf()))
    _expect_invalid(image[:5000], tmp_path, "truncated or damaged", runner)
    _expect_invalid(image[:0x210], tmp_path, None, runner)


def test_old_boot_protocol(tmp_path: Path, runner: Runner) -> None:
    image = make_bzimage(compress("gzip", fake_elf()), protocol=0x0206)
    _expect_invalid(image, tmp_path, "boot protocol 2.06", runner)


def test_unknown_compression(tmp_path: Path, runner: Runner) -> None:
    image = make_bzimage(b"\x00\x01\x02\x03" * 100)
    _expect_invalid(image, tmp_path, "unknown payload compression", runner)


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd", "lz4"])
def test_truncated_payload(kind: str, tmp_path: Path, runner: Runner) -> None:
    elf = fake_elf(2_000_000)
    whole = compress(kind, elf)
    cut = whole[: len(whole) // 2] + struct.pack("<I", len(elf))
    _expect_invalid(make_bzimage(cut), tmp_path, None, runner)


@pytest.mark.parametrize("kind", ["gzip", "xz", "lzma", "bzip2", "zstd", "lz4"])
def test_garbage_after_a_valid_magic(kind: str, tmp_path: Path, runner: Runner) -> None:
    magic = compress(kind, b"x")[:6]
    payload = magic + os.urandom(4000) + struct.pack("<I", 100_000)
    _expect_invalid(make_bzimage(payload), tmp_path, None, runner)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_payload_that_is_not_an_elf(kind: str, tmp_path: Path, runner: Runner) -> None:
    text = b"not a kernel\n" * 10_000
    _expect_invalid(make_bzimage(compress(kind, text)), tmp_path, "not an x86-64 ELF", runner)


def _zeros_compressed(kind: str, size: int) -> bytes:
    elf = fake_elf(64) + bytes(size - 64)
    if kind == "xz":
        return lzma.compress(elf, lzma.FORMAT_XZ, preset=0)
    if kind == "bzip2":
        return bz2.compress(elf, 1)
    if kind == "zstd":
        return run_tool(["zstd", "-1", "-q", "-c"], elf)
    return run_tool(["lz4", "-l", "-1", "-q", "-c"], elf)


@pytest.mark.parametrize("kind", ["xz", "bzip2", "zstd", "lz4"])
def test_bomb_larger_than_announced_is_stopped(kind: str, tmp_path: Path, runner: Runner) -> None:
    # 16 MiB announced as 64 KiB: decompression stops one byte past the claim (the
    # stdlib decoders by counting, the tools through RLIMIT_FSIZE).
    payload = _zeros_compressed(kind, 16 << 20) + struct.pack("<I", 64 << 10)
    _expect_invalid(make_bzimage(payload), tmp_path, None, runner)


def test_announced_size_over_the_cap_is_refused_before_decompressing(
    tmp_path: Path, runner: Runner
) -> None:
    payload = compress("xz", fake_elf())[:-4] + struct.pack("<I", vm.MAX_VMLINUX_BYTES + 1)
    _expect_invalid(make_bzimage(payload), tmp_path, "over the 512 MiB limit", runner)


def test_missing_tool_names_the_package(tmp_path: Path) -> None:
    image = write(tmp_path / "vmlinuz", make_bzimage(compress("lz4", fake_elf())))
    empty = tmp_path / "empty-path"
    empty.mkdir()
    with pytest.raises(CommandFailed) as info:
        extract_vmlinux(image, tmp_path / "out", Runner(extra_env={"PATH": str(empty)}))
    assert info.value.hint == "install it: apt-get install lz4"
    assert not (tmp_path / "out").exists()


def test_find_payload_reports_the_announced_size() -> None:
    elf = fake_elf()
    for kind in ("gzip", "lz4"):
        found, body, expected = vm.find_payload(make_bzimage(compress(kind, elf)))
        assert (found.value, expected) == (kind, len(elf))
        assert len(body) == len(compress(kind, elf)) - (0 if kind == "gzip" else 4)


Corrupt = Callable[[bytearray], None]


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: struct.pack_into("<I", b, 0x24C, 0xFFFFFFF0),  # payload_length huge
        lambda b: struct.pack_into("<I", b, 0x248, 0x7FFFFFFF),  # payload_offset past EOF
        lambda b: struct.pack_into("<I", b, 0x24C, 3),  # payload too short for a trailer
        lambda b: b.__setitem__(0x1F1, 250),  # setup_sects past EOF
    ],
)
def test_header_fields_pointing_outside_the_file(
    corrupt: Corrupt, tmp_path: Path, runner: Runner
) -> None:
    image = bytearray(make_bzimage(compress("gzip", fake_elf())))
    corrupt(image)
    _expect_invalid(bytes(image), tmp_path, "truncated or damaged", runner)
