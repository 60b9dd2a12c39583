"""The steps of ``image pull`` between a reference and a published rootfs (SPEC §5).

Owns: resolving a reference to one linux/amd64 image manifest pinned by digest
(ADVERSARIAL 34: everything after the first answer is fetched by digest, so a tag
re-pointed mid-pull changes nothing), fetching its config and layers through the blob
cache, the disk-space preflight on the cache and on the staging filesystem (107, 108),
building ``rootfs.ext4`` made bootable in a staging directory, and the ``ImageRecord``
of a pulled image.
Must not: hold locks, write the state database or publish anything (the service does),
or run on the event loop: every function here blocks and is run in a thread.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from banger.errors import BadResponse, NoSpace, StateError
from banger.host import ramscratch
from banger.host.publish import remove_tree
from banger.host.runner import Runner
from banger.model.records import ImageRecord, utc_now
from banger.model.units import format_size
from banger.oci.blobcache import BlobCache, Fetched, OnBytes
from banger.oci.digest import Digest
from banger.oci.ext4build import BuildResult, build_rootfs_image
from banger.oci.flatten import Layer
from banger.oci.manifest import (
    MAX_CONFIG_BYTES,
    Descriptor,
    ImageConfig,
    ImageManifest,
    Index,
    parse_config,
    parse_manifest,
    select_platform,
)
from banger.oci.reference import Reference
from banger.oci.registry import RegistryClient

log = logging.getLogger("banger.images.pull_steps")

ROOTFS = "rootfs.ext4"
WORK_DIR = "work"
BOOTABLE = "banger.images.bootable:make_bootable"
#: An index may point at an index once (seen in the wild); deeper nesting is refused.
MAX_INDEX_DEPTH = 2
#: Staging needs the flattened tree and the ext4 built from it at once. A compressed
#: layer unpacks to ~2-3x its size, so ~6x the compressed bytes covers tree + image
#: (CubeSandbox measured 5-6x); an uncompressed layer needs ~2.5x. [G]
COMPRESSED_FACTOR = 6.0
UNCOMPRESSED_FACTOR = 2.5
MIN_FREE_INODES = 1000


@dataclass(frozen=True)
class Resolved:
    """What a reference pointed at when it was first resolved: ``ref`` is ``asked``
    pinned to the digest of the linux/amd64 manifest."""

    asked: Reference
    ref: Reference
    digest: Digest
    manifest: ImageManifest
    config: ImageConfig

    @property
    def layer_count(self) -> int:
        return len(self.manifest.layers)


def resolve(client: RegistryClient, cache: BlobCache, ref: Reference) -> Resolved:
    """The linux/amd64 manifest ``ref`` names, its digest and its config."""
    fetched = client.get_manifest(ref)
    parsed = parse_manifest(fetched.data, fetched.content_type)
    for _ in range(MAX_INDEX_DEPTH):
        if not isinstance(parsed, Index):
            break
        entry = select_platform(parsed, str(ref))
        fetched = client.get_manifest(ref, str(entry.digest))
        parsed = parse_manifest(fetched.data, fetched.content_type)
    if isinstance(parsed, Index):
        raise BadResponse(f"{ref} is an index of indexes nested too deep to follow")
    pinned = ref.pinned(fetched.digest)
    config = _fetch_config(client, cache, pinned, parsed)
    return Resolved(asked=ref, ref=pinned, digest=fetched.digest, manifest=parsed, config=config)


def _fetch_config(
    client: RegistryClient, cache: BlobCache, ref: Reference, manifest: ImageManifest
) -> ImageConfig:
    desc = manifest.config
    if desc.size > MAX_CONFIG_BYTES:
        raise BadResponse(
            f"the image config of {ref.name} is {desc.size} bytes, "
            f"more than the {MAX_CONFIG_BYTES} allowed"
        )
    data = cache.read(desc.digest, desc.size, lambda: client.open_blob(ref, desc.digest))
    return parse_config(data, manifest)


def fetch_layer(
    client: RegistryClient,
    cache: BlobCache,
    ref: Reference,
    layer: Descriptor,
    on_bytes: OnBytes | None = None,
) -> Fetched:
    return cache.fetch(
        layer.digest, layer.size, lambda: client.open_blob(ref, layer.digest), on_bytes=on_bytes
    )


# -- preflight ----------------------------------------------------------------------------


def missing_bytes(cache: BlobCache, resolved: Resolved) -> int:
    return sum(
        layer.size
        for layer in resolved.manifest.layers
        if cache.lookup(layer.digest, layer.size) is None
    )


def staging_estimate(resolved: Resolved, size_bytes: int | None) -> int:
    """Bytes the flattened tree plus the ext4 image may take in staging."""
    estimate = 0.0
    for layer in resolved.manifest.layers:
        compressed = layer.media_type.endswith(("+gzip", "+zstd", ".gzip"))
        estimate += layer.size * (COMPRESSED_FACTOR if compressed else UNCOMPRESSED_FACTOR)
    if size_bytes is not None:
        # The image file is sparse: only the tree's data is written into it.
        estimate = min(estimate, estimate / 2 + size_bytes)
    return int(estimate)


def preflight(
    cache: BlobCache, staging_root: Path, resolved: Resolved, size_bytes: int | None
) -> None:
    """Refuse early when the cache or the staging filesystem cannot hold the pull."""
    cache.ensure_dirs()
    require_space(cache.blobs_dir, missing_bytes(cache, resolved), "the blob cache")
    staging_root.mkdir(parents=True, exist_ok=True)
    require_space(staging_root, staging_estimate(resolved, size_bytes), "building the image")


def require_space(path: Path, needed: int, what: str) -> None:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        raise StateError(f"cannot check free space at {path}: {exc.strerror}") from exc
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise StateError(
            f"not enough disk space for {what}: about {format_size(needed)} needed on the "
            f"filesystem holding {path}, {format_size(free)} free",
            hint="free some space (`banger image delete` removes images), then pull again",
        )
    if st.f_files and st.f_favail < MIN_FREE_INODES:
        raise StateError(
            f"too few free inodes for {what} on the filesystem holding {path}: {st.f_favail} left",
            hint="delete files (many small ones) on that filesystem, then pull again",
        )


# -- build --------------------------------------------------------------------------------


def layers_for_build(resolved: Resolved, paths: Sequence[Path]) -> list[Layer]:
    """The flattener's ``Layer`` values, oldest first."""
    return [
        Layer(path=path, media_type=desc.media_type, diff_id=diff_id)
        for path, desc, diff_id in zip(
            paths, resolved.manifest.layers, resolved.config.diff_ids, strict=True
        )
    ]


def build_rootfs(
    resolved: Resolved,
    layer_paths: Sequence[Path],
    stage_dir: Path,
    *,
    size_bytes: int | None,
    runner: Runner,
    on_work_dir: Callable[[Path], None] | None = None,
    ram_base: Path | None = None,
) -> BuildResult:
    """Flatten the layers and build ``stage_dir/rootfs.ext4`` with banger's init in it.

    The tree is flattened in RAM (a ``banger.host.ramscratch`` directory under
    ``ram_base``) when it fits there with room to spare, else in ``stage_dir/work``; a
    RAM tree that fills its tmpfs after all is built again on disk. ``on_work_dir`` is
    told the scratch directory the flattener fills (crash tests).
    """
    build = functools.partial(
        _build_in,
        resolved,
        layer_paths,
        stage_dir,
        size_bytes=size_bytes,
        runner=runner,
        on_work_dir=on_work_dir,
    )
    if ram_base is not None:
        expected = staging_estimate(resolved, None)  # tree + image: twice the tree
        scratch = ramscratch.make_scratch(expected, ram_base)
        if scratch is not None:
            try:
                return build(scratch)
            except NoSpace as exc:
                if str(scratch) not in exc.brief:  # the disk is full, not the tmpfs
                    raise
                log.info("the tree did not fit in %s, building on disk", ram_base)
    work = stage_dir / WORK_DIR
    work.mkdir(mode=0o700)
    return build(work)


def _build_in(
    resolved: Resolved,
    layer_paths: Sequence[Path],
    stage_dir: Path,
    work: Path,
    *,
    size_bytes: int | None,
    runner: Runner,
    on_work_dir: Callable[[Path], None] | None,
) -> BuildResult:
    if on_work_dir is not None:
        on_work_dir(work)
    try:
        return build_rootfs_image(
            layers_for_build(resolved, layer_paths),
            stage_dir / ROOTFS,
            size_bytes=size_bytes,
            runner=runner,
            work_dir=work,
            inject=BOOTABLE,
        )
    finally:
        try:
            remove_tree(work)
        except OSError as exc:  # the staging dir's removal (or the next start) gets it
            log.warning("cannot remove %s yet: %s", work, exc.strerror)


def image_record(
    name: str, resolved: Resolved, final_dir: Path, *, kernel_name: str | None, init_path: str
) -> ImageRecord:
    rootfs = final_dir / ROOTFS
    return ImageRecord(
        name=name,
        managed=True,
        rootfs_path=str(rootfs),
        source=str(resolved.asked),
        created_at=utc_now(),
        kernel_name=kernel_name,
        source_digest=str(resolved.digest),
        size_bytes=rootfs.stat().st_size,
        init_path=init_path,
    )
