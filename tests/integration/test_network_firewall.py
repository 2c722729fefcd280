"""Firewall (nftables through libnftables) against the real kernel, inside throwaway netns.

Topology of every test (all namespaces made here and deleted afterwards, even on failure)::

    O (10.99.0.2) --veth-- H: vo 10.99.0.1
                           H: br-a 10.200.1.1/24 --veth-- C1 (10.200.1.2)
                           H: br-b 10.200.2.1/24 --veth-- C2 (10.200.2.2)
                           H: br-i 10.200.3.1/24 --veth-- C3 (10.200.3.2)   (internal in tests)

H plays the daemon's host: the code under test runs in threads that setns(2) into H. Servers
and clients are sockets made in threads that joined C1/C2/C3/O; a server answers with its name
and the peer address it saw, so a test checks both reachability and (masquerading) sources.
``ip`` builds the topology and ``nft`` checks what the code wrote; the code itself never
shells out.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from ketch.errors import Conflict, FailedPrecondition, InvalidArgument
from ketch.network.firewall import Firewall
from ketch.network.portmap import PortAllocator, PortBinding, PortMapping
from ketch.sys.nft import Nft
from ketch.sys.ns import CLONE, setns

T = TypeVar("T")

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/nft"),
                                reason="the nft CLI (Debian's nftables) checks the rules")


def in_ns(path: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Run ``fn`` in a fresh thread that joined the network namespace at ``path``."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, CLONE.NEWNET)
            finally:
                os.close(fd)
            box["v"] = fn(*args, **kw)
        except BaseException as e:
            box["e"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]  # type: ignore[no-any-return]


class Server:
    """A TCP or UDP server in a netns answering ``"<name> <peer ip>"``."""

    def __init__(self, ns: str, name: str, proto: str, ip: str, port: int) -> None:
        self.name = name
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM

        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
            if proto == "tcp":
                s.listen(16)
            return s

        self.sock = in_ns(ns, make)
        self.thread = threading.Thread(target=self._tcp if proto == "tcp" else self._udp,
                                       daemon=True)
        self.thread.start()

    def _tcp(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(f"{self.name} {peer[0]}\n".encode())

    def _udp(self) -> None:
        while True:
            try:
                _, peer = self.sock.recvfrom(512)
                if peer is None:  # shut down
                    return
                self.sock.sendto(f"{self.name} {peer[0]}\n".encode(), peer)
            except OSError:
                return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def _tcp_ask(ip: str, port: int, timeout: float) -> str:
    with socket.create_connection((ip, port), timeout=timeout) as s:
        return s.makefile().readline().strip()


def _udp_ask(ip: str, port: int, timeout: float) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(b"hi", (ip, port))
        return s.recvfrom(512)[0].decode().strip()


class Lab:
    """The namespaces above, the code under test's handles, and cleanup."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.names = {k: f"kfw-{tag}-{k}" for k in ("h", "c1", "c2", "c3", "o")}
        self.table = f"ketch-t{tag}"
        self.servers: list[Server] = []
        self.allocators: list[PortAllocator] = []
        self.made: list[str] = []

    def path(self, k: str) -> str:
        return f"/run/netns/{self.names[k]}"

    def ip(self, k: str, *args: str) -> None:
        subprocess.run(["ip", "-n", self.names[k], *args], check=True, capture_output=True)

    def build(self) -> None:
        for n in self.names.values():
            subprocess.run(["ip", "netns", "add", n], check=True)
            self.made.append(n)
        for k in self.names:
            self.ip(k, "link", "set", "lo", "up")
        for br, ck, net in (("br-a", "c1", 1), ("br-b", "c2", 2), ("br-i", "c3", 3)):
            self.ip("h", "link", "add", br, "type", "bridge")
            self.ip("h", "addr", "add", f"10.200.{net}.1/24", "dev", br)
            self.ip("h", "link", "set", br, "up")
            port = f"v{ck}"
            self.ip("h", "link", "add", port, "type", "veth", "peer", "name", "eth0",
                    "netns", self.names[ck])
            self.ip("h", "link", "set", port, "master", br, "up")
            # what the bridge driver does for every port: with br_netfilter (bridged IPv4 seen
            # by the ip hooks), a hairpin DNAT is bridged back out of the port it came in on
            self.ip("h", "link", "set", port, "type", "bridge_slave", "hairpin", "on")
            self.ip(ck, "addr", "add", f"10.200.{net}.2/24", "dev", "eth0")
            self.ip(ck, "link", "set", "eth0", "up")
            self.ip(ck, "route", "add", "default", "via", f"10.200.{net}.1")
        self.ip("h", "link", "add", "vo", "type", "veth", "peer", "name", "eth0",
                "netns", self.names["o"])
        self.ip("h", "addr", "add", "10.99.0.1/24", "dev", "vo")
        self.ip("h", "link", "set", "vo", "up")
        self.ip("o", "addr", "add", "10.99.0.2/24", "dev", "eth0")
        self.ip("o", "link", "set", "eth0", "up")
        self.ip("o", "route", "add", "default", "via", "10.99.0.1")

    def h(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Call the code under test in H, the daemon's namespace."""
        return in_ns(self.path("h"), fn, *args, **kw)

    def firewall(self, table: str | None = None) -> Firewall:
        fw = Firewall(table or self.table)
        self.h(fw.ensure)
        return fw

    def allocator(self) -> PortAllocator:
        a = PortAllocator()
        self.allocators.append(a)
        return a

    def serve(self, k: str, name: str, proto: str, ip: str, port: int) -> Server:
        s = Server(self.path(k), name, proto, ip, port)
        self.servers.append(s)
        return s

    def ask(self, k: str, ip: str, port: int, proto: str = "tcp",
            timeout: float = 3.0) -> str | None:
        """The server's answer seen from namespace ``k``, or None when unreachable."""
        try:
            return in_ns(self.path(k), _tcp_ask if proto == "tcp" else _udp_ask, ip, port,
                         timeout)
        except OSError:
            return None

    def nft(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.names["h"], "nft", *args],
                              capture_output=True, text=True)

    def table_json(self, table: str | None = None) -> list[dict[str, Any]]:
        r = self.nft("-j", "list", "table", "inet", table or self.table)
        assert r.returncode == 0, r.stderr
        return [i for i in json.loads(r.stdout)["nftables"] if "metainfo" not in i]

    def sysctl(self, k: str, name: str) -> str:
        def read() -> str:
            with open(f"/proc/sys/{name}") as f:
                return f.read().strip()

        return in_ns(self.path(k), read)

    def sysctl_set(self, k: str, name: str, value: str) -> None:
        def write() -> None:
            with open(f"/proc/sys/{name}", "w") as f:
                f.write(value)

        in_ns(self.path(k), write)

    def cleanup(self) -> None:
        for s in self.servers:
            s.close()
        for a in self.allocators:
            a.close()
        for n in self.made:
            subprocess.run(["ip", "netns", "del", n], check=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lb = Lab()
    try:
        lb.build()
        yield lb
    finally:
        lb.cleanup()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in lb.names.values() if n in left]


def _c1_web(lab: Lab, fw: Firewall) -> None:
    lab.h(fw.add_network, "br-a", "10.200.1.0/24", internal=False)
    lab.h(fw.add_network, "br-b", "10.200.2.0/24", internal=False)
    lab.serve("c1", "c1", "tcp", "10.200.1.2", 80)


# ---- published ports ----------------------------------------------------------------------

@pytest.mark.parametrize("br_netfilter", ["1", "0"])
def test_published_tcp_port_reachable_from_outside_host_and_containers(
        lab: Lab, br_netfilter: str) -> None:
    # with br_netfilter on (the kernel's default where it is loaded) a hairpin is bridged and
    # seen by the ip hooks; with it off, it is routed back out of the bridge
    knob = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    if not os.path.exists(knob):
        if br_netfilter == "1":
            pytest.skip("no br_netfilter in this kernel")
    else:
        lab.sysctl_set("h", "net/bridge/bridge-nf-call-iptables", br_netfilter)
    fw = lab.firewall()
    _c1_web(lab, fw)
    alloc = lab.allocator()
    pm = lab.h(alloc.allocate, PortBinding("tcp", 80, "0.0.0.0", 8080, 8080), "10.200.1.2",
               "br-a")
    lab.h(fw.add_port, pm)

    assert lab.ask("o", "10.99.0.1", 8080) == "c1 10.99.0.2"      # outside: source kept
    assert lab.ask("h", "127.0.0.1", 8080) == "c1 10.200.1.1"     # host via localhost
    assert lab.ask("h", "10.99.0.1", 8080) == "c1 10.99.0.1"      # host via its address
    assert lab.ask("c2", "10.99.0.1", 8080) == "c1 10.200.1.1"    # other network
    assert lab.ask("c1", "10.99.0.1", 8080) == "c1 10.200.1.1"    # hairpin
    assert lab.ask("c1", "10.200.1.1", 8080) == "c1 10.200.1.1"   # via its gateway
    assert lab.sysctl("h", "net/ipv4/ip_forward") == "1"
    assert lab.sysctl("h", "net/ipv4/conf/br-a/route_localnet") == "1"


def test_published_udp_port(lab: Lab) -> None:
    fw = lab.firewall()
    _c1_web(lab, fw)
    lab.serve("c1", "c1udp", "udp", "10.200.1.2", 5353)
    lab.h(fw.add_port, PortMapping("udp", "0.0.0.0", 5353, "10.200.1.2", 5353, "br-a"))
    assert lab.ask("o", "10.99.0.1", 5353, "udp") == "c1udp 10.99.0.2"
    assert lab.ask("h", "127.0.0.1", 5353, "udp") == "c1udp 10.200.1.1"
    assert lab.ask("c2", "10.99.0.1", 5353, "udp") == "c1udp 10.200.1.1"
    # the TCP side of the same port number is not published
    assert lab.ask("o", "10.99.0.1", 5353, "tcp", timeout=1) is None


def test_port_on_one_host_address_only(lab: Lab) -> None:
    fw = lab.firewall()
    _c1_web(lab, fw)
    alloc = lab.allocator()
    pm = lab.h(alloc.allocate, PortBinding("tcp", 80, "127.0.0.1", 8081, 8081), "10.200.1.2",
               "br-a")
    lab.h(fw.add_port, pm)
    assert lab.ask("h", "127.0.0.1", 8081) == "c1 10.200.1.1"
    assert lab.ask("h", "10.99.0.1", 8081, timeout=1) is None
    assert lab.ask("o", "10.99.0.1", 8081, timeout=1) is None


def test_random_host_port_from_the_namespace_range(lab: Lab) -> None:
    fw = lab.firewall()
    _c1_web(lab, fw)
    alloc = lab.allocator()
    pm = lab.h(alloc.allocate, PortBinding("tcp", 80), "10.200.1.2", "br-a")
    lo, hi = (int(x) for x in lab.sysctl("h", "net/ipv4/ip_local_port_range").split())
    assert lo <= pm.host_port <= hi
    lab.h(fw.add_port, pm)
    assert lab.ask("o", "10.99.0.1", pm.host_port) == "c1 10.99.0.2"


def test_port_conflicts(lab: Lab) -> None:
    fw = lab.firewall()
    _c1_web(lab, fw)
    pm = PortMapping("tcp", "0.0.0.0", 8080, "10.200.1.2", 80, "br-a")
    lab.h(fw.add_port, pm)
    lab.h(fw.add_port, pm)  # same again: fine
    other = PortMapping("tcp", "0.0.0.0", 8080, "10.200.1.3", 80, "br-a")
    with pytest.raises(Conflict):
        lab.h(fw.add_port, other)
    with pytest.raises(Conflict):
        lab.h(fw.remove_port, other)
    assert lab.h(fw.ports) == [pm]
    # a port some program in H listens on is refused by the allocator, with docker's words
    squatter = lab.serve("h", "squatter", "tcp", "0.0.0.0", 8090)
    alloc = lab.allocator()
    with pytest.raises(Conflict, match="failed to bind host port for 0.0.0.0:8090:"
                                       r"10.200.1.2:80/tcp: address already in use"):
        lab.h(alloc.allocate, PortBinding("tcp", 80, "", 8090, 8090), "10.200.1.2", "br-a")
    squatter.close()


# ---- masquerade and isolation ---------------------------------------------------------------

def test_masquerade_and_isolation(lab: Lab) -> None:
    fw = lab.firewall()
    _c1_web(lab, fw)
    lab.serve("o", "o", "tcp", "10.99.0.2", 9000)
    lab.serve("c2", "c2", "tcp", "10.200.2.2", 80)
    assert lab.ask("c1", "10.99.0.2", 9000) == "o 10.99.0.1"      # masqueraded
    assert lab.ask("c2", "10.99.0.2", 9000) == "o 10.99.0.1"
    assert lab.ask("c1", "10.200.2.2", 80, timeout=1) is None      # isolated
    assert lab.ask("c2", "10.200.1.2", 80, timeout=1) is None
    assert lab.ask("o", "10.200.1.2", 80) == "c1 10.99.0.2"        # routed in: allowed
    # it is our rule that isolates: without br-b's rules C1 reaches C2 again (masqueraded,
    # as it leaves br-a's subnet)
    lab.h(fw.remove_network, "br-b")
    assert lab.ask("c1", "10.200.2.2", 80) == "c2 10.200.2.1"


def test_no_masquerade_keeps_container_source(lab: Lab) -> None:
    fw = lab.firewall()
    lab.h(fw.add_network, "br-a", "10.200.1.0/24", internal=False, masquerade=False)
    lab.serve("o", "o", "tcp", "10.99.0.2", 9000)
    assert lab.ask("c1", "10.99.0.2", 9000) == "o 10.200.1.2"


def test_internal_network_forwards_nothing_outside(lab: Lab) -> None:
    fw = lab.firewall()
    _c1_web(lab, fw)
    lab.h(fw.add_network, "br-i", "10.200.3.0/24", internal=True)
    lab.serve("o", "o", "tcp", "10.99.0.2", 9000)
    lab.serve("c3", "c3", "tcp", "10.200.3.2", 80)
    lab.serve("h", "gw", "tcp", "10.200.3.1", 7000)
    assert lab.ask("c3", "10.200.3.1", 7000) == "gw 10.200.3.2"    # its own bridge works
    assert lab.ask("c3", "10.99.0.2", 9000, timeout=1) is None
    assert lab.ask("o", "10.200.3.2", 80, timeout=1) is None
    assert lab.ask("c3", "10.200.1.2", 80, timeout=1) is None
    assert lab.ask("c1", "10.200.3.2", 80, timeout=1) is None
    lab.h(fw.remove_network, "br-i")
    assert lab.ask("c3", "10.99.0.2", 9000) == "o 10.200.3.2"


# ---- removal, idempotence, ownership ------------------------------------------------------

BASE_CHAINS = {"ports", "prerouting", "output", "postrouting", "forward"}


def _chains(items: list[dict[str, Any]]) -> set[str]:
    return {i["chain"]["name"] for i in items if "chain" in i}


def _elements(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {v["name"]: v.get("elem", []) for i in items for k, v in i.items()
            if k in ("set", "map")}


def test_remove_and_destroy_leave_nothing(lab: Lab) -> None:
    fw = lab.firewall()
    _c1_web(lab, fw)
    alloc = lab.allocator()
    pm = lab.h(alloc.allocate, PortBinding("tcp", 80, "0.0.0.0", 8080, 8080), "10.200.1.2",
               "br-a")
    lab.h(fw.add_port, pm)
    lab.h(fw.add_port, PortMapping("udp", "127.0.0.1", 53, "10.200.1.2", 53, "br-a"))
    assert any(_elements(lab.table_json()).values())
    assert _chains(lab.table_json()) > BASE_CHAINS

    # a second daemon's table in the same namespace
    other = lab.firewall(lab.table + "-b")
    lab.h(other.add_network, "br-i", "10.200.3.0/24", internal=False)
    lab.serve("c3", "c3", "tcp", "10.200.3.2", 80)
    lab.h(other.add_port, PortMapping("tcp", "0.0.0.0", 9090, "10.200.3.2", 80, "br-i"))
    before_other = lab.nft("list", "table", "inet", lab.table + "-b").stdout

    lab.h(alloc.release, pm)
    lab.h(fw.remove_port, pm)
    lab.h(fw.remove_port, pm)  # twice: fine
    lab.h(fw.remove_port, PortMapping("udp", "127.0.0.1", 53, "10.200.1.2", 53, "br-a"))
    assert lab.ask("o", "10.99.0.1", 8080, timeout=1) is None
    lab.h(fw.remove_network, "br-a")
    lab.h(fw.remove_network, "br-b")
    lab.h(fw.remove_network, "br-b")
    items = lab.table_json()
    assert not any(_elements(items).values()), _elements(items)
    assert _chains(items) == BASE_CHAINS
    assert lab.h(fw.networks) == [] and lab.h(fw.ports) == []
    assert lab.sysctl("h", "net/ipv4/conf/br-a/route_localnet") == "0"

    lab.h(fw.destroy)
    lab.h(fw.destroy)  # twice: fine
    assert lab.nft("list", "table", "inet", lab.table).returncode != 0
    assert lab.table not in lab.nft("list", "tables").stdout.split()
    assert not lab.h(fw.exists)
    with pytest.raises(FailedPrecondition):
        lab.h(fw.add_network, "br-a", "10.200.1.0/24", internal=False)
    # the other table is untouched and still works
    assert lab.nft("list", "table", "inet", lab.table + "-b").stdout == before_other
    assert lab.ask("o", "10.99.0.1", 9090) == "c3 10.99.0.2"
    lab.h(other.destroy)
    assert lab.nft("list", "tables").stdout.strip() == ""


def test_operations_are_idempotent(lab: Lab) -> None:
    fw = lab.firewall()
    pm = PortMapping("tcp", "0.0.0.0", 8080, "10.200.1.2", 80, "br-a")

    def apply() -> None:
        fw.ensure()
        fw.add_network("br-a", "10.200.1.0/24", internal=False)
        fw.add_network("br-i", "10.200.3.0/24", internal=True)
        fw.add_port(pm)

    lab.h(apply)
    once = lab.nft("list", "table", "inet", lab.table).stdout
    lab.h(apply)
    assert lab.nft("list", "table", "inet", lab.table).stdout == once
    # changing a network replaces its rules instead of adding more
    lab.h(fw.add_network, "br-i", "10.200.3.0/24", internal=False)
    lab.h(fw.add_network, "br-i", "10.200.3.0/24", internal=True)
    assert lab.nft("list", "table", "inet", lab.table).stdout == once
    assert lab.h(fw.networks) == ["br-a", "br-i"]
    assert lab.h(fw.ports) == [pm]


def test_flush_stale_keeps_known_and_removes_the_rest(lab: Lab) -> None:
    fw = lab.firewall()
    _c1_web(lab, fw)
    keep = PortMapping("tcp", "0.0.0.0", 8080, "10.200.1.2", 80, "br-a")
    gone = PortMapping("tcp", "127.0.0.1", 8082, "10.200.2.2", 80, "br-b")
    moved_old = PortMapping("udp", "0.0.0.0", 5353, "10.200.1.9", 53, "br-a")
    moved_new = PortMapping("udp", "0.0.0.0", 5353, "10.200.1.2", 53, "br-a")
    for m in (keep, gone, moved_old):
        lab.h(fw.add_port, m)
    stale = lab.h(fw.flush_stale, ["br-a"], [keep, moved_new])
    assert stale.networks == ["br-b"]
    assert sorted(stale.ports, key=str) == sorted([gone, moved_old], key=str)
    assert lab.h(fw.networks) == ["br-a"]
    assert lab.h(fw.ports) == [keep, moved_new] or lab.h(fw.ports) == [moved_new, keep]
    assert not any(c.endswith("br-b") for c in _chains(lab.table_json()))
    assert lab.ask("o", "10.99.0.1", 8080) == "c1 10.99.0.2"
    assert lab.h(fw.flush_stale, ["br-a"], [keep, moved_new]).networks == []


# ---- the libnftables wrapper ----------------------------------------------------------------

def test_nft_errors_and_namespace(lab: Lab) -> None:
    nft = Nft()
    with pytest.raises(InvalidArgument, match="syntax error"):
        lab.h(nft.run, "add tabel inet x")
    with pytest.raises(FileNotFoundError) as e:
        lab.h(nft.run, "delete table inet no-such-table")
    assert "nft_run_cmd_from_buffer" in str(e.value)
    # one transaction: the failing second command undoes the first
    with pytest.raises(OSError):
        lab.h(nft.run, "add table inet tx\nadd element inet tx nosuch { 1 }")
    assert "tx" not in lab.nft("list", "tables").stdout
    # the calling thread's namespace: H's table is not visible from O
    lab.h(nft.run, "add table inet only-h")
    assert "only-h" in lab.h(nft.run, "list tables")
    assert "only-h" not in in_ns(lab.path("o"), nft.run, "list tables")
    out = lab.h(nft.run_json, {"nftables": [{"list": {"tables": None}}]})
    assert {"family": "inet", "name": "only-h"}.items() <= next(
        i["table"] for i in out["nftables"] if "table" in i).items()
    assert lab.h(nft.run_json, {"nftables": [{"delete": {"table": {
        "family": "inet", "name": "only-h"}}}]}) == {}


def test_unloaded_library_comes_back_at_the_next_call(lab: Lab) -> None:
    from ketch.sys import nft as nftmod

    def mapped() -> bool:
        with open("/proc/self/maps") as f:
            return "libnftables" in f.read()

    nft = Nft()
    lab.h(nft.run, "add table inet reload")
    assert mapped()
    assert nftmod.unload_library() is True
    assert not mapped()
    assert nftmod.unload_library() is False
    # the same object loads it again, and the table made before is still there
    assert "reload" in lab.h(nft.run, "list tables")
    assert mapped()
    lab.h(nft.run, "delete table inet reload")


def test_missing_library_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition, match="libnftables1"):
        Nft(library="libnftables-does-not-exist.so.9")


def test_bad_names_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        Firewall("bad name; flush ruleset")
    fw = Firewall("ketch-x")
    with pytest.raises(InvalidArgument):
        fw.add_network('br" accept', "10.0.0.0/24", internal=False)
