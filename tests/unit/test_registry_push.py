"""Push: monolithic, POST+PUT, chunked PATCH, resume, status, cancel, mount, manifests."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ketch.oci import mediatypes as mt
from ketch.registry.storage import StorageDriver
from tests.unit import test_registry_helpers as helpers
from tests.unit.test_registry_helpers import Client, Server, descriptor, push_image, sha

registry = helpers.registry  # fixtures
client = helpers.client

DATA = os.urandom(300_000)


def files(driver: StorageDriver) -> list[str]:
    return [fi.path for fi in driver.walk("") if not fi.is_dir]


def blob_files(driver: StorageDriver) -> list[str]:
    return [p for p in files(driver) if p.startswith("blobs/")]


def start(c: Client, name: str = "r") -> str:
    r = c.request("POST", f"/v2/{name}/blobs/uploads/")
    assert r.status == 202
    assert r.headers["range"] == "0-0"
    assert r.headers["content-length"] == "0"
    loc = r.headers["location"]
    assert loc == f"/v2/{name}/blobs/uploads/{r.headers['docker-upload-uuid']}"
    return loc


def test_monolithic_post(client: Client, registry: Server) -> None:
    r = client.request("POST", f"/v2/r/blobs/uploads/?digest={sha(DATA)}", DATA)
    assert r.status == 201
    assert r.headers["location"] == f"/v2/r/blobs/{sha(DATA)}"
    assert r.headers["docker-content-digest"] == sha(DATA)
    assert client.request("GET", f"/v2/r/blobs/{sha(DATA)}").body == DATA
    assert not [p for p in files(registry.driver) if "_uploads" in p]


def test_post_then_put(client: Client) -> None:
    loc = start(client)
    r = client.request("PUT", f"{loc}?digest={sha(DATA)}", DATA)
    assert r.status == 201 and r.headers["docker-content-digest"] == sha(DATA)
    assert client.request("GET", f"/v2/r/blobs/{sha(DATA)}").body == DATA
    r = client.request("GET", loc)  # the upload is gone once finished
    assert (r.status, r.codes()) == (404, ["BLOB_UPLOAD_UNKNOWN"])


def test_chunked_patch_status_and_finish(client: Client) -> None:
    loc = start(client)
    pieces = [DATA[:100_000], DATA[100_000:250_000], DATA[250_000:]]
    offset = 0
    for p in pieces[:2]:
        r = client.request("PATCH", loc, p, {"Content-Range": f"{offset}-{offset + len(p) - 1}",
                                             "Content-Type": "application/octet-stream"})
        assert r.status == 202
        offset += len(p)
        assert r.headers["range"] == f"0-{offset - 1}"
        assert r.headers["location"] == loc
    st = client.request("GET", loc)
    assert st.status == 204 and st.headers["range"] == f"0-{offset - 1}"
    assert st.headers["docker-upload-uuid"] == loc.rsplit("/", 1)[1]
    r = client.request("PUT", f"{loc}?digest={sha(DATA)}", pieces[2],
                       {"Content-Range": f"{offset}-{len(DATA) - 1}"})
    assert r.status == 201
    assert client.request("GET", f"/v2/r/blobs/{sha(DATA)}").body == DATA


def test_patch_without_content_range_streams(client: Client) -> None:
    loc = start(client)
    assert client.request("PATCH", loc, DATA[:1000]).status == 202
    assert client.request("PATCH", loc, DATA[1000:]).headers["range"] == f"0-{len(DATA) - 1}"
    assert client.request("PUT", f"{loc}?digest={sha(DATA)}").status == 201


def test_out_of_order_chunk_is_416(client: Client) -> None:
    loc = start(client)
    client.request("PATCH", loc, DATA[:10], {"Content-Range": "0-9"})
    r = client.request("PATCH", loc, DATA[20:30], {"Content-Range": "20-29"})
    assert (r.status, r.codes()) == (416, ["RANGE_INVALID"])
    assert r.headers["range"] == "0-9" and r.headers["location"] == loc
    r = client.request("PATCH", loc, DATA[0:10], {"Content-Range": "0-9"})  # replayed
    assert r.status == 416
    r = client.request("PATCH", loc, DATA[10:15], {"Content-Range": "10-29"})  # lies
    assert r.status == 416
    assert client.request("GET", loc).headers["range"] == "0-9"  # nothing appended


def test_resume_after_interrupted_patch(registry: Server) -> None:
    """A client that dies mid-chunk can ask where the upload stands and continue."""
    c = registry.client()
    loc = start(c)
    with socket.create_connection(("127.0.0.1", registry.port)) as s:
        s.sendall(f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(DATA)}\r\n\r\n"
                  .encode() + DATA[:120_000])
    got = None
    for _ in range(100):  # the server notices the hang-up asynchronously
        st = c.request("GET", loc)
        got = int(st.headers["range"].split("-")[1]) + 1
        if got == 120_000:
            break
        time.sleep(0.02)
    assert got == 120_000
    r = c.request("PATCH", loc, DATA[got:], {"Content-Range": f"{got}-{len(DATA) - 1}"})
    assert r.status == 202
    assert c.request("PUT", f"{loc}?digest={sha(DATA)}").status == 201
    assert c.request("GET", f"/v2/r/blobs/{sha(DATA)}").body == DATA
    c.close()


def test_cancel(client: Client, registry: Server) -> None:
    loc = start(client)
    client.request("PATCH", loc, DATA[:500])
    assert client.request("DELETE", loc).status == 204
    r = client.request("GET", loc)
    assert (r.status, r.codes()) == (404, ["BLOB_UPLOAD_UNKNOWN"])
    assert client.request("DELETE", loc).status == 404
    assert client.request("PATCH", loc, b"x").status == 404
    assert files(registry.driver) == []


def test_bad_upload_ids(client: Client) -> None:
    for bad in ("zz", "0" * 31, "G" * 32, "..", "%2e%2e"):
        r = client.request("GET", f"/v2/r/blobs/uploads/{bad}")
        assert r.status == 404 and r.codes() == ["BLOB_UPLOAD_UNKNOWN"], bad
    assert client.request("GET", "/v2/r/blobs/uploads/../../etc").status == 404


def test_upload_belongs_to_its_repository(client: Client) -> None:
    loc = start(client, "one")
    r = client.request("GET", loc.replace("/one/", "/two/"))
    assert r.status == 404


def test_digest_mismatch_stores_nothing(client: Client, registry: Server) -> None:
    wrong = sha(b"something else")
    r = client.request("POST", f"/v2/r/blobs/uploads/?digest={wrong}", DATA)
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])
    loc = start(client)
    r = client.request("PUT", f"{loc}?digest={wrong}", DATA)
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])
    assert client.request("GET", loc).status == 404  # the failed upload is gone
    assert client.request("GET", f"/v2/r/blobs/{sha(DATA)}").status == 404
    assert files(registry.driver) == []


def test_finish_needs_a_digest(client: Client) -> None:
    loc = start(client)
    r = client.request("PUT", loc, DATA[:10])
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])
    r = client.request("PUT", f"{loc}?digest=sha256:nothex")
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])


def test_sha512_blob(client: Client) -> None:
    d = "sha512:" + hashlib.sha512(DATA).hexdigest()
    assert client.request("POST", f"/v2/r/blobs/uploads/?digest={d}", DATA).status == 201
    assert client.request("GET", f"/v2/r/blobs/{d}").body == DATA


def test_empty_blob(client: Client) -> None:
    d = client.push_blob("r", b"")
    r = client.request("GET", f"/v2/r/blobs/{d}")
    assert r.status == 200 and r.body == b""


def test_chunked_transfer_encoding_upload(registry: Server) -> None:
    c = registry.client()
    loc = start(c)
    with socket.create_connection(("127.0.0.1", registry.port)) as s:
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p)
                        for p in (DATA[:7], DATA[7:200_000], DATA[200_000:])) + b"0\r\n\r\n"
        s.sendall(f"PUT {loc}?digest={sha(DATA)} HTTP/1.1\r\nHost: x\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n".encode() + body)
        assert s.recv(100).startswith(b"HTTP/1.1 201 ")
    assert c.request("GET", f"/v2/r/blobs/{sha(DATA)}").body == DATA
    c.close()


# -- mounts -------------------------------------------------------------------------------


def test_cross_repository_mount(client: Client) -> None:
    d = client.push_blob("src/repo", DATA)
    r = client.request("POST", f"/v2/dst/blobs/uploads/?mount={d}&from=src/repo")
    assert r.status == 201
    assert r.headers["location"] == f"/v2/dst/blobs/{d}"
    assert r.headers["docker-content-digest"] == d
    assert client.request("GET", f"/v2/dst/blobs/{d}").body == DATA


def test_automatic_mount_without_from(client: Client) -> None:
    d = client.push_blob("src", DATA)
    r = client.request("POST", f"/v2/other/blobs/uploads/?mount={d}")
    assert r.status == 201
    assert client.request("GET", f"/v2/other/blobs/{d}").body == DATA


def test_mount_of_unknown_blob_starts_an_upload(client: Client) -> None:
    d = client.push_blob("src", DATA)
    r = client.request("POST", f"/v2/dst/blobs/uploads/?mount={d}&from=elsewhere")
    assert r.status == 202 and "docker-upload-uuid" in r.headers
    r = client.request("POST", f"/v2/dst/blobs/uploads/?mount={sha(b'nope')}")
    assert r.status == 202
    assert client.request("GET", f"/v2/dst/blobs/{d}").status == 404


def test_mount_from_invalid_name(client: Client) -> None:
    d = client.push_blob("src", DATA)
    r = client.request("POST", f"/v2/dst/blobs/uploads/?mount={d}&from=../src")
    assert (r.status, r.codes()) == (400, ["NAME_INVALID"])


# -- concurrency --------------------------------------------------------------------------


def test_concurrent_pushes_of_the_same_blob(registry: Server) -> None:
    blob = os.urandom(2 << 20)

    def push(i: int) -> int:
        c = registry.client()
        try:
            loc = start(c, f"repo{i % 3}")
            for off in range(0, len(blob), 512 << 10):
                assert c.request("PATCH", loc, blob[off:off + (512 << 10)]).status == 202
            return c.request("PUT", f"{loc}?digest={sha(blob)}").status
        finally:
            c.close()

    with ThreadPoolExecutor(6) as ex:
        assert list(ex.map(push, range(6))) == [201] * 6
    c = registry.client()
    for i in range(3):
        assert c.request("GET", f"/v2/repo{i}/blobs/{sha(blob)}").body == blob
    c.close()
    assert len(blob_files(registry.driver)) == 1


# -- manifests ----------------------------------------------------------------------------


def test_manifest_put_answers(client: Client) -> None:
    cfg = client.push_blob("m", b"{}")
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
           "config": {"mediaType": mt.OCI_CONFIG, "digest": cfg, "size": 2}, "layers": []}
    body = json.dumps(doc).encode()
    r = client.push_manifest("m", "latest", body)
    assert r.status == 201
    assert r.headers["docker-content-digest"] == sha(body)
    assert r.headers["location"] == f"/v2/m/manifests/{sha(body)}"
    assert "oci-subject" not in r.headers
    r = client.push_manifest("m", sha(body), body)  # by digest as well
    assert r.status == 201


def test_manifest_digest_mismatch(client: Client, registry: Server) -> None:
    img = push_image(client, "m", "t")
    body = img.manifest.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')
    before = files(registry.driver)
    r = client.push_manifest("m", img.digest, body)
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])
    assert files(registry.driver) == before


def test_manifest_missing_blobs(client: Client, registry: Server) -> None:
    cfg = client.push_blob("m", b"{}")
    missing = [b"gone-1", b"gone-2"]
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
           "config": {"mediaType": mt.OCI_CONFIG, "digest": cfg, "size": 2},
           "layers": [descriptor(mt.OCI_LAYER_GZIP, m) for m in missing]}
    before = files(registry.driver)
    r = client.push_manifest("m", "t", doc)
    assert r.status == 400
    assert r.codes() == ["MANIFEST_BLOB_UNKNOWN"] * 2
    assert [e["detail"]["digest"] for e in r.json()["errors"]] == [sha(m) for m in missing]
    assert files(registry.driver) == before
    # a blob in another repository does not count
    client.push_blob("elsewhere", missing[0])
    assert client.push_manifest("m", "t", doc).status == 400


def test_manifest_foreign_layers_need_not_exist(client: Client) -> None:
    cfg = client.push_blob("m", b"{}")
    doc = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
           "config": {"mediaType": mt.DOCKER_CONFIG, "digest": cfg, "size": 2},
           "layers": [descriptor(mt.DOCKER_FOREIGN_LAYER, b"win",
                                 urls=["https://example.invalid/l"])]}
    assert client.push_manifest("m", "t", doc, mt.DOCKER_MANIFEST).status == 201


def test_manifest_wrong_blob_size(client: Client) -> None:
    cfg = client.push_blob("m", b"{}")
    doc = {"schemaVersion": 2, "config": {"mediaType": mt.OCI_CONFIG, "digest": cfg,
                                          "size": 3}, "layers": []}
    r = client.push_manifest("m", "t", doc)
    assert (r.status, r.codes()) == (400, ["MANIFEST_INVALID"])


@pytest.mark.parametrize("body,ctype", [
    (b"{not json", mt.OCI_MANIFEST),
    (b"[1,2]", mt.OCI_MANIFEST),
    (b'{"schemaVersion": 1, "layers": []}', mt.OCI_MANIFEST),
    (b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:00", "size": 1}}',
     mt.OCI_MANIFEST),
    (b'{"schemaVersion": 2, "config": {"mediaType": "x", "size": -1, "digest": "sha256:'
     + b"0" * 64 + b'"}}', mt.OCI_MANIFEST),
    (b'{"schemaVersion": 2, "mediaType": "' + mt.OCI_INDEX.encode() + b'", "manifests": []}',
     mt.OCI_MANIFEST),  # body and header disagree
    (b'{"schemaVersion": 2, "manifests": []}', "application/vnd.example.unknown+json"),
    (b'{"schemaVersion": 2, "manifests": "no"}', mt.OCI_INDEX),
    (b'{"schemaVersion": 2, "layers": [], "config": {}}', mt.OCI_MANIFEST),
    (b"\xff\xfe", mt.OCI_MANIFEST),
])
def test_manifest_invalid(client: Client, registry: Server, body: bytes, ctype: str) -> None:
    r = client.push_manifest("m", "t", body, ctype)
    assert (r.status, r.codes()) == (400, ["MANIFEST_INVALID"]), r.body
    assert files(registry.driver) == []


def test_manifest_bad_tag(client: Client) -> None:
    r = client.push_manifest("m", "-bad", b"{}")
    assert (r.status, r.codes()) == (400, ["MANIFEST_INVALID"])
    r = client.push_manifest("m", "x" * 129, b"{}")
    assert r.status == 400


def test_manifest_too_large(registry: Server) -> None:
    c = registry.client()
    body = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 << 20) + b'"}'
    r = c.push_manifest("m", "t", body)
    assert (r.status, r.codes()) == (413, ["SIZE_INVALID"])
    assert files(registry.driver) == []
    c.close()


def test_index_and_manifest_list(client: Client) -> None:
    a = push_image(client, "multi", "a", seed=b"a")
    b = push_image(client, "multi", "b", seed=b"b", media_type=mt.DOCKER_MANIFEST)
    for media, children in ((mt.OCI_INDEX, [(mt.OCI_MANIFEST, a)]),
                            (mt.DOCKER_MANIFEST_LIST, [(mt.OCI_MANIFEST, a),
                                                       (mt.DOCKER_MANIFEST, b)])):
        doc = {"schemaVersion": 2, "mediaType": media,
               "manifests": [{"mediaType": m, "digest": img.digest,
                              "size": len(img.manifest),
                              "platform": {"architecture": "amd64", "os": "linux"}}
                             for m, img in children]}
        r = client.push_manifest("multi", "idx", doc, media)
        assert r.status == 201, r.body
        g = client.request("GET", "/v2/multi/manifests/idx")
        assert g.headers["content-type"] == media
    missing = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
               "manifests": [descriptor(mt.OCI_MANIFEST, b"not pushed")]}
    r = client.push_manifest("multi", "bad", missing, mt.OCI_INDEX)
    assert (r.status, r.codes()) == (400, ["MANIFEST_BLOB_UNKNOWN"])


def test_retag_moves_tag(client: Client) -> None:
    a = push_image(client, "m", "t", seed=b"1")
    b = push_image(client, "m", "t", seed=b"2")
    assert client.request("GET", "/v2/m/manifests/t").body == b.manifest
    assert client.request("GET", f"/v2/m/manifests/{a.digest}").body == a.manifest
