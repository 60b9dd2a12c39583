"""Parsing and help for VM size options (``--vcpu``, ``--memory``, ``--disk-size``).

Owns: turning user text into numbers with units in errors (ADVERSARIAL 47) and showing
the default in effect in ``--help`` with its provenance (config|auto|builtin), computed
(``banger.cli.config_view``) only when help is drawn so ordinary commands do not pay for
loading the config.
"""

from __future__ import annotations

from typing import Any

import click

from banger.model import limits, units


def vcpu_count(text: str) -> int:
    return units.parse_positive_int(text, what="--vcpu", maximum=limits.VCPU_MAX)


def memory_mib(text: str) -> int:
    if text.isascii() and text.isdigit():
        return units.parse_positive_int(text, what="--memory")
    return units.parse_size(text, what="--memory") // units.MIB


def size_bytes(text: str, *, what: str) -> int:
    return units.parse_size(text, what=what)


class ResolvedDefault(click.Option):
    """An option whose help shows the default a create would get, and where it is from."""

    def __init__(self, *args: Any, field: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.field = field

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        return record[0], f"{record[1]}  [default: {self._resolved()}]"

    def _resolved(self) -> str:
        from banger.cli.config_view import help_default

        return help_default(self.field)
