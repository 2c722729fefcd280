"""BridgeDriver against the real kernel (root), every test inside throwaway namespaces.

Topology of every test (all namespaces made here and deleted afterwards, even on failure)::

    O: eth0 10.99.0.2 ── veth ── H: vo 10.99.0.1       "outside": another host on H's LAN
                                 H: bridges of the test, the firewall table ketch-t<tag>
                                    ├── veth ══ S1: eth0          sandboxes made by the test
                                    └── veth ══ S2: eth0

H plays the daemon's namespace. The driver runs in one of two ways (each suite test runs in
both): given ``netns=H`` (it then runs its firewall calls in a thread inside H itself), or
given no namespace and called from a thread that entered H (how ketchd runs it). ``ip``,
``nft`` and busybox ``ping`` (through ``ip netns exec``) check what the driver did; the driver
itself never shells out. The real host's namespace is compared before and after each test.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from ketch.errors import Conflict, FailedPrecondition
from ketch.network.driver import EndpointSpec, NetworkDriver, NetworkSpec
from ketch.network.drivers.bridge import (
    OPT_BRIDGE_NAME,
    OPT_ENABLE_ICC,
    OPT_MTU,
    BridgeDriver,
    host_ifname,
)
from ketch.network.firewall import Firewall
from ketch.network.portmap import PortMapping
from ketch.sys import netns
from tests.conformance.network_driver_suite import Lab, NetworkDriverSuite, NewDriver

T = TypeVar("T")

pytestmark = pytest.mark.skipif(not (os.path.exists("/usr/sbin/nft")
                                     and os.path.exists("/usr/bin/busybox")),
                                reason="nft (nftables) and busybox (ping) check the results")

OUTSIDE = "10.99.0.2"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def ip_json(ns: str | None, *args: str) -> list[dict[str, Any]]:
    where = ["-n", ns] if ns else []
    out = _run("ip", "-j", *where, *args).stdout
    return json.loads(out) if out.strip() else []


class Host:
    """H and O, sandboxes, the firewall, and their cleanup."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.table = f"ketch-t{self.tag}"
        self.made: list[str] = []
        self.h = self.netns("h")
        self.o = self.netns("o")
        _run("ip", "-n", self.h, "link", "set", "lo", "up")
        _run("ip", "-n", self.h, "link", "add", "vo", "type", "veth", "peer", "name", "eth0",
             "netns", self.o)
        _run("ip", "-n", self.h, "addr", "add", "10.99.0.1/24", "dev", "vo")
        _run("ip", "-n", self.h, "link", "set", "vo", "up")
        _run("ip", "-n", self.o, "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
        _run("ip", "-n", self.o, "link", "set", "eth0", "up")
        self.firewall = Firewall(self.table)
        self.in_h(self.firewall.ensure)

    def netns(self, kind: str) -> str:
        name = f"kbr-{self.tag}-{kind}"
        _run("ip", "netns", "add", name)
        self.made.append(name)
        return name

    def sandbox(self) -> str:
        """A sandbox as the engine makes it (``ketch.sys.netns.create``): ``lo`` up."""
        name = self.netns(f"s{len(self.made)}")
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return f"/run/netns/{name}"

    @property
    def h_path(self) -> str:
        return f"/run/netns/{self.h}"

    def in_h(self, fn: Callable[[], T]) -> T:
        return netns.run_in(self.h_path, fn)

    def cleanup(self) -> None:
        for name in self.made:
            _run("ip", "netns", "del", name, check=False)

    # ---- checks ---------------------------------------------------------------------------

    def link(self, ns: str, name: str) -> dict[str, Any] | None:
        found = [x for x in ip_json(ns, "-d", "link", "show") if x["ifname"] == name]
        return found[0] if found else None

    def link_names(self, ns: str) -> set[str]:
        return {x["ifname"] for x in ip_json(ns, "link", "show")}

    def addrs(self, ns: str, dev: str) -> set[str]:
        return {f"{a['local']}/{a['prefixlen']}" for x in ip_json(ns, "-4", "addr", "show", dev)
                for a in x.get("addr_info", [])}

    def routes(self, ns: str) -> list[dict[str, Any]]:
        return ip_json(ns, "-4", "route", "show")

    def chains(self) -> list[str]:
        r = _run("ip", "netns", "exec", self.h, "nft", "-j", "list", "table", "inet", self.table)
        return [i["chain"]["name"] for i in json.loads(r.stdout)["nftables"] if "chain" in i]

    def nft_text(self) -> list[str]:
        r = _run("ip", "netns", "exec", self.h, "nft", "list", "table", "inet", self.table,
                 check=False)
        return sorted(line.strip() for line in (r.stdout + r.stderr).splitlines())

    def ping(self, sandbox: str, addr: str, *, tries: int = 3) -> bool:
        """Can ``sandbox`` ping ``addr``? (a few tries: the first may wait for ARP)"""
        for _ in range(tries):
            r = _run("ip", "netns", "exec", os.path.basename(sandbox), "busybox", "ping",
                     "-c", "1", "-W", "1", addr, check=False)
            if r.returncode == 0:
                return True
        return False


class InHost:
    """A driver called only from short-lived threads inside H (the daemon's way)."""

    def __init__(self, host: Host, driver: NetworkDriver) -> None:
        self._host = host
        self._driver = driver
        self.name = driver.name

    def create_network(self, net: NetworkSpec) -> dict[str, str]:
        return self._host.in_h(lambda: self._driver.create_network(net))

    def delete_network(self, net: NetworkSpec) -> None:
        self._host.in_h(lambda: self._driver.delete_network(net))

    def join(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str) -> dict[str, str]:
        return self._host.in_h(lambda: self._driver.join(net, ep, sandbox))

    def leave(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str | None) -> None:
        self._host.in_h(lambda: self._driver.leave(net, ep, sandbox))

    def restore(self, nets: Sequence[NetworkSpec]) -> None:
        self._host.in_h(lambda: self._driver.restore(nets))


def _host_view() -> tuple[set[str], set[str]]:
    """The real host's link names and nftables tables."""
    links = {x["ifname"] for x in ip_json(None, "link", "show")}
    tables = set(_run("nft", "list", "tables").stdout.split("\n"))
    return links, tables


@pytest.fixture(autouse=True)
def real_host_untouched() -> Iterator[None]:
    links, tables = _host_view()
    yield
    new_links, new_tables = _host_view()
    ours = ("br-", "veth", "ktmp", "kbr")
    assert {n for n in new_links - links if n.startswith(ours)} == set()
    assert {t for t in new_tables - tables if "ketch-t" in t} == set()


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    try:
        yield h
    finally:
        h.cleanup()
    left = _run("ip", "netns", "list").stdout
    assert h.tag not in left


def _observe_ns(host: Host, ns: str) -> dict[str, Any]:
    links = sorted(
        (x["ifname"], x.get("linkinfo", {}).get("info_kind", ""), x["mtu"], x.get("master", ""),
         "UP" in x["flags"], x.get("address", ""), x.get("ifalias", ""),
         json.dumps(x.get("linkinfo", {}).get("info_slave_data", {}).get("hairpin")))
        for x in ip_json(ns, "-d", "link", "show"))
    # IPv6 link-local addresses are the kernel's (autoconf once a link has carrier)
    addrs = sorted((x["ifname"], a["family"], a["local"], a["prefixlen"])
                   for x in ip_json(ns, "addr", "show") for a in x.get("addr_info", [])
                   if not (a["family"] == "inet6" and a.get("scope") == "link"))
    routes = sorted((r.get("table", "main"), r.get("type", ""), r["dst"], r.get("gateway", ""),
                     r.get("dev", "")) for r in ip_json(ns, "-4", "route", "show", "table", "all"))
    return {"links": links, "addrs": addrs, "routes": routes}


class TestBridgeConformance(NetworkDriverSuite):
    @pytest.fixture(params=["netns-argument", "thread-in-host"])
    def new_driver(self, host: Host, request: pytest.FixtureRequest) -> NewDriver:
        if request.param == "netns-argument":
            return lambda: BridgeDriver(host.firewall, netns=host.h_path)
        return lambda: InHost(host, BridgeDriver(host.firewall))

    @pytest.fixture
    def sandboxes(self, host: Host) -> Any:
        class Sandboxes:
            def new(self) -> str:
                return host.sandbox()

            def remove(self, path: str) -> None:
                _run("ip", "netns", "del", os.path.basename(path))

        return Sandboxes()

    @pytest.fixture
    def observe(self, host: Host) -> Callable[[Sequence[str]], object]:
        def look(boxes: Sequence[str]) -> object:
            return {"H": _observe_ns(host, host.h), "nft": host.nft_text(),
                    **{b: _observe_ns(host, os.path.basename(b)) for b in boxes}}

        return look


# ---- bridge-specific --------------------------------------------------------------------------


@pytest.fixture
def lab(host: Host) -> Iterator[Lab]:
    lb = Lab(BridgeDriver(host.firewall, netns=host.h_path))
    try:
        yield lb
    finally:
        lb.cleanup()


def _gw(net: NetworkSpec) -> str:
    assert net.gateway is not None
    return str(net.gateway.ip)


def _ip(ep: EndpointSpec) -> str:
    assert ep.address is not None
    return str(ep.address.ip)


def _bridge(net: NetworkSpec) -> str:
    return net.options.get(OPT_BRIDGE_NAME) or f"br-{net.id[:12]}"


def test_endpoints_reach_each_other_the_gateway_and_outside(host: Host, lab: Lab) -> None:
    d = lab.driver
    net = lab.network()
    facts = d.create_network(net)
    assert facts[OPT_BRIDGE_NAME] == _bridge(net)
    s1, s2 = host.sandbox(), host.sandbox()
    e1, e2 = lab.endpoint(net), lab.endpoint(net)
    f1 = d.join(net, e1, s1)
    d.join(net, e2, s2)

    eth0 = host.link(os.path.basename(s1), "eth0")
    assert eth0 is not None and "UP" in eth0["flags"]
    assert f1["MacAddress"] == eth0["address"] == "02:42:0a:7b:2d:02"
    assert host.addrs(os.path.basename(s1), "eth0") == {f"{_ip(e1)}/24"}
    assert [r.get("gateway") for r in host.routes(os.path.basename(s1))
            if r["dst"] == "default"] == [_gw(net)]
    veth = host.link(host.h, f1["HostInterface"])
    assert veth is not None and f1["HostInterface"] == host_ifname(e1.id)
    assert veth["master"] == _bridge(net) and "UP" in veth["flags"]
    assert veth["linkinfo"]["info_slave_data"]["hairpin"] is True
    lo = host.link(os.path.basename(s1), "lo")
    assert lo is not None and "UP" in lo["flags"]

    assert host.ping(s1, _ip(e2))
    assert host.ping(s2, _ip(e1))
    assert host.ping(s1, _gw(net))
    assert host.ping(s1, OUTSIDE)  # through the firewall's masquerade


def test_internal_network_has_no_way_out(host: Host, lab: Lab) -> None:
    d = lab.driver
    net = lab.network(internal=True)
    d.create_network(net)
    s1, s2 = host.sandbox(), host.sandbox()
    e1, e2 = lab.endpoint(net), lab.endpoint(net)
    d.join(net, e1, s1)
    d.join(net, e2, s2)
    assert not [r for r in host.routes(os.path.basename(s1)) if r["dst"] == "default"]
    assert host.ping(s1, _ip(e2))
    assert host.ping(s1, _gw(net))
    assert not host.ping(s1, OUTSIDE, tries=1)
    # a route added inside the container does not help: the firewall drops it
    _run("ip", "-n", os.path.basename(s1), "route", "add", "10.99.0.0/24", "via", _gw(net))
    assert not host.ping(s1, OUTSIDE, tries=1)


def test_two_networks_are_isolated(host: Host, lab: Lab) -> None:
    d = lab.driver
    a = lab.network(ipaddress.IPv4Network("10.123.1.0/24"))
    b = lab.network(ipaddress.IPv4Network("10.123.2.0/24"))
    d.create_network(a)
    d.create_network(b)
    s1, s2 = host.sandbox(), host.sandbox()
    e1, e2 = lab.endpoint(a), lab.endpoint(b)
    d.join(a, e1, s1)
    d.join(b, e2, s2)
    assert host.ping(s1, OUTSIDE) and host.ping(s2, OUTSIDE)  # both work...
    assert not host.ping(s1, _ip(e2), tries=1)  # ...but not across networks
    assert not host.ping(s2, _ip(e1), tries=1)


def test_a_second_network_in_one_sandbox(host: Host, lab: Lab) -> None:
    d = lab.driver
    a = lab.network(ipaddress.IPv4Network("10.123.1.0/24"))
    b = lab.network(ipaddress.IPv4Network("10.123.2.0/24"))
    d.create_network(a)
    d.create_network(b)
    s1 = host.sandbox()
    d.join(a, lab.endpoint(a), s1)
    d.join(b, lab.endpoint(b, ifname="eth1", gateway=False), s1)
    routes = host.routes(os.path.basename(s1))
    assert [(r["dst"], r.get("gateway"), r["dev"]) for r in routes if r["dst"] == "default"] \
        == [("default", _gw(a), "eth0")]
    assert host.ping(s1, _gw(a)) and host.ping(s1, _gw(b))


def test_mtu_option_applies_to_bridge_and_both_veth_ends(host: Host, lab: Lab) -> None:
    d = lab.driver
    net = lab.network(options={OPT_MTU: "1400"})
    assert d.create_network(net)[OPT_MTU] == "1400"
    s1 = host.sandbox()
    facts = d.join(net, lab.endpoint(net), s1)
    for ns, name in ((host.h, _bridge(net)), (host.h, facts["HostInterface"]),
                     (os.path.basename(s1), "eth0")):
        link = host.link(ns, name)
        assert link is not None and link["mtu"] == 1400, (ns, name)


def test_bridge_name_option_is_honoured(host: Host, lab: Lab) -> None:
    d = lab.driver
    net = lab.network(options={OPT_BRIDGE_NAME: "kbr-custom"})
    d.create_network(net)
    link = host.link(host.h, "kbr-custom")
    assert link is not None and link["linkinfo"]["info_kind"] == "bridge"
    assert host.addrs(host.h, "kbr-custom") == {f"{_gw(net)}/24"}
    assert "fwd-in-kbr-custom" in host.chains()
    assert not [n for n in host.link_names(host.h) if n.startswith("br-")]


def test_conflict_on_a_foreign_link_name(host: Host, lab: Lab) -> None:
    d = lab.driver
    _run("ip", "-n", host.h, "link", "add", "kbr-taken", "type", "veth", "peer", "kbr-peer")
    _run("ip", "-n", host.h, "link", "add", "kbr-plain", "type", "bridge")
    before = _observe_ns(host, host.h), host.chains()
    for name in ("kbr-taken", "kbr-plain"):  # a veth; a bridge without our gateway
        with pytest.raises(Conflict, match=name):
            d.create_network(lab.network(options={OPT_BRIDGE_NAME: name}))
    assert (_observe_ns(host, host.h), host.chains()) == before


def test_a_prepared_bridge_is_adopted_and_kept(host: Host, lab: Lab) -> None:
    d = lab.driver
    net = lab.network(options={OPT_BRIDGE_NAME: "kbr-mine"})
    _run("ip", "-n", host.h, "link", "add", "kbr-mine", "type", "bridge")
    _run("ip", "-n", host.h, "addr", "add", f"{_gw(net)}/24", "dev", "kbr-mine")
    d.create_network(net)
    s1 = host.sandbox()
    ep = lab.endpoint(net)
    d.join(net, ep, s1)
    assert host.ping(s1, _gw(net))
    d.leave(net, ep, s1)
    d.delete_network(net)
    assert host.addrs(host.h, "kbr-mine") == {f"{_gw(net)}/24"}  # not ours to delete
    assert not [c for c in host.chains() if c.endswith("kbr-mine")]


def test_delete_network_leaves_no_links_and_no_chains(host: Host, lab: Lab) -> None:
    d = lab.driver
    before = host.link_names(host.h)
    net = lab.network()
    d.create_network(net)
    s1, s2 = host.sandbox(), host.sandbox()
    e1, e2 = lab.endpoint(net), lab.endpoint(net)
    d.join(net, e1, s1)
    d.join(net, e2, s2)
    assert {c for c in host.chains() if c.endswith(_bridge(net))}
    d.leave(net, e1, s1)
    d.delete_network(net)  # e2 still joined: the bridge goes anyway, as with dockerd
    d.leave(net, e2, s2)
    assert host.link_names(host.h) == before
    assert not [c for c in host.chains() if _bridge(net) in c]
    assert _bridge(net) not in "\n".join(host.nft_text())
    assert host.link_names(os.path.basename(s1)) == {"lo"}


def test_restore_recreates_a_bridge_deleted_by_hand(host: Host, lab: Lab) -> None:
    d = lab.driver
    net = lab.network()
    d.create_network(net)
    s1, s2 = host.sandbox(), host.sandbox()
    e1, e2 = lab.endpoint(net), lab.endpoint(net)
    d.join(net, e1, s1)
    _run("ip", "-n", host.h, "link", "del", _bridge(net))
    assert host.link(host.h, _bridge(net)) is None
    d.restore([net])
    bridge = host.link(host.h, _bridge(net))
    assert bridge is not None and "UP" in bridge["flags"]
    assert host.addrs(host.h, _bridge(net)) == {f"{_gw(net)}/24"}
    assert f"fwd-in-{_bridge(net)}" in host.chains()
    veth = host.link(host.h, host_ifname(e1.id))
    assert veth is not None and veth["master"] == _bridge(net)  # back on the new bridge
    d.join(net, e2, s2)
    assert host.ping(s1, _gw(net))
    assert host.ping(s2, _ip(e1))


def test_restore_brings_back_a_lost_address_and_state(host: Host, lab: Lab) -> None:
    d = lab.driver
    net = lab.network()
    d.create_network(net)
    _run("ip", "-n", host.h, "addr", "flush", "dev", _bridge(net))
    _run("ip", "-n", host.h, "link", "set", _bridge(net), "down")
    d.restore([net])
    bridge = host.link(host.h, _bridge(net))
    assert bridge is not None and "UP" in bridge["flags"]
    assert host.addrs(host.h, _bridge(net)) == {f"{_gw(net)}/24"}


def test_a_restarted_driver_knows_its_own_bridge(host: Host, lab: Lab) -> None:
    net = lab.network()
    facts = lab.driver.create_network(net)
    again = BridgeDriver(host.firewall, netns=host.h_path)  # a new daemon process
    assert again.create_network(net) == facts
    again.delete_network(net)
    assert host.link(host.h, _bridge(net)) is None


def test_icc_false_isolates_containers_but_not_the_gateway(host: Host, lab: Lab) -> None:
    d = lab.driver
    net = lab.network(options={OPT_ENABLE_ICC: "false"})
    d.create_network(net)
    s1, s2 = host.sandbox(), host.sandbox()
    e1, e2 = lab.endpoint(net), lab.endpoint(net)
    facts = d.join(net, e1, s1)
    d.join(net, e2, s2)
    veth = host.link(host.h, facts["HostInterface"])
    assert veth is not None and veth["linkinfo"]["info_slave_data"]["isolated"] is True
    assert host.ping(s1, _gw(net)) and host.ping(s2, _gw(net))
    assert not host.ping(s1, _ip(e2), tries=1)


@pytest.mark.parametrize("br_netfilter", ["1", "0"])
def test_a_container_reaches_its_own_published_port(host: Host, lab: Lab,
                                                    br_netfilter: str) -> None:
    knob = "/proc/sys/net/bridge/bridge-nf-call-iptables"

    def set_knob() -> None:
        with open(knob, "w") as f:
            f.write(br_netfilter)

    if os.path.exists(knob):
        host.in_h(set_knob)
    elif br_netfilter == "1":
        pytest.skip("no br_netfilter in this kernel")
    d = lab.driver
    net = lab.network()
    d.create_network(net)
    s1 = host.sandbox()
    ep = lab.endpoint(net)
    d.join(net, ep, s1)
    host.in_h(lambda: host.firewall.add_port(
        PortMapping("tcp", "0.0.0.0", 8080, _ip(ep), 80, _bridge(net))))

    def listen() -> socket.socket:
        s = socket.socket()
        s.bind((_ip(ep), 80))
        s.listen(1)
        return s

    server = netns.run_in(s1, listen)

    def answer() -> None:
        try:
            conn, peer = server.accept()
        except OSError:
            return
        with conn:
            conn.sendall(f"hello {peer[0]}\n".encode())

    t = threading.Thread(target=answer, daemon=True)
    t.start()

    def ask() -> str:
        with socket.create_connection((_gw(net), 8080), timeout=3) as c:
            return c.makefile().readline().strip()

    try:
        assert netns.run_in(s1, ask) == f"hello {_gw(net)}"  # hairpin, masqueraded
    finally:
        server.close()
        t.join(5)


def test_failed_join_leaves_nothing_behind(host: Host, lab: Lab) -> None:
    d = lab.driver
    net = lab.network()
    d.create_network(net)
    s1 = host.sandbox()
    s1_name = os.path.basename(s1)
    # the sandbox has a default route already: the join fails at its very last step
    _run("ip", "-n", s1_name, "link", "add", "d0", "type", "veth", "peer", "d1")
    _run("ip", "-n", s1_name, "link", "set", "d0", "up")
    _run("ip", "-n", s1_name, "route", "add", "default", "dev", "d0")
    before = _observe_ns(host, host.h), _observe_ns(host, s1_name)
    with pytest.raises(Conflict, match="default route"):
        d.join(net, lab.endpoint(net), s1)
    assert (_observe_ns(host, host.h), _observe_ns(host, s1_name)) == before
    _run("ip", "-n", s1_name, "link", "add", "eth0", "type", "veth", "peer", "eth0p")
    with pytest.raises(Conflict, match="eth0"):
        d.join(net, lab.endpoint(net, gateway=False), s1)
    assert _observe_ns(host, host.h) == before[0]


def test_failed_create_leaves_no_bridge(host: Host) -> None:
    never_ensured = Firewall(f"ketch-n{host.tag}")
    d = BridgeDriver(never_ensured, netns=host.h_path)
    before = _observe_ns(host, host.h)
    with pytest.raises(FailedPrecondition):
        d.create_network(Lab(d).network())
    assert _observe_ns(host, host.h) == before


def test_join_needs_the_bridge(host: Host, lab: Lab) -> None:
    net = lab.network()
    with pytest.raises(FailedPrecondition, match=_bridge(net)):
        lab.driver.join(net, lab.endpoint(net), host.sandbox())

