"""Turning pydantic's ValidationError about ``config.toml``/``BANGER_*`` into one ConfigError.

Owns: the wording a user sees for a bad config (the key in dotted form or the env var, the
rule, the value; did-you-mean for unknown keys, "it belongs in [table]" for a key after the
wrong header) and the hint naming what to fix. Must not: let pydantic's own text through.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from banger.errors import ConfigError
from banger.model import units


def table_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a ``[table]`` or ``[[array of tables]]`` field; None for a scalar."""
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation if is_model else None


@dataclass(frozen=True)
class _Where:
    """What the wording needs to know: the root model and how a key is named in the env."""

    model: type[BaseModel]
    env_var: Callable[[str], str]
    from_env: Mapping[str, object]


def translate(
    exc: ValidationError,
    path: Path,
    from_env: Mapping[str, object],
    *,
    model: type[BaseModel],
    env_var: Callable[[str], str],
) -> ConfigError:
    """One ConfigError for every problem pydantic found, with a hint naming the fix."""
    where = _Where(model, env_var, from_env)
    errors = exc.errors(include_url=False)
    problems = [_describe(err, where) for err in errors]
    env_vars = sorted({env_var(str(e["loc"][0])) for e in errors if _from_env(e, from_env)})
    in_file = any(not _from_env(e, from_env) for e in errors)
    fixes = ([f"fix {path}"] if in_file else []) + [f"fix or unset {v}" for v in env_vars]
    if any(e["type"] == "extra_forbidden" for e in errors):
        fixes[0] = f"remove or rename the key in {path}"
    brief = problems[0] if len(problems) == 1 else f"{problems[0]} (and {len(problems) - 1} more)"
    return ConfigError(
        brief,
        details="\n".join(problems) if len(problems) > 1 else None,
        hint="; ".join(fixes) + " (docs/config.md lists every key and its rule)",
    )


def _from_env(err: ErrorDetails, from_env: Mapping[str, object]) -> bool:
    return bool(err["loc"]) and err["loc"][0] in from_env


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _describe(err: ErrorDetails, where: _Where) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        return _unknown_key(loc, where.model)
    env = _from_env(err, where.from_env)
    # Env values are scalars or lists, so whatever follows the key is an index.
    name = where.env_var(str(loc[0])) + _dotted(loc[1:]) if env else _dotted(loc)
    return f"{name}: {_rule_text(err, loc, env=env)}"


def _unknown_key(loc: tuple[int | str, ...], root: type[BaseModel]) -> str:
    key, table_loc = str(loc[-1]), loc[:-1]
    model = root
    for part in table_loc:
        if isinstance(part, str):
            model = table_model(model.model_fields[part].annotation) or model
    where = "at the top level" if not table_loc else f"in {_dotted(table_loc)}"
    where = f"in [{table_loc[0]}]" if len(table_loc) == 1 else where
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    suggestion = f' (did you mean "{close[0]}"?)' if close else _belongs_elsewhere(key, root)
    return f'unknown key "{key}" {where}{suggestion}'


def _belongs_elsewhere(key: str, root: type[BaseModel]) -> str:
    # TOML puts every key after a [table] header into that table: a classic slip.
    if key in root.model_fields:
        return " (it is a top-level key: move it above the first [table])"
    for name, field in root.model_fields.items():
        table = table_model(field.annotation)
        if table is not None and key in table.model_fields:
            header = f"[[{name}]]" if typing.get_origin(field.annotation) is list else f"[{name}]"
            return f" (it belongs in {header})"
    return ""


_RULES = {
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "enum": "must be one of {expected}",
    "too_long": "must have at most {max_length} entries",
    "list_type": "must be a list",
    "string_type": "must be a quoted string",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "dict_type": "must be a table",
}


def _rule_text(err: ErrorDetails, loc: tuple[int | str, ...], *, env: bool) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "value_error":
        return str(ctx["error"])  # our own rules already end in "(got …)"
    if kind == "missing":
        return "is required"
    if kind == "int_type" and isinstance(value, bool):
        rule = "must be an integer, not a boolean"
    elif kind == "int_type" and isinstance(value, float):
        rule = "must be an integer, not a decimal number"
    elif kind == "int_type":
        rule = "must be an integer written with the digits 0-9" + ("" if env else ", unquoted")
    elif kind == "list_type" and loc == ("file_sync",):
        rule = "must be written as [[file_sync]] tables (an array of tables)"
    else:
        rule = _RULES.get(kind, "is not valid").format(**ctx)
    return f"{rule} (got {units.describe_input(value)})"
