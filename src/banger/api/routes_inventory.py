"""Routes listing and showing VMs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from banger.api.deps import Ctx
from banger.api.models import VmInfo
from banger.services import inventory

router = APIRouter()

#: A name as it may appear in a URL; the strict per-kind rules are checked by services.
Name = Annotated[str, Path(min_length=1, max_length=128)]


@router.get("/vms", response_model=list[VmInfo], tags=["vms"])
async def list_vms(ctx: Ctx) -> list[dict[str, Any]]:
    return await inventory.list_vms(ctx)


@router.get("/vms/{name}", response_model=VmInfo, tags=["vms"])
async def show_vm(ctx: Ctx, name: Name) -> dict[str, Any]:
    return await inventory.get_vm(ctx, name)
