"""The /networks router over a real NetworkService (fake in-memory driver, LocalIpam(None)):
status codes, JSON shapes and request checks, through the Router as ketchd mounts it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from ketch.api.router import Router
from ketch.api.routers.networks import NetworksBackend, NetworksRouter
from ketch.engine.events import EventBus
from ketch.engine.networks import Endpoint, NetworkService
from ketch.httpserver import Headers, Request
from ketch.network.ipam.local import LocalIpam
from tests.unit.test_engine_networks import FakeDriver


class Client:
    def __init__(self, service: NetworksBackend) -> None:
        self.router = Router(NetworksRouter(service).routes())

    def __call__(self, method: str, target: str, body: Any = None, *, raw: bytes | None = None,
                 content_type: str = "application/json") -> tuple[int, Any]:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        headers = Headers([("Content-Type", content_type)] if data else [])
        resp = asyncio.run(self.router(Request(method, "/v1.47" + target, "HTTP/1.1", headers,
                                               body=data)))
        assert isinstance(resp.body, bytes)
        if resp.status == 204 or not resp.body:
            return resp.status, resp.body
        assert resp.header("Content-Type") == "application/json"
        return resp.status, json.loads(resp.body)


@pytest.fixture
def service(tmp_path: Path) -> NetworkService:
    svc = NetworkService(str(tmp_path / "networks"), EventBus(), {"bridge": FakeDriver()},
                         LocalIpam(None))
    svc.start()
    return svc


@pytest.fixture
def api(service: NetworkService) -> Client:
    return Client(service)


def filters(**f: Any) -> str:
    return "?filters=" + quote(json.dumps(f))


def test_create_is_201_with_id(api: Client) -> None:
    # what the docker CLI 27 sends for `docker network create --subnet 10.4.0.0/24 web`
    status, out = api("POST", "/networks/create", {
        "Name": "web", "CheckDuplicate": True, "Driver": "bridge", "Scope": "",
        "EnableIPv6": None, "IPAM": {"Driver": "default", "Options": {},
                                     "Config": [{"Subnet": "10.4.0.0/24"}]},
        "Internal": False, "Attachable": False, "Ingress": False, "ConfigOnly": False,
        "ConfigFrom": None, "Options": {}, "Labels": {}})
    assert status == 201
    assert set(out) == {"Id", "Warning"} and len(out["Id"]) == 64
    status, net = api("GET", f"/networks/{out['Id'][:12]}")
    assert status == 200 and net["Name"] == "web"
    assert net["IPAM"]["Config"] == [{"Subnet": "10.4.0.0/24", "Gateway": "10.4.0.1"}]


def test_create_with_docker_py_body(api: Client) -> None:
    # docker-py 7: client.networks.create("pynet", ipam=IPAMConfig(pool_configs=[IPAMPool(...)]))
    status, out = api("POST", "/networks/create", {
        "Name": "pynet", "Driver": "bridge", "Options": None, "CheckDuplicate": None,
        "IPAM": {"Driver": "default", "Options": None, "Config": [
            {"Subnet": "10.6.0.0/24", "IPRange": None, "Gateway": None,
             "AuxiliaryAddresses": None}]}})
    assert status == 201
    net = api("GET", "/networks/pynet")[1]
    assert (net["Id"], net["Options"], net["Labels"]) == (out["Id"], {}, {})
    assert net["IPAM"]["Config"] == [{"Subnet": "10.6.0.0/24", "Gateway": "10.6.0.1"}]


@pytest.mark.parametrize("body,status,message", [
    ({"Name": "web"}, 409, "network with name web already exists"),
    ({"Name": "bridge"}, 403, "operation is not permitted on predefined bridge network"),
    ({"Name": "x", "Driver": "foo"}, 404, 'plugin "foo" not found'),
    ({"Name": ""}, 400, "invalid name: name is empty"),
    ({"Name": "x", "IPAM": {"Config": [{"Subnet": "bad"}]}}, 400,
     "invalid subnet bad: invalid CIDR block notation"),
    ({"Name": "x", "EnableIPv6": True}, 501, "IPv6 networks are not supported yet"),
])
def test_create_errors(api: Client, body: dict[str, Any], status: int, message: str) -> None:
    assert api("POST", "/networks/create", {"Name": "web"})[0] == 201
    assert api("POST", "/networks/create", body) == (status, {"message": message})


@pytest.mark.parametrize("raw,content_type,message", [
    (b"", "application/json", "request body is empty"),
    (b"{nope", "application/json", "invalid JSON"),
    (b'["web"]', "application/json", "expected a JSON object"),
    (b'{"Name": "x"}', "application/x-www-form-urlencoded", "unsupported Content-Type"),
])
def test_create_bad_bodies_are_400(api: Client, raw: bytes, content_type: str,
                                   message: str) -> None:
    status, out = api("POST", "/networks/create", raw=raw, content_type=content_type)
    assert status == 400 and message in out["message"]


def test_list_and_filters(api: Client) -> None:
    api("POST", "/networks/create", {"Name": "web", "Labels": {"tier": "front"}})
    status, out = api("GET", "/networks")
    assert status == 200 and sorted(n["Name"] for n in out) == ["bridge", "host", "none", "web"]
    # the docker CLI's map form and docker-py's list form
    for f in (filters(label={"tier=front": True}), filters(label=["tier=front"])):
        assert [n["Name"] for n in api("GET", "/networks" + f)[1]] == ["web"]
    assert [n["Name"] for n in api("GET", "/networks" + filters(type=["builtin"]))[1]] == \
        ["bridge", "host", "none"]
    assert api("GET", "/networks" + filters(name=["zzz"])) == (200, [])


@pytest.mark.parametrize("query,message", [
    ("?filters=%7Bnope", "invalid filters"),
    ("?filters=" + quote('["name"]'), "expected a JSON object"),
    (filters(until=["1h"]), "invalid filter 'until'"),
    (filters(dangling=["maybe"]), "invalid value for filter 'dangling'"),
    (filters(type=["other"]), "invalid filter: 'type'='other'"),
])
def test_list_bad_filters_are_400(api: Client, query: str, message: str) -> None:
    status, out = api("GET", "/networks" + query)
    assert status == 400 and message in out["message"]


def test_inspect(api: Client, service: NetworkService) -> None:
    status, net = api("GET", "/networks/bridge")
    assert status == 200 and net["Name"] == "bridge" and net["Scope"] == "local"
    assert api("GET", "/networks/bridge?verbose=true&scope=local")[0] == 200
    assert api("GET", "/networks/nope") == (404, {"message": "network nope not found"})
    assert api("GET", "/networks/bridge?scope=swarm") == \
        (404, {"message": "network bridge not found"})
    status, out = api("GET", "/networks/bridge?verbose=maybe")
    assert status == 400 and out["message"] == "invalid value for verbose: maybe"
    service.add_endpoint("bridge", Endpoint("c" * 64, "e" * 64, "app", ipv4="172.17.0.2/16"))
    containers = api("GET", "/networks/bridge")[1]["Containers"]
    assert containers["c" * 64]["IPv4Address"] == "172.17.0.2/16"


def test_delete(api: Client, service: NetworkService) -> None:
    net_id = api("POST", "/networks/create", {"Name": "web"})[1]["Id"]
    assert api("DELETE", "/networks/bridge") == \
        (403, {"message": "bridge is a pre-defined network and cannot be removed"})
    service.add_endpoint("web", Endpoint("c" * 64, "e" * 64, "app"))
    assert api("DELETE", "/networks/web") == (403, {
        "message": f"error while removing network: network web id {net_id} has active "
                   "endpoints"})
    service.remove_endpoint("web", "c" * 64)
    assert api("DELETE", "/networks/web") == (204, b"")
    assert api("DELETE", "/networks/web") == (404, {"message": "network web not found"})


def test_prune(api: Client) -> None:
    api("POST", "/networks/create", {"Name": "keep", "Labels": {"keep": ""}})
    api("POST", "/networks/create", {"Name": "drop"})
    assert api("POST", "/networks/prune" + filters(**{"label!": ["keep"]})) == \
        (200, {"NetworksDeleted": ["drop"]})
    assert api("POST", "/networks/prune") == (200, {"NetworksDeleted": ["keep"]})
    status, out = api("POST", "/networks/prune" + filters(dangling=["true"]))
    assert status == 400 and out["message"] == "invalid filter 'dangling'"
    status, out = api("POST", "/networks/prune" + filters(until=["1h", "2h"]))
    assert status == 400 and out["message"] == "more than one until filter specified"


def test_connect_and_disconnect_answer_501_for_now(api: Client) -> None:
    body = {"Container": "web", "EndpointConfig": {}}
    assert api("POST", "/networks/bridge/connect", body) == \
        (501, {"message": "network connect: not yet"})
    assert api("POST", "/networks/bridge/disconnect", {"Container": "web", "Force": False}) == \
        (501, {"message": "network disconnect: not yet"})
    assert api("POST", "/networks/nope/connect", body) == \
        (404, {"message": "network nope not found"})
    assert api("POST", "/networks/bridge/connect", raw=b"[]")[0] == 400


def test_unknown_method_is_404(api: Client) -> None:
    assert api("PUT", "/networks/bridge") == (404, {"message": "page not found"})
