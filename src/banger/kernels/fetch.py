"""Downloading one catalog artifact into a new file (SPEC §6; ADVERSARIAL 38, 39, 42).

Owns: a streaming GET whose sha256 is computed over exactly the bytes received, before
anything decompresses them (38); the size checks: ``Content-Length`` against the bytes
received, the catalog's ``size_bytes``, and a hard cap (39); an overall deadline; and
deleting the file on any failure, so an error never leaves a partial download behind.
A ``kill -9`` cannot run that clean-up: callers download inside a ``banger.host.publish``
staging directory, which the daemon empties at its next start (42).
HTTP itself (timeouts, retries on 429/5xx and dropped connections, redirects, slow-drip
bodies, "plain http only to loopback") is the registry client's transport, the one HTTP
seam of banger (``banger.oci.http_transport``).
Also the small steps from a download to a directory ``kernel import`` reads: a bare ELF
placed as ``vmlinux``, the catalog's metadata written next to it, and the download's
record (URL, sha256, verified or not) added to the staged manifest, where a later pull
of an unverified entry finds the sha256 to hold the new bytes to.
Must not: decompress or extract (``banger.kernels.tarball``), or log a URL's query
string.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from banger.errors import BadResponse, InvalidArgument, Timeout
from banger.host.publish import write_file_atomic
from banger.kernels.kernel_catalog import SHA256_HEX, CatalogKernel
from banger.kernels.store import MANIFEST
from banger.kernels.vmlinux import is_x86_64_elf, read_head
from banger.model.units import format_size
from banger.oci.http_transport import HttpTransport, Response, Transport, redact, stream_error

CHUNK_BYTES = 1 << 20
TRANSFER_TIMEOUT_S = 3600.0
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Expected:
    """What the bytes must be: a sha256 (None: unknown, the caller records what came),
    a size (None: unknown) and a cap that holds either way."""

    sha256: str | None
    size_bytes: int | None
    max_bytes: int


@dataclass(frozen=True)
class Downloaded:
    path: Path
    sha256: str
    size_bytes: int
    seconds: float

    def describe(self) -> str:
        return f"{format_size(self.size_bytes)} in {self.seconds:.1f}s, sha256 {self.sha256[:12]}…"


def download(
    url: str,
    dest: Path,
    expected: Expected,
    *,
    transport: Transport | None = None,
    deadline_s: float = TRANSFER_TIMEOUT_S,
) -> Downloaded:
    """GET ``url`` into new file ``dest``; ``BadResponse``/``Timeout`` and no ``dest`` on error."""
    started = time.monotonic()
    fd = os.open(dest, _CREATE, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size = _get(
                url, out, expected, transport or HttpTransport(), started + deadline_s
            )
            out.flush()
            os.fsync(out.fileno())
        _check_digest(url, digest, expected)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return Downloaded(dest, digest, size, time.monotonic() - started)


def _get(
    url: str, out: IO[bytes], expected: Expected, transport: Transport, deadline: float
) -> tuple[str, int]:
    where = redact(url)
    with transport.open("GET", url, {"Accept-Encoding": "identity"}) as response:
        if response.status != 200:
            detail = response.snippet()
            raise BadResponse(
                f"GET {where} answered HTTP {response.status}", details=detail or None
            )
        announced = _announced_size(response, where, expected)
        try:
            digest, size = _stream(response, out, where, expected, deadline)
        except (ConnectionError, TimeoutError) as exc:
            raise stream_error(exc, where) from exc
    if announced is not None and size != announced:
        raise BadResponse(
            f"GET {where}: the transfer ended after {size} of {announced} bytes",
            details="truncated download (Content-Length not met)",
        )
    return digest, size


def _announced_size(response: Response, where: str, expected: Expected) -> int | None:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        # The hash pins the file's own bytes; a transfer encoding would change them.
        raise BadResponse(f"GET {where} sent Content-Encoding {encoding!r}; identity asked")
    text = response.headers.get("content-length")
    if text is None:
        return None
    if not text.strip().isdigit():
        raise BadResponse(f"GET {where} sent an invalid Content-Length {text[:40]!r}")
    length, cap = int(text), expected.max_bytes
    if length > cap:
        raise BadResponse(f"GET {where} announces {length} bytes, over the cap of {cap}")
    if expected.size_bytes is not None and length != expected.size_bytes:
        raise BadResponse(
            f"GET {where} announces {length} bytes; the catalog says {expected.size_bytes}"
        )
    return length


def _stream(
    response: Response, out: IO[bytes], where: str, expected: Expected, deadline: float
) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := response.read(CHUNK_BYTES):
        size += len(chunk)
        if size > expected.max_bytes:
            raise BadResponse(f"GET {where} sent more than the {expected.max_bytes}-byte cap")
        if time.monotonic() > deadline:
            raise Timeout(f"GET {where} did not finish in time ({size} bytes so far)")
        digest.update(chunk)
        out.write(chunk)
    if expected.size_bytes is not None and size != expected.size_bytes:
        raise BadResponse(
            f"GET {where}: received {size} bytes; the catalog says {expected.size_bytes}"
        )
    return digest.hexdigest(), size


def _check_digest(url: str, actual: str, expected: Expected) -> None:
    if expected.sha256 is not None and actual != expected.sha256:
        raise BadResponse(
            f"the download of {redact(url)} does not match its sha256",
            details=f"expected {expected.sha256}\nactual   {actual}",
            hint="nothing was kept; retry later, or report a changed artifact",
        )


# -- from a download to a directory the kernel import reads -----------------------------------

METADATA = "banger-kernel.json"


def place_vmlinux(downloaded: Path, tree: Path) -> str:
    """Make ``tree/vmlinux`` of a bare ELF download; ``InvalidArgument`` if it is not one."""
    if not is_x86_64_elf(read_head(downloaded, 64)):
        raise InvalidArgument(f"{downloaded.name} is not an x86-64 ELF kernel")
    tree.mkdir(mode=0o755)
    downloaded.rename(tree / "vmlinux")
    return f"an ELF vmlinux of {format_size((tree / 'vmlinux').stat().st_size)}"


def write_metadata(tree: Path, entry: CatalogKernel) -> None:
    """Name, distro, arch and version from the catalog, unless the tarball brought its own."""
    path = tree / METADATA
    if path.exists():
        return
    data = {"name": entry.name, "distro": entry.distro, "arch": entry.arch}
    if entry.version is not None:
        data["version"] = entry.version
    path.write_text(json.dumps(data) + "\n")


def recorded_sha256(manifest: dict[str, Any] | None, url: str | None) -> str | None:
    """The sha256 an earlier pull of ``url`` recorded (trust on first use), if any."""
    record = manifest.get("download") if isinstance(manifest, dict) else None
    if not isinstance(record, dict) or record.get("url") != url:
        return None
    sha = record.get("sha256")
    return sha if isinstance(sha, str) and SHA256_HEX.fullmatch(sha) else None


def add_to_manifest(stage_dir: Path, key: str, value: dict[str, Any]) -> dict[str, Any]:
    """Add ``key`` to a staged kernel's manifest (before it is published)."""
    path = stage_dir / MANIFEST
    manifest = json.loads(path.read_bytes())
    manifest[key] = value
    write_file_atomic(path, json.dumps(manifest, indent=2).encode() + b"\n", mode=0o644)
    return dict(manifest)
