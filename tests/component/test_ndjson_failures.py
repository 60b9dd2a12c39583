"""`--json` progress streams end, on failure, with the error object on stdout (issue 14
item 17): `{"type": "error", "error": {code, message, details, hint}}` as the API's own
stream carries it (banger.model.wire.error_event), not only a `fail` stage with the
reason on stderr. Real daemon, real failures; stdout is read as NDJSON."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import BangerHome


def ndjson(stdout: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(e, dict) for e in events), stdout
    return events


def assert_ends_in_error(
    events: list[dict[str, Any]], code: str, *, hinted: bool = True
) -> dict[str, Any]:
    assert events, "stdout carried no event at all"
    last = events[-1]
    assert last["type"] == "error", events
    error = last["error"]
    assert error["code"] == code, error
    assert set(error) == {"code", "message", "details", "hint"}, error
    assert error["message"], error
    # Which errors carry a hint is item 16's audit; where one exists it must be here.
    assert error["hint"] or not hinted, error
    assert [e for e in events if e["type"] == "error"] == [last]
    return dict(error)


def test_vm_create_json_unknown_image_streams_the_error(home: BangerHome) -> None:
    out = home.banger("vm", "create", "--json", "--image", "no-such-image-anywhere")
    assert out.returncode == 1, out.stderr
    error = assert_ends_in_error(ndjson(out.stdout), "image_not_found")
    assert "no-such-image-anywhere" in error["message"]
    # The text form still goes to stderr, the same error.
    assert f"error: {error['message']}" in out.stderr


def test_image_pull_json_failing_stage_then_the_error(home: BangerHome) -> None:
    # Port 1 on loopback: nothing listens, so the pull fails inside its stream (after
    # the first stage started) without any traffic leaving this host.
    out = home.banger("image", "pull", "--json", "127.0.0.1:1/nothing/here:latest")
    assert out.returncode == 1, out.stderr
    events = ndjson(out.stdout)
    assert any(e["type"] == "stage" and e.get("state") == "fail" for e in events), events
    error = assert_ends_in_error(events, "bad_response", hinted=False)
    assert "127.0.0.1:1" in error["message"]
    assert f"error: {error['message']}" in out.stderr


def test_vm_create_json_name_error_streams_the_error(home: BangerHome) -> None:
    out = home.banger("vm", "create", "--json", "--name", "Bad_Name!")
    assert out.returncode == 1, out.stderr
    assert_ends_in_error(ndjson(out.stdout), "invalid_argument")
