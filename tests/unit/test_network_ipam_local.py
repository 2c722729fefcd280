"""LocalIpam: the IpamDriver conformance suite (in memory and on a state file), dockerd's
default pools, avoiding the host's networks, and state across driver instances."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

import pytest

from ketch.errors import Conflict, Internal, InvalidArgument
from ketch.network.ipam import NO_MORE_SUBNETS, IPNetwork
from ketch.network.ipam.local import DEFAULTS, LocalIpam
from tests.conformance.ipam_driver_suite import IpamDriverSuite, NewIpam, drain

I = ipaddress.ip_interface  # noqa: E741
N = ipaddress.ip_network

# dockerd's default order: 172.17-31 as /16s, then 192.168.0.0/16 as /20s
DOCKER_DEFAULTS = [f"172.{n}.0.0/16" for n in range(17, 32)] + [
    f"192.168.{16 * n}.0/20" for n in range(16)]


class TestLocalIpamInMemory(IpamDriverSuite):
    """Every suite test with ``state_path=None``."""

    @pytest.fixture
    def new_ipam(self) -> NewIpam:
        return lambda: LocalIpam(None)


class TestLocalIpamOnFile(IpamDriverSuite):
    """Every suite test with a state file, so every change also goes through a save."""

    @pytest.fixture
    def new_ipam(self, tmp_path: Path) -> NewIpam:
        return lambda: LocalIpam(str(tmp_path / "ipam" / "state.json"))


# -- default pools ----------------------------------------------------------------------------


def test_defaults_are_dockerds() -> None:
    ipam = LocalIpam(None)
    got = [str(ipam.request_pool().subnet) for _ in DOCKER_DEFAULTS]
    assert got == DOCKER_DEFAULTS
    with pytest.raises(InvalidArgument) as err:
        ipam.request_pool()
    assert str(err.value) == NO_MORE_SUBNETS
    assert len(ipam.pools()) == len(DOCKER_DEFAULTS)


def test_default_gateway_is_first_host() -> None:
    pool = LocalIpam(None).request_pool()
    assert pool.id == "LocalDefault/172.17.0.0/16"
    assert pool.gateway == I("172.17.0.1/16")


def test_released_default_pool_comes_back_first() -> None:
    ipam = LocalIpam(None)
    first, second = ipam.request_pool(), ipam.request_pool()
    ipam.release_pool(first.id)
    assert ipam.request_pool().subnet == first.subnet
    assert ipam.request_pool().subnet == N("172.19.0.0/16")
    assert second.subnet == N("172.18.0.0/16")


def test_explicit_pool_inside_defaults_is_skipped() -> None:
    ipam = LocalIpam(None)
    ipam.request_pool(subnet="172.17.5.0/24")
    ipam.request_pool(subnet="172.18.0.0/15")  # covers 172.18 and 172.19
    assert ipam.request_pool().subnet == N("172.20.0.0/16")


def test_no_default_ipv6_pools() -> None:
    ipam = LocalIpam(None)
    with pytest.raises(InvalidArgument, match=NO_MORE_SUBNETS):
        ipam.request_pool(v6=True)
    assert ipam.pools() == []


def test_custom_default_pools_any_family() -> None:
    ipam = LocalIpam(None, default_pools=[("10.10.0.0/16", 24), ("fd00:ab::/48", 64)])
    assert ipam.request_pool().subnet == N("10.10.0.0/24")
    assert ipam.request_pool().subnet == N("10.10.1.0/24")
    v6 = ipam.request_pool(v6=True)
    assert v6.subnet == N("fd00:ab::/64")
    assert v6.gateway == I("fd00:ab::1/64")
    assert ipam.request_pool(v6=True).subnet == N("fd00:ab:0:1::/64")


def test_huge_default_pool_skips_blockers_quickly() -> None:
    # fd00::/8 carved into /64s has 2**56 candidates; blocking most of it must stay cheap
    blockers = [N("fd00::/9"), N("fd80::/10"), N("fdc0::/11"), N("fde0::/12")]
    ipam = LocalIpam(None, default_pools=[("fd00::/8", 64)], taken=lambda: blockers)
    assert ipam.request_pool(v6=True).subnet == N("fdf0::/64")


@pytest.mark.parametrize(("base", "size"), [("10.0.0.5/16", 24), ("10.0.0.0/16", 8),
                                            ("10.0.0.0/16", 33), ("nope", 24)])
def test_invalid_default_pools(base: str, size: int) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(base)):
        LocalIpam(None, default_pools=[(base, size)])


def test_defaults_constant_matches_docker() -> None:
    assert DEFAULTS[0] == ("172.17.0.0/16", 16)
    assert DEFAULTS[-1] == ("192.168.0.0/16", 20)


# -- the host's networks ------------------------------------------------------------------------


def test_taken_skips_172_17() -> None:
    ipam = LocalIpam(None, taken=lambda: [N("172.17.0.0/16")])
    assert ipam.request_pool().subnet == N("172.18.0.0/16")


def test_taken_partial_overlap_and_vpn_route() -> None:
    host = [N("172.17.42.0/24"), N("172.18.0.1/32")]
    ipam = LocalIpam(None, taken=lambda: host)
    assert ipam.request_pool().subnet == N("172.19.0.0/16")
    host[:] = [N("172.16.0.0/12")]  # a VPN route over all of 172.16/12
    assert ipam.request_pool().subnet == N("192.168.0.0/20")


def test_taken_is_asked_on_every_automatic_request() -> None:
    calls: list[int] = []

    def taken() -> Iterable[IPNetwork]:
        calls.append(1)
        return [N("172.17.0.0/16")] if len(calls) == 1 else []

    ipam = LocalIpam(None, taken=taken)
    assert ipam.request_pool().subnet == N("172.18.0.0/16")
    assert ipam.request_pool().subnet == N("172.17.0.0/16")  # the host let it go
    ipam.request_pool(subnet="10.1.0.0/24")
    assert len(calls) == 2  # explicit subnets are the user's choice: not checked


def test_taken_ignores_default_routes_and_other_family() -> None:
    ipam = LocalIpam(None, taken=lambda: [N("0.0.0.0/0"), N("::/0"), N("fd00::/8")])
    assert ipam.request_pool().subnet == N("172.17.0.0/16")


def test_taken_everything_exhausts_defaults() -> None:
    ipam = LocalIpam(None, taken=lambda: [N("172.16.0.0/12"), N("192.168.0.0/16")])
    with pytest.raises(InvalidArgument) as err:
        ipam.request_pool()
    assert str(err.value) == NO_MORE_SUBNETS


# -- dockerd's details ------------------------------------------------------------------------


def test_host_bits_refused_with_dockers_hint() -> None:
    with pytest.raises(InvalidArgument) as err:
        LocalIpam(None).request_pool(subnet="10.1.0.5/24")
    assert str(err.value) == "invalid subnet 10.1.0.5/24: it should be 10.1.0.0/24"


def test_gateway_outside_subnet_message() -> None:
    with pytest.raises(InvalidArgument) as err:
        LocalIpam(None).request_pool(subnet="10.1.0.0/24", gateway="10.2.0.1")
    assert str(err.value) == ("invalid gateway 10.2.0.1: parent subnet 10.1.0.0/24 "
                              "doesn't contain this address")


def test_ip_range_messages() -> None:
    ipam = LocalIpam(None)
    with pytest.raises(InvalidArgument) as err:
        ipam.request_pool(subnet="10.1.0.0/24", ip_range="10.2.0.0/25")
    assert str(err.value) == ("invalid ip-range 10.2.0.0/25: parent subnet 10.1.0.0/24 "
                              "doesn't contain ip-range")
    with pytest.raises(InvalidArgument) as err:
        ipam.request_pool(subnet="10.1.0.0/24", ip_range="10.0.0.0/16")
    assert str(err.value) == ("invalid ip-range 10.0.0.0/16: CIDR block is bigger than its "
                              "parent subnet 10.1.0.0/24")
    with pytest.raises(InvalidArgument, match="needs a subnet"):
        ipam.request_pool(ip_range="10.1.0.0/25")
    with pytest.raises(InvalidArgument, match="needs a subnet"):
        ipam.request_pool(gateway="10.1.0.1")


def test_ip_range_gateway_is_first_of_range() -> None:
    # dockerd hands out the ip-range's first address, .0 included: it is a host of the /16
    ipam = LocalIpam(None)
    pool = ipam.request_pool(subnet="10.0.0.0/16", ip_range="10.0.5.0/24")
    assert pool.id == "LocalDefault/10.0.0.0/16/10.0.5.0/24"
    assert pool.gateway == I("10.0.5.0/16")
    assert ipam.request_address(pool.id) == I("10.0.5.1/16")
    # a range starting at the subnet's own network address skips it
    pool = ipam.request_pool(subnet="10.1.0.0/24", ip_range="10.1.0.0/25")
    assert pool.gateway == I("10.1.0.1/24")


@pytest.mark.parametrize(("subnet", "gateway", "first"), [
    ("10.1.0.0/31", "10.1.0.0/31", "10.1.0.1/31"),   # RFC 3021: no network/broadcast
    ("10.1.0.0/32", "10.1.0.0/32", None),
])
def test_point_to_point_subnets(subnet: str, gateway: str, first: str | None) -> None:
    ipam = LocalIpam(None)
    pool = ipam.request_pool(subnet=subnet)
    assert pool.gateway == I(gateway)
    assert drain(ipam, pool.id) == ([str(I(first).ip)] if first else [])


def test_no_room_for_gateway() -> None:
    with pytest.raises(InvalidArgument, match="fd00::/128"):
        LocalIpam(None).request_pool(subnet="fd00::/128", v6=True)


def test_empty_strings_mean_not_given() -> None:
    ipam = LocalIpam(None)
    pool = ipam.request_pool(subnet="", ip_range="", gateway="")
    assert pool.subnet == N("172.17.0.0/16")


# -- state on disk ------------------------------------------------------------------------------


def test_state_survives_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "ipam.json")
    ipam = LocalIpam(path)
    default = ipam.request_pool(options={"o": "1"})
    ranged = ipam.request_pool(subnet="10.1.0.0/16", ip_range="10.1.5.0/29",
                               gateway="10.1.0.254")
    v6 = ipam.request_pool(subnet="fd00:1::/64", v6=True)
    assert ipam.request_address(ranged.id) == I("10.1.5.0/16")  # a host address of the /16
    ipam.release_address(ranged.id, "10.1.5.0")
    assert ipam.request_address(ranged.id) == I("10.1.5.1/16")
    ipam.request_address(ranged.id, "10.1.9.9")
    ipam.request_address(v6.id, "fd00:1::99")
    ipam.request_address(default.id)

    again = LocalIpam(path)
    assert again.pools() == ipam.pools()
    with pytest.raises(Conflict):
        again.request_address(ranged.id, "10.1.9.9")
    with pytest.raises(Conflict):
        again.request_address(v6.id, "fd00:1::99")
    with pytest.raises(Conflict):
        again.request_address(default.id, "172.17.0.2")
    # the round-robin position survived too: the released .0 waits behind .2
    assert again.request_address(ranged.id) == I("10.1.5.2/16")
    with pytest.raises(Conflict, match="Pool overlaps"):
        again.request_pool(subnet="10.1.0.0/24")
    assert again.request_pool().subnet == N("172.18.0.0/16")

    again.release_pool(default.id)
    again.release_address(ranged.id, "10.1.9.9")
    third = LocalIpam(path)
    assert [p.id for p in third.pools()] == [ranged.id, "LocalDefault/172.18.0.0/16", v6.id]
    assert third.request_address(ranged.id, "10.1.9.9") == I("10.1.9.9/16")


def test_state_file_is_private_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "ipam.json"
    ipam = LocalIpam(str(path))
    assert not path.exists()  # nothing written until something changes
    pool = ipam.request_pool(subnet="10.1.0.0/24")
    ipam.request_address(pool.id, "10.1.0.9")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(path.parent)) == ["ipam.json"]  # no temp file left behind
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    assert doc["pools"] == [{"subnet": "10.1.0.0/24", "ip_range": None, "gateway": "10.1.0.1",
                             "options": {}, "addresses": ["10.1.0.9"], "last": "10.1.0.1"}]


@pytest.mark.parametrize("content", [
    b"{not json",
    b"",
    b"[]",
    b'{"version": 99, "pools": []}',
    b'{"version": 1}',
    b'{"version": 1, "pools": [{"subnet": "10.1.0.0/24"}]}',
    b'{"version": 1, "pools": [{"subnet": "10.1.0.0/24", "ip_range": null, "gateway":'
    b' "10.9.0.1", "options": {}, "addresses": [], "last": null}]}',
    b'{"version": 1, "pools": [{"subnet": "10.1.0.0/24", "ip_range": null, "gateway":'
    b' "10.1.0.1", "options": {}, "addresses": ["10.1.0.1"], "last": null}]}',
    b'{"version": 1, "pools": [{"subnet": "10.1.0.0/24", "ip_range": null, "gateway":'
    b' "10.1.0.1", "options": {}, "addresses": [], "last": null}, {"subnet": "10.1.0.0/16",'
    b' "ip_range": null, "gateway": "10.1.0.1", "options": {}, "addresses": [],'
    b' "last": null}]}',
])
def test_corrupt_state_is_an_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ipam.json"
    path.write_bytes(content)
    with pytest.raises(Internal) as err:
        LocalIpam(str(path))
    assert str(path) in str(err.value)
    assert path.read_bytes() == content  # left for the operator to inspect or repair


def test_failed_save_changes_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    path = state_dir / "ipam.json"
    ipam = LocalIpam(str(path))
    pool = ipam.request_pool(subnet="10.1.0.0/24")
    assert ipam.request_address(pool.id) == I("10.1.0.2/24")
    # the state directory becomes a plain file: every save now fails in the kernel
    path.unlink()
    state_dir.rmdir()
    state_dir.write_text("in the way")
    with pytest.raises(OSError):
        ipam.request_address(pool.id)
    with pytest.raises(OSError):
        ipam.request_pool(subnet="10.2.0.0/24")
    with pytest.raises(OSError):
        ipam.release_address(pool.id, "10.1.0.2")
    with pytest.raises(OSError):
        ipam.release_pool(pool.id)
    assert [p.id for p in ipam.pools()] == [pool.id]
    state_dir.unlink()
    # memory is as before the failures: .2 still held, the cursor did not move, no 10.2 pool
    with pytest.raises(Conflict):
        ipam.request_address(pool.id, "10.1.0.2")
    assert ipam.request_address(pool.id) == I("10.1.0.3/24")
    assert ipam.request_pool(subnet="10.2.0.0/24").subnet == N("10.2.0.0/24")
    assert {p.id for p in LocalIpam(str(path)).pools()} == {pool.id, "LocalDefault/10.2.0.0/24"}
