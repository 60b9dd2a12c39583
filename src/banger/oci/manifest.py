"""OCI and Docker v2 manifests, indexes and image configs, parsed strictly.

Owns: the media types banger accepts, the 4 MiB manifest cap (ADVERSARIAL 31), turning
manifest bytes into an ``ImageManifest`` or an ``Index``, picking the linux/amd64 entry
of an index (37: the error lists what the index offers), and reading ``rootfs.diff_ids``
from an image config, checked against the manifest's layers.
Must not: do I/O. Everything here reads bytes that a registry sent, so every field is
type-checked and every digest parsed strictly; a malformed document is a
``BadResponse``, never a ``KeyError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from banger.errors import BadResponse, BangerError, NotFound
from banger.oci.digest import Digest, parse_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
#: The Accept header of a manifest request: every type banger can use.
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20
#: Far above any real layer; a larger declared size is a hostile or broken manifest.
MAX_BLOB_BYTES = 1 << 40
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


LINUX_AMD64 = Platform("linux", "amd64")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def total_layer_bytes(self) -> int:
        return sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    os: str
    architecture: str
    diff_ids: tuple[Digest, ...]


def _bad(what: str, detail: str) -> BadResponse:
    return BadResponse(f"invalid {what}: {detail}", hint="the registry sent a broken document")


def load_json(data: bytes, what: str, *, limit: int = MAX_MANIFEST_BYTES) -> dict[str, Any]:
    """Bytes of a JSON object, size-checked before parsing."""
    if len(data) > limit:
        raise BadResponse(f"{what} is {len(data)} bytes, more than the {limit} allowed")
    if data.lstrip()[:1] == b"<":
        raise BadResponse(
            f"the registry sent an HTML page instead of the {what}",
            details=data[:200].decode("utf-8", "replace"),
            hint="a proxy or captive portal may be in the way",
        )
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(what, f"not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise _bad(what, "not a JSON object")
    return doc


def _field(doc: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _bad(what, f"field {key!r} is missing or not a {kind.__name__}")
    return value


def _opt_str(doc: dict[str, Any], key: str, what: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise _bad(what, f"field {key!r} is not a string")
    return value


def parse_descriptor(doc: object, what: str) -> Descriptor:
    if not isinstance(doc, dict):
        raise _bad(what, "a descriptor is not a JSON object")
    media_type = _field(doc, "mediaType", str, what)
    size = _field(doc, "size", int, what)
    if not 0 <= size <= MAX_BLOB_BYTES:
        raise _bad(what, f"descriptor size {size} is out of range")
    try:
        digest = parse_digest(doc.get("digest"), what=f"digest in the {what}")
    except BangerError as exc:
        raise _bad(what, exc.brief) from exc
    platform = None
    if "platform" in doc:
        platform = _parse_platform(doc["platform"], what)
    return Descriptor(media_type=media_type, digest=digest, size=size, platform=platform)


def _parse_platform(doc: object, what: str) -> Platform:
    if not isinstance(doc, dict):
        raise _bad(what, "platform is not a JSON object")
    return Platform(
        os=_field(doc, "os", str, what),
        architecture=_field(doc, "architecture", str, what),
        variant=_opt_str(doc, "variant", what),
    )


def media_type_of(doc: dict[str, Any], content_type: str) -> str:
    """The document's own ``mediaType``, else the Content-Type, else guessed by shape."""
    declared = _opt_str(doc, "mediaType", "manifest")
    if declared:
        return declared
    if content_type not in _GENERIC_TYPES:
        return content_type
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc:
        return OCI_MANIFEST
    return content_type


def parse_manifest(data: bytes, content_type: str = "") -> ImageManifest | Index:
    """A manifest or an index from its bytes (at most 4 MiB, checked first)."""
    doc = load_json(data, "manifest")
    if doc.get("schemaVersion") != 2:
        raise _bad("manifest", "schemaVersion is not 2 (Docker schema 1 is not supported)")
    media_type = media_type_of(doc, content_type.lower())
    if media_type in INDEX_TYPES:
        entries = _field(doc, "manifests", list, "index")
        return Index(media_type, tuple(parse_descriptor(e, "index") for e in entries))
    if media_type in MANIFEST_TYPES:
        return _image_manifest(doc, media_type)
    if media_type in DOCKER_SCHEMA1:
        raise _bad("manifest", "Docker schema 1 manifests are not supported")
    raise _bad("manifest", f"unsupported media type {media_type[:100]!r}")


def _image_manifest(doc: dict[str, Any], media_type: str) -> ImageManifest:
    config = parse_descriptor(doc.get("config"), "manifest config")
    layers = tuple(
        parse_descriptor(e, "manifest layer") for e in _field(doc, "layers", list, "manifest")
    )
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise _bad(
                "manifest",
                f"layer {layer.digest.short} has media type {layer.media_type[:100]!r}, "
                "which banger cannot unpack (foreign or non-distributable layers included)",
            )
    if not layers:
        raise _bad("manifest", "the image has no layers")
    return ImageManifest(media_type=media_type, config=config, layers=layers)


def select_platform(index: Index, what: str, platform: Platform = LINUX_AMD64) -> Descriptor:
    """The index entry for ``platform``; ``NotFound`` listing the platforms it has."""
    for entry in index.manifests:
        p = entry.platform
        usable = entry.media_type in INDEX_TYPES | MANIFEST_TYPES
        if p and p.os == platform.os and p.architecture == platform.architecture and usable:
            return entry
    offered = sorted(
        {str(e.platform) for e in index.manifests if e.platform and e.platform.os != "unknown"}
    )
    raise NotFound(
        f"no {platform} manifest in {what}",
        details="it has: " + (", ".join(offered) if offered else "no platform-specific entries"),
        hint=f"banger runs {platform} guests; pick an image published for {platform}",
    )


def parse_config(data: bytes, manifest: ImageManifest) -> ImageConfig:
    """The image config; its diff_ids must match the manifest's layers one to one."""
    doc = load_json(data, "image config", limit=MAX_CONFIG_BYTES)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise _bad("image config", "rootfs.type is not 'layers'")
    diff_ids_raw = _field(rootfs, "diff_ids", list, "image config")
    try:
        diff_ids = tuple(parse_digest(d, what="diff_id") for d in diff_ids_raw)
    except BangerError as exc:
        raise _bad("image config", exc.brief) from exc
    if len(diff_ids) != len(manifest.layers):
        raise _bad(
            "image config",
            f"{len(diff_ids)} diff_ids for {len(manifest.layers)} layers in the manifest",
        )
    os_name = _opt_str(doc, "os", "image config") or ""
    arch = _opt_str(doc, "architecture", "image config") or ""
    if (os_name, arch) != (LINUX_AMD64.os, LINUX_AMD64.architecture):
        raise NotFound(
            f"the image is built for {os_name or '?'}/{arch or '?'}, not {LINUX_AMD64}",
            hint=f"banger runs {LINUX_AMD64} guests; pick an image published for {LINUX_AMD64}",
        )
    return ImageConfig(os=os_name, architecture=arch, diff_ids=diff_ids)
