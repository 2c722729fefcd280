"""Accept negotiation for manifests, ``?tag=`` on a PUT by digest, referrers pages."""

from __future__ import annotations

import http.client
import json
import re

import pytest

from ketch.oci import mediatypes as mt
from ketch.registry.handlers.manifests import accepts
from tests.unit import test_registry_helpers as helpers
from tests.unit.test_registry_discovery import push_referrer
from tests.unit.test_registry_helpers import Client, descriptor, push_image, sha

registry = helpers.registry  # fixtures
client = helpers.client


def test_accepts() -> None:
    assert accepts([], mt.OCI_INDEX)
    assert accepts([f"{mt.OCI_MANIFEST}, {mt.OCI_INDEX};q=0.9"], mt.OCI_INDEX)
    assert accepts(["*/*"], mt.OCI_INDEX)
    assert accepts(["application/*"], mt.OCI_INDEX)
    assert accepts([mt.DOCKER_MANIFEST, mt.OCI_MANIFEST], mt.OCI_MANIFEST)  # repeated headers
    assert not accepts([mt.DOCKER_MANIFEST], mt.OCI_MANIFEST)
    assert not accepts([f"{mt.OCI_MANIFEST}, {mt.DOCKER_MANIFEST}"], mt.OCI_INDEX)


def test_manifest_get_honours_accept(client: Client) -> None:
    img = push_image(client, "neg", "v1")
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                        "manifests": [descriptor(mt.OCI_MANIFEST, img.manifest)]}).encode()
    assert client.push_manifest("neg", "multi", index, mt.OCI_INDEX).status == 201
    for method in ("GET", "HEAD"):
        r = client.request(method, "/v2/neg/manifests/multi",
                           headers={"Accept": f"{mt.OCI_MANIFEST}, {mt.DOCKER_MANIFEST}"})
        assert r.status == 404
        if method == "GET":
            assert r.codes() == ["MANIFEST_UNKNOWN"]
            assert r.json()["errors"][0]["detail"]["mediaType"] == mt.OCI_INDEX
        r = client.request(method, "/v2/neg/manifests/multi",
                           headers={"Accept": f"{mt.OCI_MANIFEST}, {mt.OCI_INDEX}"})
        assert r.status == 200 and r.headers["content-type"] == mt.OCI_INDEX
    r = client.request("GET", f"/v2/neg/manifests/{sha(index)}", headers={"Accept": "*/*"})
    assert r.status == 200 and r.body == index
    assert client.request("GET", "/v2/neg/manifests/v1").body == img.manifest  # no Accept


def test_put_by_digest_with_tags(client: Client) -> None:
    img = push_image(client, "tagged", "first")
    r = client.request("PUT", f"/v2/tagged/manifests/{img.digest}?tag=a&tag=b",
                       img.manifest, {"Content-Type": mt.OCI_MANIFEST})
    assert r.status == 201
    assert sorted(v for k, v in _all_headers(client, img) if k == "oci-tag") == ["a", "b"]
    tags = client.request("GET", "/v2/tagged/tags/list").json()["tags"]
    assert tags == ["a", "b", "first"]
    for t in ("a", "b"):
        assert client.request("GET", f"/v2/tagged/manifests/{t}").body == img.manifest
    r = client.request("PUT", f"/v2/tagged/manifests/{img.digest}?tag=-bad",
                       img.manifest, {"Content-Type": mt.OCI_MANIFEST})
    assert r.status == 400 and r.codes() == ["MANIFEST_INVALID"]
    assert "-bad" not in client.request("GET", "/v2/tagged/tags/list").json()["tags"]


def _all_headers(client: Client, img: helpers.Image) -> list[tuple[str, str]]:
    """The raw header list of a PUT by digest with tags (the helper's dict keeps one)."""
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=20)
    try:
        conn.request("PUT", f"/v2/tagged/manifests/{img.digest}?tag=a&tag=b", img.manifest,
                     {"Content-Type": mt.OCI_MANIFEST})
        r = conn.getresponse()
        r.read()
        return [(k.lower(), v) for k, v in r.getheaders()]
    finally:
        conn.close()


def next_page(link: str | None) -> str | None:
    if link is None:
        return None
    m = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert m is not None, link
    return m.group(1)


@pytest.mark.parametrize("page", [1, 2, 3])
def test_referrers_pagination(client: Client, page: int) -> None:
    img = push_image(client, "refs", "v1")
    made = sorted(push_referrer(client, "refs", img, f"application/x-{i % 2}",
                                f"p{i}".encode())[0] for i in range(5))
    seen: list[str] = []
    url: str | None = f"/v2/refs/referrers/{img.digest}?n={page}"
    while url:
        r = client.request("GET", url)
        assert r.status == 200 and r.json()["mediaType"] == mt.OCI_INDEX
        batch = [m["digest"] for m in r.json()["manifests"]]
        assert 0 < len(batch) <= page
        seen += batch
        url = next_page(r.headers.get("link"))
    assert seen == made
    # the filter survives across pages
    seen = []
    url = f"/v2/refs/referrers/{img.digest}?n=1&artifactType=application/x-0"
    while url:
        r = client.request("GET", url)
        assert r.headers["oci-filters-applied"] == "artifactType"
        seen += [m["digest"] for m in r.json()["manifests"]]
        url = next_page(r.headers.get("link"))
    assert len(seen) == 3


def test_referrers_unpaged_by_default(client: Client) -> None:
    img = push_image(client, "few", "v1")
    push_referrer(client, "few", img, "application/x", b"p")
    r = client.request("GET", f"/v2/few/referrers/{img.digest}")
    assert "link" not in r.headers and len(r.json()["manifests"]) == 1
