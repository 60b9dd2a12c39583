"""Synthetic kernel files for the kernel tests: an ELF vmlinux, a bzImage around a payload
compressed as the kernel build does it, an import directory, a small ext4 image.

The files are built the way the kernel build lays them out (boot/header.S, mkpiggy.c):
setup sectors with the ``HdrS`` header, then the compressed payload followed by the
decompressed size as a little-endian u32. gzip/xz/lzma/bzip2 go through the stdlib;
zstd, lz4 (legacy frame, as the kernel writes it) and lzo through the real tools.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import subprocess
from pathlib import Path

SYNTH_V = "6.6.6-test"


def fake_elf(size: int = 300_000) -> bytes:
    """An ELF64 x86-64 header followed by compressible filler."""
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[5], header[6] = 2, 1, 1  # ELFCLASS64, little-endian, version 1
    struct.pack_into("<HH", header, 16, 2, 62)  # ET_EXEC, EM_X86_64
    filler = b"".join(i.to_bytes(4, "little") for i in range(size // 4))
    return bytes(header) + filler[: size - 64]


def run_tool(argv: list[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def compress(kind: str, data: bytes) -> bytes:
    """``data`` compressed as the kernel build does it, size trailer included."""
    trailer = struct.pack("<I", len(data))
    if kind == "gzip":
        return gzip.compress(data, mtime=0)  # gzip's own trailer carries the size
    if kind == "xz":
        filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2}]
        body = lzma.compress(data, lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    elif kind == "lzma":
        body = lzma.compress(data, lzma.FORMAT_ALONE)
    elif kind == "bzip2":
        body = bz2.compress(data, 9)
    elif kind == "zstd":
        body = run_tool(["zstd", "-19", "-q", "-c"], data)
    elif kind == "lz4":
        body = run_tool(["lz4", "-l", "-9", "-q", "-c"], data)
    elif kind == "lzo":
        body = run_tool(["lzop", "-9", "-q", "-c"], data)
    else:
        raise AssertionError(kind)
    return body + trailer


def make_bzimage(
    payload: bytes, *, setup_sects: int = 3, protocol: int = 0x020F, offset: int = 0x200
) -> bytes:
    """A file with an x86 boot setup header pointing at ``payload``."""
    sects = setup_sects or 4
    setup = bytearray((sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    struct.pack_into("<II", setup, 0x248, offset, len(payload))
    return bytes(setup) + b"\0" * offset + payload + b"\xcc" * 100


def synthetic_tree(root: Path, *, version: str = SYNTH_V, modules: bool = True) -> Path:
    """A small import directory: a synthetic bzImage and (fake) virtio modules."""
    elf = fake_elf(100_000 + len(version))
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{version}").write_bytes(make_bzimage(compress("gzip", elf)))
    if modules:
        ko = root / "lib" / "modules" / version / "kernel" / "drivers" / "virtio" / "virtio.ko"
        ko.parent.mkdir(parents=True)
        ko.write_bytes(b"\x7fELF fake module")
        (root / "lib" / "modules" / version / "modules.dep").write_text("")
    return root


def make_ext4(path: Path, size: str = "8M") -> Path:
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path), size], check=True, capture_output=True)
    return path
