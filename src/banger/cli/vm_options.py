"""Parsing and help for sized options (``--vcpu``, ``--memory``, ``--disk-size``,
``--boot-timeout``, ``image pull --size``).

Owns: turning user text into numbers while click parses the command line, checked
against ``banger.model.limits`` with the bound in the user's units (ADVERSARIAL 47,
issue 14 item 15): a bad value is a usage error (exit 2) naming the flag, before anything
is printed or asked of the daemon. Also showing the default in effect in ``--help`` with
its provenance (config|auto|builtin), computed (``banger.cli.config_view``) only when
help is drawn so ordinary commands do not pay for loading the config.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

from banger.errors import InvalidArgument
from banger.model import limits, units


def vcpu_count(text: str, *, what: str = "--vcpu") -> int:
    return units.parse_bounded_int(text, limits.VCPU, what=what)


def memory_mib(text: str, *, what: str = "--memory") -> int:
    return units.parse_memory_mib(text, what=what)


def _sized(bound: limits.Bound) -> Callable[[str], int]:
    def parse(text: str) -> int:
        return units.check_bound(units.parse_size(text), bound, got=text)

    return parse


class Limited(click.ParamType[int, Any]):
    """A number within ``bound``, converted by click: a bad value fails the parse, so
    click names the flag and nothing of the command has run yet."""

    def __init__(self, name: str, bound: limits.Bound, parse: Callable[[str], int]) -> None:
        self.name = name
        self.bound = bound
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value  # a default, already a number
        try:
            return self._parse(value)
        except InvalidArgument as err:
            self.fail(err.brief, param, ctx)  # the flag's name is click's prefix


def _count(bound: limits.Bound) -> Callable[[str], int]:
    return lambda text: units.parse_bounded_int(text, bound, what="")


VCPU = Limited("count", limits.VCPU, _count(limits.VCPU))
MEMORY = Limited("size", limits.MEMORY_MIB, lambda text: memory_mib(text, what=""))
DISK_SIZE = Limited("size", limits.DISK_SIZE, _sized(limits.DISK_SIZE))
IMAGE_SIZE = Limited("size", limits.IMAGE_SIZE, _sized(limits.IMAGE_SIZE))
BOOT_TIMEOUT = Limited("seconds", limits.BOOT_TIMEOUT_S, _count(limits.BOOT_TIMEOUT_S))

#: ``vm cp --max-size``: any size parse_size takes (up to its 16 TiB).
_ANY_SIZE = limits.Bound(1, units.MAX_SIZE_BYTES, "bytes")
ANY_SIZE = Limited("size", _ANY_SIZE, _sized(_ANY_SIZE))


class Seconds(click.ParamType[float, Any]):
    """``vm exec --timeout``: seconds, fractions allowed, more than 0 and at most
    ``maximum``, said in seconds (click's FloatRange said "not in the range 0<x<=…")."""

    name = "seconds"

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        got = f"(got {units.describe_input(value)})"
        text = value if isinstance(value, str) else ""
        if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", text, re.ASCII):
            self.fail(f"must be a number of seconds like 30 or 2.5 {got}", param, ctx)
        seconds = float(text)
        if seconds <= 0:
            self.fail(f"must be more than 0 seconds {got}", param, ctx)
        if seconds > self.maximum:
            self.fail(
                f"must be at most {units.format_amount(self.maximum, 'seconds')} {got}", param, ctx
            )
        return seconds


EXEC_TIMEOUT = Seconds(limits.EXEC_TIMEOUT_S_MAX)


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
