"""Kernel image formats: telling a bzImage from an ELF vmlinux, and extracting the latter.

Owns: reading the x86 boot setup header of a bzImage, finding and decompressing its
payload (the compressed ``vmlinux``) with an output cap, and checking that a file is an
ELF64 x86-64 kernel. Firecracker only boots such an ELF; QEMU boots either.
Must not: know where kernels are stored or run anything except through the ``Runner``.

Facts relied on (Documentation/arch/x86/boot.rst, arch/x86/boot/compressed/mkpiggy.c):
``setup_sects`` at 0x1f1 (0 means 4), ``HdrS`` at 0x202, the protocol version at 0x206,
``payload_offset``/``payload_length`` at 0x248/0x24c (protocol >= 2.08) counted from the
protected-mode code at ``(setup_sects + 1) * 512``. The build appends the decompressed
size as a little-endian u32 to every payload (gzip's own trailer holds the same value):
the kernel's decompressor reads it there, so every real bzImage has it, and it tells us
exactly how many bytes to expect.
"""

from __future__ import annotations

import bz2
import lzma
import os
import shutil
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from banger.errors import CommandFailed, InvalidArgument
from banger.host.runner import Runner

#: Largest vmlinux we accept; a real one is 30-80 MiB. Guards against decompression bombs.
MAX_VMLINUX_BYTES = 512 << 20
#: Largest bzImage we read into memory; a real one is 5-20 MiB.
MAX_BZIMAGE_BYTES = 128 << 20
_CHUNK = 1 << 20
_HEADER_BYTES = 0x250
_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_EM_X86_64 = 62
_MIN_PROTOCOL = 0x208  # first boot protocol with payload_offset/payload_length
_DECOMPRESS_TIMEOUT_S = 120.0


class KernelFormat(StrEnum):
    ELF = "elf"
    BZIMAGE = "bzimage"
    UNKNOWN = "unknown"


class Compression(StrEnum):
    GZIP = "gzip"
    XZ = "xz"
    LZMA = "lzma"
    BZIP2 = "bzip2"
    ZSTD = "zstd"
    LZ4 = "lz4"
    LZO = "lzo"


_MAGICS: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b", Compression.GZIP),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x5d\x00\x00", Compression.LZMA),
    (b"BZh", Compression.BZIP2),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\x02\x21\x4c\x18", Compression.LZ4),  # LZ4 legacy frame, what the kernel build writes
    (b"\x89LZO", Compression.LZO),  # lzop's file header
)

#: Compressors without a stdlib decoder: the tool and the Debian package that has it.
_TOOLS: dict[Compression, tuple[str, str]] = {
    Compression.ZSTD: ("zstd", "zstd"),
    Compression.LZ4: ("lz4", "lz4"),
    Compression.LZO: ("lzop", "lzop"),
}


def read_head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of regular file ``path`` (never blocks on a FIFO)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{path} is not a regular file")
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def is_x86_64_elf(head: bytes) -> bool:
    if len(head) < 20 or head[:4] != _ELF_MAGIC:
        return False
    machine = struct.unpack_from("<H", head, 18)[0]
    return head[4] == _ELFCLASS64 and head[5] == _ELFDATA2LSB and machine == _EM_X86_64


def _has_setup_header(head: bytes) -> bool:
    return len(head) >= 0x206 and head[0x202:0x206] == b"HdrS"


def kernel_format(path: Path) -> KernelFormat:
    """What kind of kernel image ``path`` is; ``UNKNOWN`` for anything else."""
    try:
        head = read_head(path, _HEADER_BYTES)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from exc
    if is_x86_64_elf(head):
        return KernelFormat.ELF
    if _has_setup_header(head):
        return KernelFormat.BZIMAGE
    return KernelFormat.UNKNOWN


def is_elf_vmlinux(path: Path) -> bool:
    return kernel_format(path) is KernelFormat.ELF


# -- bzImage parsing --------------------------------------------------------------------


def find_payload(image: bytes, *, where: str = "bzImage") -> tuple[Compression, bytes, int]:
    """Compression, compressed body (size trailer removed) and decompressed size."""
    if not _has_setup_header(image):
        raise InvalidArgument(f"{where} is not a bzImage (no HdrS boot header at 0x202)")
    protocol = struct.unpack_from("<H", image, 0x206)[0]
    if protocol < _MIN_PROTOCOL or len(image) < _HEADER_BYTES:
        raise InvalidArgument(
            f"{where} uses boot protocol {protocol >> 8}.{protocol & 0xFF:02d}; "
            "extracting a vmlinux needs 2.08 or later"
        )
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length < 8 or start + length > len(image):
        raise InvalidArgument(
            f"{where} is truncated or damaged: its payload ({length} bytes at {start}) "
            f"lies outside the file ({len(image)} bytes)"
        )
    payload = image[start : start + length]
    kind = _compression(payload, where)
    expected = struct.unpack_from("<I", payload, length - 4)[0]
    if expected > MAX_VMLINUX_BYTES:
        raise InvalidArgument(
            f"{where} claims to decompress to {expected} bytes, "
            f"over the {MAX_VMLINUX_BYTES >> 20} MiB limit"
        )
    # gzip keeps its own size trailer inside the stream; every other body ends before it.
    body = payload if kind is Compression.GZIP else payload[:-4]
    return kind, body, expected


def _compression(payload: bytes, where: str) -> Compression:
    for magic, kind in _MAGICS:
        if payload.startswith(magic):
            return kind
    raise InvalidArgument(
        f"{where}: unknown payload compression (first bytes {payload[:6].hex(' ')})",
        hint="supported: gzip, xz, lzma, bzip2, zstd, lz4, lzo",
    )


# -- decompression ----------------------------------------------------------------------


def _stdlib_decoder(kind: Compression) -> Callable[[bytes, int], bytes] | None:
    """A bounded ``decode(chunk, max_length)`` for ``kind``; None when there is no stdlib one."""
    if kind is Compression.GZIP:
        z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return lambda data, limit: z.decompress(z.unconsumed_tail + data, limit)
    if kind in (Compression.XZ, Compression.LZMA, Compression.BZIP2):
        d: lzma.LZMADecompressor | bz2.BZ2Decompressor
        if kind is Compression.BZIP2:
            d = bz2.BZ2Decompressor()
        else:
            d = lzma.LZMADecompressor(
                lzma.FORMAT_XZ if kind is Compression.XZ else lzma.FORMAT_ALONE
            )
        return lambda data, limit: b"" if d.eof else d.decompress(data, limit)
    return None


def _decompress_stdlib(
    decode: Callable[[bytes, int], bytes], body: bytes, out: int, cap: int
) -> int:
    """Stream ``body`` through ``decode`` into fd ``out``; stops past ``cap`` bytes."""
    written = 0
    pending = body
    while True:
        # After the first call, feeding b"" drains what the decoder still holds back.
        chunk = decode(pending, _CHUNK)
        pending = b""
        if not chunk:
            return written
        written += len(chunk)
        if written > cap:
            return written
        os.write(out, chunk)


def _decompress_tool(kind: Compression, body: Path, out: Path, cap: int, runner: Runner) -> None:
    tool, package = _TOOLS[kind]
    if shutil.which(tool, path=runner.env().get("PATH")) is None:
        raise CommandFailed(
            f"extracting this {kind}-compressed kernel needs the {tool} tool",
            hint=f"install it: apt-get install {package}",
        )
    files = [body, out] if kind is Compression.LZ4 else ["-o", out, body]
    # RLIMIT_FSIZE makes the kernel stop the tool (SIGXFSZ) once it writes past the cap,
    # so a bomb costs at most ``cap`` bytes of disk; the tools have no such option.
    argv = ["prlimit", f"--fsize={cap}", "--", tool, "-d", "-q", "-f", *files]
    try:
        runner.run(argv, timeout_s=_DECOMPRESS_TIMEOUT_S)
    except CommandFailed as exc:
        raise InvalidArgument(
            f"the {kind} payload of the bzImage does not decompress cleanly "
            f"(truncated, damaged or larger than {cap} bytes)",
            details=exc.details or exc.brief,
        ) from exc


def extract_vmlinux(bzimage: Path, dst: Path, runner: Runner) -> None:
    """Write the ELF ``vmlinux`` inside ``bzimage`` to ``dst`` (mode 0644).

    ``InvalidArgument`` when ``bzimage`` is not a bzImage, is truncated or damaged, or its
    payload is not an x86-64 ELF of the size the image announces; ``dst`` is then absent.
    """
    image = _read_image(bzimage)
    kind, body, expected = find_payload(image, where=str(bzimage))
    try:
        written = _decompress_to(kind, body, dst, expected, runner)
        _check_result(dst, written, expected, bzimage)
        dst.chmod(0o644)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def _read_image(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{path} is not a regular file")
        if st.st_size > MAX_BZIMAGE_BYTES:
            raise InvalidArgument(f"{path} is {st.st_size} bytes: too large for a bzImage")
        return f.read(MAX_BZIMAGE_BYTES + 1)


def _decompress_to(kind: Compression, body: bytes, dst: Path, expected: int, runner: Runner) -> int:
    """Decompress into ``dst`` allowing one byte over ``expected``; return bytes produced."""
    cap = expected + 1
    decode = _stdlib_decoder(kind)
    if decode is not None:
        fd = os.open(
            dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        try:
            return _decompress_stdlib(decode, body, fd, cap)
        except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # a real I/O error of ours (disk full), not bad input
            raise InvalidArgument(f"the {kind} payload of the bzImage is damaged: {exc}") from exc
        finally:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix="banger-payload-", dir=dst.parent) as tmp:
        compressed = Path(tmp) / f"payload.{kind}"
        compressed.write_bytes(body)
        _decompress_tool(kind, compressed, dst, cap, runner)
    return dst.stat().st_size


def _check_result(dst: Path, written: int, expected: int, bzimage: Path) -> None:
    if written > expected:
        raise InvalidArgument(
            f"the payload of {bzimage} decompresses to more than the {expected} bytes "
            "its size trailer announces (damaged, or a decompression bomb)"
        )
    if written < expected:
        raise InvalidArgument(
            f"the payload of {bzimage} decompressed to only {written} bytes, "
            f"not the {expected} its size trailer announces (truncated or damaged)"
        )
    if not is_x86_64_elf(read_head(dst, 64)):
        raise InvalidArgument(f"the payload of {bzimage} is not an x86-64 ELF vmlinux")
