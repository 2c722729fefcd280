"""Discovery and management: tags, _catalog, referrers, deletes, health and metrics."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ketch.oci import mediatypes as mt
from tests.unit import test_registry_helpers as helpers
from tests.unit.test_registry_helpers import Client, Image, Server, descriptor, push_image, sha

registry = helpers.registry  # fixtures
client = helpers.client


def follow(c: Client, url: str) -> list[list[str]]:
    """Every page from ``url`` by following Link headers; the key is tags/repositories."""
    pages = []
    while True:
        r = c.request("GET", url)
        assert r.status == 200
        doc = r.json()
        pages.append(doc.get("tags", doc.get("repositories")))
        link = r.headers.get("link")
        if link is None:
            return pages
        m = re.fullmatch(r'<([^>]+)>; rel="next"', link)
        assert m, link
        url = m.group(1)


def test_tags_list_and_pagination(client: Client) -> None:
    tags = ["v10", "v2", "latest", "1.0", "beta_1", "Z"]
    img = push_image(client, "t/r", tags[0])
    for t in tags[1:]:
        assert client.push_manifest("t/r", t, img.manifest).status == 201
    want = sorted(tags)
    r = client.request("GET", "/v2/t/r/tags/list")
    assert r.json() == {"name": "t/r", "tags": want}
    assert "link" not in r.headers
    assert follow(client, "/v2/t/r/tags/list?n=2") == [want[0:2], want[2:4], want[4:6]]
    assert follow(client, "/v2/t/r/tags/list?n=4") == [want[0:4], want[4:]]
    r = client.request("GET", f"/v2/t/r/tags/list?n=2&last={want[1]}")
    assert r.json()["tags"] == want[2:4]
    assert r.headers["link"] == f'</v2/t/r/tags/list?n=2&last={want[3]}>; rel="next"'
    r = client.request("GET", "/v2/t/r/tags/list?last=v10")
    assert r.json()["tags"] == ["v2"]
    assert client.request("GET", "/v2/t/r/tags/list?n=0").json()["tags"] == []


@pytest.mark.parametrize("n", ["-1", "x", "100001"])
def test_bad_page_size(client: Client, n: str) -> None:
    push_image(client, "p", "t")
    r = client.request("GET", f"/v2/p/tags/list?n={n}")
    assert (r.status, r.codes()) == (400, ["PAGINATION_NUMBER_INVALID"])
    r = client.request("GET", f"/v2/_catalog?n={n}")
    assert r.status == 400


def test_catalog(client: Client) -> None:
    assert client.request("GET", "/v2/_catalog").json() == {"repositories": []}
    names = ["b", "a/x", "a/x/y", "c/d/e", "a"]
    for n in names:
        push_image(client, n, "t")
    client.push_blob("blobs/only", b"not a repository until a manifest arrives")
    want = sorted(names)
    assert client.request("GET", "/v2/_catalog").json() == {"repositories": want}
    assert follow(client, "/v2/_catalog?n=2") == [want[0:2], want[2:4], want[4:]]


def test_delete_tag_keeps_manifest(client: Client) -> None:
    img = push_image(client, "d", "one")
    client.push_manifest("d", "two", img.manifest)
    r = client.request("DELETE", "/v2/d/manifests/one")
    assert r.status == 202
    assert client.request("GET", "/v2/d/manifests/one").status == 404
    assert client.request("GET", "/v2/d/manifests/two").body == img.manifest
    assert client.request("GET", f"/v2/d/manifests/{img.digest}").body == img.manifest
    assert client.request("GET", "/v2/d/tags/list").json()["tags"] == ["two"]
    r = client.request("DELETE", "/v2/d/manifests/one")
    assert (r.status, r.codes()) == (404, ["MANIFEST_UNKNOWN"])


def test_delete_manifest_by_digest_removes_its_tags(client: Client) -> None:
    a = push_image(client, "d", "a", seed=b"a")
    client.push_manifest("d", "a2", a.manifest)
    push_image(client, "d", "b", seed=b"b")
    assert client.request("DELETE", f"/v2/d/manifests/{a.digest}").status == 202
    assert client.request("GET", f"/v2/d/manifests/{a.digest}").status == 404
    assert client.request("GET", "/v2/d/manifests/a").status == 404
    assert client.request("GET", "/v2/d/tags/list").json()["tags"] == ["b"]
    r = client.request("DELETE", f"/v2/d/manifests/{a.digest}")
    assert (r.status, r.codes()) == (404, ["MANIFEST_UNKNOWN"])
    # the same manifest in another repository is untouched
    other = push_image(client, "e", "a", seed=b"a")
    assert other.digest == a.digest
    assert client.request("GET", "/v2/e/manifests/a").status == 200


def test_delete_blob(client: Client) -> None:
    img = push_image(client, "d", "t")
    d = sha(img.layers[0])
    client.push_blob("other", img.layers[0])
    assert client.request("DELETE", f"/v2/d/blobs/{d}").status == 202
    r = client.request("GET", f"/v2/d/blobs/{d}")
    assert (r.status, r.codes()) == (404, ["BLOB_UNKNOWN"])
    assert client.request("GET", f"/v2/other/blobs/{d}").status == 200
    r = client.request("DELETE", f"/v2/d/blobs/{d}")
    assert (r.status, r.codes()) == (404, ["BLOB_UNKNOWN"])


# -- referrers ----------------------------------------------------------------------------


def push_referrer(c: Client, name: str, subject: Image, artifact_type: str | None,
                  payload: bytes, *, via_config: bool = False) -> tuple[str, dict[str, Any]]:
    empty = c.push_blob(name, b"{}")
    layer = c.push_blob(name, payload)
    doc: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": artifact_type if via_config and artifact_type
                   else mt.OCI_EMPTY, "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": layer,
                    "size": len(payload)}],
        "subject": {"mediaType": mt.OCI_MANIFEST, "digest": subject.digest,
                    "size": len(subject.manifest)},
        "annotations": {"org.example.kind": payload.decode()},
    }
    if artifact_type and not via_config:
        doc["artifactType"] = artifact_type
    body = json.dumps(doc).encode()
    r = c.push_manifest(name, sha(body), body)
    assert r.status == 201, r.body
    assert r.headers["oci-subject"] == subject.digest
    return sha(body), doc


def test_referrers(client: Client) -> None:
    img = push_image(client, "ref", "t")
    sig, _ = push_referrer(client, "ref", img, "application/vnd.example.sig", b"sig")
    sbom, _ = push_referrer(client, "ref", img, "application/vnd.example.sbom", b"sbom")
    cfg, _ = push_referrer(client, "ref", img, "application/vnd.example.cfg", b"cfg",
                           via_config=True)
    r = client.request("GET", f"/v2/ref/referrers/{img.digest}")
    assert r.status == 200
    assert r.headers["content-type"] == mt.OCI_INDEX
    assert "oci-filters-applied" not in r.headers
    index = r.json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == mt.OCI_INDEX
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert set(by_digest) == {sig, sbom, cfg}
    assert by_digest[sig]["artifactType"] == "application/vnd.example.sig"
    assert by_digest[cfg]["artifactType"] == "application/vnd.example.cfg"  # from config
    assert by_digest[sig]["annotations"] == {"org.example.kind": "sig"}
    assert by_digest[sig]["mediaType"] == mt.OCI_MANIFEST
    got = client.request("GET", f"/v2/ref/manifests/{sig}")
    assert by_digest[sig]["size"] == len(got.body)
    r = client.request("GET", f"/v2/ref/referrers/{img.digest}"
                              "?artifactType=application/vnd.example.sbom")
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert [m["digest"] for m in r.json()["manifests"]] == [sbom]
    # deleting a referrer removes it from the index
    assert client.request("DELETE", f"/v2/ref/manifests/{sbom}").status == 202
    r = client.request("GET", f"/v2/ref/referrers/{img.digest}")
    assert {m["digest"] for m in r.json()["manifests"]} == {sig, cfg}


def test_referrers_of_unknown_subject_is_empty_not_404(client: Client) -> None:
    r = client.request("GET", f"/v2/nothing/referrers/{sha(b'x')}")
    assert r.status == 200 and r.json()["manifests"] == []
    r = client.request("GET", "/v2/nothing/referrers/sha256:bad")
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])


def test_referrer_pushed_before_its_subject(client: Client) -> None:
    subject = Image(manifest=b'{"not":"pushed yet"}', digest=sha(b'{"not":"pushed yet"}'),
                    config=b"")
    d, _ = push_referrer(client, "early", subject, "application/vnd.example.sig", b"s")
    r = client.request("GET", f"/v2/early/referrers/{subject.digest}")
    assert [m["digest"] for m in r.json()["manifests"]] == [d]


def test_referrers_are_per_repository(client: Client) -> None:
    img = push_image(client, "one", "t")
    push_image(client, "two", "t")
    push_referrer(client, "one", img, "application/vnd.example.sig", b"s")
    r = client.request("GET", f"/v2/two/referrers/{img.digest}")
    assert r.json()["manifests"] == []


def test_index_with_subject(client: Client) -> None:
    img = push_image(client, "ix", "t")
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "artifactType": "application/x.idx",
           "manifests": [descriptor(mt.OCI_MANIFEST, img.manifest)],
           "subject": descriptor(mt.OCI_MANIFEST, img.manifest)}
    r = client.push_manifest("ix", "idx", doc, mt.OCI_INDEX)
    assert r.status == 201 and r.headers["oci-subject"] == img.digest
    r = client.request("GET", f"/v2/ix/referrers/{img.digest}")
    [m] = r.json()["manifests"]
    assert (m["mediaType"], m["artifactType"]) == (mt.OCI_INDEX, "application/x.idx")


# -- health and metrics -------------------------------------------------------------------


def test_health(client: Client) -> None:
    r = client.request("GET", "/health")
    assert r.status == 200 and r.json()["status"] == "ok"


def test_metrics_count_requests_and_bytes(client: Client) -> None:
    client.push_blob("m", b"x" * 1000)
    client.request("GET", f"/v2/m/blobs/{sha(b'x' * 1000)}")
    client.request("GET", "/v2/m/manifests/nope")
    text = client.request("GET", "/metrics").body.decode()
    assert "# TYPE ketch_registry_http_requests_total counter" in text
    assert 'ketch_registry_http_requests_total{method="POST",code="201"} 1' in text
    assert 'ketch_registry_http_requests_total{method="GET",code="404"} 1' in text
    assert 'ketch_registry_http_received_bytes_total{method="POST",code="201"} 1000' in text
    assert 'ketch_registry_http_sent_bytes_total{method="GET",code="200"} 1000' in text
    assert 'ketch_registry_events_total{event="blob_pushed"} 1' in text


def test_registry_server_fixture_storage(registry: Server) -> None:
    assert registry.driver.list("") == []
