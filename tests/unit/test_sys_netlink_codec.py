"""rtnetlink codec without a kernel: framing, attributes, family headers, request
builders, reply decoders, NLMSG_ERROR / ext-ack parsing, and malformed input.

Expected bytes are built here with ``struct`` from the kernel's C layouts, not with
the module's own helpers, so an encoder bug cannot agree with itself. The last part
drives :class:`Netlink`'s request/ACK/dump loop over a UNIX datagram socketpair with
replies the kernel cannot be made to send on demand (stale sequence numbers,
interrupted dumps, ext-ack text).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterator

import pytest

from ketch.errors import InvalidArgument
from ketch.sys.netlink import DecodeError, Link, Netlink, Route
from ketch.sys.netlink import messages as m
from ketch.sys.netlink import wire as w

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6


def nlattr(attr_type: int, value: bytes) -> bytes:
    """struct nlattr {u16 len; u16 type} + value + padding, written out by hand."""
    raw = struct.pack("=HH", 4 + len(value), attr_type) + value
    return raw + b"\0" * (-len(raw) % 4)


def nlmsg(msg_type: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(payload), msg_type, flags, seq, pid) + payload
    return raw + b"\0" * (-len(raw) % 4)


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0, family: int = 0) -> bytes:
    return struct.pack("=BxHiII", family, 0, index, flags, change)


def attrs_of(data: bytes) -> list[tuple[int, bytes]]:
    return list(w.iter_attrs(data))


# --- framing --------------------------------------------------------------------------------------


def test_nlmsghdr_layout_and_padding() -> None:
    raw = w.encode_message(18, 0x301, 7, b"\x01\x02\x03", pid=9)
    # nlmsg_len counts header + payload but not the padding that follows
    assert raw == struct.pack("=IHHII", 19, 18, 0x301, 7, 9) + b"\x01\x02\x03\0"


def test_decode_messages_splits_a_datagram() -> None:
    data = nlmsg(16, 2, 5, b"abc") + nlmsg(3, 2, 5, struct.pack("=i", 0))
    msgs = w.decode_messages(data)
    assert [(x.type, x.flags, x.seq, x.payload) for x in msgs] == [
        (16, 2, 5, b"abc"), (3, 2, 5, b"\0\0\0\0")]


@pytest.mark.parametrize("data", [
    b"\x10\0\0",                                         # shorter than a header
    struct.pack("=IHHII", 15, 2, 0, 1, 0),               # nlmsg_len below the header size
    struct.pack("=IHHII", 64, 16, 0, 1, 0) + b"x" * 8,   # nlmsg_len past the datagram
    nlmsg(16, 0, 1, b"abcd") + b"\0\0",                  # trailing garbage
])
def test_decode_messages_rejects_bad_lengths(data: bytes) -> None:
    with pytest.raises(DecodeError) as e:
        w.decode_messages(data)
    assert e.value.errno == errno.EBADMSG and "malformed netlink message" in str(e.value)


# --- attributes -----------------------------------------------------------------------------------


def test_attribute_encoding_matches_c_layout() -> None:
    assert w.attr_str(3, "br0") == nlattr(3, b"br0\0")
    assert w.attr_u32(4, 1400) == nlattr(4, struct.pack("=I", 1400))
    assert w.attr_u8(16, 6) == nlattr(16, b"\x06")
    assert w.attr_s32(37, -1) == nlattr(37, struct.pack("=i", -1))
    inner = nlattr(1, b"veth\0")
    assert w.nested(18, inner) == nlattr(18 | 0x8000, inner)


def test_parse_attrs_masks_flags_and_keeps_last() -> None:
    data = nlattr(18 | 0x8000, nlattr(1, b"x\0")) + nlattr(4, b"\1\0\0\0") + nlattr(4, b"\2\0\0\0")
    parsed = w.parse_attrs(data)
    assert set(parsed) == {18, 4}
    assert w.get_u32(parsed[4]) == 2
    assert w.get_str(w.parse_attrs(parsed[18])[1]) == "x"


def test_attribute_without_padding_at_the_end_is_accepted() -> None:
    # the last attribute's padding may be missing from a datagram
    data = struct.pack("=HH", 7, 3) + b"lo\0"
    assert attrs_of(data) == [(3, b"lo\0")]


@pytest.mark.parametrize("data", [
    b"\x08\0",                                    # partial header
    struct.pack("=HH", 3, 1),                     # nla_len below the header size
    struct.pack("=HH", 12, 1) + b"abcd",          # nla_len past the buffer
])
def test_bad_attributes_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        attrs_of(data)


def test_short_integer_attribute_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="u32"):
        w.get_u32(b"\1\2")


def test_oversized_attribute_is_refused() -> None:
    with pytest.raises(ValueError):
        w.attr(1, b"x" * 0x10000)


# --- family headers -------------------------------------------------------------------------------


def test_family_headers_have_the_kernel_sizes_and_round_trip() -> None:
    info = w.IfInfoMsg(family=0, type=1, ifindex=7, flags=0x1003, change=1)
    assert info.pack() == struct.pack("=BxHiII", 0, 1, 7, 0x1003, 1)
    assert w.IfInfoMsg.unpack(info.pack() + b"rest") == (info, b"rest")
    addr = w.IfAddrMsg(family=AF_INET, prefixlen=24, flags=0, scope=253, ifindex=4)
    assert len(addr.pack()) == 8 and w.IfAddrMsg.unpack(addr.pack()) == (addr, b"")
    rt = w.RtMsg(family=AF_INET6, dst_len=64, table=254, protocol=3, scope=0, type=1)
    assert len(rt.pack()) == 12 and w.RtMsg.unpack(rt.pack()) == (rt, b"")


@pytest.mark.parametrize(("cls", "size"), [(w.IfInfoMsg, 16), (w.IfAddrMsg, 8), (w.RtMsg, 12)])
def test_truncated_family_header_is_a_decode_error(cls: type[w.IfInfoMsg], size: int) -> None:
    with pytest.raises(DecodeError, match=f"needs {size} bytes"):
        cls.unpack(b"\0" * (size - 1))


# --- link requests and replies --------------------------------------------------------------------


def test_veth_request_nests_the_peer_as_a_whole_link() -> None:
    payload = m.veth_request("v0", "eth0", mtu=1400, peer_netns_fd=9)
    hdr, rest = w.IfInfoMsg.unpack(payload)
    assert hdr == w.IfInfoMsg()
    top = attrs_of(rest)
    assert top[:2] == [(3, b"v0\0"), (4, struct.pack("=I", 1400))]
    linkinfo = w.parse_attrs(dict(top)[18])
    assert linkinfo[1] == b"veth\0"
    peer = w.parse_attrs(linkinfo[2])[1]                      # VETH_INFO_PEER
    peer_hdr, peer_rest = w.IfInfoMsg.unpack(peer)
    assert peer_hdr == w.IfInfoMsg()
    assert attrs_of(peer_rest) == [(3, b"eth0\0"), (4, struct.pack("=I", 1400)),
                                   (28, struct.pack("=I", 9))]  # IFLA_NET_NS_FD
    # the containers carry NLA_F_NESTED on the wire: IFLA_LINKINFO follows IFNAME (8 bytes
    # padded) and MTU (8); inside it IFLA_INFO_DATA follows the 12-byte INFO_KIND "veth"
    assert struct.unpack_from("=H", rest, 16 + 2)[0] == 18 | 0x8000
    assert struct.unpack_from("=H", rest, 16 + 4 + 12 + 2)[0] == 2 | 0x8000


def test_bridge_request_decodes_as_a_link() -> None:
    # a NEWLINK request has the same shape as the kernel's NEWLINK reply
    link = m.decode_link(m.newlink_request("br0", "bridge", mtu=1450))
    assert (link.name, link.kind, link.mtu, link.up) == ("br0", "bridge", 1450, False)


def test_setlink_sets_only_what_is_asked() -> None:
    hdr, rest = w.IfInfoMsg.unpack(m.setlink_request(5, up=True))
    assert (hdr.ifindex, hdr.flags, hdr.change) == (5, 1, 1) and rest == b""
    hdr, rest = w.IfInfoMsg.unpack(m.setlink_request(5, up=False, master=0))
    assert (hdr.flags, hdr.change) == (0, 1)
    assert attrs_of(rest) == [(10, b"\0\0\0\0")]                # IFLA_MASTER 0 = nomaster
    hdr, rest = w.IfInfoMsg.unpack(m.setlink_request(5, new_name="x1", mac=b"\2\0\0\0\0\1",
                                                     netns_fd=11, mtu=9000))
    assert hdr.change == 0
    assert dict(attrs_of(rest)) == {3: b"x1\0", 4: struct.pack("=I", 9000),
                                    28: struct.pack("=I", 11), 1: b"\2\0\0\0\0\1"}


def kernel_link_reply() -> bytes:
    """An RTM_NEWLINK reply as the kernel sends it for a veth enslaved to a bridge."""
    return (ifinfomsg(index=3, flags=0x11003)
            + nlattr(3, b"v0\0") + nlattr(13, struct.pack("=I", 1000))
            + nlattr(4, struct.pack("=I", 1500)) + nlattr(10, struct.pack("=I", 2))
            + nlattr(16, b"\x06") + nlattr(1, bytes.fromhex("02420a000002"))
            + nlattr(5, struct.pack("=I", 9)) + nlattr(37, struct.pack("=i", 0))
            + nlattr(18 | 0x8000, nlattr(1, b"veth") + nlattr(4, b"bridge")))


def test_decode_link_reply() -> None:
    assert m.decode_link(kernel_link_reply()) == Link(
        index=3, name="v0", kind="veth", mtu=1500, up=True, master=2, mac="02:42:0a:00:00:02",
        flags=0x11003, operstate="UP", link=9, link_netnsid=0)


def test_decode_link_without_optional_attributes() -> None:
    link = m.decode_link(ifinfomsg(index=1, flags=0x49) + nlattr(3, b"lo\0"))
    assert (link.kind, link.master, link.mac, link.link_netnsid, link.operstate) == (
        "", 0, "", None, "UNKNOWN")


def test_every_truncation_of_a_link_reply_is_a_clean_error() -> None:
    full = nlmsg(16, 2, 1, kernel_link_reply())
    for cut in range(len(full)):
        data = bytearray(full[:cut])
        if len(data) >= 4:  # keep nlmsg_len consistent so the inner decoders are reached too
            struct.pack_into("=I", data, 0, len(data))
        try:
            for msg in w.decode_messages(bytes(data)):
                m.decode_link(msg.payload)
        except DecodeError:
            pass


def test_corrupted_lengths_in_a_link_reply_are_clean_errors() -> None:
    payload = bytearray(kernel_link_reply())
    for off in range(16, len(payload) - 1, 2):
        for value in (0, 1, 3, 0xFFFF):
            bad = bytearray(payload)
            struct.pack_into("=H", bad, off, value)
            try:
                m.decode_link(bytes(bad))
            except DecodeError:
                pass


# --- addresses ------------------------------------------------------------------------------------


def test_ipv4_addr_request_is_like_ip_addr_add() -> None:
    payload = m.addr_request(4, ipaddress.IPv4Interface("10.1.0.1/24"))
    hdr, rest = w.IfAddrMsg.unpack(payload)
    assert hdr == w.IfAddrMsg(family=AF_INET, prefixlen=24, flags=0, scope=0, ifindex=4)
    assert attrs_of(rest) == [(2, bytes([10, 1, 0, 1])), (1, bytes([10, 1, 0, 1])),
                              (4, bytes([10, 1, 0, 255]))]       # LOCAL, ADDRESS, BROADCAST
    assert m.decode_addr(payload) == (4, ipaddress.ip_interface("10.1.0.1/24"), 0, "")


def test_addr_request_variants() -> None:
    host = w.IfAddrMsg.unpack(m.addr_request(1, ipaddress.IPv4Interface("127.0.0.2/8")))[0]
    assert host.scope == 254
    p2p = attrs_of(w.IfAddrMsg.unpack(m.addr_request(1, ipaddress.IPv4Interface(
        "10.0.0.1/31")))[1])
    assert [t for t, _ in p2p] == [2, 1]                      # no broadcast on /31
    delete = attrs_of(w.IfAddrMsg.unpack(m.addr_request(1, ipaddress.IPv4Interface(
        "10.0.0.1/24"), delete=True))[1])
    assert [t for t, _ in delete] == [2, 1]
    v6 = m.addr_request(2, ipaddress.IPv6Interface("fd00::5/64"), nodad=True)
    hdr, _ = w.IfAddrMsg.unpack(v6)
    assert (hdr.family, hdr.prefixlen, hdr.flags) == (AF_INET6, 64, 0x02)
    assert m.decode_addr(v6)[1] == ipaddress.IPv6Interface("fd00::5/64")


def test_decode_addr_prefers_local_over_peer_address() -> None:
    payload = (struct.pack("=BBBBI", AF_INET, 32, 0x80, 0, 6) + nlattr(1, bytes([10, 0, 0, 9]))
               + nlattr(2, bytes([10, 0, 0, 1])) + nlattr(3, b"tun0\0"))
    assert m.decode_addr(payload) == (6, ipaddress.ip_interface("10.0.0.1/32"), 0, "tun0")


@pytest.mark.parametrize("payload", [
    struct.pack("=BBBBI", AF_INET, 24, 0, 0, 6),                               # no address
    struct.pack("=BBBBI", AF_INET, 24, 0, 0, 6) + nlattr(2, b"\1\2\3"),        # 3-byte address
    struct.pack("=BBBBI", AF_INET, 40, 0, 0, 6) + nlattr(2, b"\1\2\3\4"),      # /40 for IPv4
    struct.pack("=BBBBI", AF_INET6, 64, 0, 0, 6) + nlattr(2, b"\1\2\3\4"),     # family mismatch
])
def test_bad_addr_replies_are_decode_errors(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        m.decode_addr(payload)


# --- routes ---------------------------------------------------------------------------------------


def test_default_route_via_gateway_request() -> None:
    payload = m.route_request(ipaddress.IPv4Network("0.0.0.0/0"),
                              gateway=ipaddress.IPv4Address("10.1.0.1"), oif=3)
    hdr, rest = w.RtMsg.unpack(payload)
    assert hdr == w.RtMsg(family=AF_INET, dst_len=0, table=254, protocol=3, scope=0, type=1)
    assert attrs_of(rest) == [(15, struct.pack("=I", 254)), (5, bytes([10, 1, 0, 1])),
                              (4, struct.pack("=I", 3))]          # no RTA_DST for default
    assert m.decode_route(payload) == Route(
        dst=ipaddress.IPv4Network("0.0.0.0/0"), gateway=ipaddress.IPv4Address("10.1.0.1"),
        oif=3, table=254, proto=3, scope=0, type=1)


def test_on_link_route_and_delete_request() -> None:
    net = ipaddress.IPv6Network("fd00:1::/64")
    hdr, rest = w.RtMsg.unpack(m.route_request(net, oif=2,
                                               prefsrc=ipaddress.IPv6Address("fd00:1::1")))
    assert (hdr.scope, hdr.dst_len) == (253, 64)
    assert dict(attrs_of(rest))[1] == net.network_address.packed
    hdr, _ = w.RtMsg.unpack(m.route_request(net, delete=True))
    assert (hdr.protocol, hdr.scope, hdr.type) == (0, 255, 0)
    hdr, rest = w.RtMsg.unpack(m.route_request(net, oif=2, table=1000))
    assert hdr.table == 0 and dict(attrs_of(rest))[15] == struct.pack("=I", 1000)


def test_decode_route_reply_with_table_attribute() -> None:
    payload = (struct.pack("=BBBBBBBBI", AF_INET, 24, 0, 0, 252, 2, 253, 1, 0)
               + nlattr(15, struct.pack("=I", 1000)) + nlattr(1, bytes([10, 5, 0, 0]))
               + nlattr(7, bytes([10, 5, 0, 1])) + nlattr(4, struct.pack("=I", 7))
               + nlattr(6, struct.pack("=I", 100)))
    assert m.decode_route(payload) == Route(
        dst=ipaddress.IPv4Network("10.5.0.0/24"), oif=7, table=1000, proto=2, scope=253,
        type=1, prefsrc=ipaddress.IPv4Address("10.5.0.1"), priority=100)


def test_bad_route_replies_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="family 7"):
        m.decode_route(struct.pack("=BBBBBBBBI", 7, 0, 0, 0, 254, 0, 0, 1, 0))
    with pytest.raises(DecodeError, match="prefix length 33"):
        m.decode_route(struct.pack("=BBBBBBBBI", AF_INET, 33, 0, 0, 254, 0, 0, 1, 0))
    with pytest.raises(DecodeError, match="RTA_GATEWAY"):
        m.decode_route(struct.pack("=BBBBBBBBI", AF_INET, 0, 0, 0, 254, 0, 0, 1, 0)
                       + nlattr(5, bytes(16)))


# --- NLMSG_ERROR and ext-ack ----------------------------------------------------------------------


REQUEST = nlmsg(16, 0x605, 42, ifinfomsg() + nlattr(3, b"br0\0") + b"\x01")  # odd length


def nlmsgerr(err: int, flags: int, echo: bytes, tlvs: bytes = b"") -> w.Message:
    body = struct.pack("=i", err) + echo
    body += b"\0" * (-len(body) % 4) + tlvs
    return w.Message(2, flags, 42, 0, body)


def test_plain_ack() -> None:
    info = w.parse_error(nlmsgerr(0, 0x100, REQUEST[:16]))
    assert info == w.ErrorInfo(0, None, None, 42)


def test_error_with_the_request_echoed_and_no_ext_ack() -> None:
    info = w.parse_error(nlmsgerr(-errno.EEXIST, 0, REQUEST))
    assert (info.error, info.message, info.offset) == (errno.EEXIST, None, None)


def test_error_with_ext_ack_after_a_capped_echo() -> None:
    tlvs = nlattr(1, b"Unknown device type\0") + nlattr(2, struct.pack("=I", 36))
    info = w.parse_error(nlmsgerr(-errno.EOPNOTSUPP, 0x300, REQUEST[:16], tlvs))
    assert info == w.ErrorInfo(errno.EOPNOTSUPP, "Unknown device type", 36, 42)


def test_error_with_ext_ack_after_the_full_echo() -> None:
    # the echoed request (unpadded length in its header) is padded before the TLVs
    orig_len = struct.unpack_from("=I", REQUEST)[0]
    assert orig_len % 4
    tlvs = nlattr(1, b"bad mtu\0")
    info = w.parse_error(nlmsgerr(-errno.EINVAL, 0x200, REQUEST[:orig_len], tlvs))
    assert (info.error, info.message) == (errno.EINVAL, "bad mtu")


def test_done_carries_the_dump_status() -> None:
    assert w.parse_error(w.Message(3, 2, 1, 0, struct.pack("=i", 0))).error == 0
    assert w.parse_error(w.Message(3, 2, 1, 0, b"")).error == 0
    tlvs = nlattr(1, b"dump failed\0")
    info = w.parse_error(w.Message(3, 0x202, 1, 0, struct.pack("=i", -errno.EMSGSIZE) + tlvs))
    assert (info.error, info.message) == (errno.EMSGSIZE, "dump failed")


@pytest.mark.parametrize("msg", [
    w.Message(2, 0, 1, 0, struct.pack("=i", -1)),                               # no echoed header
    w.Message(2, 0, 1, 0, struct.pack("=i", 5) + bytes(16)),                    # positive errno
    w.Message(2, 0x200, 1, 0, struct.pack("=iIHHII", -22, 200, 16, 0, 1, 0)),  # TLVs past end
    w.Message(2, 0x200, 1, 0, struct.pack("=iIHHII", -22, 4, 16, 0, 1, 0)),    # echo len < 16
    w.Message(2, 0x300, 1, 0, struct.pack("=iIHHII", -22, 16, 16, 0, 1, 0) + b"\x09\0"),
])
def test_malformed_errors_are_decode_errors(msg: w.Message) -> None:
    with pytest.raises(DecodeError):
        w.parse_error(msg)


def test_rtm_names() -> None:
    assert w.RTM.name(16) == "RTM_NEWLINK" and w.RTM.name(99) == "NLMSG_99"


# --- the request loop, over a socketpair standing in for the kernel -------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[Netlink, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    nl = Netlink(ours)
    try:
        yield nl, theirs
    finally:
        nl.close()
        theirs.close()


def ack(seq: int, err: int = 0, text: bytes = b"") -> bytes:
    flags = 0x100 | (0x200 if text else 0)
    tlvs = nlattr(1, text + b"\0") if text else b""
    return nlmsg(2, flags, seq, struct.pack("=iIHHII", err, 16, 16, 0, seq, 0) + tlvs)


def test_request_skips_stale_replies_and_returns_data_before_the_ack(
        pair: tuple[Netlink, socket.socket]) -> None:
    nl, kernel = pair
    kernel.send(ack(0, -errno.EPERM))                         # left over from another call
    kernel.send(nlmsg(16, 0, 1, kernel_link_reply()) + ack(1))
    found = nl.link("v0")
    assert found is not None and found.master == 2
    sent = w.decode_messages(kernel.recv(65536))
    assert [(x.type, x.flags, x.seq) for x in sent] == [(18, 0x5, 1)]  # REQUEST|ACK


def test_kernel_error_becomes_oserror_with_ext_ack_text(
        pair: tuple[Netlink, socket.socket]) -> None:
    nl, kernel = pair
    kernel.send(ack(1, -errno.EEXIST, b"link exists"))
    with pytest.raises(FileExistsError) as e:
        nl.add_veth("a", "b")
    assert e.value.errno == errno.EEXIST
    assert e.value.strerror == "File exists (link exists)"
    assert e.value.filename == "netlink RTM_NEWLINK(veth a/b)"
    sent = w.decode_messages(kernel.recv(65536))[0]
    assert sent.flags == 0x1 | 0x4 | 0x400 | 0x200            # REQUEST|ACK|CREATE|EXCL


def test_dump_spans_datagrams_and_retries_when_interrupted(
        pair: tuple[Netlink, socket.socket]) -> None:
    nl, kernel = pair
    done = nlmsg(3, 2, 1, struct.pack("=i", 0))
    kernel.send(nlmsg(16, 2 | 0x10, 1, kernel_link_reply()) + done)   # NLM_F_DUMP_INTR
    lo = ifinfomsg(index=1, flags=0x49) + nlattr(3, b"lo\0")
    kernel.send(nlmsg(16, 2, 2, lo))
    kernel.send(nlmsg(16, 2, 2, kernel_link_reply()))
    kernel.send(nlmsg(3, 2, 2, struct.pack("=i", 0)))
    assert [x.name for x in nl.links()] == ["lo", "v0"]
    first, second = (w.decode_messages(kernel.recv(65536))[0] for _ in range(2))
    assert (first.seq, second.seq, second.flags) == (1, 2, 0x301)   # REQUEST|DUMP


def test_overrun_and_truncated_datagrams_are_errors(pair: tuple[Netlink, socket.socket]) -> None:
    nl, kernel = pair
    kernel.send(nlmsg(4, 0, 1, b""))
    with pytest.raises(OSError) as e:
        nl.links()
    assert e.value.errno == errno.ENOBUFS
    kernel.send(b"\x40\0\0\0\x10\0")
    with pytest.raises(DecodeError):
        nl.links()


@pytest.mark.parametrize(("call", "match"), [
    (lambda nl: nl.add_addr("eth0", "10.1.0.300/24"), "invalid address '10.1.0.300/24'"),
    (lambda nl: nl.add_addr("eth0", "10.1.0.1/33"), "invalid address"),
    (lambda nl: nl.del_addr("eth0", "nonsense"), "invalid address"),
    (lambda nl: nl.add_bridge("a-name-far-too-long"), "invalid interface name"),
    (lambda nl: nl.add_veth("ok", "bad/name"), "invalid interface name"),
    (lambda nl: nl.add_dummy(""), "invalid interface name"),
    (lambda nl: nl.add_bridge("br0", mtu=-1), "invalid mtu"),
    (lambda nl: nl.set_link("eth0", mac="02:00:00:00:00"), "invalid MAC address"),
    (lambda nl: nl.set_link("eth0", new_name="x y"), "invalid new interface name"),
    (lambda nl: nl.add_route("10.2.0.1/16", dev="eth0"), "invalid route destination"),
    (lambda nl: nl.add_route("default"), "needs a gateway or a device"),
    (lambda nl: nl.add_route("10.2.0.0/16", gateway="fd00::1"), "not IPv4"),
    (lambda nl: nl.add_route("default", gateway="10.0.0.1", src="fd00::1"), "not IPv4"),
    (lambda nl: nl.del_route("default", gateway="10.0.0.300"), "invalid gateway"),
    (lambda nl: nl.routes(family=socket.AF_PACKET), "invalid address family"),
    (lambda nl: nl.add_veth("a", "b", peer_netns=1.5), "invalid netns"),
])
def test_bad_arguments_fail_before_anything_is_sent(
        pair: tuple[Netlink, socket.socket], call: Callable[[Netlink], object],
        match: str) -> None:
    nl, kernel = pair
    with pytest.raises(InvalidArgument, match=match):
        call(nl)
    kernel.setblocking(False)
    with pytest.raises(BlockingIOError):
        kernel.recv(65536)
