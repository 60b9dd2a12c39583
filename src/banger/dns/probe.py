"""Whether banger's DNS server answers: one question to it on the loopback address.

Owns: that one round trip (``doctor`` asks it). Must not: ask anything beyond 127.0.0.1
or read the answer beyond matching it to the question.
"""

from __future__ import annotations

import secrets
import socket

from dnslib import DNSRecord  # type: ignore[import-untyped]

from banger.dns.server import DNS_HOST

#: Any name under ``.vm``: an address or NXDOMAIN both show that the server listens.
PROBE_NAME = "banger-doctor-probe.vm"


def answers(port: int, *, timeout_s: float = 1.0) -> bool:
    """True when a reply to a fresh query comes back from ``127.0.0.1:port`` in time."""
    query = DNSRecord.question(PROBE_NAME)
    query.header.id = secrets.randbelow(65536)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.sendto(query.pack(), (DNS_HOST, port))
            reply, _ = sock.recvfrom(4096)
        except OSError:  # timeout, or ICMP port unreachable: nobody listens
            return False
    return len(reply) >= 2 and int.from_bytes(reply[:2], "big") == query.header.id
