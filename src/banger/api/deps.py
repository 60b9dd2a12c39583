"""FastAPI dependency that hands a route the daemon's context."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from banger.services.context import DaemonContext


def _context(request: Request) -> DaemonContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, DaemonContext)
    return ctx


Ctx = Annotated[DaemonContext, Depends(_context)]
