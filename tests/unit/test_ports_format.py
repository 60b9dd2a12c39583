"""``vm ports``: merging the agent's sockets into rows, endpoints, web links, the web probe.

The formatter is pure. The probe (``webprobe.probe_web``) is exercised here against
servers on 127.0.0.1 only: plain HTTP, HTTPS with a throwaway self-signed certificate,
a silent port, a non-HTTP talker and a closed port.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from banger.guest.ports import (
    COLUMNS,
    Listener,
    PortEntry,
    endpoint,
    format_table,
    merge,
    printable,
    probe_targets,
    rows,
    with_schemes,
)
from banger.guest.webprobe import probe_web


def L(
    proto: str,
    address: str,
    port: int,
    process: str | None = "python3",
    *,
    pid: int | None = 42,
    command: str | None = None,
) -> Listener:
    if command is None and process is not None:
        command = f"{process} -x"
    return Listener(proto, address, port, pid, process, command)


SAMPLE = [
    L("tcp", "0.0.0.0", 8000, command="python3 -m http.server 8000"),
    L("tcp", "::", 8000, command="python3 -m http.server 8000"),
    L("tcp", "0.0.0.0", 22, "sshd", command="sshd: /usr/sbin/sshd -D [listener]"),
    L("tcp", "::", 22, "sshd", command="sshd: /usr/sbin/sshd -D [listener]"),
    L("udp", "0.0.0.0", 68, "dhclient"),
    L("tcp", "127.0.0.1", 5432, "postgres"),
    L("tcp", "::1", 5432, "postgres"),
    L("tcp", "192.168.1.5", 8443, "caddy", command="caddy run"),
    L("udp", "127.0.0.53", 53, "systemd-resolve"),
    L("tcp", "::ffff:127.0.0.1", 9000, "mapped"),
    L("tcp", "0.0.0.0", 3000, None, pid=None),
]


def test_dual_stack_duplicates_merge_into_one_row() -> None:
    entries = merge(SAMPLE)
    assert [(e.proto, e.port, e.local_only) for e in entries] == [
        ("tcp", 22, False),
        ("tcp", 3000, False),
        ("tcp", 5432, True),
        ("tcp", 8000, False),
        ("tcp", 8443, False),
        ("tcp", 9000, True),
        ("udp", 53, True),
        ("udp", 68, False),
    ]
    web = next(e for e in entries if e.port == 8000)
    assert web.addresses == ("0.0.0.0", "::")
    assert web.processes == ("python3",)
    assert web.command == "python3 -m http.server 8000"


def test_only_reachable_tcp_ports_are_probed() -> None:
    assert probe_targets(merge(SAMPLE)) == [22, 3000, 8000, 8443]


def test_rows_show_links_endpoints_and_local_addresses() -> None:
    entries = with_schemes(merge(SAMPLE), {8000: "http", 8443: "https", 5432: "http", 53: "x"})
    table = {r[1]: r for r in rows("dev", entries)}
    assert table["http://dev.vm:8000/"] == (
        "tcp",
        "http://dev.vm:8000/",
        "python3",
        "python3 -m http.server 8000",
    )
    assert table["https://dev.vm:8443/"][2:] == ("caddy", "caddy run")
    assert table["dev.vm:22"][2] == "sshd"
    assert table["dev.vm:3000"][2:] == ("-", "-")  # nobody the agent could see
    assert table["dev.vm:68"][0] == "udp"
    assert "127.0.0.1:5432,[::1]:5432" in table  # loopback only: no link, the real address
    assert "127.0.0.53:53" in table
    assert "[::ffff:127.0.0.1]:9000" in table


def test_format_table_aligns_columns() -> None:
    text = format_table("dev", with_schemes(merge(SAMPLE[:4]), {8000: "http"}))
    lines = text.splitlines()
    assert lines[0].split() == list(COLUMNS)
    assert lines[1].split(None, 3) == [
        "tcp", "dev.vm:22", "sshd", "sshd: /usr/sbin/sshd -D [listener]"
    ]  # fmt: skip
    assert lines[2].split(None, 3) == [
        "tcp", "http://dev.vm:8000/", "python3", "python3 -m http.server 8000"
    ]  # fmt: skip
    assert lines[0].index("ENDPOINT") == lines[1].index("dev.vm:22") == lines[2].index("http")
    assert format_table("dev", []) == "PROTO  ENDPOINT  PROCESS  COMMAND\n"


def test_guest_text_cannot_drive_the_terminal() -> None:
    hostile = L("tcp", "0.0.0.0", 1, "\x1b[2J", command="ls\r\x1b]0;owned\x07\u202egnp.exe\n")
    (row,) = rows("vm", merge([hostile]))
    assert row[2:] == ("?[2J", "ls??]0;owned??gnp.exe?")
    assert printable("x" * 1000) == "x" * 256
    assert printable("tab\there é 中") == "tab?here é 中"


def test_entries_round_trip_through_json() -> None:
    for entry in with_schemes(merge(SAMPLE), {8000: "http"}):
        assert PortEntry.from_dict(entry.to_dict()) == entry
    odd = PortEntry.from_dict({"proto": "tcp", "port": 1, "scheme": "gopher"})
    assert odd.scheme is None and endpoint("v", odd) == "v.vm:1"


# -- the web probe, on loopback ---------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _http_server(tls: ssl.SSLContext | None = None) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _tcp_server(greeting: bytes | None) -> Iterator[int]:
    """Accepts and says ``greeting`` (None: says nothing, ever)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                held.append(conn)
                if greeting is not None:
                    conn.sendall(greeting)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for conn in held:
            conn.close()


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the throwaway certificate")
    where = tmp_path_factory.mktemp("tls")
    key, cert = where / "key.pem", where / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=guest", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_probe_finds_https_first_then_http_and_nothing_else(tls_context: ssl.SSLContext) -> None:
    with (
        _http_server() as plain,
        _http_server(tls_context) as secure,
        _tcp_server(None) as silent,
        _tcp_server(b"SSH-2.0-OpenSSH_9.2\r\n") as ssh,
    ):
        closed = _closed_port()
        started = time.monotonic()
        found = asyncio.run(
            probe_web("127.0.0.1", [plain, secure, silent, ssh, closed], timeout_s=2.0)
        )
        took = time.monotonic() - started
    assert found == {plain: "http", secure: "https"}
    # The silent and the SSH port each cost a whole timeout: one after the other would
    # take 4 s, in parallel about 2 s. (2 s, not 1: a TLS handshake on a loaded 2-core
    # machine took over 1 s and the https port was missed.)
    assert took < 3.8


def test_a_plain_server_does_not_wait_for_the_tls_timeout() -> None:
    with _http_server() as plain:
        started = time.monotonic()
        assert asyncio.run(probe_web("127.0.0.1", [plain], timeout_s=5.0)) == {plain: "http"}
        assert time.monotonic() - started < 2.0


def test_probe_of_nothing_is_empty() -> None:
    assert asyncio.run(probe_web("127.0.0.1", [])) == {}


def test_merge_then_probe_then_rows() -> None:
    with _http_server() as plain:
        entries = merge([L("tcp", "0.0.0.0", plain), L("tcp", "::", plain)])
        schemes = asyncio.run(probe_web("127.0.0.1", probe_targets(entries), timeout_s=0.5))
    (row,) = rows("box", with_schemes(entries, schemes))
    assert row[1] == f"http://box.vm:{plain}/"
