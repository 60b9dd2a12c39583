"""Layer tars built in memory for the flattening tests.

Each helper returns an ``Entry`` (a TarInfo and its data); ``tar_bytes`` writes a list of
them as a tar, ``write_layer`` as a layer file (plain, gzip or zstd) with its diff_id.
Names are ``str`` as tarfile wants them; bytes that are not UTF-8 go in as surrogate
escapes (``name_from_bytes``). ``patch_header`` edits a field of a written header and fixes
its checksum, for numbers tarfile's writer refuses to produce (negative sizes, huge
device numbers).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zstandard

from banger.oci.flatten import Layer

MTIME = 1_700_000_000
MEDIA = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "docker": "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


@dataclass(frozen=True)
class Entry:
    info: tarfile.TarInfo
    data: bytes | None = None


def name_from_bytes(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _info(name: str, kind: bytes, *, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = MTIME
    return info


def file(
    name: str,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: float = MTIME,
    xattrs: dict[str, str] | None = None,
) -> Entry:
    info = _info(name, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid)
    info.size = len(data)
    info.mtime = mtime
    for key, value in (xattrs or {}).items():
        info.pax_headers[f"SCHILY.xattr.{key}"] = value
    return Entry(info, data)


def directory(
    name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: float = MTIME
) -> Entry:
    info = _info(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid)
    info.mtime = mtime
    return Entry(info)


def symlink(name: str, target: str, *, uid: int = 0, gid: int = 0) -> Entry:
    info = _info(name, tarfile.SYMTYPE, mode=0o777, uid=uid, gid=gid)
    info.linkname = target
    return Entry(info)


def hardlink(name: str, target: str, *, mode: int = 0o644) -> Entry:
    info = _info(name, tarfile.LNKTYPE, mode=mode)
    info.linkname = target
    return Entry(info)


def chardev(name: str, major: int, minor: int, *, mode: int = 0o666) -> Entry:
    info = _info(name, tarfile.CHRTYPE, mode=mode)
    info.devmajor, info.devminor = major, minor
    return Entry(info)


def blockdev(name: str, major: int, minor: int, *, mode: int = 0o660) -> Entry:
    info = _info(name, tarfile.BLKTYPE, mode=mode)
    info.devmajor, info.devminor = major, minor
    return Entry(info)


def fifo(name: str, *, mode: int = 0o644) -> Entry:
    return Entry(_info(name, tarfile.FIFOTYPE, mode=mode))


def whiteout(path: str) -> Entry:
    """The whiteout of ``path`` (``a/b`` → ``a/.wh.b``)."""
    head, _, base = path.rpartition("/")
    return file(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opaque(dirname: str) -> Entry:
    return file(f"{dirname.rstrip('/')}/.wh..wh..opq")


def tar_bytes(entries: list[Entry], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for entry in entries:
            tar.addfile(entry.info, io.BytesIO(entry.data) if entry.data is not None else None)
    return buf.getvalue()


def compress(raw: bytes, compression: str) -> bytes:
    if compression in ("gzip", "docker"):
        return gzip.compress(raw, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(raw)
    return raw


def diff_id(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def write_layer(
    path: Path,
    entries: list[Entry] | bytes,
    *,
    compression: str = "none",
    media_type: str | None = None,
    with_diff_id: bool = True,
) -> Layer:
    """A layer file at ``path``; ``entries`` may also be ready-made tar bytes."""
    raw = entries if isinstance(entries, bytes) else tar_bytes(entries)
    path.write_bytes(compress(raw, compression))
    return Layer(path, media_type or MEDIA[compression], diff_id(raw) if with_diff_id else None)


def layers_of(tmp: Path, groups: list[list[Entry]], *, compression: str = "none") -> list[Layer]:
    tmp.mkdir(parents=True, exist_ok=True)
    return [
        write_layer(tmp / f"layer{i}.tar", group, compression=compression)
        for i, group in enumerate(groups, 1)
    ]


def patch_header(raw: bytes, block: int, start: int, value: bytes) -> bytes:
    """Overwrite bytes ``start…`` of the header at 512-byte block ``block``; fix the checksum."""
    data = bytearray(raw)
    base = block * tarfile.BLOCKSIZE
    data[base + start : base + start + len(value)] = value
    data[base + 148 : base + 156] = b" " * 8
    checksum = sum(data[base : base + tarfile.BLOCKSIZE])
    data[base + 148 : base + 156] = b"%06o\0 " % checksum
    return bytes(data)


def base256(value: int, width: int = 8) -> bytes:
    """tar's binary number encoding (the GNU extension), negative numbers included."""
    if value < 0:
        value += 1 << (8 * (width - 1))
        return bytes([0xFF]) + value.to_bytes(width - 1, "big")
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def inject_marker(tree: Path) -> None:
    """An ``inject`` hook for the build tests: adds a root-only file, as banger's own does."""
    marker = tree / "etc" / "banger-injected"
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("injected\n")
    marker.chmod(0o600)
    print("a hook that prints must not corrupt the worker's reply")


def inject_crash(tree: Path) -> None:
    raise RuntimeError(f"inject hook failed on purpose in {tree.name}")
