"""The config as ``banger config show`` lists it: one row per documented key, with its
value and where the value came from, and which keys two configs disagree on.

Owns: the row keys (``log_level``, ``vm_defaults.vcpu``, ``file_sync[0].host``; an empty
``[[file_sync]]`` or ``[[pool]]`` is one row ``file_sync``), the text form of a value
(no Python reprs: unset is ``(unset)``), and the comparison of the file's config with the
one a running daemon reports. Rows are built from the JSON form of a config
(``Config.model_dump(mode="json")`` or a daemon's ``/config`` reply), so both sides go
through the same code. Must not: read the file, talk to the daemon or print.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from banger.config.messages import table_model
from banger.config.settings import Config, Source

UNSET = "(unset)"
NONE = "(none)"
NO_ENTRIES = "(no entries)"

#: ``[[file_sync]]`` and ``[[pool]]``: arrays of tables, listed entry by entry.
_ENTRY_TABLES = frozenset(
    name
    for name, field in Config.model_fields.items()
    if typing.get_origin(field.annotation) is list and table_model(field.annotation) is not None
)


@dataclass(frozen=True)
class Row:
    #: Dotted key; array-of-table entries are indexed: ``file_sync[0].host``.
    key: str
    #: The JSON value; None when the key is unset.
    value: Any
    #: ``env``, ``file`` or ``default``.
    source: str

    @property
    def documented_key(self) -> str:
        """The key as docs/config.md names it: ``file_sync[0].host`` -> ``file_sync.host``."""
        head, bracket, rest = self.key.partition("[")
        return head + rest.partition("]")[2] if bracket else self.key

    @property
    def setting(self) -> str:
        """What a change of this row is reported as: a whole ``[[table]]`` counts as one."""
        return self.key.partition("[")[0]

    def text(self) -> str:
        if self.key in _ENTRY_TABLES and not self.value:
            return NO_ENTRIES
        return format_value(self.value)


def rows(values: Mapping[str, Any], sources: Mapping[str, str]) -> list[Row]:
    """Every documented key of ``values`` (a config's JSON form) in ``config_keys()``
    order; keys that are not config keys (derived numbers a daemon adds) are left out."""
    out: list[Row] = []
    for name, field in Config.model_fields.items():
        table = table_model(field.annotation)
        value = values.get(name)
        if table is None:
            out.append(Row(name, value, sources.get(name, Source.DEFAULT)))
        elif name in _ENTRY_TABLES:
            out.extend(_entry_rows(name, list(table.model_fields), value, sources))
        else:
            given = value if isinstance(value, Mapping) else {}
            for sub in table.model_fields:
                key = f"{name}.{sub}"
                out.append(Row(key, given.get(sub), sources.get(key, Source.DEFAULT)))
    return out


def _entry_rows(
    name: str, fields: Sequence[str], value: object, sources: Mapping[str, str]
) -> list[Row]:
    source = sources.get(name, Source.DEFAULT)
    entries = value if isinstance(value, list) else []
    if not entries:
        return [Row(name, [], source)]
    return [
        Row(f"{name}[{index}].{sub}", _get(entry, sub), source)
        for index, entry in enumerate(entries)
        for sub in fields
    ]


def _get(entry: object, key: str) -> Any:
    return entry.get(key) if isinstance(entry, Mapping) else None


def format_value(value: Any) -> str:
    """A value as a person reads it: ``info``, ``4``, ``1.1.1.1, 9.9.9.9``, ``(unset)``."""
    if value is None:
        return UNSET
    if isinstance(value, list):
        if not value:
            return NONE  # ``default_dns = []``: guests get no resolvers
        return ", ".join(format_value(item) for item in value)
    if isinstance(value, str):
        # A control character would break the one-line-per-key layout: quote it as JSON.
        return value if value and value.isprintable() else json.dumps(value)
    return json.dumps(value)


def differing_settings(ours: Sequence[Row], theirs: Sequence[Row]) -> list[str]:
    """The settings (``vm_defaults.vcpu``, ``file_sync``) whose values differ, in row order."""
    mine = {row.key: row.value for row in ours}
    other = {row.key: row.value for row in theirs}
    missing = object()
    found: list[str] = []
    for row in [*ours, *theirs]:
        if mine.get(row.key, missing) != other.get(row.key, missing) and row.setting not in found:
            found.append(row.setting)
    return found


def json_form(listed: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """``values`` and ``sources`` keyed by the same row keys the text form prints."""
    return {
        "values": {row.key: row.value for row in listed},
        "sources": {row.key: str(row.source) for row in listed},
    }
