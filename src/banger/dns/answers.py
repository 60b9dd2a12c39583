"""Answers to DNS queries for the ``.vm`` zone: query bytes in, reply bytes (or nothing) out.

Owns: the strict reading of a query (header, one question, an optional EDNS OPT record)
and the reply for it (SPEC §4, ADVERSARIAL 72-80): A records for running VMs, NODATA for
other types of known names, NXDOMAIN for unknown names under ``vm.``, REFUSED for every
name outside it (banger is never an open resolver), FORMERR for malformed queries,
NOTIMP for opcodes other than QUERY, TC when a reply does not fit.
Must not: do I/O, log, keep state, or know where the records come from.

The question is read here rather than by ``dnslib.DNSRecord.parse``: dnslib follows
compression pointers, reads label types ``01``/``10`` as long labels and has no 255-byte
name limit, and a query needs none of that leniency. dnslib composes the replies.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from dnslib import (  # type: ignore[import-untyped]
    EDNS0,
    RR,
    SOA,
    A,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

#: Seconds a resolver may cache an answer: records follow VM start/stop within seconds.
TTL_S = 5
ZONE = b"vm"
#: RFC 1035 §4.2.1: the UDP reply limit for a querier that did not send EDNS.
PLAIN_UDP_BYTES = 512
#: The payload size we advertise with EDNS (DNS flag day 2020: no IP fragmentation).
EDNS_UDP_BYTES = 1232
MAX_NAME_BYTES = 255

_HEADER = struct.Struct("!HHHHHH")
_QUESTION_TAIL = struct.Struct("!HH")
_OPT_FIXED = struct.Struct("!HHBBHH")  # type, udp size, ext rcode, version, flags, rdlen
_QR = 0x8000
_RD = 0x0100
_CD = 0x0010
#: A label length byte with either top bit set is a pointer (11) or a reserved type.
_LABEL_TYPE_BITS = 0xC0
#: SOA of the zone (mname, rname, serial, refresh, retry, expire, negative TTL).
_SOA_NAMES = ("localhost.", "nobody.localhost.")
_SOA_TIMES = (1, 3600, 600, 86400, TTL_S)


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    #: Extended (EDNS) rcode 16: sent as 0 in the header and 1 in the OPT record.
    BADVERS = 16


class Qtype(IntEnum):
    A = 1
    SOA = 6
    OPT = 41
    IXFR = 251
    AXFR = 252
    ANY = 255


CLASS_IN = 1


class Malformed(Exception):
    """The query breaks DNS framing (RFC 1035, RFC 9267); it is answered with FORMERR."""


@dataclass(frozen=True)
class Header:
    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & _QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


@dataclass(frozen=True)
class Question:
    labels: tuple[bytes, ...]
    qtype: int
    qclass: int


@dataclass(frozen=True)
class Query:
    header: Header
    question: Question
    #: The querier's EDNS (UDP payload size, version), or None if it sent no OPT.
    edns: tuple[int, int] | None


def answer(packet: bytes, records: Mapping[str, str]) -> bytes | None:
    """The reply to ``packet``, or None when it must be dropped (too short, or a reply).

    ``records`` maps lowercase VM names to IPv4 addresses of running VMs.
    """
    try:
        return _answer(packet, records)
    except Exception:  # noqa: BLE001 - ADVERSARIAL 80: no packet may end the server
        return _bare_reply(packet, Rcode.SERVFAIL)


def _answer(packet: bytes, records: Mapping[str, str]) -> bytes | None:
    header = read_header(packet)
    if header is None or header.is_response:
        # Answering a reply could start a reply loop with another server (ADVERSARIAL 76).
        return None
    if header.opcode != 0:
        return _bare_reply(packet, Rcode.NOTIMP)
    try:
        query = parse_query(packet, header)
    except Malformed:
        return _bare_reply(packet, Rcode.FORMERR)
    return _reply(query, records)


def read_header(packet: bytes) -> Header | None:
    if len(packet) < _HEADER.size:
        return None
    return Header(*_HEADER.unpack_from(packet))


def parse_query(packet: bytes, header: Header) -> Query:
    """Read the one question and the optional OPT record; raise ``Malformed`` otherwise."""
    # Counts are checked before anything is read, so a lying count cannot cause over-reads.
    if header.qdcount != 1:
        raise Malformed(f"QDCOUNT is {header.qdcount}, a query has exactly one question")
    if header.ancount or header.nscount:
        raise Malformed("a query carries no answer or authority records")
    if header.arcount > 1:
        raise Malformed("only one additional record (EDNS OPT) is accepted")
    labels, offset = read_name(packet, _HEADER.size)
    if offset + _QUESTION_TAIL.size > len(packet):
        raise Malformed("question ends before its type and class")
    qtype, qclass = _QUESTION_TAIL.unpack_from(packet, offset)
    offset += _QUESTION_TAIL.size
    edns = None
    if header.arcount:
        edns, offset = _read_opt(packet, offset)
    if offset != len(packet):
        raise Malformed(f"{len(packet) - offset} bytes after the last record")
    return Query(header, Question(labels, qtype, qclass), edns)


def read_name(packet: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """The labels of an uncompressed name at ``offset`` and the offset after it."""
    labels: list[bytes] = []
    wire_bytes = 1  # the terminating zero
    while True:
        if offset >= len(packet):
            raise Malformed("name has no terminating zero label")
        length = packet[offset]
        offset += 1
        if length & _LABEL_TYPE_BITS:
            # 11 is a compression pointer (nothing precedes the question for it to point
            # at, and pointers are how loops are built); 01 and 10 are reserved (RFC 6891 §5).
            raise Malformed(f"label type {length >> 6:02b} in a question name")
        if length == 0:
            return tuple(labels), offset
        wire_bytes += 1 + length
        if wire_bytes > MAX_NAME_BYTES:
            raise Malformed(f"name longer than {MAX_NAME_BYTES} bytes")
        if offset + length > len(packet):
            raise Malformed("label runs past the end of the packet")
        labels.append(packet[offset : offset + length])
        offset += length


def _read_opt(packet: bytes, offset: int) -> tuple[tuple[int, int], int]:
    # RFC 6891 §6.1.2: the OPT owner name is the root, i.e. a single zero byte.
    if offset >= len(packet) or packet[offset] != 0:
        raise Malformed("the additional record is not an EDNS OPT record")
    offset += 1
    if offset + _OPT_FIXED.size > len(packet):
        raise Malformed("OPT record is truncated")
    rtype, udp_bytes, _, version, _, rdlen = _OPT_FIXED.unpack_from(packet, offset)
    if rtype != Qtype.OPT:
        raise Malformed(f"additional record of type {rtype}, only OPT is accepted")
    offset += _OPT_FIXED.size
    if offset + rdlen > len(packet):
        raise Malformed("OPT data runs past the end of the packet")
    return (udp_bytes, version), offset + rdlen


def _bare_reply(packet: bytes, rcode: Rcode) -> bytes | None:
    """A header-only reply (no question echoed): for queries we could not read."""
    header = read_header(packet)
    if header is None or header.is_response:
        return None
    opcode_rd = header.flags & (0x7800 | _RD)
    return _HEADER.pack(header.id, _QR | opcode_rd | int(rcode), 0, 0, 0, 0)


def _reply(query: Query, records: Mapping[str, str]) -> bytes:
    q = query.question
    if q.qclass != CLASS_IN or q.qtype in (Qtype.AXFR, Qtype.IXFR):
        return _compose(query, Rcode.REFUSED, authoritative=False)
    if not q.labels or q.labels[-1].lower() != ZONE:
        # Never forwarded, never recursed: names outside .vm are not ours (ADVERSARIAL 77).
        return _compose(query, Rcode.REFUSED, authoritative=False)
    if query.edns is not None and query.edns[1] != 0:
        return _compose(query, Rcode.BADVERS, authoritative=True)
    rcode, answers, authority = _lookup(q, records)
    return _compose(query, rcode, answers=answers, authority=authority, authoritative=True)


def _lookup(q: Question, records: Mapping[str, str]) -> tuple[Rcode, list[Any], list[Any]]:
    # Owner names echo the querier's spelling: resolvers that randomise the case of
    # queries (0x20 encoding, e.g. unbound's use-caps-for-id) compare it with the reply.
    owner = DNSLabel(q.labels)
    soa = _soa(q.labels[-1])
    if len(q.labels) == 1:
        if q.qtype in (Qtype.SOA, Qtype.ANY):
            return Rcode.NOERROR, [soa], []
        return Rcode.NOERROR, [], [soa]
    ip = records.get(_vm_name(q.labels)) if len(q.labels) == 2 else None
    if ip is None:
        return Rcode.NXDOMAIN, [], [soa]
    if q.qtype in (Qtype.A, Qtype.ANY):
        return Rcode.NOERROR, [RR(owner, Qtype.A, CLASS_IN, TTL_S, A(ip))], []
    # RFC 2308 NODATA: the name exists, the type does not; NXDOMAIN would deny the name.
    return Rcode.NOERROR, [], [soa]


def _vm_name(labels: tuple[bytes, ...]) -> str:
    # bytes.lower() folds ASCII only, which is DNS's case-insensitivity (RFC 4343).
    return labels[0].lower().decode("ascii", errors="replace")


def _soa(zone_label: bytes) -> Any:
    rdata = SOA(_SOA_NAMES[0], _SOA_NAMES[1], _SOA_TIMES)
    return RR(DNSLabel((zone_label,)), Qtype.SOA, CLASS_IN, TTL_S, rdata)


def _compose(
    query: Query,
    rcode: Rcode,
    *,
    answers: Sequence[Any] = (),
    authority: Sequence[Any] = (),
    authoritative: bool,
) -> bytes:
    q = query.question
    flags = query.header.flags
    header = DNSHeader(id=query.header.id, bitmap=0, qr=1, aa=int(authoritative))
    header.rd = int(bool(flags & _RD))
    header.cd = int(bool(flags & _CD))
    header.rcode = int(rcode) & 0xF
    record = DNSRecord(
        header,
        questions=[DNSQuestion(DNSLabel(q.labels), q.qtype, q.qclass)],
        rr=list(answers),
        auth=list(authority),
    )
    limit = PLAIN_UDP_BYTES
    if query.edns is not None:
        # RFC 6891 §7: a querier that sent OPT gets OPT back, carrying the upper rcode bits.
        record.add_ar(EDNS0(udp_len=EDNS_UDP_BYTES, ext_rcode=int(rcode) >> 4))
        limit = max(PLAIN_UDP_BYTES, min(query.edns[0], EDNS_UDP_BYTES))
    return pack_within(record, limit)


def pack_within(record: Any, limit: int) -> bytes:
    """Pack a ``dnslib.DNSRecord``; if it exceeds ``limit`` bytes, drop the answer and
    authority sections and set TC so the querier retries over TCP (RFC 2181 §9)."""
    packed = bytes(record.pack())  # dnslib packs into a bytearray
    if len(packed) <= limit:
        return packed
    record.rr, record.auth = [], []
    record.header.tc = 1
    return bytes(record.pack())
