"""Routes of images: register, pull and promote (NDJSON progress), list, show, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import Field, StrictInt, StrictStr
from starlette.responses import StreamingResponse

from banger.api.deps import Ctx
from banger.api.models import ImageInfo, StageEvent, Strict
from banger.api.progress import ndjson_response
from banger.images.register import Registration
from banger.kernels import NAME_PATTERN
from banger.services import catalog, images
from banger.services import pull as image_pull
from banger.wire import NDJSON

router = APIRouter(tags=["images"])
#: A name as it may appear in a URL; the strict rules are checked by the service.
Name = Annotated[str, Path(min_length=1, max_length=128)]
#: Host paths: absolute (the CLI makes them so). Longer than PATH_MAX is refused by the
#: service with a clear message, so the schema only bounds the body.
HostPath = Annotated[StrictStr, Field(pattern="^/", max_length=8192)]
ArtifactName = Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NDJSON: {"schema": StageEvent.model_json_schema()}},
        "description": "one StageEvent per line; the result holds the image",
    }
}


class ImageRegisterBody(Strict):
    name: ArtifactName
    rootfs: HostPath
    kernel: HostPath | None = None
    kernel_ref: ArtifactName | None = None
    initrd: HostPath | None = None
    modules: HostPath | None = None
    work_seed: HostPath | None = None


class ImagePullBody(Strict):
    #: An image reference such as ``debian:bookworm`` or ``ghcr.io/org/app@sha256:…``;
    #: its grammar is checked by the service, which names the rule broken.
    ref: Annotated[StrictStr, Field(min_length=1, max_length=512)]
    name: ArtifactName | None = None
    kernel_ref: ArtifactName | None = None
    size_bytes: (
        Annotated[StrictInt, Field(ge=image_pull.MIN_SIZE_BYTES, le=image_pull.MAX_SIZE_BYTES)]
        | None
    ) = None


class CatalogImageInfo(Strict):
    name: str
    distro: str
    arch: str
    description: str
    #: The ext4 size the image is built with (sparse on disk).
    size_bytes: int
    #: What each source installs (``first_boot_packages`` or ``include``), in order.
    packages: list[str]
    sources: list[str]
    #: Whether an image of this name is already local.
    local: bool


class ImageDeleted(Strict):
    name: str
    deleted: bool
    files_removed: bool


@router.post("/images/register", response_model=ImageInfo, status_code=201)
async def register_image(ctx: Ctx, body: ImageRegisterBody) -> dict[str, Any]:
    """Record host files as an unmanaged image; the files stay where they are."""
    return await images.register(ctx, Registration(**body.model_dump()))


@router.post("/images/pull", response_class=StreamingResponse, responses=STREAM)
async def pull_image(ctx: Ctx, body: ImagePullBody) -> StreamingResponse:
    """Pull an OCI image (linux/amd64) into a bootable managed image, with progress.

    Refused before any download when the name is taken (409 already_exists), the
    reference is malformed or ``kernel_ref`` names no stored kernel. A bare name from the
    image catalog (``debian-bookworm``) obtains that catalog image, kernel included,
    through the catalog's sources in order.
    """
    if await catalog.is_catalog_name(body.ref) and body.name is None:
        return ndjson_response(catalog.ensure_image_events(ctx, body.ref))
    plan = await image_pull.plan_pull(
        ctx, body.ref, name=body.name, kernel_ref=body.kernel_ref, size_bytes=body.size_bytes
    )
    return ndjson_response(image_pull.pull_events(ctx, plan))


@router.post("/images/{name}/promote", response_class=StreamingResponse, responses=STREAM)
async def promote_image(ctx: Ctx, name: Name) -> StreamingResponse:
    """Copy a registered image's files into banger's own store, with progress."""
    image = await images.plan_promote(ctx, name)
    return ndjson_response(images.promote_events(ctx, image))


@router.get("/catalog/images", response_model=list[CatalogImageInfo])
async def catalog_images(ctx: Ctx) -> list[dict[str, Any]]:
    """The image catalog for this host's architecture (docs/catalog.md)."""
    return await catalog.available_images(ctx)


@router.get("/images", response_model=list[ImageInfo])
async def list_images(ctx: Ctx) -> list[dict[str, Any]]:
    return await images.list_images(ctx)


@router.get("/images/{name}", response_model=ImageInfo)
async def show_image(ctx: Ctx, name: Name) -> dict[str, Any]:
    return await images.get_image(ctx, name)


@router.delete("/images/{name}", response_model=ImageDeleted)
async def delete_image(ctx: Ctx, name: Name) -> dict[str, Any]:
    """Delete an image; refused (409 in_use) while a VM uses it. Registered files stay."""
    return await images.delete_image(ctx, name)
