"""A way out of a test's network namespace to Debian's archive, and nowhere else.

A daemon inside a netns of the test's own has no route out (TESTING.md network rule), yet
the default image is built from the host's Debian archive. This gives it an HTTP proxy
the way a workstation behind a proxy has one: ``HostProxy`` listens on a **Unix socket**
(filesystem sockets cross network namespaces) in the host namespace and forwards to the
hosts named in the host's apt sources only — never to a loopback or private-range address;
inside the namespace, ``forward`` (run with ``ip netns exec``) listens on the namespace's
own 127.0.0.1:3128 and relays each connection to that socket. The daemon then gets
``http_proxy=http://127.0.0.1:3128``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import sys
import threading
from pathlib import Path

PORT = 3128
MAX_HEAD = 64 * 1024


def apt_hosts() -> set[str]:
    hosts: set[str] = set()
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if path.suffix not in ("", ".list", ".sources") or not path.is_file():
            continue
        for match in re.finditer(r"https?://([A-Za-z0-9.-]+)", path.read_text()):
            hosts.add(match.group(1).lower())
    return hosts


#: Never a target, whatever a name resolves to: loopback, RFC 1918, link-local, CGNAT.
FORBIDDEN = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


def _allowed_address(host: str, port: int) -> bool:
    # Not ip.is_global: the machines' archive host may resolve into a documentation range
    # (their egress); what the rule forbids is loopback and private-range targets.
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = [ipaddress.ip_address(i[4][0]) for i in infos]
    return bool(addresses) and not any(
        a in net for a in addresses for net in FORBIDDEN if a.version == net.version
    )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))


class HostProxy:
    """The host-side half; ``allowed`` defaults to the hosts of the host's apt sources."""

    def __init__(self, socket_path: Path, allowed: set[str] | None = None) -> None:
        self.socket_path = socket_path
        self.allowed = allowed if allowed is not None else apt_hosts()
        self.refused: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> HostProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self.socket_path.unlink(missing_ok=True)

    async def _start(self) -> None:
        await asyncio.start_unix_server(self._client, path=str(self.socket_path))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        method, target = head.split(b" ", 2)[:2]
        connect = method == b"CONNECT"
        match = re.match(rb"(?:https?://)?([A-Za-z0-9.-]+)(?::(\d+))?", target)
        host = match.group(1).decode().lower() if match else ""
        port = int(match.group(2)) if match and match.group(2) else (443 if connect else 80)
        if host not in self.allowed or not _allowed_address(host, port):
            self.refused.append(host)
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        upstream = await asyncio.open_connection(host, port)
        if connect:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            upstream[1].write(head)  # origin servers accept absolute-form requests
        await _splice((reader, writer), upstream)


async def _forward(socket_path: str, port: int) -> None:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_unix_connection(socket_path)
        except OSError:
            writer.close()
            return
        await _splice((reader, writer), upstream)

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__" and sys.argv[1:2] == ["forward"]:
    asyncio.run(_forward(sys.argv[2], int(sys.argv[3])))
