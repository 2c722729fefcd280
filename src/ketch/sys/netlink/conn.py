"""The rtnetlink connection: one NETLINK_ROUTE socket and the operations container
networking needs (links, addresses, routes).

Request/response discipline: every change is sent with NLM_F_REQUEST|NLM_F_ACK (new
objects add NLM_F_CREATE|NLM_F_EXCL) under a fresh sequence number, and replies are
read until the NLMSG_ERROR that acknowledges that number; a non-zero error becomes
``OSError(errno, "<strerror> (<kernel ext-ack text>)", "netlink RTM_NEWLINK(veth a/b)")``.
Dumps (NLM_F_DUMP) are read until NLMSG_DONE and retried when the kernel flags them
NLM_F_DUMP_INTR (the table changed underneath). Messages carrying another sequence
number (left over from an interrupted call) are skipped.

Names are resolved to ifindexes with RTM_GETLINK + IFLA_IFNAME (never /sys, which
shows the caller's mount namespace, not the socket's network namespace).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from types import TracebackType
from typing import Literal

from ketch.errors import InvalidArgument
from ketch.sys.netlink import messages as m
from ketch.sys.netlink.messages import Addr, Link, Route
from ketch.sys.netlink.wire import (
    NLM_F,
    NLMSG,
    RTM,
    IfAddrMsg,
    IfInfoMsg,
    Message,
    RtMsg,
    decode_messages,
    encode_message,
    parse_error,
)

__all__ = ["Netlink"]

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
RECV_SIZE = 64 * 1024  # the kernel fills dump datagrams up to 32 KiB
DUMP_RETRIES = 10
IFNAMSIZ = 16

_NEW = NLM_F.CREATE | NLM_F.EXCL


def _new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        # errors carry the kernel's reason text, and do not echo our request back
        for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
            try:
                sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:  # kernels before 4.12: plain errno only
                pass
    except BaseException:
        sock.close()
        raise
    return sock


def _error(err: int, text: str | None, call: str) -> OSError:
    reason = os.strerror(err)
    if text:
        reason = f"{reason} ({text})"
    return OSError(err, reason, call)


def _check_name(name: str, what: str = "interface name") -> str:
    raw = name.encode() if isinstance(name, str) else b""
    if (not raw or len(raw) >= IFNAMSIZ or name in (".", "..")
            or any(c in name for c in "/:\0") or any(c.isspace() for c in name)):
        raise InvalidArgument(f"invalid {what} {name!r}: 1 to {IFNAMSIZ - 1} bytes, "
                              f"no '/', ':', NUL or whitespace")
    return name


def _check_u32(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise InvalidArgument(f"invalid {what} {value!r}")
    return value


def _parse_mac(mac: str) -> bytes:
    parts = mac.split(":")
    try:
        if len(parts) != 6 or any(len(p) != 2 for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise InvalidArgument(f"invalid MAC address {mac!r}: want aa:bb:cc:dd:ee:ff") from None


def _parse_iface(cidr: str) -> m.IPInterface:
    try:
        return ipaddress.ip_interface(cidr)
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"invalid address {cidr!r}: {e}") from None


def _parse_ip(text: str, what: str) -> m.IPAddress:
    try:
        return ipaddress.ip_address(text)
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"invalid {what} {text!r}: {e}") from None


def _parse_dst(dst: str, gateway: m.IPAddress | None) -> m.IPNetwork:
    if dst == "default":
        return ipaddress.ip_network("::/0" if gateway and gateway.version == 6 else "0.0.0.0/0")
    try:
        return ipaddress.ip_network(dst)
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"invalid route destination {dst!r}: {e}") from None


class _NetnsFd:
    """An fd for a netns given as a path (opened, closed on exit) or an fd (borrowed)."""

    def __init__(self, netns: str | int | None) -> None:
        self.fd: int | None = None
        self._own = False
        if isinstance(netns, str):
            self.fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            self._own = True
        elif isinstance(netns, int) and not isinstance(netns, bool):
            self.fd = netns
        elif netns is not None:
            raise InvalidArgument(f"invalid netns {netns!r}: want a path or an fd")

    def __enter__(self) -> int | None:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        if self._own and self.fd is not None:
            os.close(self.fd)


class Netlink:
    """One NETLINK_ROUTE socket bound to a network namespace.

    Lifecycle: :meth:`open` creates the socket inside the namespace it is given (a
    socket stays in the namespace it was created in, whatever thread uses it later),
    the methods talk to that namespace only, :meth:`close` (or leaving a ``with``
    block) releases it. Not thread-safe: one request at a time per object; it is
    cheap to open one per task. Failures the kernel reports are ``OSError`` with
    its errno (EEXIST, ENODEV, EINVAL, ...); malformed arguments are
    ``InvalidArgument`` before anything is sent. After any other failure (a
    ``DecodeError``, EMSGSIZE, an interrupt) part of a dump may still be queued on
    the socket: close the connection and open a new one.
    """

    def __init__(self, sock: socket.socket) -> None:
        """Wrap an already-bound NETLINK_ROUTE socket (prefer :meth:`open`)."""
        self._sock = sock
        self._seq = 0

    @classmethod
    def open(cls, netns: str | int | None = None) -> Netlink:
        """A connection to ``netns``: a path (``/run/netns/x``, ``/proc/PID/ns/net``),
        an open fd of one (borrowed, not closed), or None for the caller's namespace.
        The socket is created in a short-lived thread that joins ``netns``; the
        calling thread never changes namespace."""
        if netns is None:
            return cls(_new_socket())
        from ketch.sys.netns import run_in

        return cls(run_in(netns, _new_socket))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------------

    def _send(self, msg_type: int, flags: int, payload: bytes) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1
        self._sock.send(encode_message(msg_type, flags, self._seq, payload))
        return self._seq

    def _replies(self, seq: int, call: str) -> list[Message]:
        """Messages answering ``seq`` up to its ACK / NLMSG_DONE; raise on an error."""
        out: list[Message] = []
        while True:
            data, _anc, msg_flags, _addr = self._sock.recvmsg(RECV_SIZE)
            if msg_flags & socket.MSG_TRUNC:
                raise OSError(errno.EMSGSIZE, "netlink reply larger than the receive buffer",
                              call)
            for msg in decode_messages(data):
                if msg.seq != seq:
                    continue
                if msg.type in (NLMSG.ERROR, NLMSG.DONE):
                    info = parse_error(msg)
                    if info.error:
                        raise _error(info.error, info.message, call)
                    return out
                if msg.type == NLMSG.OVERRUN:
                    raise OSError(errno.ENOBUFS, "netlink overrun", call)
                if msg.type != NLMSG.NOOP:
                    out.append(msg)

    def request(self, msg_type: int, payload: bytes, call: str, flags: int = 0) -> list[Message]:
        """Send one request with NLM_F_REQUEST|NLM_F_ACK|``flags``; return the data
        messages that came before the ACK (none for most changes)."""
        seq = self._send(msg_type, NLM_F.REQUEST | NLM_F.ACK | flags, payload)
        return self._replies(seq, call)

    def dump(self, msg_type: int, payload: bytes, call: str) -> list[Message]:
        """A complete, consistent NLM_F_DUMP of ``msg_type``."""
        for _ in range(DUMP_RETRIES):
            seq = self._send(msg_type, NLM_F.REQUEST | NLM_F.DUMP, payload)
            msgs = self._replies(seq, call)
            if not any(msg.flags & NLM_F.DUMP_INTR for msg in msgs):
                return msgs
        raise OSError(errno.EAGAIN, f"dump changed underneath {DUMP_RETRIES} times", call)

    # --- links ------------------------------------------------------------------------------

    def links(self) -> list[Link]:
        """Every link in the namespace, in ifindex order."""
        msgs = self.dump(RTM.GETLINK, m.getlink_request(), "netlink RTM_GETLINK(dump)")
        return [m.decode_link(x.payload) for x in msgs if x.type == RTM.NEWLINK]

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        _check_name(name)
        return self._get_link(m.getlink_request(name=name), f"netlink RTM_GETLINK({name})")

    def link_by_index(self, index: int) -> Link | None:
        """The link with ifindex ``index``, or None."""
        _check_u32(index, "ifindex")
        return self._get_link(m.getlink_request(index=index),
                              f"netlink RTM_GETLINK(index {index})")

    def _get_link(self, request: bytes, call: str) -> Link | None:
        try:
            msgs = self.request(RTM.GETLINK, request, call)
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        found = [m.decode_link(x.payload) for x in msgs if x.type == RTM.NEWLINK]
        return found[0] if found else None

    def index(self, name: str, call: str | None = None) -> int:
        """The ifindex of ``name``; ``OSError(ENODEV, ..., call)`` if there is none."""
        found = self.link(name)
        if found is None:
            raise _error(errno.ENODEV, f"no link {name!r}",
                         call or f"netlink RTM_GETLINK({name})")
        return found.index

    def add_link(self, name: str, kind: str, *, mtu: int | None = None,
                 info_data: bytes = b"") -> None:
        """Create a link of any rtnl ``kind`` (``info_data``: encoded IFLA_INFO_DATA).
        It starts down; ``OSError(EEXIST)`` if the name is taken."""
        _check_name(name)
        if mtu is not None:
            _check_u32(mtu, "mtu")
        self.request(RTM.NEWLINK, m.newlink_request(name, kind, mtu=mtu, info_data=info_data),
                     f"netlink RTM_NEWLINK({kind} {name})", _NEW)

    def add_bridge(self, name: str, *, mtu: int | None = None) -> None:
        """Create bridge ``name`` (down, no ports)."""
        self.add_link(name, "bridge", mtu=mtu)

    def add_dummy(self, name: str) -> None:
        """Create dummy link ``name`` (down)."""
        self.add_link(name, "dummy")

    def add_veth(self, name: str, peer: str, *, mtu: int | None = None,
                 peer_netns: str | int | None = None) -> None:
        """Create veth pair ``name``/``peer``, both down; ``peer`` is created directly
        in ``peer_netns`` (path or fd) when given, so it never appears here."""
        _check_name(name)
        _check_name(peer)
        if mtu is not None:
            _check_u32(mtu, "mtu")
        with _NetnsFd(peer_netns) as fd:
            self.request(RTM.NEWLINK, m.veth_request(name, peer, mtu=mtu, peer_netns_fd=fd),
                         f"netlink RTM_NEWLINK(veth {name}/{peer})", _NEW)

    def delete_link(self, name: str) -> None:
        """Delete link ``name`` (a veth takes its peer with it); ENODEV if missing."""
        call = f"netlink RTM_DELLINK({name})"
        index = self.index(_check_name(name), call)
        self.request(RTM.DELLINK, IfInfoMsg(ifindex=index).pack(), call)

    def set_link(self, name: str, *, up: bool | None = None, mtu: int | None = None,
                 master: str | Literal[""] | None = None, netns: str | int | None = None,
                 new_name: str | None = None, mac: str | None = None) -> None:
        """Change link ``name`` in one RTM_SETLINK; None leaves a property alone.

        ``master``: a bridge name to enslave to, "" to release. ``netns``: a path or
        fd to move the link into (it leaves this connection's view; addresses are
        dropped by the kernel). ``new_name`` renames (the link must be down, or be
        brought up in this same call). ``mac``: "aa:bb:cc:dd:ee:ff".
        """
        parts = [name]
        if up is not None:
            parts.append("up" if up else "down")
        if master is not None:
            parts.append(f"master {master}" if master else "nomaster")
        parts += [f"{k} {v}" for k, v in (("mtu", mtu), ("netns", netns), ("name", new_name),
                                          ("address", mac)) if v is not None]
        call = f"netlink RTM_SETLINK({' '.join(parts)})"  # like the `ip link set` words
        _check_name(name)
        if mtu is not None:
            _check_u32(mtu, "mtu")
        if new_name is not None:
            _check_name(new_name, "new interface name")
        raw_mac = _parse_mac(mac) if mac is not None else None
        master_index: int | None = None
        if master is not None:
            master_index = 0 if master == "" else self.index(_check_name(master), call)
        index = self.index(name, call)
        with _NetnsFd(netns) as fd:
            self.request(RTM.SETLINK,
                         m.setlink_request(index, up=up, mtu=mtu, master=master_index,
                                           netns_fd=fd, new_name=new_name, mac=raw_mac),
                         call)

    # --- addresses --------------------------------------------------------------------------

    def add_addr(self, name: str, cidr: str, *, nodad: bool = False) -> None:
        """Assign ``cidr`` ("10.1.0.1/24", "fd00::1/64") to link ``name``;
        ``OSError(EEXIST)`` if it has it already. ``nodad``: skip IPv6 DAD."""
        iface = _parse_iface(cidr)
        call = f"netlink RTM_NEWADDR({iface} dev {name})"
        index = self.index(_check_name(name), call)
        self.request(RTM.NEWADDR, m.addr_request(index, iface, nodad=nodad), call, _NEW)

    def del_addr(self, name: str, cidr: str) -> None:
        """Remove ``cidr`` from link ``name``; EADDRNOTAVAIL if it is not there."""
        iface = _parse_iface(cidr)
        call = f"netlink RTM_DELADDR({iface} dev {name})"
        index = self.index(_check_name(name), call)
        self.request(RTM.DELADDR, m.addr_request(index, iface, delete=True), call)

    def addrs(self, name: str | None = None) -> list[Addr]:
        """Addresses (IPv4 and IPv6) of link ``name``, or of every link."""
        want: int | None = None
        if name is None:
            names = {link.index: link.name for link in self.links()}
        else:
            want = self.index(_check_name(name), f"netlink RTM_GETADDR(dev {name})")
            names = {want: name}
        msgs = self.dump(RTM.GETADDR, IfAddrMsg().pack(), "netlink RTM_GETADDR(dump)")
        out: list[Addr] = []
        for msg in msgs:
            if msg.type != RTM.NEWADDR:
                continue
            index, iface, scope, label = m.decode_addr(msg.payload)
            if want is not None and index != want:
                continue
            out.append(Addr(index, names.get(index, label), iface, scope))
        return out

    # --- routes -----------------------------------------------------------------------------

    def add_route(self, dst: str, *, gateway: str | None = None, dev: str | None = None,
                  src: str | None = None, table: int = m.RT_TABLE_MAIN) -> None:
        """Add a unicast route: ``dst`` is "default" or a network ("10.2.0.0/16"); at
        least one of ``gateway`` / ``dev``; ``src`` the preferred source address.
        ``OSError(EEXIST)`` if the same route exists, ENETUNREACH if the gateway is
        not on a connected network."""
        gw = _parse_ip(gateway, "gateway") if gateway is not None else None
        net = _parse_dst(dst, gw)
        prefsrc = _parse_ip(src, "source address") if src is not None else None
        if gw is None and dev is None:
            raise InvalidArgument(f"route {dst}: needs a gateway or a device")
        for ip in (gw, prefsrc):
            if ip is not None and ip.version != net.version:
                raise InvalidArgument(f"route {dst}: {ip} is not IPv{net.version}")
        call = "netlink RTM_NEWROUTE({})".format(" ".join(
            [dst] + [f"{k} {v}" for k, v in (("via", gateway), ("dev", dev), ("src", src))
                     if v is not None]))
        oif = self.index(_check_name(dev), call) if dev is not None else 0
        _check_u32(table, "route table")
        self.request(RTM.NEWROUTE, m.route_request(net, gateway=gw, oif=oif, prefsrc=prefsrc,
                                                   table=table), call, _NEW)

    def del_route(self, dst: str, *, gateway: str | None = None, dev: str | None = None,
                  table: int = m.RT_TABLE_MAIN) -> None:
        """Delete the route to ``dst`` (matching ``gateway``/``dev`` when given);
        ESRCH if there is no such route."""
        gw = _parse_ip(gateway, "gateway") if gateway is not None else None
        net = _parse_dst(dst, gw)
        if gw is not None and gw.version != net.version:
            raise InvalidArgument(f"route {dst}: {gw} is not IPv{net.version}")
        call = "netlink RTM_DELROUTE({})".format(" ".join(
            [dst] + [f"{k} {v}" for k, v in (("via", gateway), ("dev", dev)) if v is not None]))
        oif = self.index(_check_name(dev), call) if dev is not None else 0
        _check_u32(table, "route table")
        self.request(RTM.DELROUTE, m.route_request(net, gateway=gw, oif=oif, table=table,
                                                   delete=True), call)

    def routes(self, family: int = socket.AF_INET,
               table: int | None = m.RT_TABLE_MAIN) -> list[Route]:
        """Routes of ``family`` (AF_INET or AF_INET6) in ``table`` (None: all tables)."""
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise InvalidArgument(f"invalid address family {family}: want AF_INET or AF_INET6")
        msgs = self.dump(RTM.GETROUTE, RtMsg(family=family).pack(),
                         "netlink RTM_GETROUTE(dump)")
        out = [m.decode_route(x.payload) for x in msgs if x.type == RTM.NEWROUTE]
        return [r for r in out if table is None or r.table == table]
