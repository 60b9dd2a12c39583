"""Routes of the local kernel store: import and pull (NDJSON progress), list, show,
remove, and the kernel catalog (``GET /catalog/kernels``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from starlette.responses import StreamingResponse

from banger.api.deps import Services
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
async def import_kernel(services: Services, body: KernelImportBody) -> StreamingResponse:
    """Discover a kernel in a host directory and copy it into the store, with progress."""
    plan = await services.kernels.plan_import(body.name, body.source_dir, force=body.force)
    return ndjson_response(services.kernels.import_events(plan))


@router.post("/kernels/pull", response_class=StreamingResponse, responses=STREAM)
async def pull_kernel(services: Services, body: KernelPullBody) -> StreamingResponse:
    """Fetch a kernel of the catalog into the store, with progress (docs/catalog.md)."""
    entry = await services.kernel_pulls.plan_pull(body.name)
    return ndjson_response(services.kernel_pulls.pull_events(entry, force=body.force))


@router.get("/catalog/kernels", response_model=list[CatalogKernelInfo])
async def catalog_kernels(services: Services) -> list[dict[str, Any]]:
    """The kernel catalog for this host's architecture."""
    return await services.kernel_pulls.available_kernels()


@router.get("/kernels", response_model=list[KernelInfo])
async def list_kernels(services: Services) -> list[dict[str, Any]]:
    return await services.kernels.list_kernels()


@router.get("/kernels/{name}", response_model=KernelDetail)
async def show_kernel(services: Services, name: Name) -> dict[str, Any]:
    """The kernel's row and its manifest.json."""
    return await services.kernels.get_kernel(name)


@router.delete("/kernels/{name}", response_model=KernelRemoved)
async def remove_kernel(services: Services, name: Name) -> dict[str, Any]:
    """Remove a kernel; refused (409 in_use) while an image refers to it."""
    return await services.kernels.remove_kernel(name)
