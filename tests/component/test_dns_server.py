"""The DNS server over real UDP on 127.0.0.1 (SPEC §4, ADVERSARIAL 72-83, 128).

The server runs on its own event loop in a thread, on a free port; dnspython (and dig,
when installed) query it like a host resolver would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import dns.message
import dns.query
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from banger.dns.server import (
    DNS_PORT,
    PORT_ENV,
    DnsPortUnavailable,
    DnsServer,
    dns_port_from_env,
    records_from_vms,
)
from banger.errors import ConfigError, InvalidArgument
from banger.model.records import VmRecord, VmState, utc_now
from tests.conftest import BangerHome

T = TypeVar("T")
HOST = "127.0.0.1"


class LiveDns:
    """A DnsServer on a private event loop in a background thread."""

    def __init__(self, records: Mapping[str, str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = DnsServer(lambda: records, port=0)
        self.call(self.server.start())
        self.port = self.server.port

    def call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=10)

    def run(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        result: T = self.call(wrapper())
        return result

    def update(self, records: Mapping[str, str]) -> None:
        self.run(lambda: self.server.update(records))

    def query(self, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, **kw)
        return dns.query.udp(q, HOST, port=self.port, timeout=2)

    def close(self) -> None:
        self.run(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture
def live() -> Iterator[LiveDns]:
    server = LiveDns({"myvm": "10.213.7.5", "other": "10.213.7.6"})
    try:
        yield server
    finally:
        server.close()


def a_of(reply: dns.message.Message) -> list[str]:
    return [r.address for rrset in reply.answer for r in rrset]


# -- behaviour over the wire --------------------------------------------------------------


def test_a_record(live: LiveDns) -> None:
    reply = live.query("myvm.vm")
    assert reply.rcode() == dns.rcode.NOERROR
    assert a_of(reply) == ["10.213.7.5"]


def test_case_insensitive(live: LiveDns) -> None:
    assert a_of(live.query("MyVM.VM.")) == ["10.213.7.5"]


@pytest.mark.parametrize("rdtype", ["AAAA", "MX"])
def test_other_types_are_nodata(live: LiveDns, rdtype: str) -> None:
    reply = live.query("myvm.vm", rdtype)
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []


def test_unknown_vm_is_nxdomain(live: LiveDns) -> None:
    assert live.query("ghost.vm").rcode() == dns.rcode.NXDOMAIN


def test_outside_vm_is_refused(live: LiveDns) -> None:
    for name in ("example.com", "debian.org", "myvm.vm.evil.com"):
        assert live.query(name).rcode() == dns.rcode.REFUSED


def test_edns_query(live: LiveDns) -> None:
    reply = live.query("myvm.vm", use_edns=0, payload=1232)
    assert reply.edns == 0 and a_of(reply) == ["10.213.7.5"]


def test_records_follow_updates(live: LiveDns) -> None:
    live.update({"myvm": "10.213.7.5", "fresh": "10.213.7.9"})
    assert a_of(live.query("fresh.vm")) == ["10.213.7.9"]
    live.update({"fresh": "10.213.7.9"})  # myvm stopped or deleted
    assert live.query("myvm.vm").rcode() == dns.rcode.NXDOMAIN
    assert live.query("myvm.vm", "AAAA").rcode() == dns.rcode.NXDOMAIN


def test_update_folds_case_and_skips_bad_entries(live: LiveDns) -> None:
    live.update({"Loud": "10.0.0.1", "bad.name": "10.0.0.2", "noip": "nope", "v6": "::1"})
    assert live.run(lambda: dict(live.server.records)) == {"loud": "10.0.0.1"}


def test_refresh_reads_the_source_again() -> None:
    table = {"a": "10.0.0.1"}
    server = DnsServer(lambda: dict(table), port=0)
    server.refresh()
    table["b"] = "10.0.0.2"
    server.refresh()
    assert dict(server.records) == {"a": "10.0.0.1", "b": "10.0.0.2"}


def test_records_from_vms_keeps_running_vms_with_addresses() -> None:
    def row(name: str, state: VmState, ip: str | None) -> VmRecord:
        now = utc_now()
        return VmRecord(
            name=name,
            image_id=1,
            state=state,
            vcpu=1,
            memory_mib=512,
            disk_size_bytes=1 << 30,
            created_at=now,
            updated_at=now,
            ip=ip,
        )

    rows = [
        row("up", VmState.RUNNING, "10.0.0.1"),
        row("down", VmState.STOPPED, "10.0.0.2"),
        row("booting", VmState.STARTING, "10.0.0.3"),
        row("noip", VmState.RUNNING, None),
    ]
    assert records_from_vms(rows) == {"up": "10.0.0.1"}


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (dnsutils) not installed")
def test_dig(live: LiveDns) -> None:
    def dig(*args: str) -> str:
        argv = ["dig", "+time=2", "+tries=1", f"@{HOST}", "-p", str(live.port), *args]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    assert dig("+short", "myvm.vm").strip() == "10.213.7.5"
    assert dig("+short", "MYVM.vm").strip() == "10.213.7.5"
    assert "status: NXDOMAIN" in dig("ghost.vm")
    assert "status: REFUSED" in dig("example.com")
    assert "status: NOERROR" in dig("myvm.vm", "AAAA")
    assert "status: NOERROR" in dig("+noedns", "myvm.vm")


# -- binding (ADVERSARIAL 82, 128) ---------------------------------------------------------


def test_listens_on_loopback_only(live: LiveDns) -> None:
    sockname = live.run(lambda: live.server._transport.get_extra_info("sockname"))  # type: ignore[union-attr]
    assert sockname == (HOST, live.port)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.213.7.1", "::1", "localhost", ""])
def test_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(InvalidArgument):
        DnsServer(dict, host=host)


def _squat(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


@pytest.mark.parametrize("squat_host", [HOST, "0.0.0.0"])
def test_taken_port_fails_loudly_naming_it(squat_host: str) -> None:
    with _squat(squat_host) as squatter:
        port = squatter.getsockname()[1]
        server = DnsServer(dict, port=port)
        with pytest.raises(DnsPortUnavailable) as err:
            asyncio.run(server.start())
    assert f"127.0.0.1:{port}" in err.value.brief
    assert "already in use" in err.value.brief
    assert err.value.hint is not None and str(port) in err.value.hint


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a squatter as another user")
def test_port_squatted_by_another_user_fails_loudly() -> None:
    code = (
        "import socket,sys,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEPORT,1);"
        "s.bind(('127.0.0.1',0));print(s.getsockname()[1],flush=True);time.sleep(30)"
    )
    squatter = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, user=65534
    )
    try:
        assert squatter.stdout is not None
        port = int(squatter.stdout.readline())
        with pytest.raises(DnsPortUnavailable, match=str(port)):
            asyncio.run(DnsServer(dict, port=port).start())
    finally:
        squatter.kill()
        squatter.wait()


def test_port_env_override() -> None:
    assert dns_port_from_env({}) == DNS_PORT == 42069
    assert dns_port_from_env({PORT_ENV: ""}) == DNS_PORT
    assert dns_port_from_env({PORT_ENV: "5353"}) == 5353
    assert dns_port_from_env({PORT_ENV: "0"}) == 0
    for bad in ("-1", "65536", "1_024", "١٢٣", "53 ", "x"):
        with pytest.raises(ConfigError, match=PORT_ENV):
            dns_port_from_env({PORT_ENV: bad})


# -- hostile input over the wire (ADVERSARIAL 72, 80, 81, 83) -------------------------------


@pytest.fixture
def junk_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def test_garbage_then_valid_query(live: LiveDns, junk_socket: socket.socket) -> None:
    for packet in (b"", b"\x00", b"GET / HTTP/1.1\r\n\r\n", os.urandom(11), os.urandom(3000)):
        junk_socket.sendto(packet, (HOST, live.port))
    assert a_of(live.query("myvm.vm")) == ["10.213.7.5"]


def test_oversized_datagram_is_dropped(live: LiveDns) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        big = dns.message.make_query("myvm.vm", "A").to_wire() + b"\x00" * 5000
        sock.sendto(big, (HOST, live.port))
        with pytest.raises(TimeoutError):
            sock.recv(65535)
    assert a_of(live.query("myvm.vm")) == ["10.213.7.5"]


@settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(packet=st.binary(max_size=700))
def test_fuzz_live_server_keeps_answering(
    live: LiveDns, junk_socket: socket.socket, packet: bytes
) -> None:
    junk_socket.sendto(packet, (HOST, live.port))
    assert a_of(live.query("myvm.vm")) == ["10.213.7.5"]


def _rss_bytes() -> int:
    for line in open("/proc/self/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _loop_lateness(live: LiveDns, stop: threading.Event) -> Future[float]:
    """Worst lateness of a 5 ms ticker on the server's loop: how blocked the API would be."""

    async def ticker() -> float:
        worst = 0.0
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.005)
            worst = max(worst, time.monotonic() - before - 0.005)
        return worst

    return asyncio.run_coroutine_threadsafe(ticker(), live.loop)


def test_flood_stays_bounded_and_server_still_answers(
    live: LiveDns, junk_socket: socket.socket
) -> None:
    valid = dns.message.make_query("myvm.vm", "A").to_wire()
    kinds = [valid, valid[:15], b"\xff" * 40, dns.message.make_query("x.com", "A").to_wire()]
    rss_before = _rss_bytes()
    cpu_before = time.process_time()
    stop = threading.Event()
    lateness = _loop_lateness(live, stop)
    started = time.monotonic()
    sent = 0
    for i in range(10_000):
        try:
            junk_socket.sendto(kinds[i % len(kinds)], (HOST, live.port))
            sent += 1
        except BlockingIOError:
            time.sleep(0.0005)
    # Give the server time to drain its receive buffer before measuring.
    time.sleep(0.5)
    stop.set()
    worst_lateness = lateness.result(timeout=10)
    assert a_of(live.query("myvm.vm")) == ["10.213.7.5"]
    stats = live.run(lambda: live.server.stats)
    assert stats["received"] > 0
    assert stats["errors"] == 0
    # Replies to a socket that never reads are not queued up in the daemon.
    assert _rss_bytes() - rss_before < 32 * 1024 * 1024
    assert time.process_time() - cpu_before < 15
    assert time.monotonic() - started < 15
    assert worst_lateness < 0.25, f"event loop blocked for {worst_lateness:.3f}s"
    assert sent > 9000


# -- inside bangerd (active once the daemon starts the server) --------------------------------


def test_daemon_does_not_start_without_its_dns_port(home: BangerHome) -> None:
    with _squat(HOST) as squatter:
        port = squatter.getsockname()[1]
        home.env[PORT_ENV] = str(port)
        result = home.banger("daemon", "status")
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "already in use" in result.stderr
    assert home.daemon_pid() is None


def test_daemon_serves_dns(home: BangerHome) -> None:
    with _squat(HOST) as probe:
        port = probe.getsockname()[1]
    home.env[PORT_ENV] = str(port)
    assert home.banger("daemon", "status").returncode == 0
    query = dns.message.make_query("ghost.vm", "A")
    assert dns.query.udp(query, HOST, port=port, timeout=2).rcode() == dns.rcode.NXDOMAIN
    outside = dns.message.make_query("example.com", "A")
    assert dns.query.udp(outside, HOST, port=port, timeout=2).rcode() == dns.rcode.REFUSED
