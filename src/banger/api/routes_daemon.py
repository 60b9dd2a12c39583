"""Routes about the daemon itself: ping, status, shutdown, config, doctor."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from banger.api.deps import Ctx
from banger.api.models import ConfigReply, DaemonStatus, Ping, ShutdownReply, StageEvent
from banger.api.progress import ndjson_response
from banger.model.wire import NDJSON
from banger.services import daemon_info

router = APIRouter()


@router.get("/ping", response_model=Ping, tags=["daemon"])
async def ping(ctx: Ctx) -> dict[str, Any]:
    """Build stamp and pid: the CLI restarts a daemon whose build differs from its own."""
    return daemon_info.ping(ctx)


@router.get("/daemon/status", response_model=DaemonStatus, tags=["daemon"])
async def status(ctx: Ctx) -> dict[str, Any]:
    return await daemon_info.status(ctx)


@router.post("/daemon/shutdown", response_model=ShutdownReply, status_code=202, tags=["daemon"])
async def shutdown(ctx: Ctx) -> dict[str, Any]:
    """Ask the daemon to stop once in-flight requests are answered."""
    ctx.shutdown_requested.set()
    return {"stopping": True}


@router.get("/config", response_model=ConfigReply, tags=["daemon"])
async def config(ctx: Ctx) -> dict[str, Any]:
    """The configuration the daemon runs with, and where each value came from."""
    return daemon_info.config_reply(ctx)


@router.get(
    "/doctor",
    tags=["daemon"],
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {NDJSON: {"schema": StageEvent.model_json_schema()}},
            "description": "one StageEvent per line",
        }
    },
)
async def doctor(ctx: Ctx) -> StreamingResponse:
    """Host checks streamed one stage per line, then a result with every check."""
    return ndjson_response(daemon_info.doctor_events(ctx))
