"""The pure DNS answer function: SPEC §4 behaviour and ADVERSARIAL group H (72-80, 83)."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from dnslib import RR, A, DNSHeader, DNSQuestion, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from banger.dns.answers import EDNS_UDP_BYTES, PLAIN_UDP_BYTES, TTL_S, answer, pack_within

RECORDS = {"myvm": "10.213.7.5", "other-1": "10.213.7.6"}


def ask(
    name: str, rdtype: str = "A", *, records: Mapping[str, str] = RECORDS, **kw: object
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    wire = answer(query.to_wire(), records)
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == query.id
    assert reply.flags & dns.flags.QR
    return reply


def header(
    *, id_: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", id_, flags, qd, an, ns, ar)


def name_wire(*labels: bytes) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"


A_IN = struct.pack("!HH", 1, 1)


def rcode_of(wire: bytes | None) -> int:
    assert wire is not None and len(wire) >= 12
    return wire[3] & 0xF


# -- answers --------------------------------------------------------------------------


def test_a_record_of_running_vm() -> None:
    reply = ask("myvm.vm")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA and not reply.flags & dns.flags.RA
    (rrset,) = reply.answer
    assert [r.address for r in rrset] == ["10.213.7.5"]
    assert rrset.ttl == TTL_S


@pytest.mark.parametrize("name", ["MyVM.VM.", "MYVM.vm", "myvm.Vm."])
def test_case_insensitive_and_echoes_the_querier_spelling(name: str) -> None:
    reply = ask(name)
    (rrset,) = reply.answer
    assert rrset[0].address == "10.213.7.5"
    # Resolvers using 0x20 case randomisation compare the spelling.
    assert rrset.name.to_text() == name.rstrip(".") + "."
    assert reply.question[0].name.to_text() == name.rstrip(".") + "."


def test_any_type_returns_the_a_record() -> None:
    (rrset,) = ask("other-1.vm", "ANY").answer
    assert rrset.rdtype == dns.rdatatype.A


@pytest.mark.parametrize("rdtype", ["AAAA", "MX", "TXT", "NS", "SOA", "PTR", "HTTPS"])
def test_other_types_of_known_names_are_nodata(rdtype: str) -> None:
    reply = ask("myvm.vm", rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    # RFC 2308: the zone's SOA bounds how long the negative answer is cached.
    (soa,) = reply.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa[0].minimum == TTL_S


@pytest.mark.parametrize("name", ["nope.vm", "sub.myvm.vm", "a.b.c.vm", "stopped.vm"])
@pytest.mark.parametrize("rdtype", ["A", "AAAA", "MX"])
def test_unknown_names_under_vm_are_nxdomain(name: str, rdtype: str) -> None:
    reply = ask(name, rdtype)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.answer == []
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_stopped_vm_is_nxdomain_once_removed_from_records() -> None:
    assert ask("myvm.vm").answer
    assert ask("myvm.vm", records={}).rcode() == dns.rcode.NXDOMAIN


def test_zone_apex() -> None:
    assert ask("vm", "SOA").answer[0].rdtype == dns.rdatatype.SOA
    reply = ask("vm", "A")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []


@pytest.mark.parametrize(
    "name", ["example.com", "myvm.vm.example.com", "vm.com", ".", "localhost", "myvm.vmx"]
)
def test_names_outside_vm_are_refused_never_resolved(name: str) -> None:
    reply = ask(name)
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.answer == [] and reply.authority == []
    assert not reply.flags & dns.flags.AA and not reply.flags & dns.flags.RA


@pytest.mark.parametrize("rdclass", ["CH", "HS", "ANY", "NONE"])
def test_class_other_than_in_is_refused(rdclass: str) -> None:
    reply = ask("myvm.vm", rdclass=dns.rdataclass.from_text(rdclass))
    assert reply.rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
def test_zone_transfers_are_refused(rdtype: str) -> None:
    assert ask("vm", rdtype).rcode() == dns.rcode.REFUSED


def test_rd_is_copied_and_recursion_never_offered() -> None:
    with_rd = ask("myvm.vm")
    assert with_rd.flags & dns.flags.RD and not with_rd.flags & dns.flags.RA
    query = dns.message.make_query("myvm.vm", "A")
    query.flags &= ~dns.flags.RD
    wire = answer(query.to_wire(), RECORDS)
    assert wire is not None
    assert not dns.message.from_wire(wire).flags & dns.flags.RD


# -- EDNS and size ------------------------------------------------------------------------


def test_without_edns_the_reply_has_no_opt() -> None:
    reply = ask("myvm.vm")
    assert reply.edns == -1


def test_with_edns_the_reply_has_opt() -> None:
    reply = ask("myvm.vm", use_edns=0, payload=4096)
    assert reply.edns == 0
    assert reply.payload == EDNS_UDP_BYTES
    assert reply.answer[0][0].address == "10.213.7.5"


def test_edns_with_options_such_as_cookies() -> None:
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
    reply = ask("myvm.vm", use_edns=0, options=[cookie])
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer


def test_unknown_edns_version_is_badvers() -> None:
    reply = ask("myvm.vm", use_edns=1)
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.answer == []


def _big_reply(answers: int) -> DNSRecord:
    record = DNSRecord(DNSHeader(id=7, bitmap=0, qr=1), q=DNSQuestion("big.vm"))
    for i in range(answers):
        record.add_answer(RR("big.vm", 1, 1, TTL_S, A(f"10.0.{i // 250}.{i % 250}")))
    return record


def test_reply_over_512_bytes_without_edns_is_truncated() -> None:
    wire = pack_within(_big_reply(60), PLAIN_UDP_BYTES)
    assert len(wire) <= PLAIN_UDP_BYTES
    reply = dns.message.from_wire(wire)
    assert reply.flags & dns.flags.TC
    assert reply.answer == []
    assert reply.question[0].name.to_text() == "big.vm."


def test_reply_that_fits_is_not_truncated() -> None:
    reply = dns.message.from_wire(pack_within(_big_reply(20), PLAIN_UDP_BYTES))
    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0]) == 20


def test_name_of_exactly_255_bytes_is_read_and_256_is_not() -> None:
    longest = name_wire(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 58, b"vm")
    assert len(longest) == 255
    assert rcode_of(answer(header() + longest + A_IN, RECORDS)) == dns.rcode.NXDOMAIN
    too_long = name_wire(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 59, b"vm")
    assert rcode_of(answer(header() + too_long + A_IN, RECORDS)) == dns.rcode.FORMERR


# -- what is dropped ------------------------------------------------------------------------


@pytest.mark.parametrize("packet", [b"", b"\x00", b"hello", b"\x12\x34" + b"\x00" * 9])
def test_packets_shorter_than_a_header_are_dropped(packet: bytes) -> None:
    assert answer(packet, RECORDS) is None


def test_responses_are_never_answered() -> None:
    query = dns.message.make_query("myvm.vm", "A")
    query.flags |= dns.flags.QR
    assert answer(query.to_wire(), RECORDS) is None
    assert answer(header(flags=0x8000, qd=0) + b"junk", RECORDS) is None


# -- malformed queries: FORMERR, NOTIMP ----------------------------------------------------

GOOD_NAME = name_wire(b"myvm", b"vm")

MALFORMED = {
    "label type 01 (64-byte label)": header() + b"\x40" + b"a" * 64 + b"\x02vm\x00" + A_IN,
    "label type 10": header() + b"\x80" + b"a" * 10 + b"\x00" + A_IN,
    "compression pointer": header() + b"\xc0\x0c" + A_IN,
    "pointer to itself (loop)": header() + b"\x04myvm\xc0\x11" + A_IN,
    "pointer into the header": header() + b"\xc0\x00" + A_IN,
    "name over 255 bytes": header() + name_wire(*[b"x" * 63] * 4) + A_IN,
    "missing terminator": header() + b"\x04myvm\x02vm",
    "label past the end": header() + b"\x3fabc",
    "truncated type and class": header() + GOOD_NAME + b"\x00\x01",
    "no question at all": header(),
    "qdcount 0": header(qd=0) + GOOD_NAME + A_IN,
    "qdcount 2": header(qd=2) + (GOOD_NAME + A_IN) * 2,
    "qdcount 65535": header(qd=65535) + GOOD_NAME + A_IN,
    "ancount in a query": header(an=1) + GOOD_NAME + A_IN,
    "ancount 65535": header(an=65535) + GOOD_NAME + A_IN,
    "nscount in a query": header(ns=1) + GOOD_NAME + A_IN,
    "arcount 2": header(ar=2) + GOOD_NAME + A_IN + (b"\x00\x00\x29\x04\xd0" + b"\x00" * 6) * 2,
    "arcount 1 but nothing": header(ar=1) + GOOD_NAME + A_IN,
    "non-opt additional": header(ar=1) + GOOD_NAME + A_IN + GOOD_NAME + A_IN + b"\0" * 6,
    "opt truncated": header(ar=1) + GOOD_NAME + A_IN + b"\x00\x00\x29\x04",
    "opt rdlen past end": header(ar=1) + GOOD_NAME + A_IN + b"\x00\x00\x29\x04\xd0\0\0\0\0\x00\x10",
    "trailing garbage": header() + GOOD_NAME + A_IN + b"\xde\xad",
}


@pytest.mark.parametrize("packet", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_queries_get_formerr(packet: bytes) -> None:
    wire = answer(packet, RECORDS)
    assert rcode_of(wire) == dns.rcode.FORMERR
    assert wire is not None
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", wire[:12])
    assert qid == 0x1234 and flags & 0x8000
    assert (qd, an, ns, ar) == (0, 0, 0, 0)
    assert len(wire) == 12


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 15])
def test_opcodes_other_than_query_are_notimp(opcode: int) -> None:
    wire = answer(header(flags=opcode << 11) + GOOD_NAME + A_IN, RECORDS)
    assert rcode_of(wire) == dns.rcode.NOTIMP
    assert wire is not None and (wire[2] >> 3) & 0xF == opcode


def test_notify_from_dnspython_is_notimp() -> None:
    query = dns.message.make_query("vm", "SOA")
    query.set_opcode(dns.opcode.NOTIFY)
    assert rcode_of(answer(query.to_wire(), RECORDS)) == dns.rcode.NOTIMP


# -- exception isolation (ADVERSARIAL 80) -------------------------------------------------


class ExplodingRecords(Mapping[str, str]):
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __getitem__(self, key: str) -> str:
        raise self.exc

    def get(self, key: str, default: object = None) -> str:  # type: ignore[override]
        raise self.exc

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize(
    "exc", [TypeError("x"), KeyError("x"), UnicodeDecodeError("ascii", b"", 0, 1, "x"), OSError()]
)
def test_any_exception_becomes_servfail(exc: Exception) -> None:
    query = dns.message.make_query("myvm.vm", "A")
    wire = answer(query.to_wire(), ExplodingRecords(exc))
    assert rcode_of(wire) == dns.rcode.SERVFAIL


def test_bad_address_in_records_is_servfail_not_a_crash() -> None:
    assert ask("myvm.vm", records={"myvm": "not-an-ip"}).rcode() == dns.rcode.SERVFAIL


# -- fuzz (ADVERSARIAL 83) ------------------------------------------------------------------


def _check_reply(packet: bytes, wire: bytes | None) -> None:
    if wire is None:
        return
    assert len(wire) <= EDNS_UDP_BYTES
    assert wire[:2] == packet[:2]  # the query's id
    assert wire[2] & 0x80  # QR


@settings(max_examples=500, deadline=200)
@given(st.binary(max_size=600))
def test_fuzz_raw_bytes_never_raise(packet: bytes) -> None:
    _check_reply(packet, answer(packet, RECORDS))


query_headers = st.builds(
    lambda qid, flags, qd, an, ns, ar: struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF).map(lambda f: f & 0x7FFF),
    st.sampled_from([0, 1, 1, 1, 2, 0xFFFF]),
    st.sampled_from([0, 0, 1, 0xFFFF]),
    st.sampled_from([0, 0, 1]),
    st.sampled_from([0, 1, 1, 2]),
)
labels = st.lists(
    st.one_of(
        st.sampled_from([b"vm", b"VM", b"myvm", b"MyVm"]), st.binary(min_size=1, max_size=63)
    ),
    max_size=6,
)


@settings(max_examples=500, deadline=200)
@given(query_headers, labels, st.binary(max_size=40))
def test_fuzz_plausible_queries_never_raise(head: bytes, names: list[bytes], tail: bytes) -> None:
    packet = head + name_wire(*names) + tail
    wire = answer(packet, RECORDS)
    _check_reply(packet, wire)
    if wire is not None and len(wire) > 12:
        # Whatever we answer with a question in it must be valid DNS.
        dns.message.from_wire(wire)


@settings(max_examples=300, deadline=200)
@given(st.data())
def test_fuzz_bit_flips_of_a_valid_query(data: st.DataObject) -> None:
    packet = bytearray(dns.message.make_query("myvm.vm", "A", use_edns=0).to_wire())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(packet) - 1))
        packet[i] ^= 1 << data.draw(st.integers(0, 7))
    cut = data.draw(st.integers(0, len(packet)))
    _check_reply(bytes(packet[:cut]), answer(bytes(packet[:cut]), RECORDS))
