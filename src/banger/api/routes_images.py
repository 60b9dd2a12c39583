"""Routes of images: register, pull and promote (NDJSON progress), list, show, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from starlette.responses import StreamingResponse

from banger.api.deps import Services
from banger.api.models import (
    CatalogImageInfo,
    ImageDeleted,
    ImageInfo,
    ImagePullBody,
    ImageRegisterBody,
    StageEvent,
)
from banger.api.progress import ndjson_response
from banger.images.register import Registration
from banger.model import limits
from banger.model.wire import NDJSON

router = APIRouter(tags=["images"])
#: A name as it may appear in a URL; the strict rules are checked by the service.
Name = Annotated[str, Path(min_length=1, max_length=limits.URL_NAME_MAX)]
STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NDJSON: {"schema": StageEvent.model_json_schema()}},
        "description": "one StageEvent per line; the result holds the image",
    }
}


@router.post("/images/register", response_model=ImageInfo, status_code=201)
async def register_image(services: Services, body: ImageRegisterBody) -> dict[str, Any]:
    """Record host files as an unmanaged image; the files stay where they are."""
    return await services.images.register(Registration(**body.model_dump()))


@router.post("/images/pull", response_class=StreamingResponse, responses=STREAM)
async def pull_image(services: Services, body: ImagePullBody) -> StreamingResponse:
    """Pull an OCI image (linux/amd64) into a bootable managed image, with progress.

    Refused before any download when the name is taken (409 already_exists), the
    reference is malformed or ``kernel_ref`` names no stored kernel. A bare name from the
    image catalog (``debian-bookworm``) obtains that catalog image, kernel included,
    through the catalog's sources in order.
    """
    events = await services.catalog.pull_events(
        body.ref, name=body.name, kernel_ref=body.kernel_ref, size_bytes=body.size_bytes
    )
    return ndjson_response(events)


@router.post("/images/{name}/promote", response_class=StreamingResponse, responses=STREAM)
async def promote_image(services: Services, name: Name) -> StreamingResponse:
    """Copy a registered image's files into banger's own store, with progress."""
    image = await services.images.plan_promote(name)
    return ndjson_response(services.images.promote_events(image))


@router.get("/catalog/images", response_model=list[CatalogImageInfo])
async def catalog_images(services: Services) -> list[dict[str, Any]]:
    """The image catalog for this host's architecture (docs/catalog.md)."""
    return await services.catalog.available_images()


@router.get("/images", response_model=list[ImageInfo])
async def list_images(services: Services) -> list[dict[str, Any]]:
    return await services.images.list_images()


@router.get("/images/{name}", response_model=ImageInfo)
async def show_image(services: Services, name: Name) -> dict[str, Any]:
    return await services.images.get_image(name)


@router.delete("/images/{name}", response_model=ImageDeleted)
async def delete_image(services: Services, name: Name) -> dict[str, Any]:
    """Delete an image; refused (409 in_use) while a VM uses it. Registered files stay."""
    return await services.images.delete_image(name)
