"""The image catalog: named images banger obtains on first use (SPEC §5).

Owns: the catalog's format, its checks (the same rules as the kernel catalog for
anything downloaded: sha256 64 lowercase hex or null with ``"verified": false``, https
in the embedded catalog), loading the embedded ``catalog.json`` or the file named by
``BANGER_IMAGE_CATALOG``, and finding an entry by name (None when it is not there: the
caller then reports the image as not found).
Must not: fetch or build anything (``banger.services.catalog_fetch`` and ``kernel_pull`` do).

Each image lists its sources in order of preference; the first that works is used:

- ``bundle``: a zstd tar holding ``rootfs.ext4`` (optionally ``work-seed.ext4``) at a
  URL, with its sha256;
- ``oci``: an OCI reference pulled like ``banger image pull`` (needs a reachable
  registry), with the packages the first boot must install;
- ``local-debian``: a Debian suite bootstrapped from the host's own apt sources.

Every source names the kernels it boots with, in order: the first one that is in the
local store, or can be pulled from the kernel catalog, is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from banger.config.catalog_file import CatalogFile
from banger.kernels.discover import ARCH
from banger.kernels.kernel_catalog import ARCHES, download_problems
from banger.model.artifact_names import is_valid_name

CATALOG_ENV = "BANGER_IMAGE_CATALOG"
MIN_SIZE_BYTES = 256 << 20
MAX_SIZE_BYTES = 64 << 30
_REF = re.compile(r"[a-z0-9][a-z0-9._/:-]{0,250}(@sha256:[0-9a-f]{64})?", re.ASCII)
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{0,99}", re.ASCII)
_SUITE = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}", re.ASCII)
_VARIANTS = ("minbase", "buildd", "required", "important", "standard")


class SourceType(StrEnum):
    BUNDLE = "bundle"
    OCI = "oci"
    LOCAL_DEBIAN = "local-debian"


_SOURCE_KEYS = {
    SourceType.BUNDLE: {"type", "kernels", "url", "sha256", "size_bytes", "verified"},
    SourceType.OCI: {"type", "kernels", "ref", "first_boot_packages"},
    SourceType.LOCAL_DEBIAN: {"type", "kernels", "suite", "variant", "include"},
}
_IMAGE_KEYS = {"name", "distro", "arch", "description", "size_bytes", "sources"}


@dataclass(frozen=True, kw_only=True)
class ImageSource:
    type: SourceType
    kernels: tuple[str, ...]
    url: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    ref: str | None = None
    packages: tuple[str, ...] = ()  # first_boot_packages (oci) or include (local-debian)
    suite: str | None = None
    variant: str = "minbase"

    def describe(self) -> str:
        where = self.url or self.ref or f"{self.suite} from the host's apt sources"
        return f"{self.type.value} ({where})"


@dataclass(frozen=True, kw_only=True)
class CatalogImage:
    name: str
    distro: str
    arch: str
    description: str
    size_bytes: int
    sources: tuple[ImageSource, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distro": self.distro,
            "arch": self.arch,
            "description": self.description,
            "size_bytes": self.size_bytes,
            "sources": [s.describe() for s in self.sources],
        }


@dataclass(frozen=True)
class ImageCatalog:
    origin: str
    entries: tuple[CatalogImage, ...]

    def find(self, name: str, arch: str = ARCH) -> CatalogImage | None:
        return next((e for e in self.entries if e.name == name and e.arch == arch), None)


def _image(item: dict[str, Any]) -> CatalogImage:
    return CatalogImage(
        name=item["name"],
        distro=item["distro"],
        arch=item["arch"],
        description=item["description"],
        size_bytes=item["size_bytes"],
        sources=tuple(_source(s) for s in item["sources"]),
    )


def _source(item: dict[str, Any]) -> ImageSource:
    kind = SourceType(item["type"])
    return ImageSource(
        type=kind,
        kernels=tuple(item["kernels"]),
        url=item.get("url"),
        sha256=item.get("sha256"),
        size_bytes=item.get("size_bytes"),
        ref=item.get("ref"),
        packages=tuple(item.get("first_boot_packages") or item.get("include") or ()),
        suite=item.get("suite"),
        variant=item.get("variant", "minbase"),
    )


# -- the self-test ---------------------------------------------------------------------------


def image_problems(item: object, *, embedded: bool) -> list[str]:
    if not isinstance(item, dict):
        return ["must be an object"]
    found = [f"missing {k}" for k in sorted(_IMAGE_KEYS - set(item))]
    found += [f"unknown key {k!r}" for k in sorted(set(item) - _IMAGE_KEYS)]
    if found:
        return found
    if not is_valid_name(item["name"]):
        found.append(f"invalid name {item['name']!r}")
    if item["arch"] not in ARCHES:
        found.append(f"arch must be one of {', '.join(ARCHES)}")
    for key in ("distro", "description"):
        if not isinstance(item[key], str) or not item[key]:
            found.append(f"{key} must be a non-empty string")
    size = item["size_bytes"]
    if not isinstance(size, int) or isinstance(size, bool):
        found.append("size_bytes must be an integer")
    elif not MIN_SIZE_BYTES <= size <= MAX_SIZE_BYTES:
        found.append(f"size_bytes must be {MIN_SIZE_BYTES}..{MAX_SIZE_BYTES}")
    sources = item["sources"]
    if not isinstance(sources, list) or not sources:
        return [*found, "sources must be a non-empty list"]
    for index, source in enumerate(sources):
        found += [f"sources[{index}]: {p}" for p in source_problems(source, embedded=embedded)]
    return found


def source_problems(item: object, *, embedded: bool) -> list[str]:
    if not isinstance(item, dict):
        return ["must be an object"]
    try:
        kind = SourceType(str(item.get("type")))
    except ValueError:
        return [f"type must be one of {', '.join(t.value for t in SourceType)}"]
    found = [f"unknown key {k!r}" for k in sorted(set(item) - _SOURCE_KEYS[kind])]
    kernels = item.get("kernels")
    if not isinstance(kernels, list) or not kernels or not all(map(is_valid_name, kernels)):
        found.append("kernels must be a non-empty list of kernel names")
    if kind is SourceType.BUNDLE:
        found += download_problems(item, embedded=embedded)
    elif kind is SourceType.OCI:
        ref = item.get("ref")
        if not isinstance(ref, str) or not _REF.fullmatch(ref):
            found.append(f"invalid OCI reference {ref!r}")
        found += _package_problems(item.get("first_boot_packages", []), "first_boot_packages")
    else:
        found += _debian_problems(item)
    return found


def _debian_problems(item: dict[str, Any]) -> list[str]:
    found = []
    suite = item.get("suite")
    if not isinstance(suite, str) or not _SUITE.fullmatch(suite):
        found.append("suite must be a Debian suite name such as bookworm")
    if item.get("variant", "minbase") not in _VARIANTS:
        found.append(f"variant must be one of {', '.join(_VARIANTS)}")
    return found + _package_problems(item.get("include", []), "include")


def _package_problems(packages: object, key: str) -> list[str]:
    if not isinstance(packages, list) or not all(
        isinstance(p, str) and _PACKAGE.fullmatch(p) for p in packages
    ):
        return [f"{key} must be a list of package names"]
    return []


CATALOG_FILE = CatalogFile(
    "image", CATALOG_ENV, "banger.images", image_problems, _image, ImageCatalog
)
#: The override named by ``BANGER_IMAGE_CATALOG`` if set, else the embedded catalog.
load_catalog = CATALOG_FILE.load
parse_catalog = CATALOG_FILE.parse
#: Everything wrong with a parsed catalog; an empty list means it may be used.
catalog_problems = CATALOG_FILE.problems
