"""The API's error middleware: the one place that turns errors into HTTP JSON replies.

Owns: mapping BangerError, request validation failures, unknown routes and unexpected
exceptions to ``{"error": {code, message, details, hint}}`` with the class's status.
Must not: decide what went wrong; it only renders.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from banger.errors import (
    BangerError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    internal_error,
)
from banger.model.wire import JSON, error_body

log = logging.getLogger("banger.api")


def error_response(err: BangerError, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        content=error_body(err), status_code=err.status, media_type=JSON, headers=headers
    )


def describe_validation(errors: list[Any]) -> list[str]:
    """One readable line per pydantic problem: 'unknown field x', 'missing field y'."""
    lines = []
    for item in errors:
        loc = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path"))
        kind = item.get("type", "")
        if kind == "extra_forbidden":
            lines.append(f"unknown field {loc!r}")
        elif kind == "missing":
            lines.append(f"missing field {loc!r}")
        else:
            lines.append(f"{loc or 'body'}: {item.get('msg', 'invalid')}")
    return lines


def allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    async def on_banger_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, BangerError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        lines = describe_validation(list(exc.errors()))
        brief = lines[0] if lines else "invalid request"
        return error_response(InvalidRequest(brief, details="\n".join(lines[1:]) or None))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            # RFC 9110: a 405 names every allowed method. Starlette lists only the first
            # route whose path matched, so collect them from all routes of that path.
            allow = ", ".join(allowed_methods(request))
            return error_response(
                MethodNotAllowed("method not allowed on this endpoint"), headers={"Allow": allow}
            )
        if exc.status_code == 404:
            return error_response(NotFound("no such API endpoint"))
        return error_response(InvalidRequest(str(exc.detail)))

    app.add_exception_handler(BangerError, on_banger_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_middleware(CatchAllMiddleware)


class CatchAllMiddleware:
    """Turns an unexpected exception into a 500 error body instead of a dropped connection.

    Pure ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"path": scope.get("path")}})
            if started:
                raise
            await error_response(internal_error())(scope, receive, send)
