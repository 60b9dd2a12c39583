"""The kernel catalog: named kernels ``banger kernel pull`` can fetch (SPEC §6).

Owns: the catalog's format and its rules (ADVERSARIAL 44: every sha256 is 64 lowercase
hex or an explicit ``null`` with ``"verified": false``, (name, version, arch) and
(name, arch) are unique, URLs are https, or http to loopback in an override), loading
the embedded ``catalog.json`` or the file named by ``BANGER_KERNEL_CATALOG`` (tests,
air-gapped mirrors), and finding an entry by name (an unknown name is an error that lists the
known ones). The URL checks are shared with the image catalog.
Must not: download anything, or trust a catalog it has not checked entry by entry.

Three kinds of entry (``format``):

- ``tar.zst``: a zstd tar holding ``vmlinux`` (or ``vmlinuz``), optionally ``config``,
  ``initrd.img``, ``modules/`` and ``banger-kernel.json`` (``banger.kernels.tarball``);
- ``vmlinux``: a bare ELF kernel, as Firecracker's CI publishes them;
- ``deb``: a kernel package from the host's distribution archive (``package``, ``suite``),
  fetched with apt, which checks the archive's signatures itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from banger.config.catalog_file import CatalogFile
from banger.errors import KernelNotFound
from banger.kernels.discover import ARCH
from banger.model.artifact_names import is_valid_name
from banger.model.hosts import is_loopback_host

CATALOG_ENV = "BANGER_KERNEL_CATALOG"
#: Largest download a catalog entry may announce (a kernel with modules is ~100 MiB).
MAX_ARTIFACT_BYTES = 1 << 30
ARCHES = ("x86_64", "aarch64")
SHA256_HEX = re.compile(r"[0-9a-f]{64}", re.ASCII)
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{1,99}", re.ASCII)
_SUITE = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}", re.ASCII)
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}", re.ASCII)
_TEXT_MAX = 500


class ArtifactFormat(StrEnum):
    TAR_ZST = "tar.zst"
    VMLINUX = "vmlinux"
    DEB = "deb"


_DOWNLOADS = (ArtifactFormat.TAR_ZST, ArtifactFormat.VMLINUX)
_REQUIRED = {"name", "distro", "arch", "version", "format", "description"}
_KEYS = {
    ArtifactFormat.TAR_ZST: _REQUIRED | {"url", "sha256", "size_bytes", "verified"},
    ArtifactFormat.DEB: _REQUIRED | {"package", "suite"},
}
_KEYS[ArtifactFormat.VMLINUX] = _KEYS[ArtifactFormat.TAR_ZST]


@dataclass(frozen=True, kw_only=True)
class CatalogKernel:
    """One catalog entry, checked. ``sha256`` is None only for an unverified download."""

    name: str
    distro: str
    arch: str
    version: str | None
    format: ArtifactFormat
    description: str
    url: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    verified: bool = True
    package: str | None = None
    suite: str | None = None

    @property
    def source(self) -> str:
        """What the store's manifest and row record as the kernel's ``source``."""
        where = self.url if self.url else f"apt:{self.package}/{self.suite}"
        return f"catalog:{self.name} {where}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v.value if isinstance(v, StrEnum) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class KernelCatalog:
    origin: str  # "embedded" or the path of an override file
    entries: tuple[CatalogKernel, ...]

    def for_arch(self, arch: str = ARCH) -> list[CatalogKernel]:
        return [e for e in self.entries if e.arch == arch]

    def find(self, name: str, arch: str = ARCH) -> CatalogKernel:
        for entry in self.for_arch(arch):
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.for_arch(arch)) or "none"
        raise KernelNotFound(
            f"kernel {name!r} is not in the kernel catalog ({self.origin})",
            details=f"available for {arch}: {known}",
            hint="`banger kernel list --available` shows the catalog",
        )


# -- building entries ---------------------------------------------------------------------


def _entry(item: dict[str, Any]) -> CatalogKernel:
    fmt = ArtifactFormat(item["format"])
    return CatalogKernel(
        name=item["name"],
        distro=item["distro"],
        arch=item["arch"],
        version=item["version"],
        format=fmt,
        description=item["description"],
        url=item.get("url"),
        sha256=item.get("sha256"),
        size_bytes=item.get("size_bytes"),
        verified=fmt is ArtifactFormat.DEB or item.get("sha256") is not None,
        package=item.get("package"),
        suite=item.get("suite"),
    )


# -- the self-test (ADVERSARIAL 44) ---------------------------------------------------------


def entry_problems(item: object, *, embedded: bool) -> list[str]:
    if not isinstance(item, dict):
        return ["must be an object"]
    try:
        fmt = ArtifactFormat(str(item.get("format")))
    except ValueError:
        return [f"format must be one of {', '.join(f.value for f in ArtifactFormat)}"]
    found = [f"missing {key}" for key in sorted(_REQUIRED - set(item))]
    found += [f"unknown key {key!r}" for key in sorted(set(item) - _KEYS[fmt])]
    if found:
        return found
    found += _text_problems(item, fmt)
    if fmt in _DOWNLOADS:
        found += download_problems(item, embedded=embedded)
    else:
        found += _deb_problems(item)
    return found


def _text_problems(item: dict[str, Any], fmt: ArtifactFormat) -> list[str]:
    found = []
    if not is_valid_name(item["name"]):
        found.append(f"invalid name {item['name']!r}")
    if item["arch"] not in ARCHES:
        found.append(f"arch must be one of {', '.join(ARCHES)}")
    for key in ("distro", "description"):
        if not isinstance(item[key], str) or not 0 < len(item[key]) <= _TEXT_MAX:
            found.append(f"{key} must be a non-empty string")
    version = item["version"]
    if version is None and fmt is not ArtifactFormat.DEB:
        found.append("version is required (null only for a deb, whose archive decides)")
    elif version is not None and (not isinstance(version, str) or not _VERSION.fullmatch(version)):
        found.append(f"invalid version {version!r}")
    return found


def download_problems(item: dict[str, Any], *, embedded: bool) -> list[str]:
    """Rules for an entry fetched over HTTP(S); shared with the image catalog's bundles."""
    found = url_problems(item.get("url"), embedded=embedded)
    sha = item.get("sha256", "missing")
    verified = item.get("verified")
    if sha is None:
        if verified is not False:  # explicit, so nobody drops a checksum by accident
            found.append('sha256 is null: the entry must say "verified": false')
    elif not isinstance(sha, str) or not SHA256_HEX.fullmatch(sha):
        found.append("sha256 must be 64 lowercase hex digits, or null with verified false")
    elif verified not in (None, True):
        found.append("an entry with a sha256 is verified; drop verified or set it true")
    size = item.get("size_bytes")
    if size is not None and (
        not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_ARTIFACT_BYTES
    ):
        found.append(f"size_bytes must be null or 1..{MAX_ARTIFACT_BYTES}")
    return found


def url_problems(url: object, *, embedded: bool) -> list[str]:
    """https only; an override catalog may also use plain http to a loopback host (a
    mirror on this machine, tests), the transport's own rule."""
    if not isinstance(url, str) or len(url) > 2048:
        return ["url must be a string"]
    parts = urlsplit(url)
    loopback = parts.scheme == "http" and is_loopback_host(parts.netloc)
    if parts.scheme != "https" and (embedded or not loopback):
        where = "" if embedded else " (or http to a loopback host)"
        return [f"url must use https{where}: {url!r}"]
    if not parts.hostname or parts.username or parts.password:
        return [f"url must name a host and carry no credentials: {url!r}"]
    if any(c.isspace() for c in url) or not parts.path.strip("/"):
        return [f"url must name a file: {url!r}"]
    return []


def _deb_problems(item: dict[str, Any]) -> list[str]:
    found = []
    package, suite = item.get("package"), item.get("suite")
    if not isinstance(package, str) or not _PACKAGE.fullmatch(package):
        found.append("a deb entry needs a Debian package name in package")
    if not isinstance(suite, str) or not _SUITE.fullmatch(suite):
        found.append("a deb entry needs the archive suite in suite (like bookworm)")
    return found


CATALOG_FILE = CatalogFile(
    "kernel", CATALOG_ENV, "banger.kernels", entry_problems, _entry, KernelCatalog
)
#: The override named by ``BANGER_KERNEL_CATALOG`` if set, else the embedded catalog.
load_catalog = CATALOG_FILE.load
parse_catalog = CATALOG_FILE.parse
#: Everything wrong with a parsed catalog; an empty list means it may be used.
catalog_problems = CATALOG_FILE.problems
