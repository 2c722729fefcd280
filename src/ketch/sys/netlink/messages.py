"""rtnetlink requests and replies for links, addresses and routes, as plain values.

Builders return a message *payload* (family header + attributes) for
:func:`ketch.sys.netlink.wire.encode_message`; decoders turn a reply payload into
:class:`Link`, :class:`Addr` or :class:`Route`. Inputs are already validated by
the caller (:class:`ketch.sys.netlink.Netlink`); nothing here touches a socket.

A veth request nests like this (the peer is a whole link description of its own)::

    ifinfomsg | IFLA_IFNAME "a" | IFLA_MTU | IFLA_LINKINFO
                                             ├── IFLA_INFO_KIND "veth"
                                             └── IFLA_INFO_DATA
                                                  └── VETH_INFO_PEER
                                                       ifinfomsg | IFLA_IFNAME "b" |
                                                       IFLA_MTU | IFLA_NET_NS_FD
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from ketch.sys.netlink.wire import (
    IFA,
    IFLA,
    RTA,
    DecodeError,
    IfAddrMsg,
    IfInfoMsg,
    RtMsg,
    attr,
    attr_str,
    attr_u32,
    get_s32,
    get_str,
    get_u8,
    get_u32,
    nested,
    parse_attrs,
)

__all__ = [
    "IFF_LOWER_UP",
    "IFF_UP",
    "RTEXT_FILTER_SKIP_STATS",
    "RTN_UNICAST",
    "RTPROT_BOOT",
    "RT_SCOPE_HOST",
    "RT_SCOPE_LINK",
    "RT_SCOPE_NOWHERE",
    "RT_SCOPE_UNIVERSE",
    "RT_TABLE_MAIN",
    "Addr",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "Link",
    "Route",
    "addr_request",
    "decode_addr",
    "decode_link",
    "decode_route",
    "getlink_request",
    "newlink_request",
    "route_request",
    "setlink_request",
    "veth_request",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# <linux/if.h>
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
# <linux/rtnetlink.h>
RTEXT_FILTER_SKIP_STATS = 1 << 3
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what `ip route add` records
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RT_SCOPE_NOWHERE = 255

# IF_OPER_* (RFC 2863 operational status), index = value
_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface as RTM_NEWLINK describes it.

    ``kind`` is the rtnl link kind ("bridge", "veth", "dummy", ...; "" for devices
    without one, such as ``lo`` or physical NICs). ``up`` is the administrative
    IFF_UP flag; ``operstate`` the operational state ("UP", "DOWN",
    "LOWERLAYERDOWN", "UNKNOWN", ...). ``master`` is the ifindex of the bridge (or
    bond) the link is enslaved to, 0 if none. ``link`` is IFLA_LINK: for a veth the
    peer's ifindex, in the namespace that ``link_netnsid`` (a netns id local to
    this namespace) names, or in this namespace when ``link_netnsid`` is None.
    ``alias`` is the interface's alias (IFLA_IFALIAS), "" if none.
    """

    index: int
    name: str
    kind: str = ""
    mtu: int = 0
    up: bool = False
    master: int = 0
    mac: str = ""
    flags: int = 0
    operstate: str = "UNKNOWN"
    link: int = 0
    link_netnsid: int | None = None
    alias: str = ""


@dataclass(frozen=True, slots=True)
class Addr:
    """An address assigned to interface ``index`` (``ifname``), with its prefix length."""

    index: int
    ifname: str
    interface: IPInterface
    scope: int = RT_SCOPE_UNIVERSE


@dataclass(frozen=True, slots=True)
class Route:
    """A route. ``dst`` is ``0.0.0.0/0`` (or ``::/0``) for the default route; ``gateway``
    is None for directly connected routes; ``oif`` is the output ifindex (0 if none,
    e.g. multipath routes, whose next hops are not decoded); ``table``, ``proto``,
    ``scope`` and ``type`` are the kernel's numbers (254 = main, 2 = kernel, 3 = boot,
    253 = link scope, 1 = unicast)."""

    dst: IPNetwork
    gateway: IPAddress | None = None
    oif: int = 0
    table: int = RT_TABLE_MAIN
    proto: int = 0
    scope: int = RT_SCOPE_UNIVERSE
    type: int = RTN_UNICAST
    prefsrc: IPAddress | None = None
    priority: int = 0


# --- links ----------------------------------------------------------------------------------


def _link_attrs(name: str | None, mtu: int | None, netns_fd: int | None) -> bytes:
    out = b""
    if name is not None:
        out += attr_str(IFLA.IFNAME, name)
    if mtu is not None:
        out += attr_u32(IFLA.MTU, mtu)
    if netns_fd is not None:
        out += attr_u32(IFLA.NET_NS_FD, netns_fd)
    return out


def newlink_request(name: str, kind: str, *, mtu: int | None = None, info_data: bytes = b"",
                    netns_fd: int | None = None) -> bytes:
    """RTM_NEWLINK payload creating link ``name`` of ``kind``; ``info_data`` is the
    encoded content of IFLA_INFO_DATA (kind-specific attributes), if any."""
    info = attr_str(IFLA.INFO_KIND, kind)
    if info_data:
        info += nested(IFLA.INFO_DATA, info_data)
    return (IfInfoMsg().pack() + _link_attrs(name, mtu, netns_fd)
            + nested(IFLA.LINKINFO, info))


def veth_request(name: str, peer: str, *, mtu: int | None = None,
                 peer_netns_fd: int | None = None) -> bytes:
    """RTM_NEWLINK payload for a veth pair; the peer is created directly in the
    namespace ``peer_netns_fd`` refers to (if given), with the same MTU."""
    peer_info = IfInfoMsg().pack() + _link_attrs(peer, mtu, peer_netns_fd)
    return newlink_request(name, "veth", mtu=mtu,
                           info_data=attr(IFLA.VETH_INFO_PEER, peer_info))


def getlink_request(*, name: str | None = None, index: int = 0) -> bytes:
    """RTM_GETLINK payload: one link by name or index, or (neither) a dump's header.
    Statistics are skipped to keep replies small."""
    out = IfInfoMsg(ifindex=index).pack()
    if name is not None:
        out += attr_str(IFLA.IFNAME, name)
    return out + attr_u32(IFLA.EXT_MASK, RTEXT_FILTER_SKIP_STATS)


def setlink_request(index: int, *, up: bool | None = None, mtu: int | None = None,
                    master: int | None = None, netns_fd: int | None = None,
                    new_name: str | None = None, mac: bytes | None = None) -> bytes:
    """RTM_SETLINK payload changing only what is not None; ``master=0`` detaches."""
    info = IfInfoMsg(ifindex=index, flags=IFF_UP if up else 0,
                     change=IFF_UP if up is not None else 0)
    out = info.pack() + _link_attrs(new_name, mtu, netns_fd)
    if master is not None:
        out += attr_u32(IFLA.MASTER, master)
    if mac is not None:
        out += attr(IFLA.ADDRESS, mac)
    return out


def decode_link(payload: bytes) -> Link:
    """A :class:`Link` from an RTM_NEWLINK payload."""
    hdr, rest = IfInfoMsg.unpack(payload)
    a = parse_attrs(rest)
    kind = ""
    if IFLA.LINKINFO in a:
        info = parse_attrs(a[IFLA.LINKINFO])
        if IFLA.INFO_KIND in info:
            kind = get_str(info[IFLA.INFO_KIND])
    oper = get_u8(a[IFLA.OPERSTATE]) if IFLA.OPERSTATE in a else 0
    return Link(
        index=hdr.ifindex,
        name=get_str(a[IFLA.IFNAME]) if IFLA.IFNAME in a else "",
        kind=kind,
        mtu=get_u32(a[IFLA.MTU]) if IFLA.MTU in a else 0,
        up=bool(hdr.flags & IFF_UP),
        master=get_u32(a[IFLA.MASTER]) if IFLA.MASTER in a else 0,
        mac=":".join(f"{b:02x}" for b in a.get(IFLA.ADDRESS, b"")),
        flags=hdr.flags,
        operstate=_OPERSTATES[oper] if oper < len(_OPERSTATES) else str(oper),
        link=get_u32(a[IFLA.LINK]) if IFLA.LINK in a else 0,
        link_netnsid=get_s32(a[IFLA.LINK_NETNSID]) if IFLA.LINK_NETNSID in a else None,
        alias=get_str(a[IFLA.IFALIAS]) if IFLA.IFALIAS in a else "",
    )


# --- addresses ------------------------------------------------------------------------------


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def addr_request(index: int, iface: IPInterface, *, delete: bool = False,
                 nodad: bool = False) -> bytes:
    """RTM_NEWADDR/RTM_DELADDR payload for ``iface`` on link ``index``.

    Like ``ip addr add``: IFA_LOCAL and IFA_ADDRESS both carry the address; an IPv4
    prefix shorter than /31 also gets the subnet's broadcast address; 127/8 gets host
    scope. ``nodad`` skips IPv6 duplicate address detection (usable at once)."""
    ip = iface.ip
    scope = RT_SCOPE_HOST if ip.version == 4 and ip.is_loopback else RT_SCOPE_UNIVERSE
    hdr = IfAddrMsg(family=_family(ip.version), prefixlen=iface.network.prefixlen,
                    flags=IFA.F_NODAD if nodad else 0, scope=scope, ifindex=index)
    out = hdr.pack() + attr(IFA.LOCAL, ip.packed) + attr(IFA.ADDRESS, ip.packed)
    if not delete and ip.version == 4 and iface.network.prefixlen < 31:
        out += attr(IFA.BROADCAST, iface.network.broadcast_address.packed)
    return out


def _ip(value: bytes, what: str, family: int = 0) -> IPAddress:
    """An address from its packed bytes; ``family`` (if given) must match its length."""
    if len(value) == 4 and family in (0, socket.AF_INET):
        return ipaddress.IPv4Address(value)
    if len(value) == 16 and family in (0, socket.AF_INET6):
        return ipaddress.IPv6Address(value)
    raise DecodeError(f"{what} of {len(value)} bytes in address family {family}")


def _prefixed(ip: IPAddress, prefixlen: int, what: str) -> tuple[IPAddress, int]:
    if prefixlen > ip.max_prefixlen:
        raise DecodeError(f"{what} prefix length {prefixlen} for IPv{ip.version}")
    return ip, prefixlen


def decode_addr(payload: bytes) -> tuple[int, IPInterface, int, str]:
    """(ifindex, interface, scope, label) from an RTM_NEWADDR payload. The local
    address (IFA_LOCAL) wins over IFA_ADDRESS, which is the peer on point-to-point."""
    hdr, rest = IfAddrMsg.unpack(payload)
    a = parse_attrs(rest)
    raw = a.get(IFA.LOCAL, a.get(IFA.ADDRESS))
    if raw is None:
        raise DecodeError("RTM_NEWADDR without IFA_LOCAL or IFA_ADDRESS")
    ip, plen = _prefixed(_ip(raw, "IFA_LOCAL", hdr.family), hdr.prefixlen, "ifa")
    iface = ipaddress.ip_interface((ip, plen))
    label = get_str(a[IFA.LABEL]) if IFA.LABEL in a else ""
    return hdr.ifindex, iface, hdr.scope, label


# --- routes ---------------------------------------------------------------------------------


def route_request(dst: IPNetwork, *, gateway: IPAddress | None = None, oif: int = 0,
                  prefsrc: IPAddress | None = None, table: int = RT_TABLE_MAIN,
                  delete: bool = False) -> bytes:
    """RTM_NEWROUTE/RTM_DELROUTE payload for a unicast route in ``table``.

    A new route without a gateway is link-scoped (on-link), as ``ip route add`` does.
    A delete leaves protocol, type and scope open (scope NOWHERE matches any), so it
    removes the route whatever program added it."""
    if delete:
        proto, scope, rtype = 0, RT_SCOPE_NOWHERE, 0
    else:
        proto, rtype = RTPROT_BOOT, RTN_UNICAST
        scope = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
    hdr = RtMsg(family=_family(dst.version), dst_len=dst.prefixlen,
                table=table if table < 256 else 0, protocol=proto, scope=scope, type=rtype)
    out = hdr.pack() + attr_u32(RTA.TABLE, table)
    if dst.prefixlen:
        out += attr(RTA.DST, dst.network_address.packed)
    if gateway is not None:
        out += attr(RTA.GATEWAY, gateway.packed)
    if oif:
        out += attr_u32(RTA.OIF, oif)
    if prefsrc is not None:
        out += attr(RTA.PREFSRC, prefsrc.packed)
    return out


def decode_route(payload: bytes) -> Route:
    """A :class:`Route` from an RTM_NEWROUTE payload."""
    hdr, rest = RtMsg.unpack(payload)
    a = parse_attrs(rest)
    sizes: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 16}
    if hdr.family not in sizes:
        raise DecodeError(f"route of address family {hdr.family}")
    raw = a.get(RTA.DST, bytes(sizes[hdr.family]))
    dst = ipaddress.ip_network(_prefixed(_ip(raw, "RTA_DST", hdr.family), hdr.dst_len, "rtm_dst"),
                               strict=False)
    return Route(
        dst=dst,
        gateway=_ip(a[RTA.GATEWAY], "RTA_GATEWAY", hdr.family) if RTA.GATEWAY in a else None,
        oif=get_u32(a[RTA.OIF]) if RTA.OIF in a else 0,
        table=get_u32(a[RTA.TABLE]) if RTA.TABLE in a else hdr.table,
        proto=hdr.protocol,
        scope=hdr.scope,
        type=hdr.type,
        prefsrc=_ip(a[RTA.PREFSRC], "RTA_PREFSRC", hdr.family) if RTA.PREFSRC in a else None,
        priority=get_u32(a[RTA.PRIORITY]) if RTA.PRIORITY in a else 0,
    )

