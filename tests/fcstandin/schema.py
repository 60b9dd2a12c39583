"""Request bodies checked the way Firecracker's serde derives check them.

Owns: parsing a body as strict JSON (no NaN/Infinity, duplicate keys kept so they can
be refused) and deserializing it into one of Firecracker's request structs with serde's
rules and wording: ``deny_unknown_fields`` ("unknown field `x`, expected one of …"),
"missing field `x`", "duplicate field `x`", "invalid type: …, expected …", integer
ranges ("invalid value: integer `300`, expected u8"), unit enums ("unknown variant …"),
``Option`` fields that accept null, ``#[serde(default)]`` fields that do not.
Must not: check anything beyond the body's shape (files, state: ``machine`` does).

Not reproduced: serde_json's " at line L column C" suffix, and serde's acceptance of a
JSON array in place of a struct.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: serde_json refuses to nest deeper than this.
MAX_DEPTH = 128


class BodyError(Exception):
    """serde's message for a body that does not deserialize."""


class Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order, duplicates kept."""


def parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError("invalid unicode code point") from exc
    try:
        value = json.loads(text, object_pairs_hook=Pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BodyError(_serde_syntax(exc.msg)) from exc
    except RecursionError as exc:
        raise BodyError("recursion limit exceeded") from exc
    if _depth(value) > MAX_DEPTH:
        raise BodyError("recursion limit exceeded")
    return value


def _no_constant(name: str) -> Any:
    # JSON has no NaN/Infinity; serde_json refuses them where Python would accept them.
    raise json.JSONDecodeError("Expecting value", name, 0)


def _serde_syntax(msg: str) -> str:
    known = {
        "Expecting value": "expected value",
        "Extra data": "trailing characters",
        "Expecting property name enclosed in double quotes": "key must be a string",
        "Expecting ',' delimiter": "expected `,` or `}`",
        "Expecting ':' delimiter": "expected `:`",
        "Unterminated string starting at": "EOF while parsing a string",
        "Invalid control character at": "control character (\\u0000-\\u001F) found while "
        "parsing a string",
    }
    return known.get(msg, msg[:1].lower() + msg[1:])


def _depth(value: Any) -> int:
    if isinstance(value, Pairs):
        return 1 + max((_depth(v) for _, v in value), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def unexpected(value: Any) -> str:
    """serde's ``Unexpected`` rendering of a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value!r}`" if math.isfinite(value) else "floating point"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, Pairs):
        return "map"
    return "sequence"


def _invalid_type(value: Any, expecting: str) -> BodyError:
    return BodyError(f"invalid type: {unexpected(value)}, expected {expecting}")


# -- value kinds ------------------------------------------------------------------------


class Kind:
    expecting = "a value"

    def check(self, value: Any) -> Any:
        raise NotImplementedError


class Str(Kind):
    expecting = "a string"

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise _invalid_type(value, self.expecting)
        return value


class PathStr(Str):
    expecting = "path string"


class Bool(Kind):
    expecting = "a boolean"

    def check(self, value: Any) -> Any:
        # Python's bool is an int, and 0/1 are not booleans to serde: test the type exactly.
        if not isinstance(value, bool):
            raise _invalid_type(value, self.expecting)
        return value


@dataclass(frozen=True)
class UInt(Kind):
    """A Rust unsigned integer: u8, u16, u32, u64, usize (64-bit here)."""

    rust: str

    @property
    def expecting(self) -> str:  # type: ignore[override]
        return self.rust

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid_type(value, self.rust)
        bits = 64 if self.rust == "usize" else int(self.rust[1:])
        if not 0 <= value < (1 << bits):
            raise BodyError(f"invalid value: integer `{value}`, expected {self.rust}")
        return value


@dataclass(frozen=True)
class Enum(Kind):
    """A unit-variant enum, spelled as its variant name."""

    name: str
    variants: tuple[str, ...]

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            # serde_json's deserialize_enum wants '"' or '{' here.
            raise BodyError("expected value")
        if value not in self.variants:
            raise BodyError(f"unknown variant `{value}`, expected {_one_of(self.variants)}")
        return value


class Mac(Str):
    """Firecracker's MacAddr: six two-digit hex groups separated by ':'."""

    def check(self, value: Any) -> Any:
        text = super().check(value)
        groups = text.split(":")
        if len(groups) != 6 or not all(len(g) == 2 and _is_hex(g) for g in groups):
            raise BodyError("The provided MAC address is invalid.")
        return text.lower()


class Level(Str):
    """Firecracker's logger LevelFilter: case-insensitive, 'warning' accepted for 'warn'."""

    names = ("off", "trace", "debug", "info", "warn", "warning", "error")

    def check(self, value: Any) -> Any:
        text = super().check(value)
        if text.lower() not in self.names:
            raise BodyError("Invalid LevelFilter")
        return "warn" if text.lower() == "warning" else text.lower()


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _one_of(names: Sequence[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    if not quoted:
        return "there are no fields"
    return quoted[0] if len(quoted) == 1 else "one of " + ", ".join(quoted)


# -- structs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    #: ``Option<T>``: may be missing or null.
    optional: bool = False
    #: ``#[serde(default)]`` on a plain field: may be missing, never null.
    default: Any = None
    has_default: bool = False


def opt(name: str, kind: Kind) -> Field:
    return Field(name, kind, optional=True)


def dflt(name: str, kind: Kind, default: Any) -> Field:
    return Field(name, kind, default=default, has_default=True)


@dataclass(frozen=True)
class Struct(Kind):
    name: str
    fields: tuple[Field, ...]
    deny_unknown: bool = True
    by_name: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})

    @property
    def expecting(self) -> str:  # type: ignore[override]
        return f"struct {self.name}"

    def check(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Pairs):
            raise _invalid_type(value, self.expecting)
        out: dict[str, Any] = {}
        for key, item in value:  # in document order, as serde visits the map
            spec = self.by_name.get(key)
            if spec is None:
                if self.deny_unknown:
                    raise BodyError(
                        f"unknown field `{key}`, expected {_one_of([f.name for f in self.fields])}"
                    )
                continue
            if key in out:
                raise BodyError(f"duplicate field `{key}`")
            out[key] = None if item is None and spec.optional else spec.kind.check(item)
        for spec in self.fields:
            if spec.name in out:
                continue
            if not (spec.optional or spec.has_default):
                raise BodyError(f"missing field `{spec.name}`")
            out[spec.name] = spec.default
        return out


def deserialize(raw: bytes, struct: Struct) -> dict[str, Any]:
    return struct.check(parse_json(raw))


# -- Firecracker v1.16 request structs (src/vmm/src/vmm_config/*.rs) --------------------

TOKEN_BUCKET = Struct(
    "TokenBucketConfig",
    (
        Field("size", UInt("u64")),
        opt("one_time_burst", UInt("u64")),
        Field("refill_time", UInt("u64")),
    ),
    deny_unknown=False,
)
RATE_LIMITER = Struct(
    "RateLimiterConfig", (opt("bandwidth", TOKEN_BUCKET), opt("ops", TOKEN_BUCKET))
)

BOOT_SOURCE = Struct(
    "BootSourceConfig",
    (Field("kernel_image_path", Str()), opt("initrd_path", Str()), opt("boot_args", Str())),
)
DRIVE = Struct(
    "BlockDeviceConfig",
    (
        Field("drive_id", Str()),
        opt("partuuid", Str()),
        Field("is_root_device", Bool()),
        dflt("cache_type", Enum("CacheType", ("Unsafe", "Writeback")), "Unsafe"),
        opt("is_read_only", Bool()),
        opt("path_on_host", Str()),
        opt("rate_limiter", RATE_LIMITER),
        opt("io_engine", Enum("FileEngineType", ("Async", "Sync"))),
        opt("socket", Str()),
    ),
)
NETWORK_INTERFACE = Struct(
    "NetworkInterfaceConfig",
    (
        Field("iface_id", Str()),
        Field("host_dev_name", Str()),
        opt("guest_mac", Mac()),
        opt("mtu", UInt("u16")),
        opt("rx_rate_limiter", RATE_LIMITER),
        opt("tx_rate_limiter", RATE_LIMITER),
    ),
)
CPU_TEMPLATES = ("C3", "T2", "T2S", "None", "T2CL", "T2A")
MACHINE_CONFIG = Struct(
    "MachineConfig",
    (
        Field("vcpu_count", UInt("u8")),
        Field("mem_size_mib", UInt("usize")),
        dflt("smt", Bool(), False),
        opt("cpu_template", Enum("StaticCpuTemplate", CPU_TEMPLATES)),
        dflt("track_dirty_pages", Bool(), False),
        dflt("huge_pages", Enum("HugePageConfig", ("None", "2M")), "None"),
    ),
)
LOGGER = Struct(
    "LoggerConfig",
    (
        opt("log_path", PathStr()),
        opt("level", Level()),
        opt("show_level", Bool()),
        opt("show_log_origin", Bool()),
        opt("module", Str()),
    ),
)
VSOCK = Struct(
    "VsockDeviceConfig",
    (opt("vsock_id", Str()), Field("guest_cid", UInt("u32")), Field("uds_path", Str())),
)
ACTION = Struct(
    "ActionBody",
    (
        Field(
            "action_type", Enum("ActionType", ("FlushMetrics", "InstanceStart", "SendCtrlAltDel"))
        ),
    ),
)
