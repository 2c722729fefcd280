"""Webhook notifications: envelope, retries with backoff, and never blocking a push."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ketch.errors import InvalidArgument
from ketch.oci import mediatypes as mt
from ketch.registry.notify import EVENTS_MEDIA_TYPE, Endpoint, Notifier
from ketch.registry.storage import InMemoryDriver
from tests.unit.test_registry_helpers import push_image, serve


class Receiver:
    """An in-process webhook receiver: answers ``fail_first`` requests with 503, and
    holds each request while ``hold`` is set."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.hold = threading.Event()
        self.held = threading.Event()
        self.got = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                while outer.hold.is_set():
                    outer.held.set()
                    threading.Event().wait(0.01)
                with outer.got:
                    outer.attempts += 1
                    ok = outer.attempts > outer.fail_first
                    if ok:
                        outer.bodies.append(json.loads(body))
                        outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                    outer.got.notify_all()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.bodies) >= n, timeout), self.bodies
            return list(self.bodies)

    def close(self) -> None:
        self.hold.clear()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_push_and_delete_events(receiver: Receiver) -> None:
    notifier = Notifier([Endpoint(receiver.url, {"X-Token": "t0k"}, backoff=0.01)])
    for srv in serve(InMemoryDriver(), notifier=notifier):
        c = srv.client()
        img = push_image(c, "team/app", "v1")
        assert c.request("DELETE", "/v2/team/app/manifests/v1").status == 202
        assert c.request("DELETE", f"/v2/team/app/manifests/{img.digest}").status == 202
        c.close()
        bodies = receiver.wait_for(6)  # 3 blob pushes (test_registry_notify_blobs), then these
    assert all(len(b["events"]) == 1 for b in bodies)
    events = [b["events"][0] for b in bodies
              if b["events"][0]["target"].get("mediaType") != "application/octet-stream"]
    push, tag_delete, manifest_delete = events
    assert push["action"] == "push"
    assert push["target"] == {"mediaType": mt.OCI_MANIFEST, "digest": img.digest,
                              "size": len(img.manifest), "length": len(img.manifest),
                              "repository": "team/app", "tag": "v1",
                              "url": f"/v2/team/app/manifests/{img.digest}"}
    assert push["request"]["method"] == "PUT" and push["request"]["host"].startswith("127.0.0.1")
    assert push["timestamp"].endswith("Z") and len(push["id"]) == 32
    assert push["source"]["instanceID"]
    assert tag_delete["action"] == "delete" and tag_delete["target"] == \
        {"repository": "team/app", "tag": "v1"}
    assert manifest_delete["target"] == {"repository": "team/app", "digest": img.digest}
    assert receiver.headers[0]["content-type"] == EVENTS_MEDIA_TYPE
    assert receiver.headers[0]["x-token"] == "t0k"
    assert len({e["id"] for e in events}) == 3


def test_retried_with_backoff_until_delivered() -> None:
    r = Receiver(fail_first=2)
    try:
        ep = Endpoint(r.url, attempts=5, backoff=0.01)
        n = Notifier([ep])
        n.emit({"id": "e1", "action": "push"})
        assert r.wait_for(1)[0]["events"][0]["id"] == "e1"
        assert r.attempts == 3
        n.close()
        assert (ep.sent, ep.failed) == (1, 0)
    finally:
        r.close()


def test_gives_up_after_attempts() -> None:
    r = Receiver(fail_first=100)
    try:
        ep = Endpoint(r.url, attempts=3, backoff=0.01)
        n = Notifier([ep])
        n.emit({"id": "e1"})
        with r.got:
            assert r.got.wait_for(lambda: r.attempts >= 3, 10)
        n.close()
        assert (ep.sent, ep.failed, r.attempts) == (0, 1, 3)
    finally:
        r.close()


def test_a_stuck_receiver_never_blocks_the_push(receiver: Receiver) -> None:
    receiver.hold.set()
    notifier = Notifier([Endpoint(receiver.url, timeout=30, backoff=0.01, queue_size=2)])
    for srv in serve(InMemoryDriver(), notifier=notifier):
        c = srv.client()
        push_image(c, "a", "v1")  # the first event is held by the receiver
        assert receiver.held.wait(10)
        for i in range(4):  # the queue (2) fills, the rest are dropped, pushes go on
            push_image(c, "a", f"v{i + 2}", seed=str(i).encode())
        assert receiver.bodies == []
        assert notifier.endpoints[0].dropped >= 1
        receiver.hold.clear()
        c.close()
        assert len(receiver.wait_for(3)) >= 3


def test_endpoint_url_checked() -> None:
    with pytest.raises(InvalidArgument):
        Endpoint("ftp://x/")
    with pytest.raises(InvalidArgument):
        Endpoint("not a url")
