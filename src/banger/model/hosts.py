"""Host names with an optional port, as registries and catalog URLs write them.

Owns: splitting ``host:port`` (IPv6 in brackets) and the loopback test that decides where
plain http is allowed. Must not: resolve names or do any other I/O.
"""

from __future__ import annotations

import ipaddress


def split_port(domain: str) -> tuple[str, str | None]:
    if domain.startswith("["):
        end = domain.find("]")
        if end != -1 and domain[end + 1 : end + 2] == ":":
            return domain[: end + 1], domain[end + 2 :]
        return domain, None
    host, colon, port = domain.partition(":")
    return host, port if colon else None


def is_loopback_host(domain: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``[::1]``, with or without a port."""
    host, _ = split_port(domain)
    if host.lower() == "localhost":
        return True
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(candidate).is_loopback
    except ValueError:
        return False
