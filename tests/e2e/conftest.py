"""Every test in ``tests/e2e`` carries the ``e2e`` marker (real guests booted, ~minutes), so
``pytest -m "not e2e"`` runs the fast layers and ``pytest -m e2e`` only these; a plain
``pytest`` (the README's ``scripts/test``) still runs all of them."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)
