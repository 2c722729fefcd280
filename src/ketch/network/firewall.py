"""The packet filter rules of bridge networks: published ports, masquerade and isolation.

One :class:`Firewall` owns one nftables table (family ``inet``, name chosen by the caller, e.g.
``ketch`` or ``ketch-test123``) in the network namespace of the thread that calls it — the
daemon's. It never reads or writes any other table, so two daemons on one host, docker, and
iptables-nft rules all keep their own. The table looks like this (``B`` is a bridge name, ``S``
its IPv4 subnet)::

    table inet <name>
      set   bridges     ifname                     every bridge added with add_network
      map   fwd_in      ifname : verdict           B -> jump fwd-in-B
      map   fwd_out     ifname : verdict           B -> jump fwd-out-B
      map   nat_out     ifname : verdict           B -> jump nat-out-B
      map   nat_in      ifname : verdict           B -> jump nat-in-B  (masquerading networks)
      map   dnat4       ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
      map   dnat4_any   inet_proto . inet_service : ipv4_addr . inet_service
      chain prerouting  nat, prerouting, -100      to a local address: jump ports
      chain output      nat, output, -100          to a local address: jump ports
      chain ports       DNAT by dnat4 (one host address), then dnat4_any (every address)
      chain postrouting nat, postrouting, 100      oifname vmap @nat_out; iifname vmap @nat_in
      chain forward     filter, forward, -10       established: accept; iifname vmap @fwd_in;
                                                   oifname vmap @fwd_out; from a bridge: accept
      chain fwd-in-B    to B itself: accept (hairpin); internal: drop
      chain fwd-out-B   internal: drop; DNATed (a published port): accept;
                        from another of our bridges: drop (isolation); else accept
      chain nat-out-B   from 127.0.0.0/8: masquerade (localhost -> published port);
                        DNATed and from S: masquerade (hairpin; no iifname: a hairpin
                        that br_netfilter bridges has no input device in postrouting)
      chain nat-in-B    from S, leaving by another interface: masquerade

Published ports are map elements and networks are a few chains reached through verdict maps,
so adding or removing either is one nft transaction that never needs rule handles: each
operation is idempotent (adding twice or removing what is gone is not an error) and atomic.

Two kernel facts shape what the table can promise:

* A published port reached from the host itself through 127.0.0.1 leaves by the bridge with a
  loopback source address; the kernel allows that only with ``route_localnet`` on the bridge,
  and the source is masqueraded to the bridge's address so the reply can come back.
  :meth:`Firewall.add_network` sets ``net.ipv4.conf.<bridge>.route_localnet=1``, and
  :meth:`Firewall.ensure` sets ``net.ipv4.ip_forward=1``, both through ``/proc/sys`` of the
  calling thread's network namespace.
* ``accept`` in an nftables base chain ends only that chain: a packet accepted here is still
  judged by other tables' chains on the same hook (a ``drop`` anywhere is final). The forward
  chain runs at priority -10, before iptables' and the usual ``filter`` chains, and its accepts
  make forwarding independent of *this* table's policy — but a host whose own firewall drops
  forwarded packets (for instance an iptables FORWARD policy of DROP) must accept bridge traffic
  there too; nothing in one table can overrule another table's drop.

Scope: IPv4. Mappings whose host address is IPv6 raise ``NotImplementedYet``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ketch.errors import Conflict, FailedPrecondition, InvalidArgument, NotImplementedYet
from ketch.network.portmap import PortMapping
from ketch.sys.nft import Nft

__all__ = ["Firewall", "Stale"]

log = logging.getLogger(__name__)

# nft identifiers: a letter first, then letters, digits, "-", "_" (table names)
_TABLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# interface names the firewall accepts: what Linux allows minus quoting troubles
_BRIDGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")

_NET_CHAINS = ("fwd_in", "fwd_out", "nat_out", "nat_in")  # verdict map -> chain prefix
_PROTO_NUM = {6: "tcp", 17: "udp", 132: "sctp"}


def _chain(vmap: str, bridge: str) -> str:
    return f"{vmap.replace('_', '-')}-{bridge}"


@dataclass
class Stale:
    """What :meth:`Firewall.flush_stale` removed."""

    networks: list[str] = field(default_factory=list)
    ports: list[PortMapping] = field(default_factory=list)


class Firewall:
    """The nftables table of one daemon: bridge networks and their published ports.

    Lifecycle: :meth:`ensure` once at start (creates the table and base chains, turns on IPv4
    forwarding), then :meth:`flush_stale` with what the daemon still knows after a restart; then
    :meth:`add_network`/:meth:`remove_network` as bridge networks come and go (the bridge must
    exist when it is added) and :meth:`add_port`/:meth:`remove_port` as containers publish
    ports; :meth:`destroy` removes the table. Every method is idempotent and each change is one
    atomic nft transaction. All work happens in the network namespace of the calling thread.
    Operations other than :meth:`ensure` and :meth:`destroy` raise ``FailedPrecondition`` when
    the table does not exist. Thread-safe.
    """

    def __init__(self, table: str, *, nft: Nft | None = None,
                 proc_sys: str = "/proc/sys") -> None:
        if not _TABLE_RE.fullmatch(table):
            raise InvalidArgument(f"invalid firewall table name: {table!r}")
        self.table = table
        self._nft = nft if nft is not None else Nft()
        self._proc_sys = proc_sys
        self._lock = threading.Lock()

    # ---- table ------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the table, its sets, maps and base chains (or bring their rules back to what
        this version writes); networks and ports already in the table stay."""
        self._sysctl("net/ipv4/ip_forward", "1")
        t = f"inet {self.table}"
        cmds = [
            f"add table {t}",
            f"add set {t} bridges {{ type ifname; }}",
            *(f"add map {t} {m} {{ type ifname : verdict; }}" for m in _NET_CHAINS),
            f"add map {t} dnat4 {{ type ipv4_addr . inet_proto . inet_service : "
            "ipv4_addr . inet_service; }",
            f"add map {t} dnat4_any {{ type inet_proto . inet_service : "
            "ipv4_addr . inet_service; }",
            f"add chain {t} ports",
            f"add chain {t} prerouting {{ type nat hook prerouting priority -100; "
            "policy accept; }",
            f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
            f"add chain {t} postrouting {{ type nat hook postrouting priority 100; "
            "policy accept; }",
            f"add chain {t} forward {{ type filter hook forward priority -10; policy accept; }}",
        ]
        for chain in ("ports", "prerouting", "output", "postrouting", "forward"):
            cmds.append(f"flush chain {t} {chain}")
        proto = "meta l4proto { tcp, udp, sctp }"
        cmds += [
            f"add rule {t} ports {proto} dnat ip to ip daddr . meta l4proto . th dport "
            "map @dnat4",
            f"add rule {t} ports {proto} dnat ip to meta l4proto . th dport map @dnat4_any",
            f"add rule {t} prerouting meta nfproto ipv4 fib daddr type local jump ports",
            f"add rule {t} output meta nfproto ipv4 fib daddr type local jump ports",
            f"add rule {t} postrouting oifname vmap @nat_out",
            f"add rule {t} postrouting iifname vmap @nat_in",
            f"add rule {t} forward ct state established,related accept",
            f"add rule {t} forward iifname vmap @fwd_in",
            f"add rule {t} forward oifname vmap @fwd_out",
            f"add rule {t} forward iifname @bridges accept",
        ]
        with self._lock:
            self._nft.run("\n".join(cmds))

    def destroy(self) -> None:
        """Remove the table and everything in it. ``ip_forward`` is left as it is (other
        software may rely on it)."""
        t = f"inet {self.table}"
        with self._lock:
            self._nft.run(f"add table {t}\ndelete table {t}")

    def exists(self) -> bool:
        """Is the table there?"""
        try:
            self._list()
        except FailedPrecondition:
            return False
        return True

    # ---- networks ---------------------------------------------------------------------------

    def add_network(self, bridge: str, subnet: str | ipaddress.IPv4Network, *,
                    internal: bool, masquerade: bool = True) -> None:
        """Rules for the bridge network on ``bridge`` with IPv4 ``subnet``.

        Containers on it reach each other (and, if published, are reached through DNAT) but are
        not forwarded to or from another bridge of this table; an ``internal`` network forwards
        nothing beyond its own bridge; otherwise traffic from ``subnet`` leaving by another
        interface is masqueraded when ``masquerade`` is true. Adding again replaces the
        network's rules. Sets ``route_localnet`` on the bridge; raises ``FailedPrecondition``
        when the bridge does not exist."""
        _check_bridge(bridge)
        net = _subnet(subnet)
        conf = f"net/ipv4/conf/{bridge}"
        if not os.path.isdir(os.path.join(self._proc_sys, conf)):
            raise FailedPrecondition(f"bridge {bridge} does not exist: create it before adding "
                                     "its firewall rules")
        self._sysctl(f"{conf}/route_localnet", "1")
        t = f"inet {self.table}"
        q = f'"{bridge}"'
        rules: dict[str, list[str]] = {
            "fwd_in": [f"oifname {q} accept", *(["drop"] if internal else [])],
            "fwd_out": ["drop"] if internal else [
                "ct status dnat accept", "iifname @bridges drop", "accept"],
            "nat_out": ["ip saddr 127.0.0.0/8 masquerade",
                        f"ip saddr {net} ct status dnat masquerade"],
            "nat_in": [f"oifname != {q} ip saddr {net} masquerade"],
        }
        if internal or not masquerade:
            del rules["nat_in"]
        cmds = [f"add element {t} bridges {{ {q} }}"]
        for vmap in _NET_CHAINS:
            chain = _chain(vmap, bridge)
            if vmap not in rules:
                cmds += _drop_chain(t, vmap, bridge)
                continue
            cmds += [f"add chain {t} {chain}", f"flush chain {t} {chain}"]
            cmds += [f"add rule {t} {chain} {r}" for r in rules[vmap]]
            cmds.append(f"add element {t} {vmap} {{ {q} : jump {chain} }}")
        with self._lock:
            self._run(cmds)
        log.debug("firewall %s: network %s (%s) added, internal=%s", self.table, bridge, net,
                  internal)

    def remove_network(self, bridge: str) -> None:
        """Remove the rules of the network on ``bridge`` (and its ``route_localnet``, if the
        bridge is still there). Published ports are separate: remove them with
        :meth:`remove_port`."""
        _check_bridge(bridge)
        with self._lock:
            self._run(self._remove_network_cmds(bridge))
        conf = f"net/ipv4/conf/{bridge}"
        if os.path.isdir(os.path.join(self._proc_sys, conf)):
            try:
                self._sysctl(f"{conf}/route_localnet", "0")
            except OSError:
                pass  # the bridge went away meanwhile

    def networks(self) -> list[str]:
        """The bridges this table has rules for."""
        with self._lock:
            bridges, _ = self._state()
        return sorted(bridges)

    # ---- ports ------------------------------------------------------------------------------

    def add_port(self, mapping: PortMapping) -> None:
        """DNAT ``mapping``'s host address and port to its container address and port — from
        outside, from the host itself (127.0.0.1 too) and from containers (hairpin).

        Adding the same mapping again is a no-op; one whose host side is already mapped to a
        different destination raises ``Conflict``."""
        cmd = "add element " + self._port_elem(mapping, with_value=True)
        with self._lock:
            try:
                self._run([cmd])
            except OSError as e:
                if e.errno == errno.EEXIST:
                    raise Conflict(f"host port {_host_side(mapping)} is already published "
                                   f"to another destination in firewall table {self.table}"
                                   ) from None
                raise

    def remove_port(self, mapping: PortMapping) -> None:
        """Remove ``mapping``'s DNAT. Removing a mapping that is not there is a no-op; raises
        ``Conflict`` when its host side is mapped to a different destination (not ours to
        remove)."""
        add = "add element " + self._port_elem(mapping, with_value=True)
        delete = "delete element " + self._port_elem(mapping, with_value=False)
        with self._lock:
            try:
                self._run([add, delete])
            except OSError as e:
                if e.errno == errno.EEXIST:
                    raise Conflict(f"host port {_host_side(mapping)} is published to another "
                                   f"destination than {mapping}") from None
                raise

    def ports(self) -> list[PortMapping]:
        """The published ports in the table (``bridge`` as recorded when added)."""
        with self._lock:
            _, ports = self._state()
        return sorted(ports, key=lambda m: (m.host_port, m.proto, m.host_ip))

    # ---- restart ----------------------------------------------------------------------------

    def flush_stale(self, networks: Iterable[str], ports: Iterable[PortMapping]) -> Stale:
        """After a daemon restart: remove every network and published port in the table that
        is not in ``networks`` (bridge names) / ``ports``, in one transaction, and say what
        went. Known entries are left alone (no gap in their traffic); a known port whose
        destination differs from the table's is replaced."""
        keep_nets = set(networks)
        for b in keep_nets:
            _check_bridge(b)
        keep_ports = {m.key: m for m in ports}
        stale = Stale()
        with self._lock:
            bridges, current = self._state()
            cmds: list[str] = []
            for b in sorted(bridges - keep_nets):
                cmds += self._remove_network_cmds(b)
                stale.networks.append(b)
            for m in current:
                known = keep_ports.get(m.key)
                if known is None or (known.container_ip, known.container_port) != (
                        m.container_ip, m.container_port):
                    cmds.append("delete element " + self._port_elem(m, with_value=False))
                    stale.ports.append(m)
                    if known is not None:
                        cmds.append("add element " + self._port_elem(known, with_value=True))
            if cmds:
                self._run(cmds)
        if stale.networks or stale.ports:
            log.info("firewall %s: removed stale networks %s and ports %s", self.table,
                     stale.networks, [str(p) for p in stale.ports])
        return stale

    # ---- internals --------------------------------------------------------------------------

    def _run(self, cmds: list[str]) -> None:
        try:
            self._nft.run("\n".join(cmds))
        except OSError as e:
            if e.errno == errno.ENOENT and not self._table_exists():
                raise FailedPrecondition(f"firewall table inet {self.table} does not exist: "
                                         "call ensure() first") from None
            raise

    def _table_exists(self) -> bool:
        try:
            self._nft.run(f"list table inet {self.table}")
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def _list(self) -> list[dict[str, Any]]:
        try:
            out = self._nft.run_json(
                {"nftables": [{"list": {"table": {"family": "inet", "name": self.table}}}]})
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise FailedPrecondition(f"firewall table inet {self.table} does not exist: "
                                         "call ensure() first") from None
            raise
        items = out.get("nftables", [])
        return [i for i in items if isinstance(i, dict)]

    def _state(self) -> tuple[set[str], list[PortMapping]]:
        """(bridges with rules, published ports) as the kernel has them."""
        bridges: set[str] = set()
        ports: list[PortMapping] = []
        prefixes = tuple(_chain(v, "") for v in _NET_CHAINS)
        for item in self._list():
            if "chain" in item:
                name = str(item["chain"].get("name", ""))
                for p in prefixes:
                    if name.startswith(p) and name[len(p):]:
                        bridges.add(name[len(p):])
            elif "set" in item and item["set"].get("name") == "bridges":
                bridges.update(str(e) for e in item["set"].get("elem", []))
            elif "map" in item and item["map"].get("name") in ("dnat4", "dnat4_any"):
                for elem in item["map"].get("elem", []):
                    m = _parse_port_elem(elem, any_ip=item["map"]["name"] == "dnat4_any")
                    if m is not None:
                        ports.append(m)
        return bridges, ports

    def _remove_network_cmds(self, bridge: str) -> list[str]:
        t = f"inet {self.table}"
        q = f'"{bridge}"'
        cmds = [f"add element {t} bridges {{ {q} }}", f"delete element {t} bridges {{ {q} }}"]
        for vmap in _NET_CHAINS:
            cmds += _drop_chain(t, vmap, bridge)
        return cmds

    def _port_elem(self, m: PortMapping, *, with_value: bool) -> str:
        """``inet T dnat4_any { tcp . 8080 comment "br0" : 10.0.0.2 . 80 }`` and friends."""
        if ":" in m.host_ip or ":" in m.container_ip:
            raise NotImplementedYet(f"IPv6 port publishing ({m}) is not supported yet")
        if ipaddress.ip_address(m.host_ip).is_unspecified:
            name, key = "dnat4_any", f"{m.proto} . {m.host_port}"
        else:
            name, key = "dnat4", f"{m.host_ip} . {m.proto} . {m.host_port}"
        if with_value:
            _check_bridge(m.bridge)
            key += f' comment "{m.bridge}" : {m.container_ip} . {m.container_port}'
        return f"inet {self.table} {name} {{ {key} }}"

    def _sysctl(self, name: str, value: str) -> None:
        path = os.path.join(self._proc_sys, name)
        try:
            with open(path) as f:
                if f.read().strip() == value:
                    return
        except FileNotFoundError:
            raise FailedPrecondition(f"no sysctl {name.replace('/', '.')} here") from None
        with open(path, "w") as f:
            f.write(value)


def _drop_chain(t: str, vmap: str, bridge: str) -> list[str]:
    """Commands that remove a network's chain and its verdict map element, whether or not they
    exist (declaring first makes the deletes always valid)."""
    chain = _chain(vmap, bridge)
    q = f'"{bridge}"'
    return [f"add chain {t} {chain}",
            f"add element {t} {vmap} {{ {q} : jump {chain} }}",
            f"delete element {t} {vmap} {{ {q} }}",
            f"flush chain {t} {chain}",
            f"delete chain {t} {chain}"]


def _check_bridge(name: str) -> None:
    if not _BRIDGE_RE.fullmatch(name):
        raise InvalidArgument(f"invalid bridge name: {name!r}")


def _subnet(subnet: str | ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        raise InvalidArgument(f"invalid subnet: {subnet}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise NotImplementedYet(f"IPv6 subnet {net}: the firewall handles IPv4 only")
    return net


def _host_side(m: PortMapping) -> str:
    return f"{m.host_ip}:{m.host_port}/{m.proto}"


def _proto(v: object) -> str:
    if isinstance(v, int):
        return _PROTO_NUM.get(v, str(v))
    return str(v)


def _parse_port_elem(elem: object, *, any_ip: bool) -> PortMapping | None:
    """One dnat4/dnat4_any element of ``nft -j list`` back into a PortMapping."""
    if not isinstance(elem, list) or len(elem) != 2:
        return None
    key, value = elem
    bridge = ""
    if isinstance(key, dict) and "elem" in key:
        bridge = str(key["elem"].get("comment", ""))
        key = key["elem"].get("val")
    if not (isinstance(key, dict) and isinstance(value, dict)):
        return None
    k = key.get("concat", [])
    v = value.get("concat", [])
    if len(v) != 2 or len(k) != (2 if any_ip else 3):
        return None
    host_ip = "0.0.0.0" if any_ip else str(k[0])
    proto, port = k[-2], k[-1]
    try:
        return PortMapping(_proto(proto), host_ip, int(port), str(v[0]), int(v[1]),
                           bridge or "?")
    except (InvalidArgument, ValueError, TypeError):
        log.warning("firewall: cannot read port element %r", elem)
        return None
