"""Netlink wire format: message framing, attributes, and the rtnetlink family headers.

Pure encode/decode over ``bytes``; no sockets. Everything is in host byte order and
padded to 4 bytes::

    message    | nlmsghdr: len u32 | type u16 | flags u16 | seq u32 | pid u32 | payload ...
    payload    = a fixed family header (ifinfomsg, ifaddrmsg, rtmsg, nlmsgerr)
                 followed by attributes
    attribute  | nlattr: len u16 | type u16 | value ... | padding to 4 |

``len`` counts the header and the value but not the trailing padding. A nested
attribute's value is itself a run of attributes (``NLA_F_NESTED`` set in the type).

Input from the kernel is bounds-checked: a length field that points outside the
buffer raises :class:`DecodeError` (an ``OSError`` with ``EBADMSG``), never an
``IndexError`` or a silent short read.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from typing import NamedTuple

__all__ = [
    "IFA",
    "IFLA",
    "NLA_F_NESTED",
    "NLMSG",
    "NLMSGERR_ATTR",
    "NLM_F",
    "RTA",
    "RTM",
    "DecodeError",
    "ErrorInfo",
    "IfAddrMsg",
    "IfInfoMsg",
    "Message",
    "RtMsg",
    "align",
    "attr",
    "attr_s32",
    "attr_str",
    "attr_u8",
    "attr_u32",
    "decode_messages",
    "encode_message",
    "get_s32",
    "get_str",
    "get_u8",
    "get_u32",
    "iter_attrs",
    "nested",
    "parse_attrs",
    "parse_error",
]

ALIGNTO = 4
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

_HDR = struct.Struct("=IHHII")  # struct nlmsghdr
_NLA = struct.Struct("=HH")  # struct nlattr
_I32 = struct.Struct("=i")


class NLMSG:
    """Control message types (<linux/netlink.h>)."""

    NOOP = 1
    ERROR = 2
    DONE = 3
    OVERRUN = 4


class NLM_F:
    """nlmsg_flags (<linux/netlink.h>); GET/NEW/ACK modifiers share bits by design."""

    REQUEST = 0x01
    MULTI = 0x02
    ACK = 0x04
    ECHO = 0x08
    DUMP_INTR = 0x10
    DUMP_FILTERED = 0x20
    # modifiers to GET requests
    ROOT = 0x100
    MATCH = 0x200
    DUMP = ROOT | MATCH
    # modifiers to NEW requests
    REPLACE = 0x100
    EXCL = 0x200
    CREATE = 0x400
    APPEND = 0x800
    # flags on NLMSG_ERROR acks
    CAPPED = 0x100
    ACK_TLVS = 0x200


class NLMSGERR_ATTR:
    """Extended-ack attributes after an nlmsgerr (<linux/netlink.h>)."""

    MSG = 1
    OFFS = 2
    COOKIE = 3


class RTM:
    """rtnetlink message types (<linux/rtnetlink.h>)."""

    NEWLINK = 16
    DELLINK = 17
    GETLINK = 18
    SETLINK = 19
    NEWADDR = 20
    DELADDR = 21
    GETADDR = 22
    NEWROUTE = 24
    DELROUTE = 25
    GETROUTE = 26

    @staticmethod
    def name(msg_type: int) -> str:
        """``RTM_NEWLINK`` for 16; ``NLMSG_<n>`` for anything this module does not name."""
        for key, value in vars(RTM).items():
            if key.isupper() and value == msg_type:
                return f"RTM_{key}"
        return f"NLMSG_{msg_type}"


class IFLA:
    """Link attributes (<linux/if_link.h>), with the nested IFLA_INFO_* and VETH_INFO_*."""

    ADDRESS = 1
    BROADCAST = 2
    IFNAME = 3
    MTU = 4
    LINK = 5
    MASTER = 10
    TXQLEN = 13
    OPERSTATE = 16
    LINKINFO = 18
    NET_NS_PID = 19
    IFALIAS = 20
    NET_NS_FD = 28
    EXT_MASK = 29
    LINK_NETNSID = 37
    NEW_NETNSID = 45
    # inside IFLA_LINKINFO
    INFO_KIND = 1
    INFO_DATA = 2
    INFO_SLAVE_KIND = 4
    # inside IFLA_INFO_DATA of a veth: struct ifinfomsg + IFLA_* attributes of the peer
    VETH_INFO_PEER = 1


class IFA:
    """Address attributes and flags (<linux/if_addr.h>)."""

    ADDRESS = 1
    LOCAL = 2
    LABEL = 3
    BROADCAST = 4
    FLAGS = 8
    F_NODAD = 0x02
    F_PERMANENT = 0x80


class RTA:
    """Route attributes (<linux/rtnetlink.h>)."""

    DST = 1
    SRC = 2
    IIF = 3
    OIF = 4
    GATEWAY = 5
    PRIORITY = 6
    PREFSRC = 7
    MULTIPATH = 9
    TABLE = 15


class DecodeError(OSError):
    """A netlink message that does not parse: ``OSError(EBADMSG, ...)`` naming the part."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EBADMSG, f"malformed netlink message: {what}")


def align(n: int) -> int:
    """``n`` rounded up to the netlink alignment (4)."""
    return (n + ALIGNTO - 1) & ~(ALIGNTO - 1)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (align(len(data)) - len(data))


# --- messages -------------------------------------------------------------------------------


class Message(NamedTuple):
    """One decoded netlink message: header fields and the payload after the header."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


def encode_message(msg_type: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    """A complete netlink message (header + payload, padded) ready for ``send``."""
    return _HDR.pack(_HDR.size + len(payload), msg_type, flags, seq, pid) + _pad(payload)


def decode_messages(data: bytes) -> list[Message]:
    """Split one datagram into its messages; each ``len`` must fit inside ``data``."""
    out: list[Message] = []
    off = 0
    while off < len(data):
        if len(data) - off < _HDR.size:
            raise DecodeError(f"{len(data) - off} trailing bytes at offset {off}, "
                              f"shorter than a header")
        length, msg_type, flags, seq, pid = _HDR.unpack_from(data, off)
        if length < _HDR.size or length > len(data) - off:
            raise DecodeError(f"nlmsg_len {length} at offset {off} in a "
                              f"{len(data)}-byte datagram")
        out.append(Message(msg_type, flags, seq, pid, bytes(data[off + _HDR.size:off + length])))
        off += align(length)
    return out


# --- attributes -----------------------------------------------------------------------------


def attr(attr_type: int, value: bytes) -> bytes:
    """One attribute (header, value, padding)."""
    if _NLA.size + len(value) > 0xFFFF:
        raise ValueError(f"netlink attribute {attr_type} too long ({len(value)} bytes)")
    return _pad(_NLA.pack(_NLA.size + len(value), attr_type) + value)


def attr_u8(attr_type: int, value: int) -> bytes:
    return attr(attr_type, struct.pack("=B", value))


def attr_u32(attr_type: int, value: int) -> bytes:
    return attr(attr_type, struct.pack("=I", value))


def attr_s32(attr_type: int, value: int) -> bytes:
    return attr(attr_type, struct.pack("=i", value))


def attr_str(attr_type: int, value: str) -> bytes:
    """A NUL-terminated string attribute (NLA_STRING and NLA_NUL_STRING both accept it)."""
    return attr(attr_type, value.encode() + b"\0")


def nested(attr_type: int, *children: bytes) -> bytes:
    """A nested attribute holding ``children`` (already encoded), flagged NLA_F_NESTED."""
    return attr(attr_type | NLA_F_NESTED, b"".join(children))


def iter_attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type without NLA_F_* flags, value) for each attribute in ``data``, in order."""
    off = 0
    while off < len(data):
        if len(data) - off < _NLA.size:
            raise DecodeError(f"{len(data) - off} trailing bytes at attribute offset {off}")
        length, attr_type = _NLA.unpack_from(data, off)
        if length < _NLA.size or length > len(data) - off:
            raise DecodeError(f"nla_len {length} of attribute {attr_type & NLA_TYPE_MASK} "
                              f"at offset {off} in {len(data)} bytes")
        yield attr_type & NLA_TYPE_MASK, bytes(data[off + _NLA.size:off + length])
        off += align(length)


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Attributes of ``data`` by type; a repeated type keeps the last value."""
    return dict(iter_attrs(data))


def _get(fmt: struct.Struct, value: bytes, what: str) -> int:
    if len(value) < fmt.size:
        raise DecodeError(f"{what} attribute of {len(value)} bytes, need {fmt.size}")
    result: int = fmt.unpack_from(value)[0]
    return result


_U8 = struct.Struct("=B")
_U32 = struct.Struct("=I")


def get_u8(value: bytes) -> int:
    return _get(_U8, value, "u8")


def get_u32(value: bytes) -> int:
    return _get(_U32, value, "u32")


def get_s32(value: bytes) -> int:
    return _get(_I32, value, "s32")


def get_str(value: bytes) -> str:
    """A string attribute up to its first NUL (undecodable bytes kept as surrogates)."""
    return value.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


# --- family headers -------------------------------------------------------------------------


def _short(name: str, have: int, need: int) -> DecodeError:
    return DecodeError(f"{name} needs {need} bytes, payload has {have}")


_IFINFOMSG = struct.Struct("=BxHiII")


class IfInfoMsg(NamedTuple):
    """struct ifinfomsg: the fixed header of RTM_*LINK messages."""

    family: int = 0
    type: int = 0
    ifindex: int = 0
    flags: int = 0
    change: int = 0

    def pack(self) -> bytes:
        return _IFINFOMSG.pack(self.family, self.type, self.ifindex, self.flags, self.change)

    @classmethod
    def unpack(cls, payload: bytes) -> tuple[IfInfoMsg, bytes]:
        """The header and the attribute bytes after it."""
        if len(payload) < _IFINFOMSG.size:
            raise _short("ifinfomsg", len(payload), _IFINFOMSG.size)
        return cls(*_IFINFOMSG.unpack_from(payload)), payload[_IFINFOMSG.size:]


_IFADDRMSG = struct.Struct("=BBBBI")


class IfAddrMsg(NamedTuple):
    """struct ifaddrmsg: the fixed header of RTM_*ADDR messages."""

    family: int = 0
    prefixlen: int = 0
    flags: int = 0
    scope: int = 0
    ifindex: int = 0

    def pack(self) -> bytes:
        return _IFADDRMSG.pack(self.family, self.prefixlen, self.flags, self.scope, self.ifindex)

    @classmethod
    def unpack(cls, payload: bytes) -> tuple[IfAddrMsg, bytes]:
        if len(payload) < _IFADDRMSG.size:
            raise _short("ifaddrmsg", len(payload), _IFADDRMSG.size)
        return cls(*_IFADDRMSG.unpack_from(payload)), payload[_IFADDRMSG.size:]


_RTMSG = struct.Struct("=BBBBBBBBI")


class RtMsg(NamedTuple):
    """struct rtmsg: the fixed header of RTM_*ROUTE messages."""

    family: int = 0
    dst_len: int = 0
    src_len: int = 0
    tos: int = 0
    table: int = 0
    protocol: int = 0
    scope: int = 0
    type: int = 0
    flags: int = 0

    def pack(self) -> bytes:
        return _RTMSG.pack(self.family, self.dst_len, self.src_len, self.tos, self.table,
                            self.protocol, self.scope, self.type, self.flags)

    @classmethod
    def unpack(cls, payload: bytes) -> tuple[RtMsg, bytes]:
        if len(payload) < _RTMSG.size:
            raise _short("rtmsg", len(payload), _RTMSG.size)
        return cls(*_RTMSG.unpack_from(payload)), payload[_RTMSG.size:]


# --- errors and acks ------------------------------------------------------------------------


class ErrorInfo(NamedTuple):
    """What an NLMSG_ERROR (or the status of an NLMSG_DONE) says.

    ``error`` is a positive errno, 0 for a plain ACK. ``message`` is the kernel's
    extended-ack text and ``offset`` the byte offset of the offending attribute in
    the request, when the kernel gave them (NETLINK_EXT_ACK set on the socket).
    ``seq`` is the sequence number of the request this answers (0 for NLMSG_DONE).
    """

    error: int
    message: str | None = None
    offset: int | None = None
    seq: int = 0


def _ext_ack(tlvs: bytes) -> tuple[str | None, int | None]:
    attrs = parse_attrs(tlvs)
    text = get_str(attrs[NLMSGERR_ATTR.MSG]) if NLMSGERR_ATTR.MSG in attrs else None
    offs = get_u32(attrs[NLMSGERR_ATTR.OFFS]) if NLMSGERR_ATTR.OFFS in attrs else None
    return text or None, offs


def parse_error(msg: Message) -> ErrorInfo:
    """Decode an NLMSG_ERROR or NLMSG_DONE payload into an :class:`ErrorInfo`.

    nlmsgerr is ``int error; struct nlmsghdr msg;`` then, unless NLM_F_CAPPED, the
    rest of the request echoed back, then, with NLM_F_ACK_TLVS, ext-ack attributes.
    NLMSG_DONE carries just ``int error`` (plus ext-ack attributes on new kernels).
    """
    data = msg.payload
    text: str | None = None
    offs: int | None = None
    if msg.type == NLMSG.DONE:
        if len(data) < _I32.size:  # very old kernels send an empty DONE
            return ErrorInfo(0)
        err = _I32.unpack_from(data)[0]
        if msg.flags & NLM_F.ACK_TLVS:
            text, offs = _ext_ack(data[_I32.size:])
        return ErrorInfo(-err if err < 0 else 0, text, offs)
    if msg.type != NLMSG.ERROR:
        raise ValueError(f"parse_error on message type {msg.type}")
    head = _I32.size + _HDR.size
    if len(data) < head:
        raise _short("nlmsgerr", len(data), head)
    err = _I32.unpack_from(data)[0]
    orig_len, _t, _f, orig_seq, _p = _HDR.unpack_from(data, _I32.size)
    if err > 0:
        raise DecodeError(f"nlmsgerr error {err} is positive")
    if msg.flags & NLM_F.ACK_TLVS:
        if msg.flags & NLM_F.CAPPED:
            tlv_off = head
        else:
            if orig_len < _HDR.size:
                raise DecodeError(f"echoed request nlmsg_len {orig_len}")
            tlv_off = head + align(orig_len - _HDR.size)
        if tlv_off > len(data):
            raise DecodeError(f"ext-ack attributes at {tlv_off} past the {len(data)}-byte "
                              f"nlmsgerr")
        text, offs = _ext_ack(data[tlv_off:])
    return ErrorInfo(-err, text, offs, orig_seq)
