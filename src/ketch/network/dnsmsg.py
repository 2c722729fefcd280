"""DNS messages on the wire (RFC 1035, EDNS0 from RFC 6891) for the embedded resolver.

Parsing is strict because the input comes from containers: every length is checked
against the buffer, labels are at most 63 bytes and names 255, compression pointers
must point below everything the name has visited so far and a name may take at most
``_MAX_POINTER_HOPS`` of them, so a crafted message costs O(size) and never loops.
Anything malformed raises :class:`DnsFormatError` (an ``InvalidArgument``).

Names are presentation strings without the trailing dot (the root is ``""``); bytes
outside printable ASCII and the characters ``.`` and ``\\`` inside a label are
escaped as ``\\DDD`` / ``\\.`` / ``\\\\``, so every wire name round-trips. Case is
kept as sent (clients that randomise case expect it echoed).

Encoding compresses names (owner names and the names inside NS/CNAME/PTR data) and
can truncate at record boundaries to fit a size limit, setting TC and keeping the
OPT record, as a server must over UDP.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from ketch.errors import InvalidArgument

__all__ = [
    "EDNS_UDP_SIZE",
    "HEADER_SIZE",
    "MAX_MESSAGE",
    "MAX_UDP_PLAIN",
    "DnsFormatError",
    "Edns",
    "Flag",
    "Header",
    "Message",
    "Opcode",
    "Question",
    "RRClass",
    "RRType",
    "Rcode",
    "Record",
    "address_from_reverse",
    "encode",
    "error_reply",
    "make_query",
    "parse",
    "parse_header",
    "peek",
    "reply",
]

HEADER_SIZE = 12
MAX_UDP_PLAIN = 512  # RFC 1035 limit for UDP without EDNS
MAX_MESSAGE = 65535  # TCP framing limit
EDNS_UDP_SIZE = 1232  # payload size we advertise (DNS flag day 2020)
_MAX_NAME = 255  # wire length, including the root label
_MAX_LABEL = 63
_MAX_POINTER_HOPS = 64

_HDR = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_Q = struct.Struct("!HH")


class DnsFormatError(InvalidArgument):
    """The bytes are not a well-formed DNS message (the message says where)."""


class Opcode(enum.IntEnum):
    QUERY = 0
    IQUERY = 1
    STATUS = 2
    NOTIFY = 4
    UPDATE = 5


class Rcode(enum.IntEnum):
    """Response codes; values above 15 need the OPT record's extended bits."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16


class RRType(enum.IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    ANY = 255


class RRClass(enum.IntEnum):
    IN = 1
    CH = 3
    ANY = 255


class Flag(enum.IntFlag):
    """Bits of the header's flags word (opcode and rcode live beside them)."""

    QR = 0x8000
    AA = 0x0400
    TC = 0x0200
    RD = 0x0100
    RA = 0x0080
    AD = 0x0020
    CD = 0x0010


# rdata that holds exactly one domain name, which RFC 3597 allows us to compress
_NAME_RDATA = frozenset({RRType.NS, RRType.CNAME, RRType.PTR})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
RData = IPAddress | str | bytes


@dataclass(frozen=True)
class Header:
    """The fixed 12 bytes: id, the flags word and the four section counts."""

    id: int
    flags: int
    qdcount: int = 0
    ancount: int = 0
    nscount: int = 0
    arcount: int = 0

    @property
    def qr(self) -> bool:
        return bool(self.flags & Flag.QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        """The low four bits only; :attr:`Message.rcode` adds the EDNS extension."""
        return self.flags & 0xF


@dataclass(frozen=True)
class Question:
    name: str
    qtype: int
    qclass: int = RRClass.IN

    def same(self, other: Question) -> bool:
        """Equal up to ASCII case in the name (how DNS compares names)."""
        return (
            self.qtype == other.qtype
            and self.qclass == other.qclass
            and self.name.lower() == other.name.lower()
        )


@dataclass(frozen=True)
class Record:
    """A resource record. ``data`` is an address for A/AAAA (class IN), a name for
    NS/CNAME/PTR, and the raw rdata bytes for every other type."""

    name: str
    rtype: int
    rclass: int
    ttl: int
    data: RData

    @classmethod
    def address(cls, name: str, ip: IPAddress, ttl: int) -> Record:
        """An A or AAAA record, by the address family."""
        rtype = RRType.A if ip.version == 4 else RRType.AAAA
        return cls(name, rtype, RRClass.IN, ttl, ip)

    @classmethod
    def ptr(cls, name: str, target: str, ttl: int) -> Record:
        return cls(name, RRType.PTR, RRClass.IN, ttl, target)


@dataclass(frozen=True)
class Edns:
    """The OPT pseudo-record: requestor's UDP payload size, extended rcode bits,
    version, flags (DO is 0x8000) and the options as raw TLV bytes."""

    udp_size: int = EDNS_UDP_SIZE
    ext_rcode: int = 0
    version: int = 0
    flags: int = 0
    options: bytes = b""


@dataclass(frozen=True)
class Message:
    """A whole message; ``additional`` never holds the OPT record (see ``edns``)."""

    id: int
    flags: int
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    edns: Edns | None = field(default=None)

    @property
    def qr(self) -> bool:
        return bool(self.flags & Flag.QR)

    @property
    def tc(self) -> bool:
        return bool(self.flags & Flag.TC)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        ext = self.edns.ext_rcode << 4 if self.edns is not None else 0
        return ext | (self.flags & 0xF)


# -- names -----------------------------------------------------------------------------


def _label_text(label: bytes) -> str:
    out = []
    for b in label:
        if b in (0x2E, 0x5C):  # '.' '\\'
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def _labels(name: str) -> list[bytes]:
    """Presentation name -> wire labels; validates label and name lengths."""
    labels: list[bytes] = []
    cur = bytearray()
    i, n = 0, len(name)
    if name in ("", "."):
        return []
    while i < n:
        c = name[i]
        if c == ".":
            if not cur:
                raise InvalidArgument(f"empty label in name {name!r}")
            labels.append(bytes(cur))
            cur = bytearray()
            i += 1
            continue
        if c == "\\":
            digits = name[i + 1 : i + 4]
            if len(digits) == 3 and all(d in "0123456789" for d in digits):
                if int(digits) > 255:
                    raise InvalidArgument(f"bad escape in name {name!r}")
                cur.append(int(digits))
                i += 4
                continue
            if i + 1 >= n:
                raise InvalidArgument(f"dangling escape in name {name!r}")
            i += 1
            c = name[i]
        if not c.isascii():
            raise InvalidArgument(f"non-ASCII name {name!r} (use its IDNA form)")
        cur.append(ord(c))
        i += 1
    if cur:
        labels.append(bytes(cur))
    # a trailing unescaped dot just means fully qualified
    for label in labels:
        if len(label) > _MAX_LABEL:
            raise InvalidArgument(f"label longer than {_MAX_LABEL} bytes in {name!r}")
    if sum(len(x) + 1 for x in labels) + 1 > _MAX_NAME:
        raise InvalidArgument(f"name longer than {_MAX_NAME} bytes: {name!r}")
    return labels


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """Decode the name at ``offset``; return it and the offset just after it."""
    labels: list[str] = []
    wire = 1  # the root label
    pos = offset
    lowest = offset  # every pointer must go strictly below all we have visited
    end = -1
    hops = 0
    size = len(data)
    while True:
        if pos >= size:
            raise DnsFormatError(f"name at {offset} runs past the end of the message")
        length = data[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= size:
                raise DnsFormatError(f"truncated compression pointer at {pos}")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= lowest:
                raise DnsFormatError(f"compression pointer at {pos} does not point backwards")
            hops += 1
            if hops > _MAX_POINTER_HOPS:
                raise DnsFormatError(f"too many compression pointers in name at {offset}")
            if end < 0:
                end = pos + 2
            lowest = pos = target
            continue
        if kind:
            raise DnsFormatError(f"unsupported label type {kind:#x} at {pos}")
        if length == 0:
            break
        start = pos + 1
        if start + length > size:
            raise DnsFormatError(f"label at {pos} runs past the end of the message")
        wire += length + 1
        if wire > _MAX_NAME:
            raise DnsFormatError(f"name at {offset} longer than {_MAX_NAME} bytes")
        labels.append(_label_text(data[start : start + length]))
        pos = start + length
    if end < 0:
        end = pos + 1
    return ".".join(labels), end


def address_from_reverse(name: str) -> IPAddress | None:
    """The address an ``in-addr.arpa``/``ip6.arpa`` name stands for, or None when the
    name is not a complete reverse name (a partial one names a zone, not a host)."""
    parts = name.lower().rstrip(".").split(".")
    try:
        if parts[-2:] == ["in-addr", "arpa"] and len(parts) == 6:
            octets = parts[3::-1]
            if not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in octets):
                return None
            return ipaddress.IPv4Address(".".join(str(int(p)) for p in octets))
        if parts[-2:] == ["ip6", "arpa"] and len(parts) == 34:
            nibbles = parts[31::-1]
            if not all(len(p) == 1 and p in "0123456789abcdef" for p in nibbles):
                return None
            return ipaddress.IPv6Address(int("".join(nibbles), 16))
    except ValueError:
        return None
    return None


# -- parsing ---------------------------------------------------------------------------


def parse_header(data: bytes) -> Header:
    """The header alone; enough to answer FORMERR to a query whose body is broken."""
    if len(data) < HEADER_SIZE:
        raise DnsFormatError(f"message of {len(data)} bytes is shorter than a header")
    return Header(*_HDR.unpack_from(data, 0))


def _read_questions(data: bytes, header: Header) -> tuple[tuple[Question, ...], int]:
    pos = HEADER_SIZE
    out = []
    for _ in range(header.qdcount):
        name, pos = _read_name(data, pos)
        if pos + _Q.size > len(data):
            raise DnsFormatError("question runs past the end of the message")
        qtype, qclass = _Q.unpack_from(data, pos)
        pos += _Q.size
        out.append(Question(name, qtype, qclass))
    return tuple(out), pos


def peek(data: bytes) -> tuple[Header, tuple[Question, ...], int]:
    """Header and question section, plus the offset where the answers start. Used to
    match relayed replies without judging the parts we pass through untouched."""
    header = parse_header(data)
    questions, pos = _read_questions(data, header)
    return header, questions, pos


def _read_record(data: bytes, pos: int) -> tuple[str, int, int, int, int, int]:
    name, pos = _read_name(data, pos)
    if pos + _RR.size > len(data):
        raise DnsFormatError(f"record header at {pos} runs past the end of the message")
    rtype, rclass, ttl, rdlen = _RR.unpack_from(data, pos)
    pos += _RR.size
    if pos + rdlen > len(data):
        raise DnsFormatError(f"record data at {pos} runs past the end of the message")
    return name, rtype, rclass, ttl, pos, pos + rdlen


def _rdata(data: bytes, rtype: int, rclass: int, start: int, end: int) -> RData:
    raw = data[start:end]
    if rclass == RRClass.IN and rtype == RRType.A:
        if len(raw) != 4:
            raise DnsFormatError(f"A record with {len(raw)} bytes of data at {start}")
        return ipaddress.IPv4Address(raw)
    if rclass == RRClass.IN and rtype == RRType.AAAA:
        if len(raw) != 16:
            raise DnsFormatError(f"AAAA record with {len(raw)} bytes of data at {start}")
        return ipaddress.IPv6Address(raw)
    if rtype in _NAME_RDATA:
        target, after = _read_name(data, start)
        if after != end:
            raise DnsFormatError(f"name in record data at {start} does not fill it")
        return target
    return raw


def _edns(name: str, udp_size: int, ttl: int, options: bytes, at: int) -> Edns:
    if name:
        raise DnsFormatError(f"OPT record at {at} has a non-root owner name")
    pos = 0
    while pos < len(options):
        if pos + 4 > len(options):
            raise DnsFormatError(f"truncated EDNS option in OPT record at {at}")
        (olen,) = struct.unpack_from("!H", options, pos + 2)
        pos += 4 + olen
        if pos > len(options):
            raise DnsFormatError(f"EDNS option overruns OPT record at {at}")
    return Edns(udp_size, ttl >> 24, (ttl >> 16) & 0xFF, ttl & 0xFFFF, options)


def parse(data: bytes) -> Message:
    """Decode a whole message. Raises :class:`DnsFormatError` on any inconsistency,
    including bytes left over after the last section and more than one OPT record."""
    header = parse_header(data)
    questions, pos = _read_questions(data, header)
    sections: list[list[Record]] = [[], [], []]
    edns: Edns | None = None
    counts = (header.ancount, header.nscount, header.arcount)
    for index, count in enumerate(counts):
        for _ in range(count):
            at = pos
            name, rtype, rclass, ttl, start, pos = _read_record(data, pos)
            if rtype == RRType.OPT:
                if index != 2 or edns is not None:
                    raise DnsFormatError(f"misplaced or repeated OPT record at {at}")
                edns = _edns(name, rclass, ttl, data[start:pos], at)
                continue
            sections[index].append(
                Record(name, rtype, rclass, ttl, _rdata(data, rtype, rclass, start, pos))
            )
    if pos != len(data):
        raise DnsFormatError(f"{len(data) - pos} stray bytes after the last record")
    return Message(
        header.id,
        header.flags,
        questions,
        tuple(sections[0]),
        tuple(sections[1]),
        tuple(sections[2]),
        edns,
    )


# -- encoding --------------------------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray(HEADER_SIZE)
        self._names: dict[tuple[bytes, ...], int] = {}

    def name(self, name: str) -> None:
        labels = _labels(name)
        for i in range(len(labels)):
            suffix = tuple(labels[i:])
            ptr = self._names.get(suffix)
            if ptr is not None:
                self.buf += struct.pack("!H", 0xC000 | ptr)
                return
            if len(self.buf) < 0x4000:  # pointers have 14 bits
                self._names[suffix] = len(self.buf)
            self.buf.append(len(labels[i]))
            self.buf += labels[i]
        self.buf.append(0)

    def record(self, rec: Record) -> None:
        self.name(rec.name)
        self.buf += _RR.pack(rec.rtype, rec.rclass, rec.ttl, 0)
        start = len(self.buf)
        data = rec.data
        if isinstance(data, ipaddress.IPv4Address | ipaddress.IPv6Address):
            self.buf += data.packed
        elif isinstance(data, str):
            self.name(data)
        else:
            self.buf += data
        rdlen = len(self.buf) - start
        if rdlen > 0xFFFF:
            raise InvalidArgument(f"record data of {rdlen} bytes for {rec.name!r}")
        struct.pack_into("!H", self.buf, start - 2, rdlen)


def _opt_bytes(edns: Edns, rcode: int) -> bytes:
    ttl = ((rcode >> 4) << 24) | (edns.version << 16) | edns.flags
    return b"\x00" + _RR.pack(RRType.OPT, edns.udp_size, ttl, len(edns.options)) + edns.options


def encode(msg: Message, max_size: int = MAX_MESSAGE) -> bytes:
    """Encode ``msg``. If it does not fit in ``max_size`` bytes, whole records are
    dropped from the end (additional, then authority, then answers), TC is set and
    the OPT record is kept. Raises InvalidArgument if even the header, the questions
    and the OPT record do not fit."""
    if msg.rcode > 0xF and msg.edns is None:
        raise InvalidArgument(f"rcode {msg.rcode} needs an OPT record")
    w = _Writer()
    for q in msg.questions:
        w.name(q.name)
        w.buf += _Q.pack(q.qtype, q.qclass)
    base = len(w.buf)
    ends: list[int] = []  # offset after each record, in wire order
    records = (*msg.answers, *msg.authority, *msg.additional)
    for rec in records:
        w.record(rec)
        ends.append(len(w.buf))
    opt = _opt_bytes(msg.edns, msg.rcode) if msg.edns is not None else b""
    flags = msg.flags
    body = w.buf
    kept = len(records)
    if len(body) + len(opt) > max_size:
        if base + len(opt) > max_size:
            raise InvalidArgument(f"message does not fit in {max_size} bytes")
        flags |= Flag.TC
        while kept and ends[kept - 1] + len(opt) > max_size:
            kept -= 1
        body = body[: ends[kept - 1] if kept else base]
    an = min(kept, len(msg.answers))
    ns = min(kept - an, len(msg.authority))
    ar = kept - an - ns + (1 if opt else 0)
    _HDR.pack_into(body, 0, msg.id, flags & 0xFFFF, len(msg.questions), an, ns, ar)
    return bytes(body) + opt


# -- building --------------------------------------------------------------------------


def make_query(
    name: str,
    qtype: int,
    *,
    id: int,
    qclass: int = RRClass.IN,
    rd: bool = True,
    edns: Edns | None = None,
) -> Message:
    """A standard query for one question (what a stub resolver sends)."""
    _labels(name)  # validate early
    return Message(id, Flag.RD if rd else 0, (Question(name, qtype, qclass),), edns=edns)


def _reply_flags(query_flags: int, rcode: int, *, aa: bool, ra: bool) -> int:
    flags = Flag.QR | (query_flags & (0xF << 11 | Flag.RD | Flag.CD)) | (rcode & 0xF)
    if aa:
        flags |= Flag.AA
    if ra:
        flags |= Flag.RA
    return int(flags)


def reply(
    query: Message,
    *,
    rcode: int = Rcode.NOERROR,
    answers: Iterable[Record] = (),
    aa: bool = False,
    ra: bool = True,
) -> Message:
    """The response to ``query``: same id, opcode, RD and CD, the question echoed,
    and an OPT record (version 0, our payload size) exactly when the query had one."""
    edns = None
    if query.edns is not None:
        edns = Edns(EDNS_UDP_SIZE, rcode >> 4, 0, 0, b"")
    elif rcode > 0xF:
        raise InvalidArgument(f"rcode {rcode} needs an OPT record in the query")
    flags = _reply_flags(query.flags, rcode, aa=aa, ra=ra)
    return Message(query.id, flags, query.questions, tuple(answers), edns=edns)


def error_reply(header: Header, rcode: int) -> bytes:
    """A bare error response (no question) for a query only the header of which
    could be read: what a server sends back as FORMERR."""
    return encode(Message(header.id, _reply_flags(header.flags, rcode, aa=False, ra=True)))
