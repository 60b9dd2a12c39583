"""The daemon's DNS server: ``<vm>.vm`` A records on 127.0.0.1:42069 (SPEC §4).

Owns: the UDP socket on the loopback address, the current name → IPv4 table, and what
keeps a flood harmless (ADVERSARIAL 81): memory is the kernel's receive buffer plus no
queue of unsent replies; CPU is bounded work per packet (tens of microseconds) and
asyncio reads one datagram per event-loop turn, so the API keeps its share of the loop.
Failing to bind is an error that stops the daemon (ADVERSARIAL 82, 128): a process
squatting on the port would otherwise receive the queries the host routes to banger.
Must not: build or read DNS messages (``banger.dns.answers`` does), read the state
database, or ever listen beyond loopback.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType

from banger.dns.answers import answer
from banger.errors import BangerError, ConfigError, InvalidArgument
from banger.model.records import VmRecord, VmState

log = logging.getLogger("banger.dns")

DNS_PORT = 42069
#: Overrides the port, for tests and for running two daemons side by side while
#: developing banger; 0 picks a free port. Not a config key: resolvers are pointed at 42069.
PORT_ENV = "BANGER_DNS_PORT"
DNS_HOST = "127.0.0.1"
#: A query is a header, one name of at most 255 bytes and an OPT record; anything
#: this large is not a query and is dropped before it is read.
MAX_QUERY_BYTES = 4096
ERROR_LOG_INTERVAL_S = 60.0

_VM_LABEL = re.compile(r"[a-z0-9-]{1,63}")

RecordsSource = Callable[[], Mapping[str, str]]


class DnsPortUnavailable(BangerError):
    code = "dns_port_unavailable"
    status = 500


def dns_port_from_env(env: Mapping[str, str] | None = None) -> int:
    """The port to serve on: 42069 unless ``BANGER_DNS_PORT`` says otherwise."""
    value = (os.environ if env is None else env).get(PORT_ENV)
    if value is None or value == "":
        return DNS_PORT
    # isdigit() would accept "١٢٣" and int() "1_024" (ADVERSARIAL 47).
    if not (value.isascii() and value.isdigit()) or int(value) > 65535:
        raise ConfigError(
            f"{PORT_ENV}={value!r} is not a port number (0-65535)",
            hint=f"unset {PORT_ENV} to use the standard port {DNS_PORT}",
        )
    return int(value)


def records_from_vms(vms: Iterable[VmRecord]) -> dict[str, str]:
    """The DNS table for these rows: each running VM with an address (not the warm pool's:
    a pool VM gets a record under the name it is claimed with)."""
    return {vm.name: vm.ip for vm in vms if vm.state is VmState.RUNNING and vm.ip and not vm.pool}


@dataclass
class DnsStats:
    received: int = 0
    answered: int = 0
    dropped: int = 0
    errors: int = 0


class DnsServer:
    """``await start()``, then ``update(records)`` whenever VMs start or stop; ``close()``."""

    def __init__(
        self,
        records_source: RecordsSource,
        host: str = DNS_HOST,
        port: int = DNS_PORT,
    ) -> None:
        if not _is_ipv4_loopback(host):
            raise InvalidArgument(f"the DNS server listens on loopback only, not on {host!r}")
        self._source = records_source
        self.host = host
        self.port = port
        self._records: Mapping[str, str] = MappingProxyType({})
        self._transport: asyncio.DatagramTransport | None = None
        self._stats = DnsStats()
        self._last_error_log = float("-inf")
        self._paused = False

    @property
    def records(self) -> Mapping[str, str]:
        return self._records

    @property
    def stats(self) -> dict[str, int]:
        return asdict(self._stats)

    async def start(self) -> None:
        """Load the records and bind; raises ``DnsPortUnavailable`` if the port is taken."""
        self.refresh()
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(self.host, self.port)
            )
        except OSError as exc:
            raise _bind_error(self.host, self.port, exc) from exc
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        log.info("dns serving", extra={"fields": {"address": f"{self.host}:{self.port}"}})

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def refresh(self) -> None:
        """Reload the table from ``records_source``."""
        self.update(self._source())

    def update(self, records: Mapping[str, str]) -> None:
        """Replace the table; names are folded to lowercase, bad entries are skipped."""
        table: dict[str, str] = {}
        for name, ip in records.items():
            key = name.lower()
            if _VM_LABEL.fullmatch(key) and _is_ipv4(ip):
                table[key] = ip
            else:
                log.warning("dns record skipped", extra={"fields": {"name": name, "ip": ip}})
        # Swapped whole, never mutated: a packet always sees one consistent table.
        self._records = MappingProxyType(table)

    def handle(self, data: bytes) -> bytes | None:
        """The reply to one datagram, or None to drop it; counts what happened."""
        stats = self._stats
        stats.received += 1
        if len(data) > MAX_QUERY_BYTES:
            stats.dropped += 1
            return None
        try:
            reply = answer(data, self._records)
        except Exception:  # noqa: BLE001 - answer() catches its own; this guards the socket
            stats.errors += 1
            self._log_error()
            return None
        if reply is None:
            stats.dropped += 1
        return reply

    def _send(self, reply: bytes, addr: tuple[str, int]) -> None:
        transport = self._transport
        if transport is None or self._paused:
            self._stats.dropped += 1
            return
        transport.sendto(reply, addr)
        self._stats.answered += 1

    def _set_paused(self, *, paused: bool) -> None:
        self._paused = paused

    def _log_error(self) -> None:
        # At most one traceback a minute: a crafted flood must not fill the log.
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            log.exception("dns packet failed", extra={"fields": self.stats})


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self._server.handle(data)
        if reply is not None:
            self._server._send(reply, addr)

    # asyncio pauses us when replies the kernel would not take pile up past its
    # high-water mark (64 KiB); its datagram buffer is otherwise unbounded, so replies
    # are dropped, not queued, until it drains.
    def pause_writing(self) -> None:
        self._server._set_paused(paused=True)

    def resume_writing(self) -> None:
        self._server._set_paused(paused=False)

    def error_received(self, exc: Exception) -> None:
        # ICMP port-unreachable from a querier that went away: nothing to do.
        log.debug("dns socket error", extra={"fields": {"error": str(exc)}})


def _bind_error(host: str, port: int, exc: OSError) -> DnsPortUnavailable:
    if exc.errno == errno.EADDRINUSE:
        return DnsPortUnavailable(
            f"cannot serve DNS on {host}:{port}: the port is already in use",
            details=str(exc),
            hint=(
                f"another program holds UDP port {port} (`ss -ulpn 'sport = :{port}'` shows "
                "which); stop it: banger does not run without its DNS server, since "
                "whoever holds the port receives the queries for .vm names"
            ),
        )
    return DnsPortUnavailable(
        f"cannot serve DNS on {host}:{port}: {exc.strerror or exc}",
        details=str(exc),
        hint=f"check that {host} is configured on the loopback interface",
    )


def _is_ipv4_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


def _is_ipv4(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True
