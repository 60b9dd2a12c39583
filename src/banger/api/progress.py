"""Streams a long operation's progress as NDJSON (see ``banger.model.wire``).

Owns: turning an async iterator of events into a streaming response whose last line
is a result or an error event. Must not: know what the operation does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from banger.errors import BangerError, internal_error
from banger.model.wire import NDJSON, encode_event, error_event

log = logging.getLogger("banger.api")


def ndjson_response(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield encode_event(event)
        except BangerError as err:
            yield encode_event(error_event(err))
        except Exception:
            log.exception("unhandled error in a progress stream")
            yield encode_event(error_event(internal_error()))

    return StreamingResponse(body(), media_type=NDJSON)
