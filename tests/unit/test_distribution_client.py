"""The registry client against an in-process fake registry (loopback HTTP).

A real registry (Debian's docker-registry) is used by the compat tests; this fake
exists for what a real one cannot be made to do on demand: drop the connection in the
middle of a blob, or count the ``Range`` requests a resumed download makes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ketch.content.local import LocalContentStore
from ketch.distribution.auth import Credentials, decode_registry_auth, parse_challenges
from ketch.distribution.client import ManifestUnknown, NameUnknown, Registry
from ketch.distribution.credentials import CredentialStore
from ketch.distribution.endpoint import endpoint_for, is_loopback
from ketch.distribution.platforms import parse_platform, select_manifest
from ketch.errors import InvalidArgument, NotFound, Unauthorized
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor, Platform
from ketch.oci.digest import Digest, digest_of


class FakeRegistry:
    """Manifests and blobs in dicts, served over HTTP/1.1 on 127.0.0.1.

    ``drop_after[digest] = n``: the next GET of that blob sends ``n`` bytes and closes.
    ``stall_after[digest] = n``: GETs send ``n`` bytes, then hang until ``release``.
    ``users``: basic-auth users; with ``bearer``, a token endpoint at /token.
    """

    def __init__(self, users: dict[str, str] | None = None, bearer: bool = False) -> None:
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.stall_after: dict[str, int] = {}
        self.release = threading.Event()
        self.ranges: list[str] = []
        self.users = users or {}
        self.bearer = bearer
        self.tokens: set[str] = set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, head=False)

            def do_HEAD(self) -> None:
                fake.handle(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # content

    def add_blob(self, data: bytes) -> Descriptor:
        d = digest_of(data)
        self.blobs[str(d)] = data
        return Descriptor("application/octet-stream", d, len(data))

    def add_manifest(self, repo: str, tag: str, obj: dict[str, Any]) -> Descriptor:
        data = json.dumps(obj).encode()
        d = digest_of(data)
        media = str(obj["mediaType"])
        self.manifests[(repo, tag)] = (media, data)
        self.manifests[(repo, str(d))] = (media, data)
        return Descriptor(media, d, len(data))

    # serving

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes = b"",
              headers: dict[str, str] | None = None, head: bool = False) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _authorized(self, h: BaseHTTPRequestHandler) -> bool:
        if not self.users:
            return True
        got = h.headers.get("Authorization", "")
        if self.bearer:
            if got.startswith("Bearer ") and got[7:] in self.tokens:
                return True
            realm = f"http://{self.host}/token"
            self._send(h, 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}', {
                "WWW-Authenticate": f'Bearer realm="{realm}",service="fake",'
                                    f'scope="repository:x:pull"'})
            return False
        if got.startswith("Basic ") and self._basic_ok(got):
            return True
        self._send(h, 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}',
                   {"WWW-Authenticate": 'Basic realm="fake"'})
        return False

    def _basic_ok(self, header: str) -> bool:
        user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
        return self.users.get(user) == pw

    def handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path.split("?")[0]
        if path == "/token":
            if not self._basic_ok(h.headers.get("Authorization", "Basic Og==")):
                self._send(h, 401, b'{"details":"incorrect username or password"}')
                return
            tok = hashlib.sha256(h.path.encode()).hexdigest()
            self.tokens.add(tok)
            self._send(h, 200, json.dumps({"token": tok, "expires_in": 300}).encode())
            return
        if not self._authorized(h):
            return
        if path == "/v2/":
            self._send(h, 200, b"{}", head=head)
            return
        parts = path.split("/")
        if "manifests" in parts:
            i = parts.index("manifests")
            repo, ref = "/".join(parts[2:i]), parts[i + 1]
            if not any(r == repo for r, _ in self.manifests):
                self._send(h, 404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"repo"}]}')
                return
            found = self.manifests.get((repo, ref))
            if found is None:
                self._send(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN",'
                                   b'"message":"manifest unknown"}]}')
                return
            self._send(h, 200, found[1], {"Content-Type": found[0]}, head)
            return
        if "blobs" in parts:
            d = parts[-1]
            data = self.blobs.get(d)
            if data is None:
                self._send(h, 404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"b"}]}')
                return
            self._blob(h, d, data, head)
            return
        self._send(h, 404)

    def _blob(self, h: BaseHTTPRequestHandler, d: str, data: bytes, head: bool) -> None:
        rng = h.headers.get("Range")
        start = 0
        if rng:
            self.ranges.append(rng)
            start = int(rng.split("=")[1].split("-")[0])
        body = data[start:]
        h.send_response(206 if rng else 200)
        h.send_header("Content-Length", str(len(body)))
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        cut = self.drop_after.pop(d, None)
        stall = self.stall_after.get(d)
        if cut is not None:
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if stall is not None and start < stall:
            h.wfile.write(body[:stall - start])
            h.wfile.flush()
            self.release.wait(60)
            h.close_connection = True
            return
        h.wfile.write(body)


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    f = FakeRegistry()
    try:
        yield f
    finally:
        f.close()


def _image(fake: FakeRegistry, layer: bytes) -> tuple[Descriptor, Descriptor]:
    blob = fake.add_blob(layer)
    cfg = fake.add_blob(b'{"architecture":"amd64","os":"linux"}')
    m = fake.add_manifest("x", "v1", {
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": str(cfg.digest), "size": cfg.size},
        "layers": [{"mediaType": mt.OCI_LAYER, "digest": str(blob.digest),
                    "size": blob.size}]})
    return m, blob


def test_manifest_by_tag_and_digest(fake: FakeRegistry, request: pytest.FixtureRequest
                                    ) -> None:
    m, _ = _image(fake, b"x" * 100)
    r = Registry(fake.host)
    request.addfinalizer(r.close)
    _, media, digest = r.get_manifest("x", "v1")
    assert (media, digest) == (mt.OCI_MANIFEST, m.digest)
    assert r.get_manifest("x", str(m.digest))[2] == m.digest
    with pytest.raises(ManifestUnknown):
        r.get_manifest("x", "nope")
    with pytest.raises(NameUnknown):
        r.get_manifest("nobody", "v1")


def test_loopback_registry_falls_back_to_plain_http(fake: FakeRegistry) -> None:
    with Registry(fake.host) as r:
        r.login()
        assert r.transport.scheme(r.endpoint) == "http"
    assert endpoint_for("docker.io").host == "registry-1.docker.io"
    assert not endpoint_for("example.com:5000").insecure
    assert is_loopback("localhost:5000") and is_loopback("[::1]:5000")


def test_download_resumes_after_dropped_connection(fake: FakeRegistry, tmp_path: Path) -> None:
    layer = bytes(range(256)) * 4096  # 1 MiB
    _, blob = _image(fake, layer)
    fake.drop_after[str(blob.digest)] = 300_000
    store = LocalContentStore(tmp_path)
    w = store.writer("pull-x", expected=blob.digest, size=blob.size)
    seen: list[int] = []
    with Registry(fake.host) as r:
        r.download("x", blob, w, lambda c: seen.append(len(c)))
    assert fake.ranges == ["bytes=300000-"]
    assert w.commit() == blob.digest
    assert sum(seen) == blob.size
    assert store.read(blob.digest) == layer


def test_download_continues_an_earlier_ingest(fake: FakeRegistry, tmp_path: Path) -> None:
    layer = b"abc" * 100_000
    _, blob = _image(fake, layer)
    store = LocalContentStore(tmp_path)
    with store.writer("pull-y", expected=blob.digest, size=blob.size) as w:
        w.write(layer[:1234])
    w2 = store.writer("pull-y", expected=blob.digest, size=blob.size)
    with Registry(fake.host) as r:
        r.download("x", blob, w2)
    assert fake.ranges == ["bytes=1234-"]
    assert w2.commit() == blob.digest


def test_corrupt_blob_fails_commit(fake: FakeRegistry, tmp_path: Path) -> None:
    _, blob = _image(fake, b"good" * 1000)
    fake.blobs[str(blob.digest)] = b"evil" * 1000
    store = LocalContentStore(tmp_path)
    w = store.writer("pull-z", expected=blob.digest, size=blob.size)
    with Registry(fake.host) as r:
        r.download("x", blob, w)
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        w.commit()
    w.close()


def test_basic_auth_and_bearer_token_flow() -> None:
    for bearer in (False, True):
        f = FakeRegistry(users={"alice": "pw"}, bearer=bearer)
        try:
            _image(f, b"layer")
            with Registry(f.host, Credentials("alice", "pw")) as r:
                r.login()
                assert r.get_manifest("x", "v1")
            with pytest.raises(Unauthorized) as e, \
                    Registry(f.host, Credentials("alice", "bad")) as r:
                r.login()
            if not bearer:
                assert str(e.value) == (f"login attempt to http://{f.host}/v2/ failed with "
                                        f"status: 401 Unauthorized")
            with pytest.raises(Unauthorized), Registry(f.host) as r:
                r.get_manifest("x", "v1")
        finally:
            f.close()


def test_challenge_parsing() -> None:
    [c] = parse_challenges('Bearer realm="https://a/token",service="reg",'
                           'scope="repository:x/y:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://a/token", "service": "reg",
                        "scope": "repository:x/y:pull,push"}
    two = parse_challenges('Basic realm="r", Bearer realm="t"')
    assert [x.scheme for x in two] == ["basic", "bearer"]


def test_registry_auth_header_and_credential_store(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    store.store("127.0.0.1:5000", Credentials("bob", "secret"))
    store.store("docker.io", Credentials("hub", "pw"))
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["auths"]["127.0.0.1:5000"]["auth"] == base64.b64encode(b"bob:secret").decode()
    assert "https://index.docker.io/v1/" in doc["auths"]
    assert decode_registry_auth(store.encoded("127.0.0.1:5000")) == Credentials("bob", "secret")
    assert store.get("index.docker.io").username == "hub"
    assert store.erase("127.0.0.1:5000") and not store.erase("127.0.0.1:5000")
    assert store.get("127.0.0.1:5000").anonymous
    assert decode_registry_auth("not base64 json!").anonymous


def test_platform_selection() -> None:
    def entry(arch: str, variant: str | None = None) -> Descriptor:
        return Descriptor(mt.OCI_MANIFEST, digest_of(arch.encode() + (variant or "").encode()),
                          1, platform=Platform(architecture=arch, os="linux", variant=variant))

    entries = [entry("amd64"), entry("arm", "v6"), entry("arm", "v7"), entry("arm64", "v8")]
    host = Platform(architecture="amd64", os="linux")
    assert select_manifest(entries, parse_platform("linux/arm/v7", host)) is entries[2]
    assert select_manifest(entries, parse_platform("linux/arm64", host)) is entries[3]
    assert select_manifest(entries, host) is entries[0]
    with pytest.raises(NotFound, match="no matching manifest for linux/s390x"):
        select_manifest(entries, parse_platform("linux/s390x", host))
    with pytest.raises(InvalidArgument):
        parse_platform("linux//", host)
    assert Digest.parse(str(entries[0].digest)) == entries[0].digest
