"""NetworkService over an in-memory fake driver and LocalIpam(None) (no root): Docker's
semantics for predefined networks, create, inspect, list filters, remove, prune,
endpoint bookkeeping, events, and records across a restart."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ketch.engine import networks as networks_mod
from ketch.engine.events import Event, EventBus
from ketch.engine.networks import (
    BRIDGE_NAME_OPTION,
    DEFAULT_BRIDGE_OPTION,
    Endpoint,
    NetworkService,
)
from ketch.errors import (
    Conflict,
    Forbidden,
    Internal,
    InvalidArgument,
    KetchError,
    NotFound,
    NotImplementedYet,
)
from ketch.network.driver import EndpointSpec, NetworkDriver, NetworkSpec
from ketch.network.ipam import POOL_OVERLAP
from ketch.network.ipam.local import LocalIpam


class FakeDriver:
    """Keeps networks in a dict and records every call it gets."""

    def __init__(self, name: str = "bridge") -> None:
        self.name = name
        self.networks: dict[str, NetworkSpec] = {}
        self.calls: list[tuple[str, str]] = []  # (call, network name)
        self.restored: list[list[NetworkSpec]] = []
        self.fail_create: KetchError | None = None
        self.fail_delete: KetchError | None = None

    def create_network(self, net: NetworkSpec) -> dict[str, str]:
        self.calls.append(("create", net.name))
        if self.fail_create is not None:
            raise self.fail_create
        self.networks[net.id] = net
        return {"device": "br-" + net.id[:12]}

    def delete_network(self, net: NetworkSpec) -> None:
        self.calls.append(("delete", net.name))
        if self.fail_delete is not None:
            raise self.fail_delete
        self.networks.pop(net.id, None)

    def join(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str) -> dict[str, str]:
        raise AssertionError("the service never joins")

    def leave(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str | None) -> None:
        raise AssertionError("the service never leaves")

    def restore(self, nets: Sequence[NetworkSpec]) -> None:
        self.restored.append(list(nets))
        for n in nets:
            self.networks[n.id] = n


class Env:
    """A service plus what it was built from, to restart it on the same state."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.bus = EventBus()
        self.driver = FakeDriver()
        self.ipam = LocalIpam(None)
        self.svc = self.new()

    def new(self, **kw: Any) -> NetworkService:
        svc = NetworkService(self.state_dir, self.bus, {"bridge": self.driver}, self.ipam, **kw)
        svc.start()
        return svc

    def events(self, action: str | None = None) -> list[Event]:
        return [e for e in self.bus.history()
                if e.type == "network" and (action is None or e.action == action)]

    def subnets(self) -> list[str]:
        return [str(p.subnet) for p in self.ipam.pools()]

    def files(self) -> list[str]:
        return sorted(os.listdir(self.state_dir))


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(str(tmp_path / "networks"))


def create(svc: NetworkService, name: str, **body: Any) -> str:
    net_id: str = svc.create({"Name": name, **body})["Id"]
    return net_id


def ipam(subnet: str = "", gateway: str = "", ip_range: str = "") -> dict[str, Any]:
    return {"Driver": "default", "Config": [{"Subnet": subnet, "Gateway": gateway,
                                             "IPRange": ip_range}]}


def names(svc: NetworkService, **filters: list[str]) -> list[str]:
    return [n["Name"] for n in svc.list(filters)]


# -- predefined networks and start ------------------------------------------------------

def test_start_makes_the_predefined_networks(env: Env) -> None:
    assert names(env.svc) == ["bridge", "host", "none"]
    bridge = env.svc.inspect("bridge")
    assert bridge["Driver"] == "bridge"
    assert bridge["Options"] == {DEFAULT_BRIDGE_OPTION: "true", BRIDGE_NAME_OPTION: "ketch0"}
    assert bridge["IPAM"]["Config"] == [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]
    assert env.svc.inspect("host")["Driver"] == "host"
    assert env.svc.inspect("none")["Driver"] == "null"
    assert env.svc.inspect("none")["IPAM"]["Config"] == []
    # the bridge driver was asked for the default bridge with its gateway on it
    spec = env.driver.networks[bridge["Id"]]
    assert spec.gateway == ipaddress.ip_interface("172.17.0.1/16")
    assert spec.options[BRIDGE_NAME_OPTION] == "ketch0"
    assert env.subnets() == ["172.17.0.0/16"]  # host and none hold no pool
    assert len(env.files()) == 3


def test_default_bip_sets_the_bridge_subnet(tmp_path: Path) -> None:
    e = Env(str(tmp_path / "n"))
    svc = e.new(default_bip="172.30.0.1/16", default_bridge="kb0")
    ipam_cfg = svc.inspect("bridge")["IPAM"]["Config"]
    assert ipam_cfg == [{"Subnet": "172.30.0.0/16", "Gateway": "172.30.0.1"}]
    assert svc.inspect("bridge")["Options"][BRIDGE_NAME_OPTION] == "kb0"


@pytest.mark.parametrize("bip", ["172.30.0.0/16", "nonsense", "fd00::1/64", "10.0.0.255/24"])
def test_bad_default_bip_is_refused(tmp_path: Path, bip: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid bip"):
        NetworkService(str(tmp_path), EventBus(), {"bridge": FakeDriver()}, LocalIpam(None),
                       default_bip=bip)


def test_a_bridge_driver_is_required(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="bridge"):
        NetworkService(str(tmp_path), EventBus(), {}, LocalIpam(None))


def test_restart_keeps_networks_and_ids_and_restores_drivers(env: Env) -> None:
    custom = create(env.svc, "web", IPAM=ipam("10.9.0.0/24"), Labels={"a": "b"})
    before = {n["Name"]: n for n in env.svc.list()}
    env.driver.calls.clear()

    again = env.new()
    after = {n["Name"]: n for n in again.list()}
    assert after == before
    assert again.inspect("web")["Id"] == custom
    assert env.driver.calls == []  # nothing created again: restore's job
    restored = {s.name: s for s in env.driver.restored[-1]}
    assert sorted(restored) == ["bridge", "web"]
    assert restored["web"].subnet == ipaddress.ip_network("10.9.0.0/24")
    assert restored["web"].gateway == ipaddress.ip_interface("10.9.0.1/24")


def test_restart_with_lost_ipam_state_reserves_the_pools_again(env: Env) -> None:
    create(env.svc, "web", IPAM=ipam("10.9.0.0/24", ip_range="10.9.0.128/25"))
    env.ipam = LocalIpam(None)  # e.g. its state file was lost
    again = env.new()
    assert env.subnets() == ["10.9.0.0/24", "172.17.0.0/16"]
    with pytest.raises(Conflict, match=re.escape(POOL_OVERLAP)):
        again.create({"Name": "other", "IPAM": ipam("10.9.0.0/25")})
    # a new automatic network does not take the bridge's subnet either
    create(again, "auto")
    assert again.inspect("auto")["IPAM"]["Config"][0]["Subnet"] == "172.18.0.0/16"


def test_restart_with_another_bip_rebuilds_the_default_bridge(env: Env) -> None:
    old = env.svc.inspect("bridge")
    env.driver.calls.clear()
    again = env.new(default_bip="10.200.0.1/24", default_bridge="kb9")
    new = again.inspect("bridge")
    assert new["Id"] == old["Id"] and new["Created"] == old["Created"]
    assert new["IPAM"]["Config"] == [{"Subnet": "10.200.0.0/24", "Gateway": "10.200.0.1"}]
    assert new["Options"][BRIDGE_NAME_OPTION] == "kb9"
    assert ("delete", "bridge") in env.driver.calls  # the old device went first
    restored = {s.name: s for s in env.driver.restored[-1]}
    assert restored["bridge"].gateway == ipaddress.ip_interface("10.200.0.1/24")
    assert env.subnets() == ["10.200.0.0/24"]  # the old pool was released


def test_unreadable_record_stops_start(env: Env) -> None:
    Path(env.state_dir, "f" * 64 + ".json").write_text("{not json")
    with pytest.raises(Internal, match="f" * 64):
        env.new()


def test_restore_failure_is_logged_not_fatal(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeDriver):
        def restore(self, nets: Sequence[NetworkSpec]) -> None:
            raise Internal("kernel says no")

    drv = Broken()
    svc = NetworkService(env.state_dir, env.bus, {"bridge": drv}, env.ipam)
    svc.start()
    assert names(svc) == ["bridge", "host", "none"]
    assert "kernel says no" in caplog.text


# -- create -----------------------------------------------------------------------------

def test_create_returns_id_and_inspect_has_dockers_shape(env: Env) -> None:
    t0 = time.time()
    out = env.svc.create({"Name": "web", "CheckDuplicate": True, "Driver": "bridge",
                          "Internal": True, "Attachable": True,
                          "IPAM": ipam("10.1.0.0/16", "10.1.0.254", "10.1.5.0/24"),
                          "Options": {"com.docker.network.driver.mtu": "1400"},
                          "Labels": {"team": "blue"}})
    assert out["Warning"] == "" and re.fullmatch(r"[0-9a-f]{64}", out["Id"])
    net = env.svc.inspect("web")
    created = net.pop("Created")
    assert net == {
        "Name": "web", "Id": out["Id"], "Scope": "local", "Driver": "bridge",
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {},
                 "Config": [{"Subnet": "10.1.0.0/16", "Gateway": "10.1.0.254",
                             "IPRange": "10.1.5.0/24"}]},
        "Internal": True, "Attachable": True, "Ingress": False,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": {},
        "Options": {"com.docker.network.driver.mtu": "1400"}, "Labels": {"team": "blue"},
    }
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?Z", created)
    assert m is not None
    stamp = time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert t0 - 2 <= stamp <= time.time() + 1
    spec = env.driver.networks[out["Id"]]
    assert spec.internal is True and spec.name == "web"
    assert spec.gateway == ipaddress.ip_interface("10.1.0.254/16")
    assert env.events("create")[-1].attributes == {"name": "web", "type": "bridge"}
    assert env.events("create")[-1].actor_id == out["Id"]


def test_create_without_subnet_takes_the_next_default_pool(env: Env) -> None:
    create(env.svc, "a")
    create(env.svc, "b", Driver="", IPAM={"Driver": "default", "Options": {}, "Config": []})
    assert env.svc.inspect("a")["IPAM"]["Config"] == [
        {"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]
    assert env.svc.inspect("b")["IPAM"]["Config"][0]["Subnet"] == "172.19.0.0/16"
    assert env.svc.inspect("b")["Driver"] == "bridge"


@pytest.mark.parametrize("body,error,message", [
    ({"Name": "bridge"}, Forbidden, "operation is not permitted on predefined bridge network"),
    ({"Name": "host"}, Forbidden, "predefined host network"),
    ({"Name": "none"}, Forbidden, "predefined none network"),
    ({"Name": "default"}, Forbidden, "predefined default network"),
    ({"Name": ""}, InvalidArgument, "invalid name: name is empty"),
    ({"Name": "  "}, InvalidArgument, "invalid name: name is empty"),
    ({}, InvalidArgument, "invalid name: name is empty"),
    ({"Name": "x", "Driver": "foo"}, NotFound, 'plugin "foo" not found'),
    ({"Name": "x", "IPAM": {"Driver": "bar"}}, NotFound, 'plugin "bar" not found'),
    ({"Name": "x", "Driver": "host"}, Forbidden, 'only one instance of "host" network'),
    ({"Name": "x", "Driver": "null"}, Forbidden, 'only one instance of "null" network'),
    ({"Name": "x", "IPAM": {"Config": [{"Subnet": "10.1.0.0/24"}, {"Subnet": "10.2.0.0/24"}]}},
     InvalidArgument, "only one IPv4 subnet"),
    ({"Name": "x", "IPAM": {"Config": [{"Subnet": "fd00::/64"}]}}, NotImplementedYet, "IPv6"),
    ({"Name": "x", "EnableIPv6": True}, NotImplementedYet, "IPv6"),
    ({"Name": "x", "Ingress": True}, Forbidden, "Ingress network"),
    ({"Name": "x", "Scope": "swarm"}, Forbidden, "swarm is not active"),
    ({"Name": "x", "ConfigOnly": True}, NotImplementedYet, "config-only"),
    ({"Name": 5}, InvalidArgument, "Name must be a string"),
    ({"Name": "x", "Internal": "yes"}, InvalidArgument, "Internal must be a boolean"),
    ({"Name": "x", "Labels": {"a": 1}}, InvalidArgument, "Labels must be an object of strings"),
    ({"Name": "x", "IPAM": {"Config": ["10.0.0.0/8"]}}, InvalidArgument, "IPAM.Config"),
    ({"Name": "x", "IPAM": ipam("10.0.0.5/24")}, InvalidArgument, "it should be 10.0.0.0/24"),
    ({"Name": "x", "IPAM": ipam("10.0.0.0/24", "10.1.0.1")}, InvalidArgument, "invalid gateway"),
    ({"Name": "x", "IPAM": ipam("", "10.1.0.1")}, InvalidArgument, "needs a subnet"),
    ({"Name": "x", "IPAM": ipam("172.17.0.0/20")}, Conflict, re.escape(POOL_OVERLAP)),
])
def test_refused_create_leaves_nothing(env: Env, body: dict[str, Any],
                                       error: type[Exception], message: str) -> None:
    files, subnets, calls = env.files(), env.subnets(), list(env.driver.calls)
    events = len(env.events())
    with pytest.raises(error, match=message):
        env.svc.create(body)
    assert env.files() == files and env.subnets() == subnets and env.driver.calls == calls
    assert names(env.svc) == ["bridge", "host", "none"]
    assert len(env.events()) == events


def test_duplicate_name_is_a_conflict(env: Env) -> None:
    create(env.svc, "web")
    with pytest.raises(Conflict, match=r"^network with name web already exists$"):
        env.svc.create({"Name": "web", "IPAM": ipam("10.3.0.0/24")})
    assert env.subnets() == ["172.17.0.0/16", "172.18.0.0/16"]


def test_driver_failure_releases_the_pool(env: Env) -> None:
    env.driver.fail_create = Conflict("bridge name taken")
    files = env.files()
    with pytest.raises(Conflict, match="bridge name taken"):
        env.svc.create({"Name": "web", "IPAM": ipam("10.5.0.0/24")})
    assert env.files() == files
    assert "10.5.0.0/24" not in env.subnets()
    assert names(env.svc) == ["bridge", "host", "none"]
    env.driver.fail_create = None
    net_id = create(env.svc, "web", IPAM=ipam("10.5.0.0/24"))  # same subnet: free again
    assert env.svc.inspect("web")["Id"] == net_id


def test_record_write_failure_undoes_driver_and_pool(env: Env,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_write(path: str, data: bytes, mode: int = 0o600, *, sync: bool = True) -> None:
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(networks_mod, "atomic_write", broken_write)
    with pytest.raises(OSError):
        env.svc.create({"Name": "web", "IPAM": ipam("10.5.0.0/24")})
    assert env.driver.calls[-2:] == [("create", "web"), ("delete", "web")]
    assert "10.5.0.0/24" not in env.subnets()
    with pytest.raises(NotFound):
        env.svc.inspect("web")


def test_concurrent_creates_of_one_name_make_one_network(env: Env) -> None:
    results: list[str] = []

    def worker() -> None:
        try:
            results.append(create(env.svc, "race"))
        except Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("conflict") == 7
    assert names(env.svc, name=["race"]) == ["race"]
    assert len(env.subnets()) == 2


# -- inspect / resolution -----------------------------------------------------------------

@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Ids handed out in order from a list the test fills."""
    ids: list[str] = []
    monkeypatch.setattr(secrets, "token_hex", lambda n: ids.pop(0))
    yield ids


def test_resolution_order_is_id_then_name_then_prefix(tmp_path: Path,
                                                      fixed_ids: list[str]) -> None:
    fixed_ids += ["a" * 64, "b" * 64, "c" * 64]  # predefined
    fixed_ids += ["abc1" + "0" * 60, "abc2" + "0" * 60, "d" * 64, "e" * 64]
    svc = Env(str(tmp_path / "n")).svc
    one, two = create(svc, "one"), create(svc, "two")
    named_prefix = create(svc, "abc1")  # a name that is also a prefix of one's id
    named_id = create(svc, "abc2" + "0" * 60)  # a name that is two's full id
    assert svc.inspect(one)["Name"] == "one"
    assert svc.inspect(two)["Name"] == "two"  # full id beats the name
    assert svc.inspect("abc1")["Id"] == named_prefix  # the name beats the prefix
    assert svc.inspect("abc2")["Id"] == two  # unique prefix
    assert svc.inspect("dd")["Id"] == named_prefix
    assert svc.inspect("one")["Id"] == one
    with pytest.raises(InvalidArgument, match=re.escape(
            "network abc is ambiguous (2 matches found based on ID prefix)")):
        svc.inspect("abc")
    assert named_id == "e" * 64


def test_inspect_unknown_and_other_scope(env: Env) -> None:
    with pytest.raises(NotFound, match=r"^network nope not found$"):
        env.svc.inspect("nope")
    with pytest.raises(NotFound):
        env.svc.inspect("")
    assert env.svc.inspect("bridge", scope="local")["Name"] == "bridge"
    with pytest.raises(NotFound, match="network bridge not found"):
        env.svc.inspect("bridge", scope="swarm")


# -- list filters -----------------------------------------------------------------------

@pytest.fixture
def populated(env: Env) -> Env:
    create(env.svc, "front", Labels={"tier": "web", "env": "prod"})
    create(env.svc, "back", Labels={"tier": "db"})
    create(env.svc, "spare")
    env.svc.add_endpoint("back", Endpoint("c1" * 32, "e1" * 32, "db1"))
    return env


@pytest.mark.parametrize("filters,expected", [
    ({}, ["back", "bridge", "front", "host", "none", "spare"]),
    ({"driver": ["bridge"]}, ["back", "bridge", "front", "spare"]),
    ({"driver": ["null", "host"]}, ["host", "none"]),
    ({"driver": ["bri"]}, []),  # exact
    ({"name": ["r"]}, ["bridge", "front", "spare"]),  # substring
    ({"name": ["^b"]}, ["back", "bridge"]),  # regexp
    ({"name": ["front", "back"]}, ["back", "front"]),
    ({"label": ["tier"]}, ["back", "front"]),
    ({"label": ["tier=web"]}, ["front"]),
    ({"label": ["tier", "env=prod"]}, ["front"]),  # every label must hold
    ({"label": ["env=dev"]}, []),
    ({"scope": ["local"]}, ["back", "bridge", "front", "host", "none", "spare"]),
    ({"scope": ["swarm"]}, []),
    ({"type": ["builtin"]}, ["bridge", "host", "none"]),
    ({"type": ["custom"]}, ["back", "front", "spare"]),
    ({"type": ["custom", "builtin"]}, ["back", "bridge", "front", "host", "none", "spare"]),
    ({"dangling": ["true"]}, ["front", "spare"]),
    ({"dangling": ["1"]}, ["front", "spare"]),
    ({"dangling": ["false"]}, ["back", "bridge", "host", "none"]),
    ({"dangling": ["true"], "label": ["tier"]}, ["front"]),
])
def test_list_filters(populated: Env, filters: dict[str, list[str]],
                      expected: list[str]) -> None:
    assert names(populated.svc, **filters) == expected


def test_empty_filter_values_are_no_filter(populated: Env) -> None:
    assert names(populated.svc, name=[], label=[]) == names(populated.svc)
    assert populated.svc.prune({"label": [], "until": []}) == \
        {"NetworksDeleted": ["front", "spare"]}


def test_list_filter_by_id(populated: Env) -> None:
    back = populated.svc.inspect("back")["Id"]
    assert names(populated.svc, id=[back]) == ["back"]
    assert names(populated.svc, id=[back[:10]]) == ["back"]
    assert all(n["Containers"] == {} for n in populated.svc.list())  # list leaves them out


@pytest.mark.parametrize("filters,message", [
    ({"until": ["1h"]}, "invalid filter 'until'"),
    ({"dangling": ["maybe"]}, "invalid value for filter 'dangling'"),
    ({"dangling": ["true", "false"]}, 'more than one value for filter key "dangling"'),
    ({"type": ["weird"]}, "invalid filter: 'type'='weird'"),
])
def test_list_bad_filters(env: Env, filters: dict[str, list[str]], message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        env.svc.list(filters)


# -- remove -----------------------------------------------------------------------------

def test_remove_deletes_driver_network_pool_and_record(env: Env) -> None:
    net_id = create(env.svc, "web", IPAM=ipam("10.7.0.0/24"))
    env.svc.remove(net_id[:12])
    assert ("delete", "web") in env.driver.calls and net_id not in env.driver.networks
    assert "10.7.0.0/24" not in env.subnets()
    assert f"{net_id}.json" not in env.files()
    ev = env.events("destroy")[-1]
    assert (ev.actor_id, ev.attributes) == (net_id, {"name": "web", "type": "bridge"})
    with pytest.raises(NotFound, match="network web not found"):
        env.svc.inspect("web")
    assert env.new().list({"name": ["web"]}) == []  # gone after a restart too
    with pytest.raises(NotFound, match=r"^network web not found$"):
        env.svc.remove("web")


@pytest.mark.parametrize("name", ["bridge", "host", "none"])
def test_predefined_networks_cannot_be_removed(env: Env, name: str) -> None:
    with pytest.raises(Forbidden, match=f"^{name} is a pre-defined network and cannot be "
                                        "removed$"):
        env.svc.remove(name)
    assert env.svc.inspect(name)["Name"] == name


def test_network_in_use_cannot_be_removed(env: Env) -> None:
    net_id = create(env.svc, "web")
    env.svc.add_endpoint("web", Endpoint("c" * 64, "e" * 64, "app"))
    with pytest.raises(Forbidden, match=f"^error while removing network: network web id "
                                        f"{net_id} has active endpoints$"):
        env.svc.remove("web")
    assert env.svc.remove_endpoint("web", "c" * 64) is True
    env.svc.remove("web")


def test_driver_delete_failure_keeps_the_network(env: Env) -> None:
    create(env.svc, "web", IPAM=ipam("10.7.0.0/24"))
    env.driver.fail_delete = Internal("device busy")
    with pytest.raises(Internal, match="device busy"):
        env.svc.remove("web")
    assert env.svc.inspect("web")["Name"] == "web"
    assert "10.7.0.0/24" in env.subnets()


# -- prune ------------------------------------------------------------------------------

def test_prune_removes_unused_custom_networks(populated: Env) -> None:
    out = populated.svc.prune()
    assert out == {"NetworksDeleted": ["front", "spare"]}
    assert names(populated.svc) == ["back", "bridge", "host", "none"]
    ev = populated.events("prune")[-1]
    assert (ev.actor_id, ev.attributes) == ("", {"reclaimed": "0"})
    assert populated.svc.prune() == {"NetworksDeleted": []}


@pytest.mark.parametrize("filters,deleted", [
    ({"label": ["tier"]}, ["front"]),
    ({"label": ["tier=web", "env=prod"]}, ["front"]),
    ({"label": ["tier=db"]}, []),  # back has it but is in use
    ({"label!": ["tier"]}, ["spare"]),
    ({"label!": ["tier", "env"]}, ["spare"]),
    ({"label!": ["env=dev"]}, ["front", "spare"]),
    ({"until": ["2000-01-01T00:00:00Z"]}, []),
    ({"until": ["-1h"]}, ["front", "spare"]),  # an hour from now
    ({"until": [str(int(time.time()) + 3600)]}, ["front", "spare"]),
])
def test_prune_filters(populated: Env, filters: dict[str, list[str]],
                       deleted: list[str]) -> None:
    assert populated.svc.prune(filters) == {"NetworksDeleted": deleted}


def test_prune_until_is_about_creation_time(env: Env) -> None:
    create(env.svc, "old")
    time.sleep(0.05)
    cut = f"{time.time():.6f}"
    time.sleep(0.05)
    create(env.svc, "new")
    assert env.svc.prune({"until": [cut]}) == {"NetworksDeleted": ["old"]}


@pytest.mark.parametrize("filters,message", [
    ({"until": ["1h", "2h"]}, "more than one until filter specified"),
    ({"until": ["yesterday"]}, "failed to parse value as time or duration"),
    ({"dangling": ["true"]}, "invalid filter 'dangling'"),
])
def test_prune_bad_filters(env: Env, filters: dict[str, list[str]], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        env.svc.prune(filters)


# -- endpoints and connect --------------------------------------------------------------

def test_endpoints_show_in_inspect_and_publish_events(env: Env) -> None:
    net_id = create(env.svc, "web")
    ep = Endpoint("c" * 64, "e" * 64, "app", "02:42:ac:12:00:02", "172.18.0.2/16")
    env.svc.add_endpoint("web", ep)
    assert env.svc.inspect("web")["Containers"] == {"c" * 64: {
        "Name": "app", "EndpointID": "e" * 64, "MacAddress": "02:42:ac:12:00:02",
        "IPv4Address": "172.18.0.2/16", "IPv6Address": ""}}
    assert env.svc.endpoints_of("c" * 64) == {net_id: ep}
    with pytest.raises(Forbidden, match="endpoint with name app already exists in network web"):
        env.svc.add_endpoint(net_id, ep)
    ev = env.events("connect")[-1]
    assert (ev.actor_id, ev.attributes) == (net_id, {"container": "c" * 64, "name": "web",
                                                     "type": "bridge"})
    assert env.svc.remove_endpoint("web", "c" * 64) is True
    assert env.svc.remove_endpoint("web", "c" * 64) is False
    assert env.svc.remove_endpoint("nope", "c" * 64) is False
    assert len(env.events("disconnect")) == 1
    assert env.svc.inspect("web")["Containers"] == {}
    assert env.svc.endpoints_of("c" * 64) == {}
    with pytest.raises(NotFound):
        env.svc.add_endpoint("nope", ep)


def test_lookup_gives_the_record_for_wiring(env: Env) -> None:
    net_id = create(env.svc, "web", IPAM=ipam("10.8.0.0/24"))
    rec = env.svc.lookup("web")
    assert (rec.id, rec.driver, rec.facts) == (net_id, "bridge", {"device": "br-" + net_id[:12]})
    assert rec.pool_id is not None and env.ipam.request_address(rec.pool_id).ip == \
        ipaddress.ip_address("10.8.0.2")
    assert rec.spec() == env.driver.networks[net_id]
    drv: NetworkDriver = env.svc.drivers[rec.driver]
    assert drv is env.driver


def test_connect_and_disconnect_are_not_done_yet(env: Env) -> None:
    with pytest.raises(NotImplementedYet, match="network connect: not yet"):
        env.svc.connect("bridge", {"Container": "x"})
    with pytest.raises(NotImplementedYet, match="network disconnect: not yet"):
        env.svc.disconnect("bridge", {"Container": "x"})
    with pytest.raises(NotFound):
        env.svc.connect("nope", {"Container": "x"})


def test_record_file_is_json_with_the_pool_id(env: Env) -> None:
    net_id = create(env.svc, "web", IPAM=ipam("10.8.0.0/24"))
    doc = json.loads(Path(env.state_dir, f"{net_id}.json").read_text())
    assert doc["version"] == 1 and doc["name"] == "web"
    assert doc["pool_id"] == "LocalDefault/10.8.0.0/24"
    assert doc["facts"] == {"device": "br-" + net_id[:12]}
    assert os.stat(Path(env.state_dir, f"{net_id}.json")).st_mode & 0o777 == 0o600


def test_addresses_no_endpoint_claims_are_released(env: Env) -> None:
    web = create(env.svc, "web", IPAM=ipam("10.9.0.0/24"))
    pool = env.svc.lookup("web").pool_id
    assert pool is not None
    kept = str(env.ipam.request_address(pool).ip)
    stray = str(env.ipam.request_address(pool).ip)  # taken, then the daemon died
    released = env.svc.release_unclaimed({web: [kept]})
    assert released == [f"web/{stray}"]
    assert env.ipam.addresses(pool) == [kept]
    assert env.svc.release_unclaimed({web: [kept]}) == []  # nothing more to do
