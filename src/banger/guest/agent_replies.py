"""What the guest agent's replies may say, checked: ``/healthz`` and ``/ports``.

Owns: the host's model of a health reply and of a ports listing, and turning the decoded
JSON of a reply into them or a ``ValueError`` naming the first thing wrong (types, ranges,
lengths, IP addresses; text made printable). Must not: do I/O or trust any field: the
guest is untrusted (ADVERSARIAL 64), nothing here becomes a host path or command.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any

from banger.guest.ports import Listener, printable

MAX_LISTENERS = 4096
MAX_ADDRESS_CHARS = 64
MAX_NAME_CHARS = 256
MAX_COMMAND_CHARS = 4096


@dataclass(frozen=True)
class AgentHealth:
    ok: bool
    uptime_s: float
    hostname: str
    agent_version: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "uptime_s": self.uptime_s,
            "hostname": self.hostname,
            "agent_version": self.agent_version,
        }


@dataclass(frozen=True)
class GuestPorts:
    listeners: tuple[Listener, ...]
    #: the agent listed only the first of more sockets than it reports
    truncated: bool


def _text(data: dict[str, Any], key: str, limit: int, *, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string")
    if len(value) > limit:
        raise ValueError(f"{key!r} is longer than {limit} characters")
    return printable(value, limit)


def _integer(value: object, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key!r} is not an integer in [{low}, {high}]")
    return value


def parse_health(data: dict[str, Any]) -> AgentHealth:
    ok = data.get("ok")
    if not isinstance(ok, bool):
        raise ValueError("'ok' is not a boolean")
    uptime = data.get("uptime_s")
    if isinstance(uptime, bool) or not isinstance(uptime, int | float):
        raise ValueError("'uptime_s' is not a number")
    if not math.isfinite(uptime) or uptime < 0:
        raise ValueError("'uptime_s' is not a finite, non-negative number")
    hostname = _text(data, "hostname", MAX_NAME_CHARS) or ""
    version = _text(data, "agent_version", 64) or ""
    return AgentHealth(ok, float(uptime), hostname, version)


def parse_listener(item: object) -> Listener:
    if not isinstance(item, dict):
        raise ValueError("a listener is not an object")
    proto = item.get("proto")
    if proto not in ("tcp", "udp"):
        raise ValueError(f"unknown proto {printable(str(proto), 20)!r}")
    address = _text(item, "address", MAX_ADDRESS_CHARS) or ""
    try:
        normalized = str(ipaddress.ip_address(address))
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address") from None
    port = _integer(item.get("port"), "port", 1, 65535)
    pid = item.get("pid")
    return Listener(
        proto=proto,
        address=normalized,
        port=port,
        pid=None if pid is None else _integer(pid, "pid", 1, 2**31),
        process=_text(item, "process", MAX_NAME_CHARS, optional=True),
        command=_text(item, "command", MAX_COMMAND_CHARS, optional=True),
    )


def parse_ports(data: dict[str, Any]) -> GuestPorts:
    items = data.get("ports")
    if not isinstance(items, list):
        raise ValueError("'ports' is not a list")
    if len(items) > MAX_LISTENERS:
        raise ValueError(f"more than {MAX_LISTENERS} listeners")
    truncated = data.get("truncated", False)
    return GuestPorts(tuple(parse_listener(i) for i in items), truncated is True)
