"""The code examples of docs/*.md that tests run as written: each follows a
``<!-- example: NAME -->`` line as a fenced ``python`` block (docs/sdk.md)."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def example(doc: str, name: str) -> str:
    """The source of example ``name`` in ``docs/<doc>``."""
    text = (DOCS / doc).read_text()
    marker = f"<!-- example: {name} -->\n```python\n"
    start = text.index(marker) + len(marker)
    return text[start : text.index("\n```\n", start) + 1]
