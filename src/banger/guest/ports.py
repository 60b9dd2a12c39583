"""What ``banger vm ports`` shows: the guest's listeners as ``PROTO ENDPOINT PROCESS COMMAND``.

Owns: the host's model of one guest listener (``Listener``, already validated by the
agent client), merging the agent's per-socket list into rows (dual-stack duplicates — the
same port on ``0.0.0.0`` and ``::`` — become one), which rows are worth a web probe, the
endpoint text (``<vm>.vm:port``, or ``http(s)://<vm>.vm:port/`` once a probe said so, or the
loopback address for a listener only the guest can reach), the JSON form the API carries,
and making guest-supplied text safe for a terminal. Pure: no I/O (the probe itself is
``banger.guest.webprobe.probe_web``).
Must not: trust guest text: process names and commands may hold escape sequences.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

COLUMNS = ("PROTO", "ENDPOINT", "PROCESS", "COMMAND")
PROTOS = ("tcp", "udp")
SCHEMES = ("https", "http")
MAX_TEXT_CHARS = 256


def printable(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` with control and format characters (ESC, CR, bidi overrides…) as ``?``."""
    return "".join(
        "?" if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") else ch
        for ch in text[:limit]
    )


@dataclass(frozen=True)
class Listener:
    """One listening socket the agent reported."""

    proto: str  # "tcp" | "udp"
    address: str  # the bound address, e.g. "0.0.0.0", "::", "127.0.0.1"
    port: int
    pid: int | None = None
    process: str | None = None
    command: str | None = None

    @property
    def local_only(self) -> bool:
        """Bound to loopback: only the guest itself can reach it."""
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback


@dataclass(frozen=True)
class PortEntry:
    """One row of ``vm ports``: a port and everything listening on it the same way."""

    proto: str
    port: int
    addresses: tuple[str, ...]
    local_only: bool
    processes: tuple[str, ...]
    command: str
    scheme: str | None = None  # "https" | "http" once a probe answered

    def to_dict(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "port": self.port,
            "addresses": list(self.addresses),
            "local_only": self.local_only,
            "processes": list(self.processes),
            "command": self.command,
            "scheme": self.scheme,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PortEntry:
        scheme = data.get("scheme")
        return cls(
            proto=str(data["proto"]),
            port=int(data["port"]),
            addresses=tuple(str(a) for a in data.get("addresses", ())),
            local_only=bool(data.get("local_only", False)),
            processes=tuple(str(p) for p in data.get("processes", ())),
            command=str(data.get("command", "")),
            scheme=str(scheme) if scheme in SCHEMES else None,
        )


def merge(listeners: Iterable[Listener]) -> list[PortEntry]:
    """One row per (proto, port, reachable from the host or not), sorted tcp first."""
    groups: dict[tuple[str, int, bool], list[Listener]] = {}
    for item in listeners:
        groups.setdefault((item.proto, item.port, item.local_only), []).append(item)
    entries = []
    for (proto, port, local_only), items in groups.items():
        addresses = tuple(dict.fromkeys(i.address for i in items))
        names = tuple(dict.fromkeys(printable(i.process) for i in items if i.process))
        command = next((printable(i.command) for i in items if i.command), "")
        entries.append(PortEntry(proto, port, addresses, local_only, names, command))
    entries.sort(key=lambda e: (PROTOS.index(e.proto) if e.proto in PROTOS else 9, e.port))
    return entries


def probe_targets(entries: Iterable[PortEntry]) -> list[int]:
    """TCP ports the host can reach: the ones worth asking whether they speak HTTP(S)."""
    return sorted({e.port for e in entries if e.proto == "tcp" and not e.local_only})


def with_schemes(entries: Iterable[PortEntry], schemes: Mapping[int, str]) -> list[PortEntry]:
    """The rows with what the web probe found (``{port: "https" | "http"}``)."""
    out = []
    for entry in entries:
        scheme = schemes.get(entry.port)
        web = entry.proto == "tcp" and not entry.local_only and scheme in SCHEMES
        out.append(replace(entry, scheme=scheme) if web else entry)
    return out


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def endpoint(vm: str, entry: PortEntry) -> str:
    if entry.local_only:
        return ",".join(_host_port(a, entry.port) for a in entry.addresses)
    where = f"{vm}.vm:{entry.port}"
    return f"{entry.scheme}://{where}/" if entry.scheme else where


def rows(vm: str, entries: Sequence[PortEntry]) -> list[tuple[str, str, str, str]]:
    """Table rows under ``COLUMNS``; guest-supplied text is already made printable."""
    return [
        (
            e.proto,
            endpoint(vm, e),
            printable(",".join(e.processes)) or "-",
            printable(e.command) or "-",
        )
        for e in entries
    ]


def format_table(vm: str, entries: Sequence[PortEntry]) -> str:
    """The whole ``vm ports`` output as text (the CLI may use its own table writer)."""
    table = [COLUMNS, *rows(vm, entries)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return "\n".join(lines) + "\n"
