"""A registry served in-process on 127.0.0.1:0 and a plain ``http.client`` client for it.

Other ``test_registry_*`` modules import ``registry`` (the fixture: a running server on a
fresh driver, parametrised over the filesystem and in-memory drivers) and the helpers.
The server runs its own event loop in a thread, so tests talk to it like any client.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ketch.oci import mediatypes as mt
from ketch.registry.app import RegistryApp, make_server
from ketch.registry.storage import FilesystemDriver, InMemoryDriver, StorageDriver


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def codes(self) -> list[str]:
        return [e["code"] for e in self.json()["errors"]]


@dataclass
class Client:
    port: int
    conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Resp:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            if r.will_close:
                self.conn.close()
                self.conn = None
            return Resp(r.status, hdrs, data)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    # -- pushing ------------------------------------------------------------------------

    def push_blob(self, name: str, data: bytes) -> str:
        d = sha(data)
        r = self.request("POST", f"/v2/{name}/blobs/uploads/?digest={d}", data,
                         {"Content-Type": "application/octet-stream"})
        assert r.status == 201, (r.status, r.body)
        return d

    def push_manifest(self, name: str, ref: str, doc: dict[str, Any] | bytes,
                      media_type: str = mt.OCI_MANIFEST) -> Resp:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return self.request("PUT", f"/v2/{name}/manifests/{ref}", body,
                            {"Content-Type": media_type})


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha(data), "size": len(data), **extra}


@dataclass
class Image:
    manifest: bytes
    digest: str
    config: bytes
    layers: list[bytes] = field(default_factory=list)


def push_image(c: Client, name: str, tag: str, *, seed: bytes = b"",
               media_type: str = mt.OCI_MANIFEST, extra: dict[str, Any] | None = None
               ) -> Image:
    """Push config + two layers + a manifest tagged ``tag``; what was pushed."""
    docker = media_type == mt.DOCKER_MANIFEST
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed.hex(),
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layers = [b"layer-one" + seed, b"layer-two" * 100 + seed]
    for blob in (config, *layers):
        c.push_blob(name, blob)
    doc = {"schemaVersion": 2, "mediaType": media_type,
           "config": descriptor(mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG, config),
           "layers": [descriptor(mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP, b)
                      for b in layers], **(extra or {})}
    body = json.dumps(doc).encode()
    r = c.push_manifest(name, tag, body, media_type)
    assert r.status == 201, (r.status, r.body)
    return Image(body, sha(body), config, layers)


@dataclass
class Server:
    port: int
    app: RegistryApp
    driver: StorageDriver

    def client(self) -> Client:
        return Client(self.port)


def serve(driver: StorageDriver, **opts: Any) -> Iterator[Server]:
    """Run a registry on ``driver`` in a thread until the generator is closed."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            app = RegistryApp.on(driver, **opts)
            http = make_server(app)
            srv = await http.start_tcp("127.0.0.1", 0, None)
            stop = asyncio.Event()
            box.update(app=app, port=srv.sockets[0].getsockname()[1],
                       stop=stop, loop=asyncio.get_running_loop())
            ready.set()
            try:
                await stop.wait()
            finally:
                srv.close()
                await srv.wait_closed()
                await http.close_connections()
                app.close()

        asyncio.run(main())

    t = threading.Thread(target=run, name="registry-test-server", daemon=True)
    t.start()
    assert ready.wait(10), "registry did not start"
    try:
        yield Server(box["port"], box["app"], driver)
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        t.join(10)


@pytest.fixture(params=["filesystem", "inmemory"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    driver: StorageDriver = (FilesystemDriver(tmp_path / "store", fsync=False)
                             if request.param == "filesystem" else InMemoryDriver())
    yield from serve(driver)


@pytest.fixture
def client(registry: Server) -> Iterator[Client]:
    c = registry.client()
    try:
        yield c
    finally:
        c.close()


# -- the harness itself -------------------------------------------------------------------


def test_version_check(client: Client) -> None:
    r = client.request("GET", "/v2/")
    assert r.status == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert r.json() == {}


def test_unknown_route_is_404(client: Client) -> None:
    assert client.request("GET", "/nope").status == 404
    assert client.request("GET", "/v2/a/unknown/thing").status == 404


def test_wrong_method_is_unsupported(client: Client) -> None:
    r = client.request("POST", "/v2/a/tags/list")
    assert r.status == 405 and r.codes() == ["UNSUPPORTED"]
    assert r.headers["allow"] == "GET"
