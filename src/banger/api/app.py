"""The daemon's FastAPI application: routes, middleware and the OpenAPI document.

Owns: mapping HTTP paths to service calls. Must not: contain the services' logic,
touch SQLite directly or render errors (``banger.api.error_replies`` does).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from banger.api import (
    routes_daemon,
    routes_exec,
    routes_files,
    routes_images,
    routes_inventory,
    routes_kernels,
    routes_pool,
    routes_vms,
)
from banger.api.error_replies import install_error_handlers
from banger.api.middleware import AccessLogMiddleware, BodyLimitMiddleware
from banger.api.models import ErrorReply
from banger.model.wire import API_PREFIX
from banger.services.daemon_services import DaemonServices

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorReply, "description": "banger error"}
    for status in (400, 403, 404, 405, 409, 413, 422, 500, 503)
}


def create_app(services: DaemonServices) -> FastAPI:
    app = build_app(services.ctx.build.version)
    app.state.services = services
    return app


def build_app(version: str) -> FastAPI:
    """The application without a context: enough to produce the OpenAPI document."""
    app = FastAPI(
        title="bangerd",
        version=version,
        description="banger's daemon API, spoken over a Unix socket owned by one user.",
        docs_url=None,
        redoc_url=None,
        openapi_url=f"{API_PREFIX}/openapi.json",
        responses=ERROR_RESPONSES,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AccessLogMiddleware)
    app.include_router(routes_daemon.router, prefix=API_PREFIX)
    app.include_router(routes_inventory.router, prefix=API_PREFIX)
    app.include_router(routes_vms.router, prefix=API_PREFIX)
    app.include_router(routes_exec.router, prefix=API_PREFIX)
    app.include_router(routes_files.router, prefix=API_PREFIX)
    app.include_router(routes_kernels.router, prefix=API_PREFIX)
    app.include_router(routes_images.router, prefix=API_PREFIX)
    app.include_router(routes_pool.router, prefix=API_PREFIX)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = hoist_defs(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def hoist_defs(doc: dict[str, Any]) -> dict[str, Any]:
    """Move nested ``$defs`` into ``components/schemas`` and point their refs there.

    A model schema inlined into ``responses`` (the NDJSON ``StageEvent``) carries its own
    ``$defs`` with refs like ``#/$defs/ErrorDetail``; in an OpenAPI document those resolve
    against the document root and fail (issue 14 item 12).
    """
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    prefix = "#/$defs/"

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            for name, schema in (node.pop("$defs", None) or {}).items():
                schemas.setdefault(name, walk(schema))
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and value.startswith(prefix):
                    node[key] = "#/components/schemas/" + value.removeprefix(prefix)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        return node

    walk(doc)
    return doc


def openapi_document() -> dict[str, object]:
    """The committed document (docs/reference/api.json) is this, with the package version."""
    from importlib.metadata import version

    return build_app(version("banger")).openapi()
