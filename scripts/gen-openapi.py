"""Writes docs/reference/api.json from the code, or with --check fails if it is stale."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from banger.api.app import openapi_document

TARGET = Path(__file__).resolve().parent.parent / "docs" / "reference" / "api.json"


def main() -> int:
    text = json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
    if "--check" in sys.argv[1:]:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is stale: run `.venv/bin/python scripts/gen-openapi.py`")
            return 1
        print(f"{TARGET} matches the code")
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
