"""Text rendering of errors for a terminal: ``error:`` line, indented details, ``hint:``.

Owns: the one text form of a BangerError, used by ``banger``'s and ``bangerd``'s
``main()``. Must not: decide exit codes or print by itself.
"""

from __future__ import annotations

import traceback

from banger.errors import BangerError


def format_error(err: BaseException, *, debug: bool) -> str:
    if isinstance(err, BangerError):
        lines = [f"error: {err.brief}"]
        if err.details:
            lines.extend(f"  {line}" for line in err.details.splitlines())
        if err.hint:
            lines.append(f"hint: {err.hint}")
    else:
        lines = [
            f"error: unexpected {type(err).__name__}: {err}",
            "hint: run again with --debug for the traceback, and please report it",
        ]
    text = "\n".join(lines) + "\n"
    if debug:
        text = "".join(traceback.format_exception(err)) + text
    return text
