"""``--json`` progress output (banger.cli.output): a failure ends stdout with the API's
error event, whatever raised it (issue 14 item 17)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from banger.cli.output import follow_stream
from banger.errors import BangerError, NotFound
from banger.model.api_types import StageEvent


class FailingStream:
    """One running stage, then ``error`` is raised as the client's stream raises it."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __iter__(self) -> Iterator[StageEvent]:
        yield StageEvent(type="stage", stage="resolve", state="running")
        raise self.error

    @property
    def result(self) -> object:
        raise AssertionError("a failed stream has no result")


def lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def test_a_banger_error_ends_the_stream_with_its_error_event(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(NotFound):
        follow_stream(FailingStream(NotFound("image 'x' not found", hint="pull it")), as_json=True)
    events = lines(capsys.readouterr().out)
    assert events[0] == {"type": "stage", "stage": "resolve", "state": "running"}
    assert events[-1] == {
        "type": "error",
        "error": {
            "code": "not_found",
            "message": "image 'x' not found",
            "details": None,
            "hint": "pull it",
        },
    }


def test_an_unexpected_exception_still_ends_in_an_error_event(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ValueError, match="boom"):
        follow_stream(FailingStream(ValueError("boom")), as_json=True)
    last = lines(capsys.readouterr().out)[-1]
    assert last["type"] == "error"
    error = last["error"]
    assert isinstance(error, dict)
    assert error["code"] == BangerError.code
    assert error["message"] == "unexpected ValueError: boom"
    assert error["hint"]


def test_an_interrupt_writes_no_error_event(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(KeyboardInterrupt):
        follow_stream(FailingStream(KeyboardInterrupt()), as_json=True)
    assert [e["type"] for e in lines(capsys.readouterr().out)] == ["stage"]
