"""FastAPI dependencies that hand a route the daemon's context and services."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from banger.services.context import DaemonContext
from banger.services.daemon_services import DaemonServices


def _services(request: Request) -> DaemonServices:
    services = request.app.state.services
    assert isinstance(services, DaemonServices)
    return services


def _context(request: Request) -> DaemonContext:
    return _services(request).ctx


Ctx = Annotated[DaemonContext, Depends(_context)]
Services = Annotated[DaemonServices, Depends(_services)]
