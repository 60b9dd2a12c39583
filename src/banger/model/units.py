"""Sizes, durations and counts as people type them (CLI flags and config values).

Owns: parsing "8G"-style sizes, "1h30m"-style durations and plain positive integers,
formatting sizes and durations back, checking a number against its ``limits.Bound`` with
the bound in the user's units ("must be at least 128 MiB"), and quoting a rejected input
for an error message.

Must not: do I/O, or know which flag or config key a value came from. Callers pass
``what`` (a flag name such as ``--memory``) so the message names it; with no ``what`` the
message is the bare rule, which the config loader prefixes with the dotted key.
"""

from __future__ import annotations

import json
import re

from banger.errors import InvalidArgument
from banger.model.limits import MEMORY_MIB, Bound, Unit

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4

MAX_SIZE_BYTES = 16 * TIB
MAX_DURATION_S = 365 * 86400
DEFAULT_MAX_INT = 2**31 - 1

_SIZE_UNITS = {"": 1, "K": KIB, "M": MIB, "G": GIB, "T": TIB}
_SIZE_RE = re.compile(r"([0-9]+)(?:([KMGT])(?:iB|B)?|B)?", re.ASCII | re.IGNORECASE)
_FRACTION_RE = re.compile(r"[0-9]*\.[0-9]+[KMGT]?(?:iB|B)?", re.ASCII | re.IGNORECASE)
_DURATION_RE = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?", re.ASCII)
_DURATION_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
# Enough digits for any value below the caps; longer inputs are rejected before int() so a
# 5000-digit string costs nothing (and never hits Python's int_max_str_digits ValueError).
_MAX_DIGITS = 20

SIZE_RULE = "must be a whole number with an optional K, M, G or T suffix (1K = 1024), like 512M"
DURATION_RULE = "must be a duration like 90s, 30m, 2h, 1d or 1h30m (largest unit first), or 0"


def describe_input(value: object, *, limit: int = 40) -> str:
    """Show a rejected input the way the user wrote it: TOML-ish, quoted, bounded."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        # str() of a >4300-digit int raises ValueError on CPython 3.11+.
        text = str(value) if value.bit_length() < 1000 else "an integer with hundreds of digits"
    elif isinstance(value, str | list | dict):
        # JSON quoting reads like TOML and escapes control characters.
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _reject(what: str, rule: str, value: object) -> InvalidArgument:
    prefix = f"{what}: " if what else ""
    return InvalidArgument(f"{prefix}{rule} (got {describe_input(value)})")


def parse_size(text: object, *, what: str = "", minimum_bytes: int = 1) -> int:
    """Bytes in ``text``: "1048576", "512M", "8G", "1TiB" (binary units, whole numbers)."""
    if not isinstance(text, str):
        raise _reject(what, "must be a quoted size like 512M or 8G", text)
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        if text.startswith("-"):
            raise _reject(what, "must be greater than zero", text)
        if _FRACTION_RE.fullmatch(text):
            raise _reject(
                what, "must be a whole number; use a smaller unit (1536M, not 1.5G)", text
            )
        raise _reject(what, SIZE_RULE, text)
    digits, unit = match.group(1), (match.group(2) or "").upper()
    if len(digits) > _MAX_DIGITS or int(digits) * _SIZE_UNITS[unit] > MAX_SIZE_BYTES:
        raise _reject(what, f"must be at most {format_amount(MAX_SIZE_BYTES, 'bytes')}", text)
    size_bytes = int(digits) * _SIZE_UNITS[unit]
    if size_bytes == 0:
        raise _reject(what, "must be greater than zero", text)
    if size_bytes < minimum_bytes:
        raise _reject(what, f"must be at least {format_amount(minimum_bytes, 'bytes')}", text)
    return size_bytes


def format_size(size_bytes: int) -> str:
    """ "8G", "512M"; "1.5G" when not a whole number of any unit, never a misleading round."""
    if size_bytes < 0:
        raise ValueError(f"a size cannot be negative: {size_bytes}")
    for suffix, unit in (("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)):
        if size_bytes < unit:
            continue
        if size_bytes % unit == 0:
            return f"{size_bytes // unit}{suffix}"
        shown = f"{size_bytes / unit:.2f}".rstrip("0").rstrip(".")
        if "." in shown:
            return f"{shown}{suffix}"
    return str(size_bytes)


_SIZE_NAMES = {"T": "TiB", "G": "GiB", "M": "MiB", "K": "KiB"}


def format_amount(value: int, unit: Unit) -> str:
    """A bound as a person reads it: "256 MiB", "1 TiB", "1 vCPU", "3600 seconds"."""
    if unit in ("bytes", "MiB"):
        size_bytes = value * MIB if unit == "MiB" else value
        short = format_size(size_bytes)
        suffix = short[-1:]
        if suffix in _SIZE_NAMES:
            return f"{short[:-1]} {_SIZE_NAMES[suffix]}"
        return f"{short} byte" + ("" if size_bytes == 1 else "s")
    singular = {"vCPU": "vCPU", "seconds": "second"}[unit]
    plural = {"vCPU": "vCPUs", "seconds": "seconds"}[unit]
    return f"{value} {singular if value == 1 else plural}"


def check_bound(value: int, bound: Bound, *, what: str = "", got: object = None) -> int:
    """``value`` if ``bound`` admits it; else InvalidArgument naming ``what`` and the bound
    in its unit. ``got`` is the input as the user wrote it (default: ``value``)."""
    shown = value if got is None else got
    if value < bound.low:
        raise _reject(what, f"must be at least {format_amount(bound.low, bound.unit)}", shown)
    if value > bound.high:
        raise _reject(what, f"must be at most {format_amount(bound.high, bound.unit)}", shown)
    return value


def parse_bounded_int(text: object, bound: Bound, *, what: str) -> int:
    """A count such as ``--vcpu 4`` or ``--boot-timeout 600``: ASCII digits only, within
    ``bound`` (the message gives the bound in its unit: "at least 1 vCPU")."""
    if isinstance(text, bool):
        raise _reject(what, "must be a whole number, not a boolean", text)
    if isinstance(text, int):
        return check_bound(text, bound, what=what)
    if isinstance(text, str) and re.fullmatch(r"-?[0-9]+", text, re.ASCII):
        digits = text.lstrip("-").lstrip("0")
        if len(digits) > _MAX_DIGITS:  # int() of 5000 digits is slow, and far off anyway
            far = bound.low - 1 if text.startswith("-") else bound.high + 1
            return check_bound(far, bound, what=what, got=text)
        return check_bound(int(text), bound, what=what, got=text)
    low, high = format_amount(bound.low, bound.unit), format_amount(bound.high, bound.unit)
    rule = f"must be a whole number from {low} to {high}, written with the digits 0-9"
    raise _reject(what, rule, text)


def parse_memory_mib(text: object, *, what: str) -> int:
    """MiB in ``text``: a plain number of MiB ("2048") or a size ("2G"), within
    ``limits.MEMORY_MIB``; sizes must be a whole number of MiB."""
    if isinstance(text, str) and re.fullmatch(r"-?[0-9]+", text, re.ASCII):
        return parse_bounded_int(text, MEMORY_MIB, what=what)
    size_bytes = parse_size(text, what=what)
    if size_bytes % MIB:
        raise _reject(what, "must be a whole number of MiB (1536M, not 1500K)", text)
    return check_bound(size_bytes // MIB, MEMORY_MIB, what=what, got=text)


def parse_duration(text: object, *, what: str = "", minimum_s: int = 0) -> int:
    """Seconds in ``text``: "0" (off), "90s", "30m", "2h", "1d", "1h30m"."""
    if not isinstance(text, str):
        raise _reject(what, 'must be a quoted duration like "30m", or "0"', text)
    match = _DURATION_RE.fullmatch(text)
    if text == "0":
        seconds = 0
    elif not text or match is None:
        raise _reject(what, DURATION_RULE, text)
    elif any(len(part or "") > _MAX_DIGITS for part in match.groups()):
        raise _reject(what, f"must be at most {format_duration(MAX_DURATION_S)}", text)
    else:
        seconds = sum(
            int(part or 0) * scale
            for part, (_, scale) in zip(match.groups(), _DURATION_UNITS, strict=True)
        )
    if seconds > MAX_DURATION_S:
        raise _reject(what, f"must be at most {format_duration(MAX_DURATION_S)}", text)
    if seconds < minimum_s:
        raise _reject(what, f"must be at least {format_duration(minimum_s)}", text)
    return seconds


def format_duration(seconds: int) -> str:
    """The inverse of parse_duration: 5400 -> "1h30m", 0 -> "0"."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}")
    parts = []
    for suffix, scale in _DURATION_UNITS:
        count, seconds = divmod(seconds, scale)
        if count:
            parts.append(f"{count}{suffix}")
    return "".join(parts) or "0"


def parse_positive_int(text: object, *, what: str, maximum: int = DEFAULT_MAX_INT) -> int:
    """A count such as ``--vcpu 4``: ASCII digits only, from 1 to ``maximum``.

    ``int()`` would also take "1_024", " 7 " and Arabic-Indic digits; none of those is
    what a user meant to type into a count, so they are refused.
    """
    rule = f"must be a whole number from 1 to {maximum}, written with the digits 0-9"
    if isinstance(text, bool):
        raise _reject(what, "must be a whole number, not a boolean", text)
    if isinstance(text, int):
        value = text
    elif isinstance(text, str) and re.fullmatch(r"[0-9]+", text, re.ASCII):
        if len(text.lstrip("0")) > len(str(maximum)):
            raise _reject(what, f"must be at most {maximum}", text)
        value = int(text)
    else:
        raise _reject(what, rule, text)
    if value < 1:
        raise _reject(what, "must be at least 1", text)
    if value > maximum:
        raise _reject(what, f"must be at most {maximum}", text)
    return value
