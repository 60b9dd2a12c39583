"""Reading one of banger's JSON catalogs: the copy embedded in the package, or the file an
environment variable names (tests, air-gapped mirrors).

Owns: choosing the embedded file or the override, the override's rules (an absolute path,
at most ``MAX_CATALOG_BYTES``), decoding JSON, the top level every catalog shares
(``{"schema": 1, "<key>": [...]}`` with (name, arch) unique) and turning problems into one
``InvalidArgument`` that names the catalog and says how to fix it.
Must not: know what an entry holds (the image and kernel catalogs pass their own check)
or download anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from banger.errors import InvalidArgument

SCHEMA = 1
MAX_CATALOG_BYTES = 1 << 20
EMBEDDED = "embedded"

E = TypeVar("E")  # one entry
T = TypeVar("T")  # the catalog


class EntryCheck(Protocol):
    """The problems of one entry (an empty list: it may be used); ``embedded`` catalogs
    are held to stricter rules (https only)."""

    def __call__(self, item: object, *, embedded: bool) -> list[str]: ...


@dataclass(frozen=True)
class CatalogFile(Generic[E, T]):
    """One catalog: where it lives, how an entry is checked, what the entries become.
    ``key`` is both its noun ("kernel") and, plural, the name of its list."""

    key: str  # "kernel" or "image"
    variable: str  # the environment variable naming an override
    package: str  # the package holding the embedded catalog.json
    check: EntryCheck
    entry: Callable[[dict[str, Any]], E]  # a checked entry -> its value
    catalog: Callable[[str, tuple[E, ...]], T]  # (origin, entries) -> the catalog

    def load(self, env: Mapping[str, str] | None = None) -> T:
        """The override named by ``variable`` if set, else the embedded catalog."""
        data, origin = self.read(env)
        return self.parse(data, origin=origin, embedded=origin == EMBEDDED)

    def parse(self, data: bytes, *, origin: str, embedded: bool = False) -> T:
        """The catalog in ``data``, or ``InvalidArgument`` listing what is wrong."""
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise self._invalid(origin, [f"not JSON: {exc}"]) from exc
        found = self.problems(raw, embedded=embedded)
        if found:
            raise self._invalid(origin, found)
        return self.catalog(origin, tuple(self.entry(item) for item in raw[f"{self.key}s"]))

    def read(self, env: Mapping[str, str] | None = None) -> tuple[bytes, str]:
        """The catalog's bytes and its origin: ``EMBEDDED`` or the override's path."""
        override = (os.environ if env is None else env).get(self.variable, "")
        if not override:
            return self.embedded_bytes(), EMBEDDED
        return self.read_override(Path(override)), override

    def embedded_bytes(self) -> bytes:
        return resources.files(self.package).joinpath("catalog.json").read_bytes()

    def read_override(self, path: Path) -> bytes:
        hint = f"fix the file or unset {self.variable}"
        if not path.is_absolute():
            raise InvalidArgument(
                f"{self.variable} must be an absolute path, not {str(path)!r}", hint=hint
            )
        try:
            with path.open("rb") as f:
                data = f.read(MAX_CATALOG_BYTES + 1)
        except OSError as exc:
            raise InvalidArgument(
                f"cannot read {self.variable}={path}: {exc.strerror}", hint=hint
            ) from exc
        if len(data) > MAX_CATALOG_BYTES:
            raise InvalidArgument(f"{path} is larger than {MAX_CATALOG_BYTES} bytes", hint=hint)
        return data

    def problems(self, raw: object, *, embedded: bool) -> list[str]:
        """Everything wrong with a parsed catalog; an empty list means it may be used."""
        key = f"{self.key}s"
        if not isinstance(raw, dict) or set(raw) != {"schema", key}:
            return [f'the top level must be {{"schema": 1, "{key}": [...]}}']
        if raw["schema"] != SCHEMA:
            return [f"schema {raw['schema']!r} is not {SCHEMA}"]
        items = raw[key]
        if not isinstance(items, list):
            return [f"{key} must be a list"]
        found: list[str] = []
        seen: set[tuple[str, str]] = set()
        for index, item in enumerate(items):
            where = f"{key}[{index}]"
            problems = self.check(item, embedded=embedded)
            found.extend(f"{where}: {p}" for p in problems)
            if problems:
                continue
            name = (item["name"], item["arch"])
            if name in seen:
                found.append(f"{where}: {item['name']} for {item['arch']} appears twice")
            seen.add(name)
        return found

    def _invalid(self, origin: str, found: list[str]) -> InvalidArgument:
        return InvalidArgument(
            f"the {self.key} catalog ({origin}) is invalid",
            details="\n".join(found[:20]),
            hint=f"fix the file or unset {self.variable}" if origin != EMBEDDED else None,
        )
