"""What travels on the daemon socket, shared by both ends: media types and NDJSON events.

Owns: the shape of a progress stream (one JSON object per line) and the error body
bytes. Must not: import FastAPI, pydantic or anything slow; the CLI imports this.

A progress stream is a sequence of events:

    {"type": "stage", "stage": "kvm", "state": "running"}
    {"type": "stage", "stage": "kvm", "state": "ok", "detail": "...", "elapsed_ms": 3}
    {"type": "result", "data": {...}}        # last line on success
    {"type": "error", "error": {...}}        # last line on failure (same body as HTTP errors)
    {"type": "heartbeat"}                    # during a silent stage, at least every 10 s
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from banger.errors import BangerError

NDJSON = "application/x-ndjson"
#: Raw file bytes (guest files, docs/explanation/guest-files.md).
OCTET_STREAM = "application/octet-stream"
JSON = "application/json"
API_PREFIX = "/v1"
#: Largest request body the daemon reads (ADVERSARIAL 49).
MAX_REQUEST_BYTES = 1 << 20
#: bangerd's exit status when another daemon holds the lock (EX_TEMPFAIL): the CLI that
#: started it then uses the running one.
EXIT_ALREADY_RUNNING = 75
#: What bangerd writes on its ready pipe (``--ready-fd``) once it serves, then a newline.
#: A daemon that cannot start writes its ``error_body`` and a newline instead.
READY_LINE = b"ready"


class StageState(StrEnum):
    RUNNING = "running"
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


def error_body(err: BangerError) -> bytes:
    """The one serialisation of an error, for HTTP bodies and stream events alike."""
    return json.dumps(err.to_payload(), separators=(",", ":")).encode()


def stage_event(
    stage: str,
    state: StageState,
    *,
    detail: str | None = None,
    hint: str | None = None,
    elapsed_ms: int | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "stage", "stage": stage, "state": state.value}
    if detail is not None:
        event["detail"] = detail
    if hint is not None:
        event["hint"] = hint
    if elapsed_ms is not None:
        event["elapsed_ms"] = elapsed_ms
    return event


def result_event(data: Any) -> dict[str, Any]:
    return {"type": "result", "data": data}


def error_event(err: BangerError) -> dict[str, Any]:
    return {"type": "error", **err.to_payload()}


def encode_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"
