"""Routes listing and showing VMs, images and kernels."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from banger.api.deps import Ctx
from banger.api.models import ImageInfo, KernelInfo, VmInfo
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


@router.get("/images", response_model=list[ImageInfo], tags=["images"])
async def list_images(ctx: Ctx) -> list[dict[str, Any]]:
    return await inventory.list_images(ctx)


@router.get("/images/{name}", response_model=ImageInfo, tags=["images"])
async def show_image(ctx: Ctx, name: Name) -> dict[str, Any]:
    return await inventory.get_image(ctx, name)


@router.get("/kernels", response_model=list[KernelInfo], tags=["kernels"])
async def list_kernels(ctx: Ctx) -> list[dict[str, Any]]:
    return await inventory.list_kernels(ctx)


@router.get("/kernels/{name}", response_model=KernelInfo, tags=["kernels"])
async def show_kernel(ctx: Ctx, name: Name) -> dict[str, Any]:
    return await inventory.get_kernel(ctx, name)
