"""Which guest ports speak HTTP or HTTPS, for the links ``banger vm ports`` shows (SPEC §8).

Owns: probing ports of a guest's address from the host, bounded in time and concurrency.
Must not: follow redirects, check certificates (it only asks whether a port speaks TLS at
all) or read more than five bytes of what the guest sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable

PROBE_TIMEOUT_S = 3.0
PLAIN_GRACE_S = 0.3
PROBE_CONCURRENCY = 16


async def probe_web(
    ip: str,
    ports: Iterable[int],
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
    concurrency: int = PROBE_CONCURRENCY,
) -> dict[int, str]:
    """Which of ``ports`` on ``ip`` answer HTTPS or HTTP: ``{port: "https" | "http"}``.

    Runs where the guest's address is routed (the daemon, in its network namespace). Per
    port, a TLS and a plain attempt start together (each sends ``HEAD /`` and reads five
    bytes within ``timeout_s``); HTTPS wins. Once plain HTTP has answered, TLS gets
    ``PLAIN_GRACE_S`` more: a plain server may sit on a TLS hello until the timeout, and
    a guest under emulation can need seconds for a real TLS handshake. Certificates are
    not checked: this only asks whether the port speaks TLS at all.
    """
    gate = asyncio.Semaphore(concurrency)

    async def one(port: int) -> tuple[int, str | None]:
        async with gate:
            return port, await probe_port(ip, port, timeout_s=timeout_s)

    found = await asyncio.gather(*(one(p) for p in sorted(set(ports))))
    return {port: scheme for port, scheme in found if scheme is not None}


async def probe_port(ip: str, port: int, *, timeout_s: float) -> str | None:
    tls = asyncio.ensure_future(speaks_http(ip, port, tls=True, timeout_s=timeout_s))
    try:
        if await speaks_http(ip, port, tls=False, timeout_s=timeout_s):
            done, _ = await asyncio.wait({tls}, timeout=PLAIN_GRACE_S)
            return "https" if tls in done and tls.result() else "http"
        return "https" if await tls else None
    finally:
        if not tls.done():
            tls.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tls


async def speaks_http(ip: str, port: int, *, tls: bool, timeout_s: float) -> bool:
    context: ssl.SSLContext | None = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    writer: asyncio.StreamWriter | None = None
    host = f"[{ip}]" if ":" in ip else ip
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(ip, port, ssl=context)
            writer.write(f"HEAD / HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            await writer.drain()
            return await reader.readexactly(5) == b"HTTP/"
    except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, ValueError):
        return False
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.transport.abort()
