"""How the CLI shows things: JSON, key/value blocks, tables and live progress.

Owns: every write of command output to stdout. rich is imported only when a table or
live progress is drawn, to keep start-up lean. Must not: talk to the daemon.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from banger.errors import BangerError
from banger.model.api_types import StageEvent, to_json
from banger.model.wire import StageState, error_event

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Streamed(Protocol[T_co]):
    """A progress stream (``banger.client.facade.Progress``, or a wrapper of one)."""

    def __iter__(self) -> Iterator[StageEvent]: ...

    @property
    def result(self) -> T_co: ...


MARKS = {
    StageState.OK: ("✓", "green"),
    StageState.WARN: ("!", "yellow"),
    StageState.FAIL: ("✗", "red"),
    StageState.SKIP: ("-", "dim"),
}


def emit_json(data: Any) -> None:
    """``data`` (plain JSON, a reply type or a list of them) as indented JSON."""
    sys.stdout.write(json.dumps(to_json(data), indent=2, sort_keys=False) + "\n")


def emit_kv(rows: Sequence[tuple[str, Any]]) -> None:
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        sys.stdout.write(f"{key + ':':<{width + 1}} {value}\n")


def emit_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str) -> None:
    rows = [list(map(str, r)) for r in rows]
    if not rows:
        sys.stdout.write(empty + "\n")
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [columns, *rows]
    for line in lines:
        sys.stdout.write(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        )


def follow_stream(progress: Streamed[T], *, as_json: bool) -> T:
    """Show a progress stream and return its typed result.

    ``--json`` passes the events through as NDJSON; a terminal gets a live spinner per
    stage; anything else gets one line per finished stage.
    """
    if as_json:
        _passthrough(progress)
    elif sys.stdout.isatty():
        _live(progress)
    else:
        _plain(progress)
    return progress.result


def _passthrough(events: Iterable[StageEvent]) -> None:
    """NDJSON out; a failure (refused before the stream, or its error event) ends the
    output with the same error event the API streams, then propagates (issue 14 item 17:
    a reader of stdout must not have to scrape stderr for the reason)."""
    try:
        for event in events:
            _write_event(event.to_wire())
    except BangerError as err:
        _write_error_event(err)
        raise
    except Exception as err:
        # What main() shows as "unexpected …": the stream still ends in an error object.
        _write_error_event(
            BangerError(
                f"unexpected {type(err).__name__}: {err}",
                hint="run again with --debug for the traceback, and please report it",
            )
        )
        raise


def _write_event(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _write_error_event(err: BangerError) -> None:
    # A reader that went away must not turn the error into main()'s quiet BrokenPipe exit.
    with contextlib.suppress(OSError):
        _write_event(error_event(err))


def _finished_line(event: StageEvent) -> tuple[str, str, str | None]:
    state = StageState(event.state or "ok")
    mark, colour = MARKS.get(state, ("?", "white"))
    elapsed = event.elapsed_ms
    took = f" ({elapsed} ms)" if elapsed is not None and elapsed >= 100 else ""
    text = f"{mark} {event.stage}: {event.detail or state.value}{took}"
    hint = event.hint if state in (StageState.WARN, StageState.FAIL) else None
    return text, colour, hint


def _plain(events: Iterable[StageEvent]) -> None:
    for event in events:
        if event.type == "result":
            return
        if event.type == "stage" and event.state != StageState.RUNNING.value:
            text, _, hint = _finished_line(event)
            sys.stdout.write(text + "\n")
            if hint:
                sys.stdout.write(f"    hint: {hint}\n")
            sys.stdout.flush()


def _live(events: Iterable[StageEvent]) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    with console.status("") as status:
        for event in events:
            if event.type == "result":
                return
            if event.type != "stage":
                continue
            if event.state == StageState.RUNNING.value:
                status.update(f"{escape(str(event.stage))}…")
                continue
            text, colour, hint = _finished_line(event)
            console.print(f"[{colour}]{escape(text)}[/]")
            if hint:
                console.print(f"    [dim]hint: {escape(hint)}[/]")
