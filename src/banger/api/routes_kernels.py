"""Routes of the local kernel store: import and pull (NDJSON progress), list, show,
remove, and the kernel catalog (``GET /catalog/kernels``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from starlette.responses import StreamingResponse

from banger.api.deps import Ctx
from banger.api.models import (
    CatalogKernelInfo,
    KernelDetail,
    KernelImportBody,
    KernelInfo,
    KernelPullBody,
    KernelRemoved,
    StageEvent,
)
from banger.api.progress import ndjson_response
from banger.model import limits
from banger.model.wire import NDJSON
from banger.services import kernel_pull, kernels

router = APIRouter(tags=["kernels"])
#: A name as it may appear in a URL; the strict rules are checked by the service.
Name = Annotated[str, Path(min_length=1, max_length=limits.URL_NAME_MAX)]
STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NDJSON: {"schema": StageEvent.model_json_schema()}},
        "description": "one StageEvent per line; the result holds the kernel",
    }
}


@router.post("/kernels/import", response_class=StreamingResponse, responses=STREAM)
async def import_kernel(ctx: Ctx, body: KernelImportBody) -> StreamingResponse:
    """Discover a kernel in a host directory and copy it into the store, with progress."""
    plan = await kernels.plan_import(ctx, body.name, body.source_dir, force=body.force)
    return ndjson_response(kernels.import_events(ctx, plan))


@router.post("/kernels/pull", response_class=StreamingResponse, responses=STREAM)
async def pull_kernel(ctx: Ctx, body: KernelPullBody) -> StreamingResponse:
    """Fetch a kernel of the catalog into the store, with progress (docs/catalog.md)."""
    entry = await kernel_pull.plan_pull(body.name)
    return ndjson_response(kernel_pull.pull_events(ctx, entry, force=body.force))


@router.get("/catalog/kernels", response_model=list[CatalogKernelInfo])
async def catalog_kernels(ctx: Ctx) -> list[dict[str, Any]]:
    """The kernel catalog for this host's architecture."""
    return await kernel_pull.available_kernels(ctx)


@router.get("/kernels", response_model=list[KernelInfo])
async def list_kernels(ctx: Ctx) -> list[dict[str, Any]]:
    return await kernels.list_kernels(ctx)


@router.get("/kernels/{name}", response_model=KernelDetail)
async def show_kernel(ctx: Ctx, name: Name) -> dict[str, Any]:
    """The kernel's row and its manifest.json."""
    return await kernels.get_kernel(ctx, name)


@router.delete("/kernels/{name}", response_model=KernelRemoved)
async def remove_kernel(ctx: Ctx, name: Name) -> dict[str, Any]:
    """Remove a kernel; refused (409 in_use) while an image refers to it."""
    return await kernels.remove_kernel(ctx, name)
