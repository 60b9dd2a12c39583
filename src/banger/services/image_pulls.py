"""The ``image pull`` use case: reference → cached blobs → bootable ext4 → image row.

Owns: the checks worth failing on before anything is downloaded (a valid reference and
name, the kernel named by ``--kernel-ref`` exists, the name is free), the stages and
their progress (``resolve`` → ``fetch`` with per-layer detail → ``build`` → ``publish``),
fetching layers a few at a time, and the one serialized step: "name still free →
atomic rename into ``images/<name>/`` → row". Downloads, flattening and the ext4 build
run outside any lock, so pulls of different names overlap; of two pulls of one name
exactly one publishes, the other gets ``AlreadyExists`` and its staging is removed
(ADVERSARIAL 114, 117). A crash leaves at worst a staging dir (removed at the next
start), a partial blob (never counted, removed by the next pull) or a published dir
without a row (replaced by the next pull of that name): never a listed half image (85).

Failpoints for crash tests: with ``BANGER_FAILPOINT=pull:<point>`` in the daemon's
environment it SIGKILLs itself at that point (see ``FAILPOINTS``); unset, nothing
happens.
Must not: block the event loop (blocking steps run in threads) or speak HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from banger.errors import AlreadyExists, ImageNotFound, InvalidArgument
from banger.host import ramscratch
from banger.host.publish import Staging, Step, remove_published, staging
from banger.images import pull_steps
from banger.model import limits
from banger.model.artifact_names import validate_name
from banger.model.records import ImageRecord
from banger.model.units import format_size
from banger.model.wire import StageState
from banger.oci.blobcache import BlobCache, Fetched
from banger.oci.ext4build import TREE_DIR, BuildResult
from banger.oci.http_transport import HttpTransport
from banger.oci.manifest import Descriptor
from banger.oci.reference import Reference, default_name, parse_reference
from banger.oci.registry import RegistryClient
from banger.services.context import DaemonContext
from banger.services.images import ImageService
from banger.services.inventory import record_dict
from banger.services.operations import Progress, run_streamed
from banger.services.steps import in_thread
from banger.state import repo

log = logging.getLogger("banger.services.image_pulls")
T = TypeVar("T")

FAILPOINT_ENV = "BANGER_FAILPOINT"
#: ``pull:<point>``: resolve (manifest and config known, nothing fetched), fetch (first
#: bytes of a layer written to its ``.partial``), fetched (every blob committed, nothing
#: flattened), build (flattening under way), built (rootfs.ext4 complete in staging),
#: renamed (``images/<name>/`` in place, no row yet).
FAILPOINTS = ("resolve", "fetch", "fetched", "build", "built", "renamed")
PARALLEL_LAYERS = 3
PROGRESS_EVERY_S = 1.0
MIN_SIZE_BYTES = limits.IMAGE_SIZE_MIN_BYTES  # ext4build's minimum
MAX_SIZE_BYTES = limits.IMAGE_SIZE_MAX_BYTES


@dataclass(frozen=True)
class PullPlan:
    ref: Reference
    name: str
    kernel_name: str | None
    size_bytes: int | None
    #: Packages the first boot installs (catalog images); empty for ``image pull``.
    first_boot_packages: tuple[str, ...] = ()


# -- failpoints ---------------------------------------------------------------------------


def failpoint(point: str, *, kind: str = "pull") -> None:
    """SIGKILL this process when ``BANGER_FAILPOINT`` is ``<kind>:<point>`` (``pull:…``,
    or ``kernel:swapped``: a ``kernel import --force`` swapped in, its row not updated)."""
    if os.environ.get(FAILPOINT_ENV) == f"{kind}:{point}":
        log.warning("failpoint %s:%s reached: killing the daemon", kind, point)
        os.kill(os.getpid(), signal.SIGKILL)


def _armed(point: str) -> bool:
    return os.environ.get(FAILPOINT_ENV) == f"pull:{point}"


def _watch_build(work: Path) -> None:
    """For ``pull:build``: kill once the flattener has written into ``work/tree``."""
    if not _armed("build"):
        return

    def watch() -> None:
        tree = work / TREE_DIR
        while True:
            try:
                if any(os.scandir(tree)):
                    failpoint("build")
            except FileNotFoundError:
                if not work.exists():
                    return
            time.sleep(0.002)

    threading.Thread(target=watch, name="failpoint-build", daemon=True).start()


def _commit_step(step: str) -> None:
    if step == Step.RENAMED:
        failpoint("renamed")


# -- planning -----------------------------------------------------------------------------


def _exists(name: str) -> AlreadyExists:
    return AlreadyExists(
        f"image {name!r} already exists",
        hint="pick another name with --name, or `banger image delete` it first",
    )


# -- the pull -----------------------------------------------------------------------------


def _describe(resolved: pull_steps.Resolved) -> str:
    total = format_size(resolved.manifest.total_layer_bytes)
    return f"{resolved.digest} linux/amd64, {resolved.layer_count} layers, {total}"


async def _fetch_all(
    client: RegistryClient, cache: BlobCache, resolved: pull_steps.Resolved, progress: Progress
) -> list[Fetched]:
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(PARALLEL_LAYERS)
    count = resolved.layer_count

    def note(text: str) -> None:
        loop.call_soon_threadsafe(progress.note, "fetch", StageState.RUNNING, text)

    async def one(number: int, layer: Descriptor) -> Fetched:
        label = f"layer {number}/{count} {layer.digest.short}"
        async with limit:
            result = await _thread(
                pull_steps.fetch_layer,
                client,
                cache,
                resolved.ref,
                layer,
                _reporter(label, layer.size, note),
            )
        how = "downloaded" if result.downloaded else "cached"
        if result.repaired:
            how = "downloaded again: the local cache's copy was damaged"
        note(f"{label} {how} ({format_size(layer.size)})")
        return result

    layers = resolved.manifest.layers
    results = await asyncio.gather(
        *(one(n, layer) for n, layer in enumerate(layers, 1)), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, Fetched)]


def _reporter(label: str, size: int, note: Callable[[str], None]) -> Callable[[int], None]:
    last = [0.0]

    def on_bytes(received: int) -> None:
        failpoint("fetch")
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            note(f"{label} {format_size(received)} / {format_size(size)}")

    return on_bytes


def _fetch_summary(resolved: pull_steps.Resolved, fetched: list[Fetched]) -> str:
    layers = resolved.manifest.layers
    got = [layer for layer, f in zip(layers, fetched, strict=True) if f.downloaded]
    cached = len(layers) - len(got)
    downloaded = format_size(sum(layer.size for layer in got))
    summary = f"{len(layers)} layers: {len(got)} downloaded ({downloaded}), {cached} cached"
    if repaired := sum(f.repaired for f in fetched):
        summary += f"; {repaired} damaged in the local cache, downloaded again"
    return summary


class ImagePullService:
    """OCI images pulled into managed images; publishes under the image service's lock."""

    def __init__(self, ctx: DaemonContext, images: ImageService) -> None:
        self.ctx = ctx
        self.images = images

    async def plan_pull(
        self,
        ref: str,
        *,
        name: str | None = None,
        kernel_ref: str | None = None,
        size_bytes: int | None = None,
    ) -> PullPlan:
        """Everything that can be refused before a byte is downloaded."""
        reference = parse_reference(ref)
        image_name = (
            validate_name(name, kind="image") if name is not None else default_name(reference)
        )
        if kernel_ref is not None:
            await self.ctx.db.run(repo.get_kernel, validate_name(kernel_ref))  # KernelNotFound
        if size_bytes is not None and not MIN_SIZE_BYTES <= size_bytes <= MAX_SIZE_BYTES:
            raise InvalidArgument(
                f"size {size_bytes} is out of range: "
                f"{format_size(MIN_SIZE_BYTES)} to {format_size(MAX_SIZE_BYTES)}"
            )
        if await self._row_exists(image_name):
            raise _exists(image_name)
        return PullPlan(reference, image_name, kernel_ref, size_bytes)

    async def _row_exists(self, name: str) -> bool:
        try:
            await self.ctx.db.run(repo.get_image, name)
        except ImageNotFound:
            return False
        return True

    def pull_events(self, plan: PullPlan) -> AsyncIterator[dict[str, Any]]:
        """The pull as NDJSON events; it runs to the end even if the client goes away."""
        return run_streamed(lambda progress: self._pull(plan, progress))

    async def _pull(self, plan: PullPlan, progress: Progress) -> dict[str, Any]:
        return record_dict(await self.run_pull(plan, progress))

    async def pull_catalog_image(
        self,
        ref: Reference,
        *,
        name: str,
        kernel_name: str | None,
        size_bytes: int | None,
        first_boot_packages: tuple[str, ...] | list[str] = (),
        progress: Progress,
    ) -> ImageRecord:
        """A catalog image obtained by pulling ``ref``, inside the caller's progress stream."""
        plan = PullPlan(ref, validate_name(name, kind="image"), kernel_name, size_bytes)
        plan = replace(plan, first_boot_packages=tuple(first_boot_packages))
        return await self.run_pull(plan, progress)

    async def run_pull(self, plan: PullPlan, progress: Progress) -> ImageRecord:
        """Every stage of a pull, reported on ``progress``; the published image's row."""
        if plan.first_boot_packages:
            # make_bootable(tree) has no way to take them yet: say so rather than drop them.
            log.warning(
                "first-boot packages %s of image %s are not passed to the image",
                ", ".join(plan.first_boot_packages),
                plan.name,
            )
        client = RegistryClient(HttpTransport())
        cache = BlobCache(self.ctx.layout.oci_cache_dir)
        with progress.stage("resolve"):
            await _thread(cache.ensure_dirs)
            await _thread(cache.clean_partials)
            resolved = await _thread(pull_steps.resolve, client, cache, plan.ref)
            progress.detail = _describe(resolved)
        failpoint("resolve")
        with progress.stage("fetch"):
            await _thread(
                pull_steps.preflight, cache, self.ctx.layout.images_dir, resolved, plan.size_bytes
            )
            fetched = await _fetch_all(client, cache, resolved, progress)
            progress.detail = _fetch_summary(resolved, fetched)
        failpoint("fetched")
        if await self._row_exists(plan.name):  # taken while we downloaded: skip the build
            raise _exists(plan.name)
        with staging(self.ctx.layout.images_dir, plan.name) as stage:
            with progress.stage("build"):
                built = await self._build(plan, resolved, fetched, stage)
                progress.detail = f"{pull_steps.ROOTFS} {format_size(built.size_bytes)}"
            failpoint("built")
            with progress.stage("publish"):
                record = await self._publish(plan, resolved, stage)
                progress.detail = str(Path(record.rootfs_path).parent)
        return record

    async def _build(
        self,
        plan: PullPlan,
        resolved: pull_steps.Resolved,
        fetched: list[Fetched],
        stage: Staging,
    ) -> BuildResult:
        return await _thread(
            lambda: pull_steps.build_rootfs(
                resolved,
                [f.path for f in fetched],
                stage.path,
                size_bytes=plan.size_bytes,
                runner=self.ctx.runner,
                on_work_dir=_watch_build,
                ram_base=ramscratch.DEFAULT_BASE,
            )
        )

    async def _publish(
        self, plan: PullPlan, resolved: pull_steps.Resolved, stage: Staging
    ) -> ImageRecord:
        from banger.images.bootable import INIT_PATH

        final = self.ctx.layout.images_dir / plan.name
        async with self.images.publication_lock:
            if await self._row_exists(plan.name):
                raise _exists(plan.name)
            if os.path.lexists(final):
                # No row but a directory: a crash between the rename and the row write.
                await _thread(remove_published, final)
            await _thread(stage.commit, final, on_step=_commit_step)
            try:
                record = await _thread(
                    pull_steps.image_record,
                    plan.name,
                    resolved,
                    final,
                    kernel_name=plan.kernel_name,
                    init_path=INIT_PATH,
                )
                inserted: ImageRecord = await self.ctx.db.run(repo.insert_image, record)
            except BaseException:
                await _thread(remove_published, final)  # never a directory without its row
                raise
        return inserted


# -- helpers ------------------------------------------------------------------------------


async def _thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking step of the pull in a thread (an OS error becomes ``pull failed: …``)."""
    return await in_thread(functools.partial(fn, *args, **kwargs), "pull")
