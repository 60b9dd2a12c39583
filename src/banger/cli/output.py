"""How the CLI shows things: JSON, key/value blocks, tables and live progress.

Owns: every write of command output to stdout. rich is imported only when a table or
live progress is drawn, to keep start-up lean. Must not: talk to the daemon.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from banger.model.wire import StageState

MARKS = {
    StageState.OK: ("✓", "green"),
    StageState.WARN: ("!", "yellow"),
    StageState.FAIL: ("✗", "red"),
    StageState.SKIP: ("-", "dim"),
}


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


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


def follow_stream(events: Iterator[dict[str, Any]], *, as_json: bool) -> Any:
    """Show a progress stream and return its result's data.

    ``--json`` passes the events through as NDJSON; a terminal gets a live spinner per
    stage; anything else gets one line per finished stage.
    """
    if as_json:
        return _passthrough(events)
    if sys.stdout.isatty():
        return _live(events)
    return _plain(events)


def _passthrough(events: Iterator[dict[str, Any]]) -> Any:
    data = None
    for event in events:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
        if event.get("type") == "result":
            data = event.get("data")
    return data


def _finished_line(event: dict[str, Any]) -> tuple[str, str, str | None]:
    state = StageState(event.get("state", "ok"))
    mark, colour = MARKS.get(state, ("?", "white"))
    elapsed = event.get("elapsed_ms")
    took = f" ({elapsed} ms)" if isinstance(elapsed, int) and elapsed >= 100 else ""
    text = f"{mark} {event.get('stage')}: {event.get('detail') or state.value}{took}"
    hint = event.get("hint") if state in (StageState.WARN, StageState.FAIL) else None
    return text, colour, hint


def _plain(events: Iterator[dict[str, Any]]) -> Any:
    for event in events:
        if event.get("type") == "result":
            return event.get("data")
        if event.get("type") == "stage" and event.get("state") != StageState.RUNNING:
            text, _, hint = _finished_line(event)
            sys.stdout.write(text + "\n")
            if hint:
                sys.stdout.write(f"    hint: {hint}\n")
            sys.stdout.flush()
    return None


def _live(events: Iterator[dict[str, Any]]) -> Any:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    with console.status("") as status:
        for event in events:
            if event.get("type") == "result":
                return event.get("data")
            if event.get("type") != "stage":
                continue
            if event.get("state") == StageState.RUNNING:
                status.update(f"{escape(str(event.get('stage')))}…")
                continue
            text, colour, hint = _finished_line(event)
            console.print(f"[{colour}]{escape(text)}[/]")
            if hint:
                console.print(f"    [dim]hint: {escape(hint)}[/]")
    return None
