"""ASGI middleware of the daemon: request size limit and structured request logs.

Owns: refusing bodies over ``MAX_REQUEST_BYTES`` before a handler reads them
(ADVERSARIAL 49) and one log line per request. Must not: render errors itself;
it hands a BangerError to ``banger.api.error_replies.error_response``.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from banger.api.error_replies import error_response
from banger.errors import PayloadTooLarge
from banger.model.wire import MAX_REQUEST_BYTES

log = logging.getLogger("banger.api.access")


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body larger than {MAX_REQUEST_BYTES} bytes",
        hint="the daemon's API takes small JSON bodies only",
    )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (
                not value.isdigit() or int(value) > MAX_REQUEST_BYTES
            ):
                await error_response(_too_large())(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_REQUEST_BYTES:
                raise _too_large()
            return message

        await self.app(scope, limited_receive, send)


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            fields = {
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "duration_ms": round((time.monotonic() - started) * 1000, 2),
            }
            log.info("request", extra={"fields": fields})
