"""ASGI middleware of the daemon: request body checks and structured request logs.

Owns: reading the whole request body before any handler runs, refusing it with 413 when
it is over ``MAX_REQUEST_BYTES`` however it is framed (raw file uploads excepted: they
stream, and their route bounds them) (Content-Length or chunked:
ADVERSARIAL 49, issue 14 item 8), refusing a JSON body that repeats a key (item 9: which
one would win is not something a caller should have to guess), and one log line per
request. Must not: render errors itself; it hands a BangerError to
``banger.api.error_replies.error_response``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from banger.api.error_replies import error_response
from banger.errors import InvalidRequest, PayloadTooLarge
from banger.model.wire import API_PREFIX, MAX_REQUEST_BYTES

log = logging.getLogger("banger.api.access")


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body larger than {MAX_REQUEST_BYTES} bytes",
        hint="the daemon's API takes small JSON bodies only",
    )


#: File uploads into a guest (``banger.api.routes_files``): streamed, never read whole;
#: the route takes only a Content-Length body and bounds its size itself.
_RAW_UPLOAD = re.compile(API_PREFIX + r"/vms/[^/]+/files(/archive)?")


def _is_raw_upload(scope: Scope) -> bool:
    return scope.get("method") == "PUT" and _RAW_UPLOAD.fullmatch(scope.get("path", "")) is not None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_raw_upload(scope):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (
                not value.isdigit() or int(value) > MAX_REQUEST_BYTES
            ):
                await error_response(_too_large())(scope, receive, send)
                return
        # Bodies are small JSON: read all of it here, so that the limit is enforced the
        # same way for a chunked body (an exception raised inside the handler's own body
        # read would come out as FastAPI's 422 "error parsing the body").
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body arrived
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > MAX_REQUEST_BYTES:
                await error_response(_too_large())(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = _json_problem(body)
        if problem is not None:
            await error_response(problem)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, for streamed replies

        await self.app(scope, replay, send)


class _Refused(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Refused(
                InvalidRequest(
                    f"the JSON body repeats the key {key!r}", hint="send each field once"
                )
            )
        seen[key] = value
    return seen


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not (ADVERSARIAL 49).
    raise _Refused(InvalidRequest(f"{name} is not a JSON value", hint="send a number"))


def _json_problem(body: bytes) -> InvalidRequest | None:
    """What JSON forbids but Python's parser lets through: a repeated key (which would
    silently win) or NaN/Infinity. None when there is none, or when the body is no JSON
    at all (FastAPI reports that with its own error)."""
    if not body.strip():
        return None
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except _Refused as refused:
        err: InvalidRequest = refused.args[0]
        return err
    except (ValueError, RecursionError):
        return None
    return None


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
