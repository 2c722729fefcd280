"""Webhook events for blobs, as Distribution sends them: ``push`` when an upload
completes (monolithic or chunked), ``mount`` for a cross-repository mount, ``delete``
for a blob delete — in the same envelope as the manifest events."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from ketch.registry.notify import EVENTS_MEDIA_TYPE, Endpoint, Notifier
from ketch.registry.storage import InMemoryDriver
from tests.unit.test_registry_helpers import Client, Server, push_image, serve, sha
from tests.unit.test_registry_notify import Receiver

OCTET = "application/octet-stream"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def server(receiver: Receiver) -> Iterator[Server]:
    notifier = Notifier([Endpoint(receiver.url, backoff=0.01)])
    yield from serve(InMemoryDriver(), notifier=notifier)


def events(receiver: Receiver, n: int) -> list[dict[str, Any]]:
    """The first ``n`` events received, each from a one-event envelope."""
    bodies = receiver.wait_for(n)
    assert all(len(b["events"]) == 1 for b in bodies), bodies
    return [b["events"][0] for b in bodies]


def blob_target(repo: str, data: bytes) -> dict[str, Any]:
    d = sha(data)
    return {"mediaType": OCTET, "digest": d, "size": len(data), "length": len(data),
            "repository": repo, "url": f"/v2/{repo}/blobs/{d}"}


def test_monolithic_upload_is_a_blob_push(server: Server, receiver: Receiver) -> None:
    c = server.client()
    data = b"one whole blob"
    c.push_blob("team/app", data)
    c.close()
    (ev,) = events(receiver, 1)
    assert ev["action"] == "push"
    assert ev["target"] == blob_target("team/app", data)
    assert ev["request"]["method"] == "POST"
    assert ev["timestamp"].endswith("Z") and len(ev["id"]) == 32
    assert ev["source"]["instanceID"]
    assert receiver.headers[0]["content-type"] == EVENTS_MEDIA_TYPE


def test_chunked_upload_is_one_push_when_it_completes(server: Server,
                                                      receiver: Receiver) -> None:
    c = server.client()
    data = b"first part|" + b"x" * 5000 + b"|last part"
    start = c.request("POST", "/v2/chunks/blobs/uploads/")
    assert start.status == 202
    loc = start.headers["location"]
    patch = c.request("PATCH", loc, data[:11], {"Content-Range": "0-10",
                                                "Content-Type": OCTET})
    assert patch.status == 202
    assert receiver.bodies == []  # a chunk is no event
    put = c.request("PUT", f"{loc}?digest={sha(data)}", data[11:],
                    {"Content-Type": OCTET})
    assert put.status == 201, put.body
    c.close()
    (ev,) = events(receiver, 1)
    assert ev["action"] == "push" and ev["request"]["method"] == "PUT"
    assert ev["target"] == blob_target("chunks", data)


def test_failed_upload_sends_nothing(server: Server, receiver: Receiver) -> None:
    c = server.client()
    wrong = "sha256:" + hashlib.sha256(b"other bytes").hexdigest()
    r = c.request("POST", f"/v2/bad/blobs/uploads/?digest={wrong}", b"these bytes",
                  {"Content-Type": OCTET})
    assert r.status == 400
    c.push_blob("bad", b"a good one")  # the next event is this one: none came before
    c.close()
    (ev,) = events(receiver, 1)
    assert ev["target"] == blob_target("bad", b"a good one")


def test_mount_from_a_repository_and_automatic_mount(server: Server,
                                                     receiver: Receiver) -> None:
    c = server.client()
    data = b"shared layer"
    d = c.push_blob("src/app", data)
    r = c.request("POST", f"/v2/dst/app/blobs/uploads/?mount={d}&from=src/app")
    assert r.status == 201
    r = c.request("POST", f"/v2/auto/app/blobs/uploads/?mount={d}")
    assert r.status == 201
    r = c.request("POST", f"/v2/miss/app/blobs/uploads/?mount={sha(b'nothing')}&from=src/app")
    assert r.status == 202  # nothing to mount: an upload starts, and no event
    c.close()
    pushed, mounted, auto = events(receiver, 3)
    assert pushed["action"] == "push"
    assert mounted["action"] == "mount"
    assert mounted["target"] == {**blob_target("dst/app", data), "fromRepository": "src/app"}
    assert auto["action"] == "mount"
    assert auto["target"] == blob_target("auto/app", data)
    assert len(receiver.bodies) == 3


def test_blob_delete_names_repository_and_digest(server: Server,
                                                 receiver: Receiver) -> None:
    c = server.client()
    d = c.push_blob("gone", b"soon deleted")
    assert c.request("DELETE", f"/v2/gone/blobs/{d}").status == 202
    assert c.request("DELETE", f"/v2/gone/blobs/{d}").status == 404  # no second event
    c.push_blob("gone", b"after")
    c.close()
    pushed, deleted, after = events(receiver, 3)
    assert deleted["action"] == "delete"
    assert deleted["target"] == {"repository": "gone", "digest": d}
    assert deleted["request"]["method"] == "DELETE"
    assert after["target"]["digest"] == sha(b"after")
    assert pushed["id"] != deleted["id"]


def test_image_push_sends_blob_events_then_the_manifest(server: Server,
                                                        receiver: Receiver) -> None:
    c: Client = server.client()
    img = push_image(c, "whole/image", "v1")
    c.close()
    evs = events(receiver, 4)
    assert [e["action"] for e in evs] == ["push"] * 4
    blob_evs, manifest_ev = evs[:3], evs[3]
    assert [e["target"] for e in blob_evs] == [
        blob_target("whole/image", b) for b in (img.config, *img.layers)]
    assert manifest_ev["target"]["digest"] == img.digest
    assert manifest_ev["target"]["tag"] == "v1"
    # the envelope is the manifest events' one: same keys, same request shape
    assert set(blob_evs[0]) == set(manifest_ev)
    assert set(blob_evs[0]["request"]) == set(manifest_ev["request"])
