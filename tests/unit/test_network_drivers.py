"""Network drivers without root: the registry, ``null`` and ``host`` through the conformance
suite, and the bridge driver's option parsing and the checks it makes before touching the
kernel.

The bridge driver is given ``netns="/nonexistent/..."`` where a test expects a refusal:
had it opened a netlink socket first, the error would be ``FileNotFoundError``, not the
``ketch.errors`` class asserted, so these tests also show that nothing was attempted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest

from ketch.errors import FailedPrecondition, InvalidArgument, NotImplementedYet
from ketch.network.driver import EndpointSpec, NetworkDriver, NetworkSpec
from ketch.network.drivers import BridgeDriver, HostDriver, NullDriver, builtin_drivers
from ketch.network.drivers.bridge import (
    OPT_BRIDGE_NAME,
    OPT_DEFAULT_BRIDGE,
    OPT_ENABLE_ICC,
    OPT_ENABLE_MASQUERADE,
    OPT_HOST_BINDING_IPV4,
    OPT_MTU,
    BridgeOptions,
    host_ifname,
    mac_for,
    parse_options,
)
from tests.conformance.network_driver_suite import NetworkDriverSuite, NewDriver

NET_ID = "0123456789abcdef" * 4
NOWHERE = "/nonexistent/ketch-test-netns"


class TestNoopDriversConformance(NetworkDriverSuite):
    @pytest.fixture(params=["null", "host"])
    def new_driver(self, request: pytest.FixtureRequest) -> NewDriver:
        cls = NullDriver if request.param == "null" else HostDriver
        return cls


def test_builtin_drivers_registers_each_under_its_name() -> None:
    drivers = builtin_drivers(None)
    assert sorted(drivers) == ["bridge", "host", "null"]
    for name, drv in drivers.items():
        assert drv.name == name
        assert isinstance(drv, NetworkDriver)
    assert isinstance(drivers["bridge"], BridgeDriver)


@pytest.mark.parametrize("cls", [NullDriver, HostDriver])
def test_noop_drivers_give_no_facts(cls: type[NullDriver] | type[HostDriver]) -> None:
    drv = cls()
    net = NetworkSpec(id=NET_ID, name=drv.name)
    ep = EndpointSpec(id=NET_ID, container_id="c", ifname="eth0")
    assert drv.create_network(net) == {}
    assert drv.join(net, ep, NOWHERE) == {}


# ---- bridge options ---------------------------------------------------------------------------


def test_defaults_follow_dockerd() -> None:
    opts = parse_options(NET_ID, {})
    assert opts == BridgeOptions(bridge="br-0123456789ab")
    assert opts.facts() == {
        OPT_BRIDGE_NAME: "br-0123456789ab",
        OPT_MTU: "1500",
        OPT_ENABLE_ICC: "true",
        OPT_ENABLE_MASQUERADE: "true",
        OPT_HOST_BINDING_IPV4: "0.0.0.0",
        OPT_DEFAULT_BRIDGE: "false",
    }


def test_every_docker_option_is_read() -> None:
    opts = parse_options(NET_ID, {
        OPT_BRIDGE_NAME: "ketch0", OPT_MTU: "1450", OPT_ENABLE_ICC: "false",
        OPT_ENABLE_MASQUERADE: "0", OPT_HOST_BINDING_IPV4: "127.0.0.1",
        OPT_DEFAULT_BRIDGE: "True", "com.example.team": "blue"})
    assert opts == BridgeOptions(bridge="ketch0", mtu=1450, icc=False, masquerade=False,
                                 host_binding_ipv4="127.0.0.1", default_bridge=True,
                                 extra={"com.example.team": "blue"})
    assert opts.facts()["com.example.team"] == "blue"
    assert opts.facts()[OPT_ENABLE_MASQUERADE] == "false"


@pytest.mark.parametrize(("key", "value"), [
    (OPT_MTU, "abc"),
    (OPT_MTU, "67"),
    (OPT_MTU, "65536"),
    (OPT_MTU, "1500.0"),
    (OPT_ENABLE_ICC, "yes"),
    (OPT_ENABLE_MASQUERADE, ""),
    (OPT_DEFAULT_BRIDGE, "on"),
    (OPT_HOST_BINDING_IPV4, "::1"),
    (OPT_HOST_BINDING_IPV4, "300.1.1.1"),
    (OPT_BRIDGE_NAME, "a-name-far-too-long"),
    (OPT_BRIDGE_NAME, "has space"),
    (OPT_BRIDGE_NAME, "-leading"),
    (OPT_BRIDGE_NAME, 'quo"te'),
    ("com.docker.network.bridge.enable_icc_typo", "true"),
    ("com.docker.network.whatever", "x"),
])
def test_bad_options_are_refused_by_name(key: str, value: str) -> None:
    with pytest.raises(InvalidArgument, match=key.replace(".", r"\.")):
        parse_options(NET_ID, {key: value})


def test_host_ifname_is_veth_and_7_hex_of_the_endpoint() -> None:
    assert host_ifname("1a2b3c4d5e6f") == "veth1a2b3c4"
    odd = host_ifname("not hex at all")
    assert odd.startswith("veth") and len(odd) == 11
    assert odd == host_ifname("not hex at all")
    assert odd != host_ifname("not hex at all either")


def test_mac_is_derived_from_the_ipv4_address() -> None:
    assert mac_for(ipaddress.IPv4Address("10.1.0.2")) == "02:42:0a:01:00:02"
    assert mac_for(ipaddress.IPv4Address("172.17.255.254")) == "02:42:ac:11:ff:fe"


# ---- the bridge driver refuses before it touches anything -------------------------------------


NET = NetworkSpec(id=NET_ID, name="n1", subnet=ipaddress.ip_network("10.9.0.0/24"),
                  gateway=ipaddress.ip_interface("10.9.0.1/24"))
EP = EndpointSpec(id=NET_ID, container_id="c", ifname="eth0",
                  address=ipaddress.ip_interface("10.9.0.2/24"))


def _net(**kw: Any) -> NetworkSpec:
    return dataclasses.replace(NET, **kw)


def _ep(**kw: Any) -> EndpointSpec:
    return dataclasses.replace(EP, **kw)


@pytest.mark.parametrize(("net", "error"), [
    (_net(options={OPT_MTU: "9x"}), InvalidArgument),
    (_net(gateway=None), InvalidArgument),
    (_net(gateway=ipaddress.ip_interface("10.8.0.1/24")), InvalidArgument),
    (_net(subnet=ipaddress.ip_network("fd00::/64"),
          gateway=ipaddress.ip_interface("fd00::1/64")), NotImplementedYet),
])
def test_create_network_refuses_bad_networks_first(net: NetworkSpec,
                                                    error: type[Exception]) -> None:
    with pytest.raises(error):
        BridgeDriver(None, netns=NOWHERE).create_network(net)


@pytest.mark.parametrize(("ep", "error"), [
    (_ep(address=ipaddress.ip_interface("10.10.0.2/24")), InvalidArgument),
    (_ep(address=ipaddress.ip_interface("fd00::2/64")), InvalidArgument),
    (_ep(ifname="eth 0"), InvalidArgument),
    (_ep(ifname="an-interface-name"), InvalidArgument),
    (_ep(mac="02:42:zz:00:00:01"), InvalidArgument),
    (_ep(), FailedPrecondition),  # the sandbox path is not a network namespace
])
def test_join_refuses_bad_endpoints_first(ep: EndpointSpec, error: type[Exception]) -> None:
    with pytest.raises(error):
        BridgeDriver(None, netns=NOWHERE).join(_net(), ep, NOWHERE)
