"""Parsing and help for sized options (``--vcpu``, ``--memory``, ``--disk-size``,
``--boot-timeout``, ``image pull --size``).

Owns: turning user text into numbers while click parses the command line, checked
against ``banger.model.limits`` with the bound in the user's units (ADVERSARIAL 47,
issue 14 item 15): a bad value is a usage error (exit 2) naming the flag, before anything
is printed or asked of the daemon. Also showing the resolved default in ``--help`` with
its provenance (config|auto|builtin), computed only when help is drawn so ordinary
commands do not pay for loading the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from banger.errors import InvalidArgument
from banger.model import limits, units


def vcpu_count(text: str, *, what: str = "--vcpu") -> int:
    return units.parse_bounded_int(text, limits.VCPU, what=what)


def memory_mib(text: str, *, what: str = "--memory") -> int:
    return units.parse_memory_mib(text, what=what)


def size_bytes(text: str, *, what: str) -> int:
    return units.parse_size(text, what=what)


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


class ResolvedDefault(click.Option):
    """An option whose help shows the default the daemon would use, and where it is from."""

    def __init__(self, *args: Any, field: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.field = field

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        return record[0], f"{record[1]}  [default: {self._resolved()}]"

    def _resolved(self) -> str:
        from banger.config.settings import load_config
        from banger.config.vm_defaults import HostFacts, resolve_vm_defaults
        from banger.errors import BangerError

        try:
            defaults = resolve_vm_defaults(load_config(), HostFacts.probe())
        except BangerError:
            return "see `banger doctor`"
        value = getattr(defaults, self.field)
        if self.field == "disk_size_bytes":
            shown = units.format_size(value.value)
        elif self.field == "memory_mib":
            shown = f"{value.value} MiB"
        else:
            shown = str(value.value)
        return f"{shown} ({value.source})"
