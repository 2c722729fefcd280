"""API version negotiation, routing, and the system router over a fake backend."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from ketch.api import version
from ketch.api.router import Route, Router
from ketch.api.routers.system import SystemRouter
from ketch.errors import InvalidArgument
from ketch.httpserver import Headers, Request, Response


def _req(method: str, target: str) -> Request:
    return Request(method, target, "HTTP/1.1", Headers())


def _call(router: Router, method: str, target: str) -> tuple[Response, Request]:
    req = _req(method, target)
    return asyncio.run(router(req)), req


def _json(resp: Response) -> Any:
    assert isinstance(resp.body, bytes)
    return json.loads(resp.body)


@pytest.mark.parametrize("path,expected", [
    ("/v1.47/containers/json", ("1.47", "/containers/json")),
    ("/v1.24/_ping", ("1.24", "/_ping")),
    ("/v1.41", ("1.41", "/")),
    ("/containers/json", (None, "/containers/json")),
    ("/volumes", (None, "/volumes")),
    ("/vx/info", (None, "/vx/info")),
])
def test_split_path(path: str, expected: tuple[str | None, str]) -> None:
    assert version.split_path(path) == expected


def test_compare_is_numeric() -> None:
    assert version.compare("1.9", "1.24") < 0
    assert version.compare("1.47", "1.47.0") == 0
    assert version.compare("2.0", "1.99") > 0
    with pytest.raises(InvalidArgument):
        version.parse("1.x")


def test_check_range_and_wording() -> None:
    assert version.check(None) == version.CURRENT
    assert version.check("1.24") == "1.24"
    assert version.check(version.CURRENT) == version.CURRENT
    with pytest.raises(InvalidArgument) as e:
        version.check("9.99")
    assert str(e.value) == ("client version 9.99 is too new. "
                            "Maximum supported API version is 1.47")
    with pytest.raises(InvalidArgument) as e:
        version.check("1.12")
    assert str(e.value).startswith(
        "client version 1.12 is too old. Minimum supported API version is 1.24")


async def _echo_params(req: Request) -> Response:
    return Response(200, [], json.dumps({"v": req.api_version, **req.params}).encode())


ROUTER = Router([
    Route("GET", "/containers/{name}/json", _echo_params),
    Route("GET", "/images/{name:path}/json", _echo_params),
    Route("GET", "/plain", _echo_params),
])


def test_router_params_and_versions() -> None:
    resp, _ = _call(ROUTER, "GET", "/v1.41/containers/web/json")
    assert _json(resp) == {"v": "1.41", "name": "web"}
    resp, _ = _call(ROUTER, "GET", "/images/library/busybox:latest/json")
    assert _json(resp) == {"v": "1.47", "name": "library/busybox:latest"}
    resp, _ = _call(ROUTER, "GET", "/plain/")
    assert resp.status == 200
    assert ("Api-Version", "1.47") in resp.headers and ("Ostype", "linux") in resp.headers


@pytest.mark.parametrize("method,target", [
    ("GET", "/nope"), ("POST", "/plain"), ("GET", "/containers/a/b/json"),
])
def test_router_unknown_is_404_page_not_found(method: str, target: str) -> None:
    resp, _ = _call(ROUTER, method, target)
    assert resp.status == 404 and _json(resp) == {"message": "page not found"}


def test_router_head_falls_back_to_get() -> None:
    resp, _ = _call(ROUTER, "HEAD", "/plain")
    assert resp.status == 200


def test_router_version_errors_are_400() -> None:
    resp, _ = _call(ROUTER, "GET", "/v9.99/plain")
    assert resp.status == 400
    assert _json(resp)["message"].startswith("client version 9.99 is too new")
    resp, _ = _call(ROUTER, "GET", "/v1.0/plain")
    assert resp.status == 400 and "too old" in _json(resp)["message"]


def test_duplicate_route_rejected() -> None:
    with pytest.raises(ValueError):
        Router([Route("GET", "/a", _echo_params), Route("GET", "/a/", _echo_params)])


class FakeSystem:
    def version(self) -> dict[str, Any]:
        return {"Version": "0.0.1", "Components": [{"Name": "Engine", "Version": "0.0.1"}]}

    def info(self) -> dict[str, Any]:
        return {"ServerVersion": "0.0.1", "CgroupVersion": "2"}


SYSTEM = Router(SystemRouter(FakeSystem()).routes())


def test_ping_headers() -> None:
    for method in ("GET", "HEAD"):
        resp, _ = _call(SYSTEM, method, "/_ping")
        h = dict(resp.headers)
        assert resp.status == 200 and resp.body == b"OK"
        assert h["Api-Version"] == "1.47" and h["Ostype"] == "linux"
        assert h["Builder-Version"] == "1" and h["Docker-Experimental"] == "false"
        assert h["Cache-Control"] == "no-cache, no-store, must-revalidate"
        assert h["Pragma"] == "no-cache"


def test_version_adds_api_fields() -> None:
    resp, _ = _call(SYSTEM, "GET", "/v1.44/version")
    body = _json(resp)
    assert body["ApiVersion"] == "1.47" and body["MinAPIVersion"] == "1.24"
    assert body["Components"][0]["Details"]["ApiVersion"] == "1.47"
    resp, _ = _call(SYSTEM, "GET", "/info")
    assert _json(resp) == {"ServerVersion": "0.0.1", "CgroupVersion": "2"}
