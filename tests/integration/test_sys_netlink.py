"""ketch.sys.netlink and ketch.sys.netns against the real kernel (root).

Everything happens inside throwaway network namespaces: ``ns1`` from the shared
``netns`` fixture (``ip netns add``), ``ns2`` made by :func:`ketch.sys.netns.create`
in the test's tmp dir. Each connection is checked to see only ``lo`` before the test
changes anything, so a bug that opened the socket in the host's namespace stops the
test before it touches the host. Deleting the namespaces removes every link made.

The independent check is iproute2: ``nsenter --net=<ns> ip -j ...`` (JSON) for what
the kernel holds, and busybox ``ping`` for whether packets actually flow.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ketch.errors import InvalidArgument
from ketch.sys import netns
from ketch.sys.netlink import Netlink

T = TypeVar("T")


def ipj(ns: str | Path, *args: str) -> list[dict[str, Any]]:
    """``ip -j <args>`` run inside ``ns``: the kernel's view, parsed."""
    out = subprocess.run(["nsenter", f"--net={ns}", "ip", "-j", *args], check=True,
                         capture_output=True, text=True).stdout
    result: list[dict[str, Any]] = json.loads(out) if out.strip() else []
    return result


def links_of(ns: str | Path) -> dict[str, dict[str, Any]]:
    return {x["ifname"]: x for x in ipj(ns, "-d", "link", "show")}


def addrs_of(ns: str | Path, dev: str) -> set[tuple[str, int]]:
    (info,) = ipj(ns, "addr", "show", "dev", dev)
    return {(a["local"], a["prefixlen"]) for a in info["addr_info"]}


def ping(ns: str | Path, addr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={ns}", "busybox", "ping", "-c1", "-W1", addr],
                          capture_output=True, text=True, check=False)


def nsfs_mounts(path: str | Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if line.split()[4] == str(path)]


def own_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def in_other_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a worker thread, so the test's own thread never changes netns."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def scratch(nl: Netlink, name: str) -> str:
    """Make a standalone link ``name``: a dummy, or an ifb where the kernel has no dummy
    driver (this test VM's kernel, for one). Returns the kind made."""
    try:
        nl.add_dummy(name)
        return "dummy"
    except OSError as e:
        if e.errno != errno.EOPNOTSUPP:
            raise
    nl.add_link(name, "ifb")
    return "ifb"


@pytest.fixture
def ns1(netns: str) -> str:
    return netns


@pytest.fixture
def ns2(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "ns2")
    netns.create(path)
    try:
        yield path
    finally:
        netns.delete(path)
        assert not nsfs_mounts(path) and not os.path.exists(path)


def fresh(ns: str) -> Netlink:
    nl = Netlink.open(ns)
    # the guard for everything below: this socket sees a new namespace, not the host's
    assert [x.name for x in nl.links()] == ["lo"]
    return nl


@pytest.fixture
def nl1(ns1: str) -> Iterator[Netlink]:
    host = own_netns()
    with fresh(ns1) as nl:
        yield nl
    assert own_netns() == host


@pytest.fixture
def nl2(ns2: str) -> Iterator[Netlink]:
    with fresh(ns2) as nl:
        yield nl


# --- links ----------------------------------------------------------------------------------------


def test_bridge_and_veth_with_the_peer_made_in_another_netns(nl1: Netlink, ns1: str,
                                                              ns2: str) -> None:
    nl1.add_bridge("kbr0", mtu=1400)
    nl1.add_veth("kv0", "eth0", mtu=1400, peer_netns=ns2)
    nl1.set_link("kv0", master="kbr0", up=True)
    nl1.set_link("kbr0", up=True)

    one = links_of(ns1)
    assert set(one) == {"lo", "kbr0", "kv0"}
    assert one["kbr0"]["linkinfo"]["info_kind"] == "bridge" and one["kbr0"]["mtu"] == 1400
    assert one["kv0"]["linkinfo"]["info_kind"] == "veth" and one["kv0"]["mtu"] == 1400
    assert one["kv0"]["master"] == "kbr0"
    assert "UP" in one["kv0"]["flags"] and "UP" in one["kbr0"]["flags"]
    two = links_of(ns2)
    assert set(two) == {"lo", "eth0"}
    assert two["eth0"]["linkinfo"]["info_kind"] == "veth" and two["eth0"]["mtu"] == 1400
    assert "UP" not in two["eth0"]["flags"]

    bridge, veth = nl1.link("kbr0"), nl1.link("kv0")
    assert bridge is not None and veth is not None
    assert (bridge.index, bridge.kind, bridge.mtu, bridge.up) == (
        one["kbr0"]["ifindex"], "bridge", 1400, True)
    assert (veth.kind, veth.master, veth.mac) == ("veth", bridge.index, one["kv0"]["address"])
    assert veth.link == two["eth0"]["ifindex"] and veth.link_netnsid is not None
    assert nl1.link_by_index(bridge.index) == bridge
    assert [x.name for x in nl1.links()] == ["lo", "kbr0", "kv0"]

    nl1.set_link("kv0", master="")
    assert "master" not in links_of(ns1)["kv0"]


def test_rename_mtu_mac_up_and_move_between_namespaces(nl1: Netlink, ns1: str,
                                                       ns2: str) -> None:
    nl1.add_veth("kv0", "kp0")  # both ends here; a veth takes a new MAC (ifb does not)
    nl1.set_link("kv0", new_name="kv1", mtu=1300, mac="02:00:00:00:00:01", up=True)
    one = links_of(ns1)
    assert set(one) == {"lo", "kv1", "kp0"}
    assert (one["kv1"]["mtu"], one["kv1"]["address"]) == (1300, "02:00:00:00:00:01")
    assert "UP" in one["kv1"]["flags"] and "UP" not in one["kp0"]["flags"]

    nl1.set_link("kv1", netns=ns2)
    assert set(links_of(ns1)) == {"lo", "kp0"} and set(links_of(ns2)) == {"lo", "kv1"}
    assert nl1.link("kv1") is None
    peer = nl1.link("kp0")
    assert peer is not None and peer.link_netnsid is not None  # its peer is elsewhere now

    # and back, renamed on the way, naming the target by an fd the caller keeps
    fd = os.open(ns1, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with Netlink.open(ns2) as nl2:
            nl2.set_link("kv1", netns=fd, new_name="kv2")
        os.fstat(fd)  # still ours, still open
    finally:
        os.close(fd)
    assert set(links_of(ns1)) == {"lo", "kv2", "kp0"} and set(links_of(ns2)) == {"lo"}


def test_add_dummy(nl1: Netlink, ns1: str) -> None:
    try:
        nl1.add_dummy("kd0")
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            pytest.skip("this kernel has no dummy link driver (CONFIG_DUMMY)")
        raise
    assert links_of(ns1)["kd0"]["linkinfo"]["info_kind"] == "dummy"


def test_delete_link_takes_the_veth_peer_along(nl1: Netlink, ns1: str, ns2: str) -> None:
    nl1.add_veth("kv0", "eth0", peer_netns=ns2)
    nl1.delete_link("kv0")
    assert set(links_of(ns1)) == {"lo"} and set(links_of(ns2)) == {"lo"}


def test_a_dump_longer_than_one_datagram(nl1: Netlink, ns1: str) -> None:
    names = [f"kd{i}" for i in range(300)]  # ~300 KiB of RTM_NEWLINK: many 32 KiB datagrams
    for name in names:
        scratch(nl1, name)
    got = [x.name for x in nl1.links()]
    assert got == ["lo", *names]
    assert sorted(got) == sorted(links_of(ns1))


# --- addresses ------------------------------------------------------------------------------------


def test_ipv4_and_ipv6_addresses(nl1: Netlink, ns1: str) -> None:
    nl1.set_link("lo", up=True)  # `ip netns add` leaves lo down, without 127.0.0.1
    scratch(nl1, "kd0")
    nl1.set_link("kd0", up=True)
    nl1.add_addr("kd0", "10.77.1.1/24")
    nl1.add_addr("kd0", "fd00:77::1/64", nodad=True)
    (info,) = ipj(ns1, "addr", "show", "dev", "kd0")
    v4 = [a for a in info["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"], a.get("broadcast")) for a in v4] == [
        ("10.77.1.1", 24, "10.77.1.255")]
    assert ("fd00:77::1", 64) in addrs_of(ns1, "kd0")

    ours = {(str(a.interface.ip), a.interface.network.prefixlen) for a in nl1.addrs("kd0")}
    assert ours == addrs_of(ns1, "kd0")
    every = nl1.addrs()
    assert {(a.ifname, str(a.interface)) for a in every} >= {
        ("lo", "127.0.0.1/8"), ("kd0", "10.77.1.1/24"), ("kd0", "fd00:77::1/64")}
    assert all(a.ifname for a in every)

    with pytest.raises(OSError) as e:
        nl1.add_addr("kd0", "10.77.1.1/24")
    assert e.value.errno == errno.EEXIST and "10.77.1.1/24 dev kd0" in str(e.value)

    nl1.del_addr("kd0", "10.77.1.1/24")
    nl1.del_addr("kd0", "fd00:77::1/64")
    assert not {ip for ip, _ in addrs_of(ns1, "kd0")} & {"10.77.1.1", "fd00:77::1"}
    with pytest.raises(OSError) as e:
        nl1.del_addr("kd0", "10.77.1.1/24")
    assert e.value.errno == errno.EADDRNOTAVAIL


# --- routes and traffic ---------------------------------------------------------------------------


def test_default_route_via_the_bridge_and_ping_across_the_veth(
        nl1: Netlink, nl2: Netlink, ns1: str, ns2: str) -> None:
    # ns1: bridge 10.77.0.1/24 with the veth enslaved; 10.78.0.1 only reachable by routing
    nl1.add_bridge("kbr0")
    nl1.add_veth("kv0", "eth0", peer_netns=ns2)
    nl1.set_link("kv0", master="kbr0", up=True)
    nl1.set_link("kbr0", up=True)
    nl1.add_addr("kbr0", "10.77.0.1/24")
    scratch(nl1, "kd0")
    nl1.set_link("kd0", up=True)
    nl1.add_addr("kd0", "10.78.0.1/32")
    # ns2: the container side
    nl2.set_link("eth0", up=True)
    nl2.add_addr("eth0", "10.77.0.2/24")
    nl2.add_route("default", gateway="10.77.0.1")

    kernel = {(r["dst"], r.get("gateway"), r["dev"]) for r in ipj(ns2, "route", "show")}
    assert kernel == {("default", "10.77.0.1", "eth0"), ("10.77.0.0/24", None, "eth0")}
    eth0 = nl2.link("eth0")
    assert eth0 is not None
    ours = {(str(r.dst), r.gateway and str(r.gateway), r.oif) for r in nl2.routes()}
    assert ours == {("0.0.0.0/0", "10.77.0.1", eth0.index), ("10.77.0.0/24", None, eth0.index)}

    assert ping(ns2, "10.77.0.1").returncode == 0, "no reply across the veth"
    assert ping(ns2, "10.78.0.1").returncode == 0, "no reply through the default route"

    nl2.del_route("default", gateway="10.77.0.1")
    assert [r["dst"] for r in ipj(ns2, "route", "show")] == ["10.77.0.0/24"]
    assert ping(ns2, "10.78.0.1").returncode != 0
    with pytest.raises(OSError) as e:
        nl2.del_route("default")
    assert e.value.errno == errno.ESRCH

    nl2.add_route("10.78.0.0/16", dev="eth0", src="10.77.0.2")
    (route,) = ipj(ns2, "route", "show", "10.78.0.0/16")
    assert (route["dev"], route["scope"], route["prefsrc"]) == ("eth0", "link", "10.77.0.2")


def test_ipv6_routes(nl1: Netlink, ns1: str) -> None:
    scratch(nl1, "kd0")
    nl1.set_link("kd0", up=True)
    nl1.add_addr("kd0", "fd00:1::1/64", nodad=True)
    nl1.add_route("fd00:2::/64", gateway="fd00:1::2")
    (route,) = ipj(ns1, "-6", "route", "show", "fd00:2::/64")
    assert (route["gateway"], route["dev"]) == ("fd00:1::2", "kd0")
    ours = [r for r in nl1.routes(socket.AF_INET6) if str(r.dst) == "fd00:2::/64"]
    assert [str(r.gateway) for r in ours] == ["fd00:1::2"]
    nl1.del_route("fd00:2::/64", gateway="fd00:1::2", dev="kd0")
    assert ipj(ns1, "-6", "route", "show", "fd00:2::/64") == []


# --- errors ---------------------------------------------------------------------------------------


def test_duplicate_links_are_eexist_naming_the_link(nl1: Netlink, ns2: str) -> None:
    nl1.add_bridge("kbr0")
    with pytest.raises(OSError) as e:
        nl1.add_bridge("kbr0")
    assert e.value.errno == errno.EEXIST and "RTM_NEWLINK(bridge kbr0)" in str(e.value)
    nl1.add_veth("kv0", "eth0", peer_netns=ns2)
    with pytest.raises(OSError) as e:  # the peer's name is taken in ns2
        nl1.add_veth("kv1", "eth0", peer_netns=ns2)
    assert e.value.errno == errno.EEXIST and "veth kv1/eth0" in str(e.value)
    assert nl1.link("kv1") is None


@pytest.mark.parametrize("call", [
    lambda nl: nl.delete_link("nope0"),
    lambda nl: nl.set_link("nope0", up=True),
    lambda nl: nl.set_link("lo", master="nope0"),
    lambda nl: nl.add_addr("nope0", "10.0.0.1/24"),
    lambda nl: nl.add_route("10.9.0.0/16", dev="nope0"),
])
def test_unknown_links_are_enodev(nl1: Netlink, call: Callable[[Netlink], object]) -> None:
    with pytest.raises(OSError) as e:
        call(nl1)
    assert e.value.errno == errno.ENODEV and "nope0" in str(e.value)
    assert nl1.link("nope0") is None


def test_kernel_reasons_and_bad_input(nl1: Netlink, ns1: str, tmp_path: Path) -> None:
    with pytest.raises(OSError) as e:
        nl1.add_link("kx0", "no-such-kind")
    # the ext-ack text rides along with the errno
    assert e.value.errno == errno.EOPNOTSUPP and "Unknown device type" in str(e.value)
    before = ipj(ns1, "addr", "show", "dev", "lo")
    with pytest.raises(InvalidArgument):
        nl1.add_addr("lo", "10.0.0.300/24")
    assert ipj(ns1, "addr", "show", "dev", "lo") == before
    with pytest.raises(OSError) as e:
        nl1.add_route("default", gateway="10.99.0.1")
    assert e.value.errno == errno.ENETUNREACH
    with pytest.raises(FileNotFoundError):
        nl1.add_veth("kv0", "eth0", peer_netns=str(tmp_path / "missing"))
    assert set(links_of(ns1)) == {"lo"}


# --- netns ----------------------------------------------------------------------------------------


def test_create_and_delete_leave_nothing_behind(tmp_path: Path) -> None:
    path = str(tmp_path / "n1")
    netns.create(path)
    try:
        assert netns.is_netns(path)
        (mount,) = nsfs_mounts(path)
        assert " - nsfs " in mount
        (lo,) = ipj(path, "link", "show")
        assert lo["ifname"] == "lo" and "UP" in lo["flags"]
        with pytest.raises(FileExistsError):
            netns.create(path)
        assert len(nsfs_mounts(path)) == 1
    finally:
        netns.delete(path)
    assert not nsfs_mounts(path) and not os.path.exists(path)
    assert not netns.is_netns(path)
    netns.delete(path)  # missing: no error


def test_create_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        netns.create(str(tmp_path / "no-dir" / "n1"))
    directory = tmp_path / "a-dir"
    directory.mkdir()
    with pytest.raises(OSError):
        netns.create(str(directory))  # bind-mounting a file onto a directory fails
    assert not nsfs_mounts(directory) and directory.is_dir()


def test_create_on_an_existing_file_and_namespace_lifetime(tmp_path: Path) -> None:
    path = tmp_path / "n1"
    path.write_text("")
    netns.create(str(path))
    nl = Netlink.open(str(path))
    try:
        scratch(nl, "kd0")
        netns.delete(str(path))
        assert not path.exists() and not nsfs_mounts(path)
        # the socket still holds the namespace: it lives on until the last reference
        assert [x.name for x in nl.links()] == ["lo", "kd0"]
    finally:
        nl.close()
        netns.delete(str(path))


def test_is_netns(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_text("")
    assert netns.is_netns("/proc/self/ns/net")
    assert not netns.is_netns("/proc/self/ns/uts")  # nsfs, but not a network namespace
    assert not netns.is_netns(str(plain))
    assert not netns.is_netns(str(tmp_path))
    assert not netns.is_netns(str(tmp_path / "missing"))


def test_run_in_and_entered_switch_one_thread_only(ns1: str) -> None:
    host = own_netns()
    target = f"net:[{os.stat(ns1).st_ino}]"
    assert target != host
    assert netns.run_in(ns1, own_netns) == target
    with pytest.raises(ZeroDivisionError):
        netns.run_in(ns1, lambda: 1 // 0)

    seen: list[str] = []
    inside, leave = threading.Event(), threading.Event()

    def worker() -> None:
        seen.append(own_netns())
        with netns.entered(ns1):
            seen.append(own_netns())
            inside.set()
            leave.wait(10)
        seen.append(own_netns())

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert inside.wait(10)
        assert own_netns() == host  # only the worker thread moved
    finally:
        leave.set()
        thread.join()
    assert seen == [host, target, host]

    def error_inside() -> str:
        fd = os.open(ns1, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with pytest.raises(KeyError), netns.entered(fd):
                raise KeyError("x")
        finally:
            os.close(fd)
        return own_netns()

    assert in_other_thread(error_inside) == host
    assert own_netns() == host
