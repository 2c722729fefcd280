"""The ``bridge`` network driver: one Linux bridge per network, one veth pair per endpoint.

What one network with two endpoints looks like (``H`` is the daemon's network namespace,
``S1``/``S2`` are sandboxes)::

    H:  br-0123456789ab  10.1.0.1/24, MAC 02:42:0a:01:00:01, alias "ketch-net:<net id>"
          ├── veth1a2b3c4 (hairpin on; isolated when enable_icc=false) ══ S1: eth0 10.1.0.2/24
          └── veth5d6e7f8                                               ══ S2: eth0 10.1.0.3/24
        nftables: Firewall.add_network(bridge, subnet)      S*: lo up, default via 10.1.0.1

Ownership is recorded in the kernel, not in memory: a bridge this driver creates carries
the interface alias ``ketch-net:<net id>`` and a host-side veth ``ketch-ep:<net id>:<endpoint
id>`` (``ip link`` shows them). So after a daemon restart the driver still knows what it made:
:meth:`BridgeDriver.delete_network` deletes only a bridge with its own alias,
:meth:`BridgeDriver.leave` only a veth with its endpoint's alias, and
:meth:`BridgeDriver.restore` puts a network's veths back on a bridge it had to recreate
(after someone deleted it by hand; containers keep their addresses). A bridge that already
exists when a network is created is adopted if it is ours or carries the network's gateway
address (a bridge the admin prepared, as with dockerd's ``bridge.name``); it is then used
but never deleted. Any other link of that name is a ``Conflict``.

Names: the bridge is ``com.docker.network.bridge.name`` or ``br-<first 12 of net id>``; the
host-side veth is ``veth<7 hex>`` from the endpoint id, so :meth:`BridgeDriver.leave` finds
it without any state.

Scope: IPv4 (the firewall is IPv4-only); an IPv6 gateway is ``NotImplementedYet``.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TypeVar

from ketch.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    KetchError,
    NotImplementedYet,
)
from ketch.network.driver import EndpointSpec, NetworkSpec
from ketch.network.firewall import Firewall
from ketch.sys import netns as netns_mod
from ketch.sys.netlink import Link, Netlink
from ketch.sys.netlink import messages as msgs
from ketch.sys.netlink.wire import (
    IFLA,
    RTM,
    IfInfoMsg,
    attr,
    attr_str,
    attr_u8,
    attr_u32,
    nested,
)

__all__ = [
    "DEFAULT_MTU", "OPT_BRIDGE_NAME", "OPT_DEFAULT_BRIDGE", "OPT_ENABLE_ICC",
    "OPT_ENABLE_MASQUERADE", "OPT_HOST_BINDING_IPV4", "OPT_MTU", "BridgeDriver", "BridgeOptions",
    "host_ifname", "mac_for", "parse_options",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_ENABLE_ICC = "com.docker.network.bridge.enable_icc"
OPT_ENABLE_MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
OPT_HOST_BINDING_IPV4 = "com.docker.network.bridge.host_binding_ipv4"
OPT_DEFAULT_BRIDGE = "com.docker.network.bridge.default_bridge"
OPT_MTU = "com.docker.network.driver.mtu"
_DOCKER_PREFIX = "com.docker.network."
_KNOWN = (OPT_BRIDGE_NAME, OPT_ENABLE_ICC, OPT_ENABLE_MASQUERADE, OPT_HOST_BINDING_IPV4,
          OPT_DEFAULT_BRIDGE, OPT_MTU)

DEFAULT_MTU = 1500
MIN_MTU = 68  # the IPv4 minimum (RFC 791)
MAX_MTU = 65535  # a bridge's max_mtu (ETH_MAX_MTU)
# Go's strconv.ParseBool, which dockerd uses for these options
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
# what the firewall accepts as an nft-quotable interface name (Linux allows more)
_IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_HEX7_RE = re.compile(r"[0-9a-f]{7}")

# rtnetlink numbers the adapter has no call for (<linux/if_link.h>)
IFLA_INFO_SLAVE_DATA = 5
IFLA_BRPORT_MODE = 4  # hairpin
IFLA_BRPORT_ISOLATED = 33
_NET_ALIAS = "ketch-net:"
_EP_ALIAS = "ketch-ep:"


@dataclass(frozen=True)
class BridgeOptions:
    """A bridge network's driver options, parsed and checked (see :func:`parse_options`).
    ``extra`` holds the keys outside ``com.docker.network.*``, kept as given."""

    bridge: str
    mtu: int = DEFAULT_MTU
    icc: bool = True
    masquerade: bool = True
    host_binding_ipv4: str = "0.0.0.0"
    default_bridge: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    def facts(self) -> dict[str, str]:
        """The effective options in dockerd's names (what ``network inspect`` shows)."""
        def b(v: bool) -> str:
            return "true" if v else "false"

        return {**self.extra, OPT_BRIDGE_NAME: self.bridge, OPT_MTU: str(self.mtu),
                OPT_ENABLE_ICC: b(self.icc), OPT_ENABLE_MASQUERADE: b(self.masquerade),
                OPT_HOST_BINDING_IPV4: self.host_binding_ipv4,
                OPT_DEFAULT_BRIDGE: b(self.default_bridge)}


def _bool(options: Mapping[str, str], key: str, default: bool) -> bool:
    value = options.get(key)
    if value is None:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgument(f"invalid value {value!r} for option {key}: want true or false")


def parse_options(net_id: str, options: Mapping[str, str]) -> BridgeOptions:
    """Check a bridge network's options; ``InvalidArgument`` names the bad one. Unknown
    ``com.docker.network.*`` keys are refused (a typo must not silently do nothing)."""
    for key in options:
        if key.startswith(_DOCKER_PREFIX) and key not in _KNOWN:
            raise InvalidArgument(f"unknown option {key} for the bridge driver")
    bridge = options.get(OPT_BRIDGE_NAME) or f"br-{net_id[:12]}"
    if not _IFNAME_RE.fullmatch(bridge):
        raise InvalidArgument(f"invalid value {bridge!r} for option {OPT_BRIDGE_NAME}: 1 to 15 "
                              "letters, digits, '_', '.', '-', not starting with a sign")
    mtu = DEFAULT_MTU
    if options.get(OPT_MTU):
        raw = options[OPT_MTU]
        try:
            mtu = int(raw, 10)
        except ValueError:
            raise InvalidArgument(f"invalid value {raw!r} for option {OPT_MTU}: "
                                  "not a number") from None
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise InvalidArgument(f"invalid value {raw!r} for option {OPT_MTU}: "
                                  f"want {MIN_MTU} to {MAX_MTU}")
    host_ip = options.get(OPT_HOST_BINDING_IPV4) or "0.0.0.0"
    try:
        host_ip = str(ipaddress.IPv4Address(host_ip))
    except ValueError:
        raise InvalidArgument(f"invalid value {host_ip!r} for option {OPT_HOST_BINDING_IPV4}: "
                              "want an IPv4 address") from None
    return BridgeOptions(
        bridge=bridge, mtu=mtu, icc=_bool(options, OPT_ENABLE_ICC, True),
        masquerade=_bool(options, OPT_ENABLE_MASQUERADE, True), host_binding_ipv4=host_ip,
        default_bridge=_bool(options, OPT_DEFAULT_BRIDGE, False),
        extra={k: v for k, v in options.items() if not k.startswith(_DOCKER_PREFIX)})


def host_ifname(endpoint_id: str) -> str:
    """The host-side veth name of an endpoint: ``veth`` + its id's first 7 hex digits (or
    of the id's SHA-256 when the id is not hex)."""
    head = endpoint_id[:7]
    if not _HEX7_RE.fullmatch(head):
        head = hashlib.sha256(endpoint_id.encode()).hexdigest()[:7]
    return f"veth{head}"


def mac_for(ip: ipaddress.IPv4Address) -> str:
    """dockerd's MAC for an IPv4 address: ``02:42`` and the address's four bytes."""
    return ":".join(f"{b:02x}" for b in b"\x02\x42" + ip.packed)


def _subnet(net: NetworkSpec) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Interface]:
    """(subnet, gateway address with the subnet's prefix) of an IPv4 bridge network."""
    gw = net.gateway
    if gw is None:
        raise InvalidArgument(f"network {net.name}: the bridge driver needs a gateway address")
    if not isinstance(gw, ipaddress.IPv4Interface) or (
            net.subnet is not None and not isinstance(net.subnet, ipaddress.IPv4Network)):
        raise NotImplementedYet(f"network {net.name}: IPv6 bridge networks are not supported "
                                "yet")
    subnet = net.subnet if net.subnet is not None else gw.network
    if gw.ip not in subnet:
        raise InvalidArgument(f"network {net.name}: gateway {gw.ip} is not in subnet {subnet}")
    return subnet, ipaddress.IPv4Interface(f"{gw.ip}/{subnet.prefixlen}")


def _ep_alias(net: NetworkSpec, ep: EndpointSpec) -> str:
    return f"{_EP_ALIAS}{net.id}:{ep.id}"


# --- what the netlink adapter has no call for: setting aliases and bridge-port flags ----------

def _change_link(nl: Netlink, link: str, index: int, *, alias: str | None = None,
                 master: int | None = None, up: bool | None = None,
                 hairpin: bool | None = None, isolated: bool | None = None) -> None:
    """Change link ``index`` (named ``link`` in errors) in one RTM_NEWLINK: its alias,
    bridge master (an ifindex), IFF_UP, and bridge-port flags. The port flags travel as
    IFLA_INFO_SLAVE_DATA, which the kernel applies *before* a new master in the same
    message, so they need a link that is a bridge port already (``ip link set X type
    bridge_slave hairpin on``): give ``master`` and port flags in separate calls.
    By ifindex, with no name lookups: this is on the path of every container start."""
    if master is not None and (hairpin is not None or isolated is not None):
        raise ValueError("bridge-port flags need a master set by an earlier change")
    flags = msgs.IFF_UP if up else 0
    payload = IfInfoMsg(ifindex=index, flags=flags,
                        change=msgs.IFF_UP if up is not None else 0).pack()
    parts = []
    if alias is not None:
        payload += attr(IFLA.IFALIAS, alias.encode())
        parts.append(f"alias {alias}")
    if master is not None:
        payload += attr_u32(IFLA.MASTER, master)
        parts.append(f"master {master}")
    if up is not None:
        parts.append("up" if up else "down")
    port = b""
    for flag, value, word in ((IFLA_BRPORT_MODE, hairpin, "hairpin"),
                              (IFLA_BRPORT_ISOLATED, isolated, "isolated")):
        if value is not None:
            port += attr_u8(flag, int(value))
            parts.append(f"{word} {'on' if value else 'off'}")
    if port:
        payload += nested(IFLA.LINKINFO, attr_str(IFLA.INFO_SLAVE_KIND, "bridge"),
                          nested(IFLA_INFO_SLAVE_DATA, port))
    nl.request(RTM.NEWLINK, payload, f"netlink RTM_NEWLINK({link} {' '.join(parts)})")


def _delete(nl: Netlink, name: str) -> None:
    try:
        nl.delete_link(name)
    except OSError as e:
        if e.errno != errno.ENODEV:
            raise


class BridgeDriver:
    """Docker's ``bridge`` driver (see the module docstring for the picture).

    ``firewall``: the daemon's :class:`Firewall` (``ensure()``d already), or None to write
    no packet filter rules (dockerd's ``--iptables=false``). ``netns``: the path of the
    network namespace the bridges live in; None means the calling thread's. With a path,
    firewall calls run in a short-lived thread inside it (the firewall works in the
    namespace of the thread that calls it), so the caller's thread never moves.

    Every method follows the :class:`~ketch.network.driver.NetworkDriver` contract:
    idempotent, all-or-nothing (one undo scope per call), touching only what it made.
    Safe to call from several threads for different networks at once (no state in memory).
    """

    name = "bridge"

    def __init__(self, firewall: Firewall | None, *, netns: str | None = None) -> None:
        self._firewall = firewall
        self._netns = netns

    # --- networks ---------------------------------------------------------------------------

    def create_network(self, net: NetworkSpec) -> dict[str, str]:
        """Create (or adopt) the bridge with the gateway address, MTU, up; then the firewall
        rules. Returns the effective options (``com.docker.network.bridge.name``...)."""
        opts = parse_options(net.id, net.options)
        subnet, gw = _subnet(net)
        with Netlink.open(self._netns) as nl, ExitStack() as undo:
            self._ensure_bridge(nl, net, opts, gw, undo)
            if self._firewall is not None:
                fw = self._firewall
                self._in_host(lambda: fw.add_network(opts.bridge, subnet,
                                                     internal=net.internal,
                                                     masquerade=opts.masquerade))
            undo.pop_all()
        return opts.facts()

    def delete_network(self, net: NetworkSpec) -> None:
        """Remove the firewall rules, then the bridge if this driver made it (its alias
        says so); a bridge adopted at create time stays. Ports still on the bridge go
        with it, as with dockerd."""
        opts = parse_options(net.id, net.options)
        if self._firewall is not None:
            fw = self._firewall
            self._in_host(lambda: fw.remove_network(opts.bridge))
        with Netlink.open(self._netns) as nl:
            found = nl.link(opts.bridge)
            if found is not None and found.alias == _NET_ALIAS + net.id:
                _delete(nl, opts.bridge)

    def restore(self, nets: Sequence[NetworkSpec]) -> None:
        """Recreate whatever of ``nets`` is missing (bridge, address, state, firewall
        rules); every network is tried, then the first failure is raised."""
        first: BaseException | None = None
        for net in nets:
            try:
                self.create_network(net)
                self._reattach(net)
            except (KetchError, OSError) as e:
                log.error("bridge network %s (%s) not restored: %s", net.name, net.id[:12], e)
                first = first or e
        if first is not None:
            raise first

    def _reattach(self, net: NetworkSpec) -> None:
        """Put this network's veths that lost their bridge (deleted by hand, then
        recreated) back on it."""
        opts = parse_options(net.id, net.options)
        prefix = f"{_EP_ALIAS}{net.id}:"
        with Netlink.open(self._netns) as nl:
            bridge = nl.index(opts.bridge)
            for link in nl.links():
                if link.alias.startswith(prefix) and link.kind == "veth" and link.master == 0:
                    log.info("network %s: %s back on bridge %s", net.name, link.name,
                             opts.bridge)
                    _change_link(nl, link.name, link.index, master=bridge, up=True)
                    _change_link(nl, link.name, link.index, hairpin=True,
                                 isolated=None if opts.icc else True)

    def _ensure_bridge(self, nl: Netlink, net: NetworkSpec, opts: BridgeOptions,
                       gw: ipaddress.IPv4Interface, undo: ExitStack) -> None:
        name = opts.bridge
        link = nl.link(name)
        if link is None:
            try:
                nl.add_bridge(name, mtu=opts.mtu)
            except OSError as e:
                if e.errno == errno.EEXIST:
                    raise Conflict(f"network {net.name}: a link named {name} appeared while "
                                   "creating the bridge") from None
                raise
            undo.callback(_delete, nl, name)
            _change_link(nl, name, nl.index(name), alias=_NET_ALIAS + net.id)
            nl.add_addr(name, str(gw))
            # a bridge takes its ports' lowest MAC unless it has one of its own; a fixed MAC
            # (derived from the gateway, so the same after restore) keeps ARP caches valid
            nl.set_link(name, mac=mac_for(gw.ip), up=True)
            log.info("bridge %s created for network %s (%s)", name, net.name, gw)
            return
        ours = link.alias == _NET_ALIAS + net.id
        if link.kind != "bridge":
            raise Conflict(f"network {net.name}: a {link.kind or 'non-bridge'} link named "
                           f"{name} exists already")
        has_gw = any(a.interface == gw for a in nl.addrs(name))
        if not has_gw and not ours:
            raise Conflict(f"network {net.name}: bridge {name} exists already and does not "
                           f"carry the gateway address {gw}")
        if not has_gw:
            nl.add_addr(name, str(gw))
            undo.callback(nl.del_addr, name, str(gw))
        if ours and link.mtu != opts.mtu:
            nl.set_link(name, mtu=opts.mtu)
        if not link.up:
            nl.set_link(name, up=True)

    def _in_host(self, fn: Callable[[], T]) -> T:
        return fn() if self._netns is None else netns_mod.run_in(self._netns, fn)

    # --- endpoints --------------------------------------------------------------------------

    def join(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str) -> dict[str, str]:
        """Plug ``sandbox`` into the network: a veth pair whose peer is created directly in
        the sandbox (temp name, then renamed to ``ep.ifname`` with its MAC and brought up
        in one change), the address, ``lo`` up and the default route; host side enslaved,
        up, hairpin on (and isolated when ``enable_icc`` is false). Returns ``MacAddress``
        and ``HostInterface``. Joining again as already joined returns the same facts."""
        opts = parse_options(net.id, net.options)
        subnet, gw = _subnet(net)
        address = self._check_endpoint(net, ep, subnet)
        if not netns_mod.is_netns(sandbox):
            raise FailedPrecondition(f"sandbox {sandbox} is not a network namespace")
        veth = host_ifname(ep.id)
        temp = f"ktmp{veth[4:]}"
        mac = ep.mac.lower() if ep.mac else mac_for(address.ip) if address else None
        with Netlink.open(self._netns) as nl, Netlink.open(sandbox) as snl, \
                ExitStack() as undo:
            bridge = nl.link(opts.bridge)
            if bridge is None or bridge.kind != "bridge":
                raise FailedPrecondition(f"network {net.name}: bridge {opts.bridge} does not "
                                         "exist (restore the network)")
            done = self._joined(nl, snl, net, ep, veth, bridge, address)
            if done is not None:
                return {"MacAddress": done, "HostInterface": veth}
            if snl.link(ep.ifname) is not None:
                raise Conflict(f"sandbox {sandbox} has an interface {ep.ifname} already")
            try:
                nl.add_veth(veth, temp, mtu=opts.mtu, peer_netns=sandbox)
            except OSError as e:
                if e.errno == errno.EEXIST:
                    raise Conflict(f"interface {veth} or {temp} exists already") from None
                raise
            undo.callback(_delete, nl, veth)
            index = nl.index(veth)
            _change_link(nl, veth, index, alias=_ep_alias(net, ep), master=bridge.index,
                         up=True)
            _change_link(nl, veth, index, hairpin=True, isolated=None if opts.icc else True)
            snl.set_link(temp, new_name=ep.ifname, mac=mac, up=True)
            if address is not None:
                snl.add_addr(ep.ifname, str(address))
            snl.set_link("lo", up=True)
            if ep.gateway and not net.internal:
                try:
                    snl.add_route("default", gateway=str(gw.ip))
                except OSError as e:
                    if e.errno == errno.EEXIST:
                        raise Conflict(f"sandbox {sandbox} has a default route already (one "
                                       "endpoint per sandbox may be the gateway)") from None
                    raise
            if mac is None:  # no IPv4 address: the kernel's random one
                peer = snl.link(ep.ifname)
                if peer is None:
                    raise OSError(errno.ENODEV, f"{ep.ifname} vanished from the sandbox",
                                  f"netlink RTM_GETLINK({ep.ifname})")
                mac = peer.mac
            undo.pop_all()
        return {"MacAddress": mac, "HostInterface": veth}

    def leave(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str | None) -> None:
        """Delete the host-side veth (its peer in the sandbox goes with it) if it is this
        endpoint's; a veth of that name that is someone else's is left alone."""
        veth = host_ifname(ep.id)
        with Netlink.open(self._netns) as nl:
            found = nl.link(veth)
            if found is None:
                return
            if found.alias != _ep_alias(net, ep):
                log.warning("leave %s: %s belongs to something else (alias %r), not deleted",
                            ep.id[:12], veth, found.alias)
                return
            _delete(nl, veth)

    @staticmethod
    def _check_endpoint(net: NetworkSpec, ep: EndpointSpec, subnet: ipaddress.IPv4Network
                        ) -> ipaddress.IPv4Interface | None:
        """Validate before anything is made; the address gets the subnet's prefix."""
        if not _IFNAME_RE.fullmatch(ep.ifname):
            raise InvalidArgument(f"invalid interface name {ep.ifname!r}")
        if ep.mac is not None and not _MAC_RE.fullmatch(ep.mac):
            raise InvalidArgument(f"invalid MAC address {ep.mac!r}")
        if ep.address is None:
            return None
        if not isinstance(ep.address, ipaddress.IPv4Interface) or ep.address.ip not in subnet:
            raise InvalidArgument(f"address {ep.address.ip} is not in network {net.name}'s "
                                  f"subnet {subnet}")
        return ipaddress.IPv4Interface(f"{ep.address.ip}/{subnet.prefixlen}")

    @staticmethod
    def _joined(nl: Netlink, snl: Netlink, net: NetworkSpec, ep: EndpointSpec, veth: str,
                bridge: Link, address: ipaddress.IPv4Interface | None) -> str | None:
        """The sandbox interface's MAC if ``ep`` is completely joined already; None if it
        is not joined (a half-made join of a daemon that died is removed here).
        ``Conflict`` if the veth name belongs to something else."""
        link = nl.link(veth)
        if link is None:
            return None
        if link.alias != _ep_alias(net, ep):
            raise Conflict(f"interface {veth} exists and is not endpoint {ep.id[:12]}'s")
        peer = snl.link(ep.ifname)
        if (peer is not None and peer.index == link.link and link.master == bridge.index
                and (address is None or address in {a.interface for a in snl.addrs(ep.ifname)})):
            return peer.mac
        log.warning("endpoint %s: removing a half-made join (%s)", ep.id[:12], veth)
        _delete(nl, veth)
        return None

