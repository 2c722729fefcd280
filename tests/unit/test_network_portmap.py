"""Port specs as the API and ``-p`` give them, and the host-port allocator.

The allocator tests reserve real ports, on 127.0.0.1 only, in whatever namespace the tests
run in; nothing needs root.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.errors import Conflict, InvalidArgument
from ketch.network.portmap import (
    PortAllocator,
    PortBinding,
    PortMapping,
    ephemeral_range,
    parse_port,
    parse_port_bindings,
    parse_publish,
    ports_view,
)

LO = "127.0.0.1"
CIP = "10.88.0.2"

# ---- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "want"), [
    ("80/tcp", (80, 80, "tcp")),
    ("80", (80, 80, "tcp")),
    ("53/UDP", (53, 53, "udp")),
    ("132/sctp", (132, 132, "sctp")),
    ("8000-8002/udp", (8000, 8002, "udp")),
])
def test_parse_port(key: str, want: tuple[int, int, str]) -> None:
    assert parse_port(key) == want


@pytest.mark.parametrize("key", ["", "abc/tcp", "0/tcp", "70000", "80/icmp", "82-80/tcp",
                                 "80-/tcp", "-80"])
def test_parse_port_rejects(key: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_port(key)


def test_parse_port_bindings_docker_shapes() -> None:
    got = parse_port_bindings({
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": ""}],
        "53/udp": [{"HostPort": "5300-5310"}],
        "443/tcp": None,        # exposed only
        "22/tcp": [],           # exposed only
        "9000-9001/tcp": [{"HostIp": "", "HostPort": "19000-19001"}],
        "7000": [{}],
    })
    assert got == [
        PortBinding("tcp", 80, "0.0.0.0", 8080, 8080),
        PortBinding("tcp", 80, "127.0.0.1", 0, 0),
        PortBinding("udp", 53, "0.0.0.0", 5300, 5310),
        PortBinding("tcp", 9000, "0.0.0.0", 19000, 19000),
        PortBinding("tcp", 9001, "0.0.0.0", 19001, 19001),
        PortBinding("tcp", 7000, "0.0.0.0", 0, 0),
    ]
    assert got[0].exact and not got[1].exact and not got[2].exact
    assert got[2].port_key == "53/udp"
    assert parse_port_bindings(None) == [] and parse_port_bindings({}) == []


@pytest.mark.parametrize(("bindings", "match"), [
    ({"80/tcp": [{"HostIp": "localhost", "HostPort": "80"}]}, "invalid IP address"),
    ({"80/tcp": [{"HostPort": "80a"}]}, "invalid hostPort"),
    ({"80/tcp": [{"HostPort": "70000"}]}, "invalid hostPort"),
    ({"80/tcp": [{"HostPort": "90-80"}]}, "invalid hostPort"),
    ({"80-82/tcp": [{"HostPort": "8080-8081"}]}, "invalid ranges"),
    ({"80-82/tcp": [{"HostPort": "8080"}]}, "invalid ranges"),
    ({"80/tcp": "8080"}, "expected a list"),
    ({"80/tcp": ["8080"]}, "expected an object"),
    ({"80/bogus": []}, "invalid proto"),
])
def test_parse_port_bindings_rejects(bindings: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        parse_port_bindings(bindings)


@pytest.mark.parametrize(("spec", "want"), [
    ("80", {"80/tcp": [{"HostIp": "", "HostPort": ""}]}),
    ("8080:80", {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}),
    ("127.0.0.1:8080:80/udp", {"80/udp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}),
    ("127.0.0.1::80", {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}),
    ("[::1]:8080:80", {"80/tcp": [{"HostIp": "::1", "HostPort": "8080"}]}),
    ("8000-8010:80", {"80/tcp": [{"HostIp": "", "HostPort": "8000-8010"}]}),
    ("8000-8001:80-81/sctp", {"80/sctp": [{"HostIp": "", "HostPort": "8000"}],
                              "81/sctp": [{"HostIp": "", "HostPort": "8001"}]}),
    ("80-81", {"80/tcp": [{"HostIp": "", "HostPort": ""}],
               "81/tcp": [{"HostIp": "", "HostPort": ""}]}),
])
def test_parse_publish(spec: str, want: dict[str, list[dict[str, str]]]) -> None:
    got = parse_publish(spec)
    assert got == want
    # what -p produces is what the API parser takes
    assert parse_port_bindings(got)


@pytest.mark.parametrize("spec", ["", "8080:", "a:b:c:d", "1.2.3:8080:80", "8080:80/icmp",
                                  "[::1:8080:80", "8000-8001:80-82", "0:80"])
def test_parse_publish_rejects(spec: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_publish(spec)


def test_port_mapping_validates_and_prints() -> None:
    m = PortMapping("tcp", "0.0.0.0", 8080, "10.88.0.2", 80, "br0")
    assert str(m) == "0.0.0.0:8080->10.88.0.2:80/tcp"
    assert m.key == ("tcp", "0.0.0.0", 8080)
    assert str(PortMapping("udp", "::1", 53, "fd00::2", 53, "br0")) == "[::1]:53->[fd00::2]:53/udp"
    for bad in (dict(proto="icmp"), dict(host_port=0), dict(container_port=65536),
                dict(host_ip="nope"), dict(container_ip="")):
        args = dict(proto="tcp", host_ip="0.0.0.0", host_port=1, container_ip=CIP,
                    container_port=1, bridge="br0")
        args.update(bad)
        with pytest.raises(InvalidArgument):
            PortMapping(**args)  # type: ignore[arg-type]


def test_ports_view_like_docker_inspect() -> None:
    maps = [PortMapping("tcp", "0.0.0.0", 8080, CIP, 80, "br0"),
            PortMapping("tcp", "127.0.0.1", 8081, CIP, 80, "br0"),
            PortMapping("udp", "0.0.0.0", 5353, CIP, 53, "br0")]
    assert ports_view(maps, exposed=["80/tcp", "443/tcp", "53/udp"]) == {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                   {"HostIp": "127.0.0.1", "HostPort": "8081"}],
        "443/tcp": None,
        "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "5353"}],
    }


def test_ephemeral_range_from_proc(tmp_path: Path) -> None:
    f = tmp_path / "net/ipv4/ip_local_port_range"
    f.parent.mkdir(parents=True)
    f.write_text("40000\t40010\n")
    assert ephemeral_range(str(tmp_path)) == (40000, 40010)
    assert PortAllocator(proc_sys=str(tmp_path)).port_range == (40000, 40010)
    f.write_text("garbage\n")
    assert ephemeral_range(str(tmp_path)) == (49153, 65535)
    assert ephemeral_range(str(tmp_path / "missing")) == (49153, 65535)


# ---- allocation ----------------------------------------------------------------------------


def _free(port: int, proto: str = "tcp") -> bool:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((LO, port))
        except OSError:
            return False
    return True


def _free_block(n: int) -> int:
    """The first port of ``n`` consecutive ports free on 127.0.0.1 (tcp and udp), below the
    kernel's ephemeral range so nothing else grabs them meanwhile."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        if all(_free(p, proto) for p in range(base, base + n) for proto in ("tcp", "udp")):
            return base
    raise AssertionError("no free block of ports")


@pytest.fixture
def alloc() -> Iterator[PortAllocator]:
    a = PortAllocator()
    try:
        yield a
    finally:
        a.close()


def test_exact_port_is_held_until_released(alloc: PortAllocator) -> None:
    port = _free_block(1)
    m = alloc.allocate(PortBinding("tcp", 80, LO, port, port), CIP, "br0")
    assert m == PortMapping("tcp", LO, port, CIP, 80, "br0")
    assert alloc.allocated() == [m]
    assert not _free(port)  # a real socket holds it
    alloc.release(m)
    alloc.release(m)  # twice: harmless
    assert _free(port)
    assert alloc.allocated() == []
    again = alloc.allocate(PortBinding("tcp", 80, LO, port, port), CIP, "br0")
    assert again == m


def test_same_port_twice_is_docker_conflict(alloc: PortAllocator) -> None:
    port = _free_block(1)
    alloc.allocate(PortBinding("tcp", 80, LO, port, port), CIP, "br0")
    with pytest.raises(Conflict) as e:
        alloc.allocate(PortBinding("tcp", 81, LO, port, port), "10.88.0.3", "br0")
    assert str(e.value) == f"Bind for {LO}:{port} failed: port is already allocated"
    # every-address overlaps a single address (decided from the table, nothing is bound)
    with pytest.raises(Conflict, match=f"Bind for 0.0.0.0:{port} failed: port is already"):
        alloc.allocate(PortBinding("tcp", 81, "", port, port), "10.88.0.3", "br0")
    # the other protocol is a different port
    assert alloc.allocate(PortBinding("udp", 80, LO, port, port), CIP, "br0").proto == "udp"


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_port_of_another_program_is_refused(alloc: PortAllocator, proto: str) -> None:
    port = _free_block(1)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as other:
        other.bind((LO, port))
        if proto == "tcp":
            other.listen(1)
        with pytest.raises(Conflict) as e:
            alloc.allocate(PortBinding(proto, 80, LO, port, port), CIP, "br0")
    assert str(e.value) == (f"failed to bind host port for {LO}:{port}:{CIP}:80/{proto}: "
                            "address already in use")
    assert alloc.allocated() == []


def test_address_not_on_this_host_is_invalid(alloc: PortAllocator) -> None:
    with pytest.raises(InvalidArgument, match="cannot assign requested address"):
        alloc.allocate(PortBinding("tcp", 80, "192.0.2.1", 8080, 8080), CIP, "br0")


def test_random_ports_are_distinct_in_range_until_exhausted() -> None:
    base = _free_block(6)
    a = PortAllocator(port_range=(base, base + 5))
    try:
        got = [a.allocate(PortBinding("tcp", 80, LO), CIP, "br0").host_port for _ in range(6)]
        assert sorted(got) == list(range(base, base + 6))
        with pytest.raises(Conflict, match=r"^all ports are allocated$"):
            a.allocate(PortBinding("tcp", 80, LO), CIP, "br0")
        # a released one comes back
        a.release(PortMapping("tcp", LO, got[2], CIP, 80, "br0"))
        assert a.allocate(PortBinding("tcp", 80, LO), CIP, "br0").host_port == got[2]
    finally:
        a.close()


def test_host_range_skips_ports_taken_by_others(alloc: PortAllocator) -> None:
    base = _free_block(3)
    with socket.socket() as squatter:
        squatter.bind((LO, base + 1))
        squatter.listen(1)
        b = PortBinding("tcp", 80, LO, base, base + 2)
        first = alloc.allocate(b, CIP, "br0").host_port
        second = alloc.allocate(b, CIP, "br0").host_port
        assert {first, second} == {base, base + 2}
        with pytest.raises(Conflict, match="all ports are allocated"):
            alloc.allocate(b, CIP, "br0")


def test_allocate_all_is_all_or_nothing(alloc: PortAllocator) -> None:
    base = _free_block(2)
    with socket.socket() as squatter:
        squatter.bind((LO, base + 1))
        squatter.listen(1)
        with pytest.raises(Conflict):
            alloc.allocate_all([PortBinding("tcp", 80, LO, base, base),
                                PortBinding("tcp", 81, LO, base + 1, base + 1)], CIP, "br0")
    assert alloc.allocated() == []
    assert _free(base)
    maps = alloc.allocate_all([PortBinding("tcp", 80, LO, base, base),
                               PortBinding("udp", 81, LO, base + 1, base + 1)], CIP, "br0")
    assert [m.host_port for m in maps] == [base, base + 1]
    alloc.close()
    assert alloc.allocated() == [] and _free(base)


def test_bad_allocator_range() -> None:
    with pytest.raises(InvalidArgument):
        PortAllocator(port_range=(2000, 1000))


def test_held_udp_port_really_blocks(alloc: PortAllocator) -> None:
    port = _free_block(1)
    alloc.allocate(PortBinding("udp", 53, LO, port, port), CIP, "br0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError) as e:
        s.bind((LO, port))
    assert e.value.errno == errno.EADDRINUSE
