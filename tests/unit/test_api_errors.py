"""ketch.errors → HTTP status, in the one place that decides it."""

from __future__ import annotations

import asyncio
import json

import pytest

from ketch import errors
from ketch.api.httpstatus import error_response, status_for
from ketch.api.router import Route, Router
from ketch.httpserver import Headers, Request, Response


@pytest.mark.parametrize("cls,status", [
    (errors.NotFound, 404),
    (errors.InvalidArgument, 400),
    (errors.Conflict, 409),
    (errors.FailedPrecondition, 409),
    (errors.NotModified, 304),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.Unavailable, 503),
    (errors.NotImplementedYet, 501),
    (errors.Internal, 500),
    (errors.KetchError, 500),
    (RuntimeError, 500),
])
def test_status_for(cls: type[Exception], status: int) -> None:
    assert status_for(cls("x")) == status


def test_domain_subclass_maps_by_its_base() -> None:
    class NoSuchContainer(errors.NotFound):
        pass

    resp = error_response(NoSuchContainer("No such container: web"))
    assert resp.status == 404
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body) == {"message": "No such container: web"}
    assert ("Content-Type", "application/json") in resp.headers


def test_not_modified_has_no_body() -> None:
    resp = error_response(errors.NotModified("container already started"))
    assert (resp.status, resp.body) == (304, b"")


def test_unexpected_error_is_500_with_message() -> None:
    resp = error_response(KeyError())
    assert resp.status == 500
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body) == {"message": "KeyError"}


def test_router_maps_handler_errors() -> None:
    async def conflict(req: Request) -> Response:
        raise errors.FailedPrecondition(f"container {req.params['name']} is not running")

    router = Router([Route("POST", "/containers/{name}/pause", conflict)])
    resp = asyncio.run(router(Request("POST", "/v1.47/containers/web/pause", "HTTP/1.1",
                                      Headers())))
    assert resp.status == 409
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body) == {"message": "container web is not running"}
