"""Pull: manifests by tag and digest, blobs with ranges, and the 404 codes."""

from __future__ import annotations

import json

import pytest

from ketch.oci import mediatypes as mt
from tests.unit import test_registry_helpers as helpers
from tests.unit.test_registry_helpers import Client, push_image, sha

registry = helpers.registry  # fixtures
client = helpers.client


def test_manifest_by_tag_and_digest(client: Client) -> None:
    img = push_image(client, "lib/app", "v1")
    for ref in ("v1", img.digest):
        r = client.request("GET", f"/v2/lib/app/manifests/{ref}")
        assert r.status == 200
        assert r.body == img.manifest
        assert r.headers["content-type"] == mt.OCI_MANIFEST
        assert r.headers["docker-content-digest"] == img.digest
        assert r.headers["content-length"] == str(len(img.manifest))
        h = client.request("HEAD", f"/v2/lib/app/manifests/{ref}")
        assert h.status == 200 and h.body == b""
        assert h.headers["content-length"] == str(len(img.manifest))
        assert h.headers["docker-content-digest"] == img.digest
        assert h.headers["content-type"] == mt.OCI_MANIFEST


def test_docker_schema2_content_type_kept(client: Client) -> None:
    img = push_image(client, "d", "latest", media_type=mt.DOCKER_MANIFEST)
    r = client.request("GET", "/v2/d/manifests/latest")
    assert r.headers["content-type"] == mt.DOCKER_MANIFEST
    assert r.body == img.manifest


def test_blob_get_head(client: Client) -> None:
    img = push_image(client, "x", "t")
    blob = img.layers[1]
    r = client.request("GET", f"/v2/x/blobs/{sha(blob)}")
    assert r.status == 200 and r.body == blob
    assert r.headers["docker-content-digest"] == sha(blob)
    assert r.headers["content-length"] == str(len(blob))
    h = client.request("HEAD", f"/v2/x/blobs/{sha(blob)}")
    assert h.status == 200 and h.body == b"" and h.headers["content-length"] == str(len(blob))
    # a manifest can be fetched as a blob of its repository
    assert client.request("GET", f"/v2/x/blobs/{img.digest}").body == img.manifest


@pytest.mark.parametrize("rng,first,last", [
    ("bytes=0-9", 0, 9), ("bytes=10-", 10, 899), ("bytes=-5", 895, 899),
    ("bytes=890-5000", 890, 899), ("bytes=-5000", 0, 899),
])
def test_blob_range(client: Client, rng: str, first: int, last: int) -> None:
    img = push_image(client, "x", "t")
    blob = img.layers[1]
    assert len(blob) == 900
    r = client.request("GET", f"/v2/x/blobs/{sha(blob)}", headers={"Range": rng})
    assert r.status == 206
    assert r.body == blob[first:last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/900"


@pytest.mark.parametrize("rng", ["bytes=900-", "bytes=1000-2000", "bytes=5-2", "bytes=-0"])
def test_blob_range_unsatisfiable(client: Client, rng: str) -> None:
    img = push_image(client, "x", "t")
    r = client.request("GET", f"/v2/x/blobs/{sha(img.layers[1])}", headers={"Range": rng})
    assert r.status == 416
    assert r.headers["content-range"] == "bytes */900"
    assert r.codes() == ["RANGE_INVALID"]


def test_multi_range_gets_whole_blob(client: Client) -> None:
    img = push_image(client, "x", "t")
    r = client.request("GET", f"/v2/x/blobs/{sha(img.layers[1])}",
                       headers={"Range": "bytes=0-1,5-6"})
    assert r.status == 200 and r.body == img.layers[1]


def test_unknowns(client: Client) -> None:
    push_image(client, "known", "t")
    missing = sha(b"nothing")
    r = client.request("GET", "/v2/known/manifests/nope")
    assert (r.status, r.codes()) == (404, ["MANIFEST_UNKNOWN"])
    r = client.request("GET", f"/v2/known/manifests/{missing}")
    assert (r.status, r.codes()) == (404, ["MANIFEST_UNKNOWN"])
    assert client.request("HEAD", "/v2/known/manifests/nope").status == 404
    r = client.request("GET", f"/v2/known/blobs/{missing}")
    assert (r.status, r.codes()) == (404, ["BLOB_UNKNOWN"])
    assert r.json()["errors"][0]["detail"] == {"digest": missing}
    assert client.request("HEAD", f"/v2/known/blobs/{missing}").status == 404
    r = client.request("GET", "/v2/unknown/repo/tags/list")
    assert (r.status, r.codes()) == (404, ["NAME_UNKNOWN"])


def test_blob_of_another_repository_is_not_served(client: Client) -> None:
    img = push_image(client, "a", "t")
    r = client.request("GET", f"/v2/b/blobs/{sha(img.config)}")
    assert (r.status, r.codes()) == (404, ["BLOB_UNKNOWN"])
    assert client.request("GET", f"/v2/b/manifests/{img.digest}").status == 404


@pytest.mark.parametrize("bad", ["sha256:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64])
def test_bad_digest_is_400(client: Client, bad: str) -> None:
    r = client.request("GET", f"/v2/a/blobs/{bad}")
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])
    r = client.request("GET", f"/v2/a/manifests/{bad}")
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])


@pytest.mark.parametrize("name", ["UPPER/case", "a/../b", "a//b", "-a", "a/_x", ".",
                                  "a/./b", "x" * 256, "a%2F..%2Fb"])
def test_bad_names_are_name_invalid(client: Client, name: str) -> None:
    r = client.request("GET", f"/v2/{name}/tags/list")
    assert (r.status, r.codes()) == (400, ["NAME_INVALID"]), name
    r = client.request("POST", f"/v2/{name}/blobs/uploads/")
    assert (r.status, r.codes()) == (400, ["NAME_INVALID"]), name


def test_nested_names_and_route_words(client: Client) -> None:
    """Repositories whose components look like route words still route right."""
    for name in ("a/blobs", "manifests/tags", "x/referrers/uploads"):
        img = push_image(client, name, "v")
        assert client.request("GET", f"/v2/{name}/manifests/v").body == img.manifest
        assert client.request("GET", f"/v2/{name}/blobs/{sha(img.config)}").body == img.config
        assert json.loads(client.request("GET", f"/v2/{name}/tags/list").body)["tags"] == ["v"]


def test_keep_alive_across_requests(client: Client) -> None:
    img = push_image(client, "k", "t")
    conn = client.conn
    for _ in range(5):
        assert client.request("GET", f"/v2/k/blobs/{sha(img.layers[0])}").status == 200
        assert client.request("GET", "/v2/k/blobs/" + sha(b"missing")).status == 404
    assert client.conn is conn
