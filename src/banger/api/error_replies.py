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
from pydantic import BaseModel
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
from banger.model.artifact_names import NAME_PATTERN, NAME_RULE
from banger.model.wire import JSON, error_body

log = logging.getLogger("banger.api")


def error_response(err: BangerError, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        content=error_body(err), status_code=err.status, media_type=JSON, headers=headers
    )


#: Each pattern of the API schema as the rule it stands for: a person reads the rule, not
#: the regex (issue 14 item 16). test_api_error_hints checks every pattern has one.
PATTERN_RULES: dict[str, str] = {
    NAME_PATTERN: NAME_RULE,
    "^/": "an absolute path (starting with '/')",
    "^[0-7]{1,4}$": "an octal mode of 1-4 digits, such as 644",
}
_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}
_TYPES = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
    "list_type": "a JSON array",
}


def _where(item: Mapping[str, Any]) -> str:
    """The field's dotted name: ``loc`` without where it came from (a query parameter may
    itself be called ``path``)."""
    loc = list(item.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    if item.get("type") == "json_invalid":
        loc = []  # the position of the decode error, not a field
    return ".".join(str(p) for p in loc)


def describe_validation(errors: list[Any]) -> list[str]:
    """One readable line per pydantic problem: 'unknown field x', 'missing field y'."""
    lines = []
    for item in errors:
        loc = _where(item)
        kind = item.get("type", "")
        ctx = item.get("ctx") or {}
        if kind == "extra_forbidden":
            lines.append(f"unknown field {loc!r}")
        elif kind == "missing":
            lines.append(f"missing field {loc!r}")
        elif kind == "json_invalid":
            lines.append(f"the body is not valid JSON ({ctx.get('error', 'decode error')})")
        elif kind == "string_pattern_mismatch":
            lines.append(f"{loc or 'body'}: must be {_pattern_rule(ctx)}")
        elif not loc and kind in _TYPES:
            lines.append(f"the body must be {_TYPES[kind]}")
        else:
            lines.append(f"{loc or 'body'}: {item.get('msg', 'invalid')}")
    return lines


def validation_hint(errors: list[Any], fields: list[str] | None) -> str:
    """What each named field accepts, so a caller can fix the request without the schema."""
    parts: list[str] = []
    for item in errors:
        part = _accepts(item, fields)
        if part not in parts:
            parts.append(part)
    if len(parts) > 3:
        parts[3:] = ["docs/reference/api.json has the rest"]
    return "; ".join(parts) or "docs/reference/api.json describes every endpoint's fields"


def _accepts(item: Mapping[str, Any], fields: list[str] | None) -> str:
    loc = _where(item)
    kind = str(item.get("type", ""))
    ctx = item.get("ctx") or {}
    known = (
        f"this endpoint takes {', '.join(fields)}"
        if fields
        else "docs/reference/api.json lists this endpoint's fields"
    )
    if kind == "extra_forbidden":
        return f"drop {loc!r}: {known}"
    if kind == "missing":
        return f"send {loc!r}: it is required"
    if kind == "json_invalid" or not loc:
        return f"send the body as one JSON object: {known}"
    if kind in _TYPES:
        accepted = _TYPES[kind]
    elif kind in _BOUNDS:
        bound = next((v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")), "?")
        accepted = f"a number {_BOUNDS[kind]} {bound}"
    elif kind == "string_pattern_mismatch":
        accepted = _pattern_rule(ctx)
    elif kind in ("string_too_short", "too_short"):
        accepted = f"at least {ctx.get('min_length')} {_unit(kind)}"
    elif kind in ("string_too_long", "too_long"):
        accepted = f"at most {ctx.get('max_length')} {_unit(kind)}"
    elif "expected" in ctx:
        accepted = f"one of {ctx['expected']}"
    else:
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        return f"{loc!r}: {message} (docs/reference/api.json describes it)"
    return f"{loc!r} takes {accepted}"


def _unit(kind: str) -> str:
    return "characters" if kind.startswith("string") else "items"


def _pattern_rule(ctx: Mapping[str, Any]) -> str:
    pattern = str(ctx.get("pattern", ""))
    return PATTERN_RULES.get(pattern, "in the form docs/reference/api.json describes")


def body_fields(request: Request) -> list[str] | None:
    """The fields of the route's JSON body model, when the request reached a route."""
    field = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return None


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

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = list(exc.errors())
        lines = describe_validation(problems)
        brief = lines[0] if lines else "invalid request"
        hint = validation_hint(problems, body_fields(request))
        return error_response(
            InvalidRequest(brief, details="\n".join(lines[1:]) or None, hint=hint)
        )

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
