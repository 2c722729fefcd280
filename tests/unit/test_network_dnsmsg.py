"""DNS wire codec: hand-written wire bytes in, hand-written wire bytes out, and
malformed input (pointer loops included) rejected with DnsFormatError, never a hang
or another exception."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from ketch.errors import InvalidArgument
from ketch.network.dnsmsg import (
    EDNS_UDP_SIZE,
    DnsFormatError,
    Edns,
    Flag,
    Header,
    Message,
    Question,
    Rcode,
    Record,
    RRClass,
    RRType,
    address_from_reverse,
    encode,
    error_reply,
    make_query,
    parse,
    parse_header,
    peek,
    reply,
)

# What busybox nslookup sent for "web" (captured): id 0xf4c0, RD, one question A IN.
BUSYBOX_QUERY = bytes.fromhex("f4c001000001000000000000037765620000010001")

# A response as a real server compresses it: www.example.com CNAME example.com,
# example.com A 93.184.216.34; the CNAME target and the second owner are pointers.
COMPRESSED_RESPONSE = bytes.fromhex(
    "1234 8180 0001 0002 0000 0000"
    " 03777777 076578616d706c65 03636f6d 00 0001 0001"  # question at 12, 'example' at 16
    " c00c 0005 0001 00000e10 0002 c010"  # www.example.com CNAME -> pointer to 16
    " c010 0001 0001 00000e10 0004 5db8d822"  # example.com A 93.184.216.34
)


def hdr(id: int = 1, flags: int = 0, qd: int = 0, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", id, flags, qd, an, ns, ar)


# -- parsing good input -----------------------------------------------------------------


def test_parse_busybox_query() -> None:
    m = parse(BUSYBOX_QUERY)
    assert m.id == 0xF4C0
    assert m.flags & Flag.RD and not m.qr
    assert m.opcode == 0 and m.rcode == 0
    assert m.questions == (Question("web", RRType.A, RRClass.IN),)
    assert m.answers == m.authority == m.additional == ()
    assert m.edns is None


def test_parse_compressed_response() -> None:
    m = parse(COMPRESSED_RESPONSE)
    assert m.qr and m.flags & Flag.RA
    assert m.questions == (Question("www.example.com", RRType.A),)
    assert m.answers == (
        Record("www.example.com", RRType.CNAME, RRClass.IN, 3600, "example.com"),
        Record("example.com", RRType.A, RRClass.IN, 3600, ipaddress.ip_address("93.184.216.34")),
    )


def test_parse_edns_opt() -> None:
    # query for web AAAA with OPT: udp 4096, DO set, one cookie option (code 10, 8 bytes)
    opt = b"\x00" + struct.pack("!HHIH", 41, 4096, 0x00008000, 12)
    opt += struct.pack("!HH", 10, 8) + b"\x01" * 8
    data = hdr(7, 0x0100, qd=1, ar=1) + b"\x03web\x00\x00\x1c\x00\x01" + opt
    m = parse(data)
    assert m.additional == ()
    assert m.edns == Edns(4096, 0, 0, 0x8000, struct.pack("!HH", 10, 8) + b"\x01" * 8)


def test_peek_stops_after_questions() -> None:
    header, questions, end = peek(COMPRESSED_RESPONSE)
    assert header == Header(0x1234, 0x8180, 1, 2, 0, 0)
    assert questions == (Question("www.example.com", RRType.A),)
    assert end == 12 + 17 + 4


def test_unknown_types_keep_raw_rdata() -> None:
    txt = b"\x05hello"
    data = hdr(1, 0x8000, an=1) + b"\x00" + struct.pack("!HHIH", 16, 1, 5, len(txt)) + txt
    (rec,) = parse(data).answers
    assert rec == Record("", RRType.TXT, RRClass.IN, 5, txt)


# -- encoding ---------------------------------------------------------------------------


def test_reply_golden_bytes() -> None:
    query = parse(bytes.fromhex("beef01000001000000000000037765620000010001"))
    rec = Record.address("web", ipaddress.ip_address("10.0.0.2"), 600)
    wire = encode(reply(query, answers=[rec]))
    assert wire == bytes.fromhex(
        "beef 8180 0001 0001 0000 0000"  # QR RD RA, 1 question, 1 answer
        " 03776562 00 0001 0001"
        " c00c 0001 0001 00000258 0004 0a000002"  # owner compressed to the question
    )


def test_reply_with_edns_carries_opt_and_copies_rd_cd_id() -> None:
    q = make_query("Web.Net", RRType.AAAA, id=0x4242, edns=Edns(4096, flags=0x8000))
    q = Message(q.id, q.flags | Flag.CD, q.questions, edns=q.edns)
    rec = Record.address("Web.Net", ipaddress.ip_address("fd00::2"), 600)
    r = parse(encode(reply(q, answers=[rec])))
    assert r.id == 0x4242 and r.qr and r.flags & Flag.RD and r.flags & Flag.CD
    assert r.flags & Flag.RA and not r.flags & Flag.AA
    assert r.questions == (Question("Web.Net", RRType.AAAA),)  # case echoed as asked
    assert r.edns == Edns(EDNS_UDP_SIZE, 0, 0, 0, b"")
    assert r.answers[0].data == ipaddress.ip_address("fd00::2")


def test_error_rcodes() -> None:
    q = parse(BUSYBOX_QUERY)
    for rcode in (Rcode.NXDOMAIN, Rcode.SERVFAIL, Rcode.REFUSED):
        r = parse(encode(reply(q, rcode=rcode)))
        assert (r.id, r.rcode, r.answers, r.questions) == (q.id, rcode, (), q.questions)
    with pytest.raises(InvalidArgument):
        reply(q, rcode=Rcode.BADVERS)  # needs EDNS in the query
    qe = make_query("web", RRType.A, id=9, edns=Edns(1232, version=1))
    wire = encode(reply(qe, rcode=Rcode.BADVERS))
    assert wire[3] & 0xF == 0  # low bits in the header are 0 ...
    assert parse(wire).rcode == Rcode.BADVERS  # ... the rest sits in the OPT TTL


def test_error_reply_from_header_only() -> None:
    wire = error_reply(Header(0xABCD, 0x0100, 1), Rcode.FORMERR)
    assert wire == bytes.fromhex("abcd81810000000000000000")


def test_ptr_rdata_is_compressed_against_earlier_names() -> None:
    q = make_query("2.0.0.10.in-addr.arpa", RRType.PTR, id=1)
    recs = [Record.ptr(q.questions[0].name, "web.in-addr.arpa", 600)]
    wire = encode(reply(q, answers=recs))
    # target = label 'web' + pointer to 'in-addr.arpa' inside the question (offset 21)
    assert wire.endswith(b"\x03web\xc0\x15")
    assert parse(wire).answers == tuple(recs)


def test_names_with_odd_bytes_round_trip() -> None:
    name = "a\\.b\\\\c\\000.example"
    wire = encode(make_query(name, RRType.A, id=1))
    assert wire[12:].startswith(b"\x06a.b\\c\x00\x07example\x00")
    assert parse(wire).questions[0].name == name
    assert parse(encode(make_query("fqdn.example.", RRType.A, id=1))).questions[0].name == (
        "fqdn.example"
    )


@pytest.mark.parametrize(
    "name",
    [
        "a" * 64 + ".example",
        ".".join(["abcdefg"] * 32),
        "a..b",
        ".a",
        "\\999.x",
        "bad\\",
        "é.x",
        "x\\€",
    ],
)
def test_invalid_names_rejected_on_encode(name: str) -> None:
    with pytest.raises(InvalidArgument):
        encode(make_query(name, RRType.A, id=1))


def test_truncation_keeps_whole_records_sets_tc_and_keeps_opt() -> None:
    ips = [ipaddress.ip_address(f"10.0.{i // 256}.{i % 256}") for i in range(100)]
    recs = [Record.address("many.example", ip, 600) for ip in ips]
    plain = make_query("many.example", RRType.A, id=3)
    wire = encode(reply(plain, answers=recs), 512)
    m = parse(wire)
    assert len(wire) <= 512 and m.tc
    assert 0 < len(m.answers) < 100 and all(r in recs for r in m.answers)
    assert len(wire) + 16 > 512  # one more A record would not have fitted

    withopt = make_query("many.example", RRType.A, id=3, edns=Edns(1232))
    wire = encode(reply(withopt, answers=recs), 1232)
    m = parse(wire)
    assert len(wire) <= 1232 and m.tc and m.edns is not None
    full = parse(encode(reply(withopt, answers=recs)))
    assert not full.tc and len(full.answers) == 100


def test_encode_refuses_when_even_the_question_does_not_fit() -> None:
    with pytest.raises(InvalidArgument):
        encode(make_query("x" * 60 + ".example", RRType.A, id=1), 40)


# -- reverse names ----------------------------------------------------------------------


def test_address_from_reverse() -> None:
    assert address_from_reverse("2.0.0.10.in-addr.arpa") == ipaddress.ip_address("10.0.0.2")
    assert address_from_reverse("2.0.0.10.IN-ADDR.ARPA.") == ipaddress.ip_address("10.0.0.2")
    v6 = ipaddress.ip_address("fd00::1:2")
    assert address_from_reverse(v6.reverse_pointer) == v6
    for partial in (
        "0.10.in-addr.arpa",
        "256.0.0.10.in-addr.arpa",
        "x.0.0.10.in-addr.arpa",
        "d.f.ip6.arpa",
        "web.example",
        "",
        "1.2.3.4.5.in-addr.arpa",
    ):
        assert address_from_reverse(partial) is None, partial


# -- malformed input --------------------------------------------------------------------


def q_with_name(raw_name: bytes, extra: bytes = b"") -> bytes:
    return hdr(1, 0x0100, qd=1) + raw_name + b"\x00\x01\x00\x01" + extra


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"\x00" * 11, "shorter than a header"),
        (hdr(qd=1), "question missing"),
        (hdr(qd=2) + b"\x03web\x00\x00\x01\x00\x01", "second question missing"),
        (hdr(qd=1) + b"\x03web\x00\x00\x01", "question fixed part cut"),
        (hdr(qd=1) + b"\x09web\x00\x00\x01\x00\x01", "label runs past the end"),
        (hdr(qd=1) + b"\x03web", "no root label"),
        (q_with_name(b"\xc0\x0c"), "pointer to itself"),
        (q_with_name(b"\x01a\xc0\x0e"), "pointer into its own name"),
        (q_with_name(b"\xc0\x20") + b"\x00" * 32, "forward pointer"),
        (q_with_name(b"\xc0"), "pointer cut in half"),
        (q_with_name(b"\x41abc\x00"), "extended label type 0x40"),
        (q_with_name(b"\x81abc\x00"), "label type 0x80"),
        (q_with_name(b"\x3fa" + b"\x3f" + b"b" * 63 * 4), "name over 255 bytes"),
        (q_with_name(b"\x03web\x00", b"\x00"), "stray byte at the end"),
        (
            hdr(1, 0x8000, an=1) + b"\x00" + struct.pack("!HHIH", 1, 1, 0, 5) + b"\x01" * 5,
            "A record of 5 bytes",
        ),
        (
            hdr(1, 0x8000, an=1) + b"\x00" + struct.pack("!HHIH", 28, 1, 0, 4) + b"\x01" * 4,
            "AAAA record of 4 bytes",
        ),
        (
            hdr(1, 0x8000, an=1) + b"\x00" + struct.pack("!HHIH", 16, 1, 0, 9) + b"\x01" * 4,
            "rdata overruns the message",
        ),
        (hdr(1, 0x8000, an=1) + b"\x00" + struct.pack("!HHI", 16, 1, 0), "rdlength missing"),
        (
            hdr(1, 0x8000, an=1)
            + b"\x00"
            + struct.pack("!HHIH", 12, 1, 0, 6)
            + b"\x01a\x00\x01b\x00",
            "PTR name does not fill rdata",
        ),
        (hdr(1, 0, ar=2) + (b"\x00" + struct.pack("!HHIH", 41, 512, 0, 0)) * 2, "two OPT"),
        (hdr(1, 0, an=1) + b"\x00" + struct.pack("!HHIH", 41, 512, 0, 0), "OPT in answers"),
        (hdr(1, 0, ar=1) + b"\x01a\x00" + struct.pack("!HHIH", 41, 512, 0, 0), "OPT not root"),
        (
            hdr(1, 0, ar=1)
            + b"\x00"
            + struct.pack("!HHIH", 41, 512, 0, 6)
            + struct.pack("!HH", 10, 8)
            + b"\x00\x00",
            "EDNS option overruns",
        ),
        (
            hdr(1, 0, ar=1) + b"\x00" + struct.pack("!HHIH", 41, 512, 0, 2) + b"\x00\x0a",
            "EDNS option header cut",
        ),
    ],
)
def test_malformed_rejected(data: bytes, why: str) -> None:
    with pytest.raises(DnsFormatError):
        parse(data)


def test_classic_pointer_loop_rejected() -> None:
    # the question's name is 'a' + pointer to the answer's owner, which points back:
    # a loop if pointers were simply followed
    loop = hdr(1, 0x8000, qd=1, an=1) + b"\x01a\xc0\x15" + b"\x00\x01\x00\x01"  # answer at 21
    loop += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04"
    with pytest.raises(DnsFormatError, match="backwards"):
        parse(loop)


def _pointer_chain(hops: int) -> bytes:
    """A TXT record whose raw data holds the name 'a' followed by ``hops`` pointers,
    each to the one before; a second record's owner points at the last pointer."""
    base = 12 + 1 + 10  # header, root owner, fixed RR part
    chain = bytearray(b"\x01a\x00")
    prev = base
    for _ in range(hops - 1):
        here = base + len(chain)
        chain += struct.pack("!H", 0xC000 | prev)
        prev = here
    data = hdr(1, 0x8000, an=2) + b"\x00" + struct.pack("!HHIH", 16, 1, 0, len(chain)) + chain
    return data + struct.pack("!H", 0xC000 | prev) + struct.pack("!HHIH", 16, 1, 0, 0)


def test_long_pointer_chains_are_bounded() -> None:
    ok = parse(_pointer_chain(60))
    assert ok.answers[1].name == "a"
    with pytest.raises(DnsFormatError, match="too many compression pointers"):
        parse(_pointer_chain(5000))


def test_parse_header_alone() -> None:
    assert parse_header(BUSYBOX_QUERY + b"garbage").id == 0xF4C0
    with pytest.raises(DnsFormatError):
        parse_header(b"\x01\x02")


def test_mutated_messages_never_crash() -> None:
    """Random corruption of valid messages: parse() returns a Message or raises
    DnsFormatError, nothing else, and always terminates."""
    rng = random.Random(1035)
    opt = Edns(4096, options=struct.pack("!HH", 10, 8) + b"\x07" * 8)
    q = make_query("host.example.com", RRType.A, id=77, edns=opt)
    seeds = [
        COMPRESSED_RESPONSE,
        BUSYBOX_QUERY,
        encode(q),
        encode(reply(q, answers=[Record.ptr("host.example.com", "x.example.com", 5)] * 3)),
        _pointer_chain(10),
    ]
    outcomes = {"ok": 0, "bad": 0}
    for i in range(6000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and pos < len(data):
                data[pos] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = bytes([rng.choice((0xC0, 0x00, 0x3F, rng.randrange(256)))])
            else:
                del data[pos:]
        try:
            m = parse(bytes(data))
        except DnsFormatError:
            outcomes["bad"] += 1
        else:
            assert isinstance(m, Message), i
            outcomes["ok"] += 1
    assert outcomes["bad"] > 1000 and outcomes["ok"] > 10


def test_any_wire_label_round_trips_through_presentation() -> None:
    rng = random.Random(6891)
    for _ in range(300):
        labels = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 20))) for _ in range(3)]
        wire_name = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
        data = hdr(1, 0, qd=1) + wire_name + b"\x00\x01\x00\x01"
        name = parse(data).questions[0].name
        assert encode(parse(data)) == data, name
