"""Routes of the warm pool: its status, draining it and filling it again."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from banger.api.deps import Services
from banger.api.models import PoolDrained, PoolStatus

router = APIRouter()


@router.get("/pool", response_model=PoolStatus, tags=["pool"])
async def status(services: Services) -> dict[str, Any]:
    """Per pooled image: ready VMs wanted, ready, booting; the last error."""
    return services.pool.reply()


@router.post("/pool/drain", response_model=PoolDrained, tags=["pool"])
async def drain(services: Services) -> dict[str, Any]:
    """Remove every ready pool VM and stop refilling until ``POST /pool/fill``."""
    return {"removed": await services.pool.drain()}


@router.post("/pool/fill", response_model=PoolStatus, tags=["pool"])
async def fill(services: Services) -> dict[str, Any]:
    """Refill in the background (after a drain); returns the status at once."""
    services.pool.resume()
    return services.pool.reply()
