"""A container's network settings without the kernel: the create-time checks, the /etc files
and the API views."""

from __future__ import annotations

from typing import Any

import pytest

from ketch.engine.containers import network
from ketch.engine.containers.model import Container
from ketch.engine.containers.netviews import etc_files, settings, summary_ports
from ketch.engine.events import EventBus
from ketch.engine.networks import NetworkService
from ketch.errors import InvalidArgument, NotFound
from ketch.network.driver import EndpointSpec, NetworkSpec
from ketch.network.ipam.local import LocalIpam
from ketch.network.portmap import PortAllocator


class _Driver:
    name = "bridge"

    def create_network(self, net: NetworkSpec) -> dict[str, str]:
        return {"com.docker.network.bridge.name": "kb-" + net.id[:6]}

    def delete_network(self, net: NetworkSpec) -> None: ...

    def join(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str) -> dict[str, str]:
        return {}

    def leave(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str | None) -> None: ...

    def restore(self, nets: Any) -> None: ...


@pytest.fixture
def net(tmp_path: Any) -> network.NetContext:
    svc = NetworkService(str(tmp_path / "nets"), EventBus(), {"bridge": _Driver()},
                         LocalIpam(None))
    svc.start()
    svc.create({"Name": "user", "IPAM": {"Config": [{"Subnet": "10.70.0.0/24"}]}})
    svc.create({"Name": "auto"})
    return network.NetContext(svc, PortAllocator())


def _container(hc: dict[str, Any] | None = None, **cfg: Any) -> Container:
    return Container(id="c" * 64, name="/box", created="", image_id="", image_name="",
                     config={"Hostname": "box", **cfg}, host_config=hc or {}, path="sh",
                     args=[], runtime="ketch")


def test_plan_defaults_to_bridge_and_renames_the_clis_default_key(
        net: network.NetContext) -> None:
    hc: dict[str, Any] = {"NetworkMode": "default"}
    nc: dict[str, Any] = {"EndpointsConfig": {"default": {"Aliases": ["a"]}}}
    assert network.plan(net, hc, nc) == []
    assert hc["NetworkMode"] == "bridge" and nc["EndpointsConfig"] == {"bridge": {
        "Aliases": ["a"]}}


@pytest.mark.parametrize("mode,cfg,message", [
    ("nosuch", {}, "network nosuch not found"),
    ("bridge", {"bridge": {"IPAMConfig": {"IPv4Address": "172.17.0.9"}}},
     "user defined networks only"),
    ("auto", {"auto": {"IPAMConfig": {"IPv4Address": "172.18.0.9"}}},
     "user configured subnets"),
    ("user", {"user": {"IPAMConfig": {"IPv4Address": "10.71.0.9"}}},
     "no configured subnet contains IP address 10.71.0.9"),
    ("user", {"user": {"IPAMConfig": {"IPv4Address": "10.70.0.x"}}}, "10.70.0.x"),
    ("none", {"user": {}}, "cannot be connected to other networks"),
])
def test_plan_refuses_with_a_message_that_says_which(
        net: network.NetContext, mode: str, cfg: dict[str, Any], message: str) -> None:
    with pytest.raises((InvalidArgument, NotFound), match=message):
        network.plan(net, {"NetworkMode": mode}, {"EndpointsConfig": cfg})


def test_plan_accepts_a_static_address_in_a_user_subnet(net: network.NetContext) -> None:
    network.plan(net, {"NetworkMode": "user"},
                 {"EndpointsConfig": {"user": {"IPAMConfig": {"IPv4Address": "10.70.0.9"}}}})


def test_etc_files_user_network_uses_the_embedded_dns() -> None:
    c = _container({"ExtraHosts": ["db:10.1.2.3", "gw:host-gateway"],
                    "DnsSearch": ["example.org"], "DnsOptions": ["timeout:2"]},
                   Domainname="lan")
    hosts, resolv = etc_files(c, "box", ["10.70.0.2"], True, "10.70.0.1")
    text = hosts.decode()
    assert "10.1.2.3\tdb\n" in text and "10.70.0.1\tgw\n" in text
    assert text.endswith("10.70.0.2\tbox.lan box\n")
    assert resolv.decode() == ("nameserver 127.0.0.11\nsearch example.org\n"
                               "options ndots:0 timeout:2\n")


def test_etc_files_default_bridge_uses_dns_flags_or_non_loopback_host_servers() -> None:
    _hosts, resolv = etc_files(_container({"Dns": ["9.9.9.9"]}), "box", ["172.17.0.2"],
                               False, "172.17.0.1")
    assert resolv.decode().startswith("nameserver 9.9.9.9\n")
    _hosts, resolv = etc_files(_container(), "box", [], False, None)
    assert "nameserver 127." not in resolv.decode()
    with pytest.raises(InvalidArgument, match="want name:ip"):
        etc_files(_container({"ExtraHosts": ["justaname"]}), "box", [], False, None)


def test_views_show_endpoints_and_ports() -> None:
    c = _container(ExposedPorts={"80/tcp": {}, "53/udp": {}})
    c.endpoints = {"bridge": {"NetworkID": "n1", "EndpointID": "e1", "IPAddress": "172.17.0.2",
                              "IPPrefixLen": 16, "Gateway": "172.17.0.1",
                              "MacAddress": "02:42:ac:11:00:02", "Aliases": None}}
    c.ports = [{"proto": "tcp", "host_ip": "0.0.0.0", "host_port": 8080,
                "container_ip": "172.17.0.2", "container_port": 80, "bridge": "ketch0"}]
    s = settings(c, True)
    assert s["IPAddress"] == "172.17.0.2" and s["Gateway"] == "172.17.0.1"
    assert s["Networks"]["bridge"]["MacAddress"] == "02:42:ac:11:00:02"
    assert s["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
                          "53/udp": None}
    assert settings(c, False)["Ports"] == {}
    assert sorted(summary_ports(c), key=str) == sorted([
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
        {"PrivatePort": 53, "Type": "udp"}], key=str)
