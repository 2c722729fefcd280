"""The conformance suite of the ``IpamDriver`` seam.

Subclass ``IpamDriverSuite`` in a test module and provide one fixture:

``new_ipam``
    ``new_ipam() -> IpamDriver``: a fresh driver holding no pools, whose
    default pools are IPv4 and do not meet 10.0.0.0/8 or fd00::/8 (the suite's
    explicit subnets come from there).

The suite's ``ipam`` fixture makes one and, afterwards, releases every pool it
still holds, even when the test failed. Everything here is the contract of the
``ketch.network.ipam`` docstring; nothing depends on one driver's defaults.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Callable, Iterator

import pytest

from ketch.errors import Conflict, InvalidArgument, KetchError, NotFound, Unavailable
from ketch.network.ipam import (
    ADDRESS_IN_USE,
    NO_AVAILABLE_ADDRESSES,
    POOL_OVERLAP,
    IpamDriver,
    Pool,
)

__all__ = ["IpamDriverSuite", "NewIpam", "release_all"]

NewIpam = Callable[[], IpamDriver]

A = ipaddress.ip_address
I = ipaddress.ip_interface  # noqa: E741  (reads like the textbook notation)
N = ipaddress.ip_network


def release_all(ipam: IpamDriver) -> None:
    """Release every pool ``ipam`` holds (teardown)."""
    for pool in ipam.pools():
        try:
            ipam.release_pool(pool.id)
        except KetchError:
            pass


def drain(ipam: IpamDriver, pool_id: str) -> list[str]:
    """Request automatic addresses until the pool says it has none left."""
    got: list[str] = []
    while True:
        try:
            got.append(str(ipam.request_address(pool_id).ip))
        except Unavailable:
            return got
        assert len(got) <= 1024, "pool never ran out"


class IpamDriverSuite:
    """The lifecycle of the ``IpamDriver`` docstring, test by test."""

    @pytest.fixture
    def ipam(self, new_ipam: NewIpam) -> Iterator[IpamDriver]:
        driver = new_ipam()
        try:
            yield driver
        finally:
            release_all(driver)

    def test_satisfies_protocol(self, ipam: IpamDriver) -> None:
        assert isinstance(ipam, IpamDriver)
        assert ipam.pools() == []

    # -- pools ------------------------------------------------------------------------------

    def test_explicit_pool(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24", options={"k": "v"})
        assert pool.subnet == N("10.1.0.0/24")
        assert pool.ip_range is None
        assert pool.gateway == I("10.1.0.1/24")
        assert pool.reserved == {A("10.1.0.0"), A("10.1.0.1"), A("10.1.0.255")}
        assert dict(pool.options) == {"k": "v"}
        assert ipam.pools() == [pool]

    def test_default_pools_are_distinct_ipv4(self, ipam: IpamDriver) -> None:
        first = ipam.request_pool()
        second = ipam.request_pool()
        for pool in (first, second):
            assert pool.subnet.version == 4
            assert pool.gateway.network == pool.subnet
            assert pool.gateway.ip == pool.subnet.network_address + 1
            assert pool.gateway.ip in pool.reserved
        assert not first.subnet.overlaps(second.subnet)
        assert first.id != second.id
        assert {p.id for p in ipam.pools()} == {first.id, second.id}

    def test_default_pool_avoids_explicit_pools(self, ipam: IpamDriver) -> None:
        probe = ipam.request_pool()
        ipam.release_pool(probe.id)
        ipam.request_pool(subnet=str(probe.subnet))  # the one a default would pick
        chosen = ipam.request_pool()
        assert not chosen.subnet.overlaps(probe.subnet)

    def test_overlapping_subnets_conflict(self, ipam: IpamDriver) -> None:
        held = ipam.request_pool(subnet="10.1.0.0/16")
        for other in ("10.1.0.0/16", "10.1.2.0/24", "10.0.0.0/8", "10.1.255.252/30"):
            with pytest.raises(Conflict) as err:
                ipam.request_pool(subnet=other)
            assert str(err.value) == POOL_OVERLAP
        assert ipam.pools() == [held]
        ipam.request_pool(subnet="10.2.0.0/16")  # the neighbour is free

    def test_default_pool_conflicts_with_explicit_overlap(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool()
        with pytest.raises(Conflict, match="Pool overlaps"):
            ipam.request_pool(subnet=str(pool.subnet))

    def test_explicit_gateway(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/29", gateway="10.1.0.6")
        assert pool.gateway == I("10.1.0.6/29")
        assert A("10.1.0.6") in pool.reserved and A("10.1.0.1") not in pool.reserved
        assert drain(ipam, pool.id) == ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4",
                                         "10.1.0.5"]
        with pytest.raises(Conflict) as err:
            ipam.request_address(pool.id, "10.1.0.6")
        assert str(err.value) == ADDRESS_IN_USE

    def test_gateway_outside_subnet(self, ipam: IpamDriver) -> None:
        with pytest.raises(InvalidArgument) as err:
            ipam.request_pool(subnet="10.1.0.0/24", gateway="10.2.0.1")
        assert "10.2.0.1" in str(err.value)
        assert ipam.pools() == []
        ipam.request_pool(subnet="10.1.0.0/24")  # the refusal left nothing behind

    @pytest.mark.parametrize("gateway", ["10.1.0.0", "10.1.0.255"])
    def test_gateway_on_network_or_broadcast(self, ipam: IpamDriver, gateway: str) -> None:
        with pytest.raises(InvalidArgument) as err:
            ipam.request_pool(subnet="10.1.0.0/24", gateway=gateway)
        assert gateway in str(err.value)
        assert ipam.pools() == []

    def test_ip_range_bounds_automatic_addresses(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/16", ip_range="10.1.5.0/29")
        assert pool.subnet == N("10.1.0.0/16")
        assert pool.ip_range == N("10.1.5.0/29")
        assert pool.gateway.network == N("10.1.0.0/16")
        got = drain(ipam, pool.id)
        expected = {str(a) for a in N("10.1.5.0/29")} - {str(pool.gateway.ip)}
        assert set(got) == expected and len(got) == len(expected)
        assert all(A(text) in N("10.1.5.0/29") for text in got)
        # automatic ones are spent, but the rest of the subnet still takes explicit requests
        assert ipam.request_address(pool.id, "10.1.9.9") == I("10.1.9.9/16")

    def test_ip_range_addresses_carry_subnet_prefix(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/16", ip_range="10.1.5.0/24",
                                 gateway="10.1.0.1")
        assert ipam.request_address(pool.id) == I("10.1.5.0/16")

    def test_specific_address(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24")
        assert ipam.request_address(pool.id, "10.1.0.50") == I("10.1.0.50/24")
        with pytest.raises(Conflict) as err:
            ipam.request_address(pool.id, "10.1.0.50")
        assert str(err.value) == ADDRESS_IN_USE
        # automatic allocation steps around it
        got = [str(ipam.request_address(pool.id).ip) for _ in range(60)]
        assert "10.1.0.50" not in got and len(set(got)) == 60

    @pytest.mark.parametrize("address", ["10.1.0.0", "10.1.0.1", "10.1.0.255"])
    def test_reserved_addresses_are_in_use(self, ipam: IpamDriver, address: str) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24")
        with pytest.raises(Conflict, match=ADDRESS_IN_USE):
            ipam.request_address(pool.id, address)

    def test_automatic_skips_network_broadcast_gateway(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/29")
        got = drain(ipam, pool.id)
        assert sorted(got) == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
        assert all(ipaddress.ip_interface(f"{a}/29").network == pool.subnet for a in got)

    def test_tiny_pool_exhaustion(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/30")
        assert ipam.request_address(pool.id) == I("10.1.0.2/30")
        with pytest.raises(Unavailable) as err:
            ipam.request_address(pool.id)
        assert str(err.value) == NO_AVAILABLE_ADDRESSES
        ipam.release_address(pool.id, "10.1.0.2")
        assert ipam.request_address(pool.id) == I("10.1.0.2/30")

    def test_release_and_reuse_round_robin(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/29")
        first = ipam.request_address(pool.id)
        assert first == I("10.1.0.2/29")
        assert ipam.request_address(pool.id) == I("10.1.0.3/29")
        ipam.release_address(pool.id, "10.1.0.2")
        # the released address waits while others are free ...
        assert drain(ipam, pool.id) == ["10.1.0.4", "10.1.0.5", "10.1.0.6", "10.1.0.2"]
        # ... and after a wrap-around the search restarts behind the last one handed out
        ipam.release_address(pool.id, "10.1.0.5")
        ipam.release_address(pool.id, "10.1.0.3")
        assert ipam.request_address(pool.id) == I("10.1.0.3/29")
        assert ipam.request_address(pool.id) == I("10.1.0.5/29")

    def test_addresses_lists_what_is_held(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24")
        assert ipam.addresses(pool.id) == []  # the gateway is reserved, not handed out
        ipam.request_address(pool.id, "10.1.0.20")
        auto = str(ipam.request_address(pool.id).ip)
        assert ipam.addresses(pool.id) == sorted(["10.1.0.20", auto],
                                                 key=ipaddress.ip_address)
        ipam.release_address(pool.id, "10.1.0.20")
        assert ipam.addresses(pool.id) == [auto]
        with pytest.raises(NotFound):
            ipam.addresses("no-such-pool")

    def test_released_address_can_be_requested_explicitly(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24")
        addr = ipam.request_address(pool.id)
        ipam.release_address(pool.id, str(addr.ip))
        assert ipam.request_address(pool.id, str(addr.ip)) == addr

    def test_release_address_is_idempotent(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24")
        ipam.request_address(pool.id, "10.1.0.9")
        ipam.release_address(pool.id, "10.1.0.9")
        ipam.release_address(pool.id, "10.1.0.9")
        ipam.release_address(pool.id, "10.1.0.77")  # never held

    def test_gateway_is_released_with_the_pool_only(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24")
        with pytest.raises(InvalidArgument, match=re.escape("10.1.0.1")):
            ipam.release_address(pool.id, "10.1.0.1")
        with pytest.raises(Conflict):
            ipam.request_address(pool.id, "10.1.0.1")

    def test_release_pool_frees_subnet(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24", gateway="10.1.0.254")
        ipam.request_address(pool.id, "10.1.0.7")
        ipam.release_pool(pool.id)
        assert ipam.pools() == []
        with pytest.raises(NotFound):
            ipam.request_address(pool.id)
        again = ipam.request_pool(subnet="10.1.0.0/24")
        # a new life: the old gateway and addresses are forgotten
        assert again.gateway == I("10.1.0.1/24")
        assert ipam.request_address(again.id, "10.1.0.7") == I("10.1.0.7/24")
        assert ipam.request_address(again.id, "10.1.0.254") == I("10.1.0.254/24")

    def test_unknown_pool(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24")
        ipam.release_pool(pool.id)
        with pytest.raises(NotFound):
            ipam.release_pool(pool.id)
        with pytest.raises(NotFound):
            ipam.request_address("no-such-pool")
        with pytest.raises(NotFound):
            ipam.release_address("no-such-pool", "10.1.0.2")

    # -- bad input --------------------------------------------------------------------------

    @pytest.mark.parametrize("subnet", ["10.1.0.0/33", "not-a-cidr", "10.1.0.0", "10.1.0/24",
                                        "10.1.0.0/255.255.255.0", "fd00::/129"])
    def test_malformed_subnet(self, ipam: IpamDriver, subnet: str) -> None:
        with pytest.raises(InvalidArgument) as err:
            ipam.request_pool(subnet=subnet, v6=":" in subnet)
        assert subnet in str(err.value)
        assert ipam.pools() == []

    def test_subnet_with_host_bits(self, ipam: IpamDriver) -> None:
        with pytest.raises(InvalidArgument) as err:
            ipam.request_pool(subnet="10.1.0.5/24")
        assert "10.1.0.5/24" in str(err.value)
        assert ipam.pools() == []

    @pytest.mark.parametrize("gateway", ["10.1.0.300", "gw", "fd00::1"])
    def test_malformed_gateway(self, ipam: IpamDriver, gateway: str) -> None:
        with pytest.raises(InvalidArgument) as err:
            ipam.request_pool(subnet="10.1.0.0/24", gateway=gateway)
        assert gateway in str(err.value)
        assert ipam.pools() == []

    @pytest.mark.parametrize("ip_range", ["10.2.0.0/25", "10.0.0.0/16", "10.1.0.0/23",
                                          "10.1.0.128/24", "10.1.0.0/33", "fd00::/120"])
    def test_bad_ip_range(self, ipam: IpamDriver, ip_range: str) -> None:
        with pytest.raises(InvalidArgument) as err:
            ipam.request_pool(subnet="10.1.0.0/24", ip_range=ip_range)
        assert ip_range in str(err.value)
        assert ipam.pools() == []

    @pytest.mark.parametrize("address", ["10.1.0.x", "10.1.0.256", "", "fe80::1%eth0"])
    def test_malformed_address(self, ipam: IpamDriver, address: str) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24")
        if not address:  # an empty address means "any", as in Docker's API
            assert ipam.request_address(pool.id, address) == I("10.1.0.2/24")
            return
        with pytest.raises(InvalidArgument) as err:
            ipam.request_address(pool.id, address)
        assert address in str(err.value)
        with pytest.raises(InvalidArgument):
            ipam.release_address(pool.id, address)

    @pytest.mark.parametrize("address", ["10.2.0.5", "fd00::5"])
    def test_address_outside_subnet(self, ipam: IpamDriver, address: str) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24")
        with pytest.raises(InvalidArgument) as err:
            ipam.request_address(pool.id, address)
        assert address in str(err.value) and "out of range" in str(err.value)
        with pytest.raises(InvalidArgument, match="out of range"):
            ipam.release_address(pool.id, address)

    def test_family_must_match_v6_flag(self, ipam: IpamDriver) -> None:
        with pytest.raises(InvalidArgument, match="fd00:1::/64"):
            ipam.request_pool(subnet="fd00:1::/64")
        with pytest.raises(InvalidArgument, match=re.escape("10.1.0.0/24")):
            ipam.request_pool(subnet="10.1.0.0/24", v6=True)
        assert ipam.pools() == []

    # -- IPv6 -------------------------------------------------------------------------------

    def test_ipv6_pool(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="fd00:1::/64", v6=True)
        assert pool.gateway == I("fd00:1::1/64")
        assert A("fd00:1::") in pool.reserved  # subnet-router anycast
        assert ipam.request_address(pool.id) == I("fd00:1::2/64")
        last = "fd00:1::ffff:ffff:ffff:ffff"  # no broadcast in IPv6: the last one is usable
        assert ipam.request_address(pool.id, last) == I(f"{last}/64")
        with pytest.raises(Conflict, match=ADDRESS_IN_USE):
            ipam.request_address(pool.id, last)
        with pytest.raises(Conflict, match="Pool overlaps"):
            ipam.request_pool(subnet="fd00::/16", v6=True)
        with pytest.raises(InvalidArgument, match=re.escape("10.1.0.5")):
            ipam.request_address(pool.id, "10.1.0.5")

    def test_ipv6_ip_range_and_gateway(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="fd00:1::/64", ip_range="fd00:1::100/126",
                                 gateway="fd00:1::1", v6=True)
        got = drain(ipam, pool.id)
        assert got == ["fd00:1::100", "fd00:1::101", "fd00:1::102", "fd00:1::103"]

    def test_ipv4_and_ipv6_pools_coexist(self, ipam: IpamDriver) -> None:
        v4 = ipam.request_pool(subnet="10.1.0.0/24")
        v6 = ipam.request_pool(subnet="fd00:1::/64", v6=True)
        assert ipam.pools() == [v4, v6]

    def test_pools_sorted(self, ipam: IpamDriver) -> None:
        made = [ipam.request_pool(subnet=s, v6=":" in s)
                for s in ("fd00:2::/64", "10.9.0.0/24", "fd00:1::/64", "10.1.0.0/24")]
        listed: list[Pool] = ipam.pools()
        assert [str(p.subnet) for p in listed] == ["10.1.0.0/24", "10.9.0.0/24",
                                                   "fd00:1::/64", "fd00:2::/64"]
        assert set(p.id for p in listed) == set(p.id for p in made)

    # -- threads ----------------------------------------------------------------------------

    def test_concurrent_requests_get_distinct_addresses(self, ipam: IpamDriver) -> None:
        pool = ipam.request_pool(subnet="10.1.0.0/24")
        got: list[str] = []
        errors: list[BaseException] = []
        mu = threading.Lock()

        def worker() -> None:
            try:
                for _ in range(25):
                    a = str(ipam.request_address(pool.id).ip)
                    with mu:
                        got.append(a)
            except BaseException as e:  # reported below, not lost in the thread
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(got) == 200 and len(set(got)) == 200
        assert len(drain(ipam, pool.id)) == 253 - 200
