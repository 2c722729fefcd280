"""Online garbage collection: what is swept, what is kept, and GC racing a push.

The race tests pause one side at a chosen storage operation (a driver wrapper with
one-shot gates) and let the other run, for each interleaving the protocol in
``ketch.registry.gc`` names; a stress test then runs pushes and collections together.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ketch.oci import mediatypes as mt
from ketch.oci.digest import Digest
from ketch.registry import layout
from ketch.registry.errors import ErrorList, RegistryError
from ketch.registry.gc import GarbageCollector, GCOptions
from ketch.registry.repository import Registry
from ketch.registry.storage import FilesystemDriver, InMemoryDriver, PathNotFound, StorageDriver
from tests.unit.test_registry_helpers import descriptor, push_image, serve, sha


@dataclass
class Gate:
    op: str
    match: Callable[[str], bool]
    after: bool
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    used: bool = False


class HookedDriver(InMemoryDriver):
    """An in-memory driver whose put_content/delete can stop at a gate (once)."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[Gate] = []

    def pause(self, op: str, match: Callable[[str], bool], *, after: bool = False) -> Gate:
        g = Gate(op, match, after)
        self.gates.append(g)
        return g

    def _gate(self, op: str, path: str, after: bool) -> None:
        for g in self.gates:
            if not g.used and g.op == op and g.after == after and g.match(path):
                g.used = True
                g.reached.set()
                assert g.release.wait(10), "gate never released"

    def put_content(self, path: str, data: bytes) -> None:
        self._gate("put", path, False)
        super().put_content(path, data)
        self._gate("put", path, True)

    def delete(self, path: str) -> None:
        self._gate("delete", path, False)
        super().delete(path)
        self._gate("delete", path, True)


def exists(driver: StorageDriver, path: str) -> bool:
    try:
        driver.stat(path)
        return True
    except PathNotFound:
        return False


def blob(reg: Registry, name: str, data: bytes) -> Digest:
    """Push ``data`` as a blob of ``name`` (the upload path a client takes)."""
    upload = reg.start_upload(name)
    app = reg.appender(name, upload)
    app.write(data)
    app.commit()
    d = Digest.parse(sha(data))
    reg.finish_upload(name, upload, d)
    return d


def image(reg: Registry, name: str, seed: bytes) -> tuple[bytes, list[Digest]]:
    """Push a config and a layer; the manifest body naming them (not pushed) and the
    blob digests."""
    config = json.dumps({"seed": seed.hex(), "rootfs": {"type": "layers",
                                                        "diff_ids": []}}).encode()
    layer = b"layer-" + seed * 50
    digests = [blob(reg, name, config), blob(reg, name, layer)]
    body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                       "config": descriptor(mt.OCI_CONFIG, config),
                       "layers": [descriptor(mt.OCI_LAYER_GZIP, layer)]}).encode()
    return body, digests


def gc(driver: StorageDriver, **opts: float | bool) -> GarbageCollector:
    return GarbageCollector(driver, GCOptions(**opts))  # type: ignore[arg-type]


def consistent(driver: StorageDriver) -> None:
    """No manifest anywhere points at a missing blob, child or revision."""
    g = GarbageCollector(driver)
    for name in g.repositories():
        for d in g.revisions(name):
            assert exists(driver, layout.blob_data(d)), f"{name}: manifest {d} has no bytes"
            m = g.manifest(name, d)
            assert m is not None
            for b in m.blobs:
                assert exists(driver, layout.blob_data(b.digest)), f"{name}@{d} lost {b.digest}"
            for c in m.children:
                assert exists(driver, layout.revision_link(name, c.digest))


@pytest.fixture(params=["filesystem", "inmemory"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    if request.param == "filesystem":
        return FilesystemDriver(tmp_path / "store", fsync=False)
    return InMemoryDriver()


# -- what is swept ---------------------------------------------------------------------


def test_sweeps_unreferenced_keeps_referenced(driver: StorageDriver) -> None:
    reg = Registry(driver)
    body, needed = image(reg, "app", b"a")
    digest = reg.put_manifest("app", "v1", mt.OCI_MANIFEST, body).digest
    orphan = blob(reg, "app", b"never referenced")
    other = blob(reg, "other", b"never referenced either")
    report = gc(driver, grace=0).run()
    assert sorted(report.blobs_deleted) == sorted([str(orphan), str(other)])
    assert report.bytes_freed == len(b"never referenced") + len(b"never referenced either")
    for d in [*needed, digest]:
        assert exists(driver, layout.blob_data(d))
    assert not exists(driver, layout.blob_data(orphan))
    assert not exists(driver, layout.layer_link("app", orphan))  # dangling link went too
    assert reg.get_manifest("app", "v1")[1] == body
    assert not [fi for fi in driver.walk("") if fi.path.endswith("/sweeping")]
    assert gc(driver, grace=0).run().blobs_deleted == []  # idempotent


def test_grace_period_keeps_young_blobs(driver: StorageDriver) -> None:
    reg = Registry(driver)
    orphan = blob(reg, "app", b"just pushed, manifest still to come")
    report = gc(driver, grace=3600).run()
    assert report.blobs_deleted == [] and report.blobs_kept_young == 1
    assert exists(driver, layout.blob_data(orphan))
    later = GarbageCollector(driver, GCOptions(grace=3600), clock=lambda: time.time() + 7200)
    assert later.run().blobs_deleted == [str(orphan)]


def test_deleted_manifest_frees_its_blobs_but_not_shared_ones(driver: StorageDriver) -> None:
    reg = Registry(driver)
    body1, blobs1 = image(reg, "app", b"one")
    body2, blobs2 = image(reg, "app", b"two")
    d1 = reg.put_manifest("app", "v1", mt.OCI_MANIFEST, body1).digest
    reg.put_manifest("app", "v2", mt.OCI_MANIFEST, body2)
    reg.link_blob("copy", blobs1[0])  # v1's config also mounted elsewhere, unreferenced
    reg.delete_manifest("app", d1)
    report = gc(driver, grace=0).run()
    assert sorted(report.blobs_deleted) == sorted(str(d) for d in [d1, *blobs1])
    for d in blobs2:
        assert exists(driver, layout.blob_data(d))
    consistent(driver)


def test_abandoned_uploads_removed_after_ttl(driver: StorageDriver) -> None:
    reg = Registry(driver)
    idle = reg.start_upload("app")
    app = reg.appender("app", idle)
    app.write(b"half a layer")
    app.close()
    assert gc(driver, grace=0).run().uploads_deleted == []  # default TTL: a day
    later = GarbageCollector(driver, GCOptions(grace=0, upload_ttl=60),
                             clock=lambda: time.time() + 120)
    assert later.run().uploads_deleted == [f"app/{idle}"]
    assert not exists(driver, layout.upload_dir("app", idle))


def test_untagged_manifests_kept_or_removed(driver: StorageDriver) -> None:
    reg = Registry(driver)
    tagged_body, tagged_blobs = image(reg, "app", b"tagged")
    tagged = reg.put_manifest("app", "v1", mt.OCI_MANIFEST, tagged_body).digest
    loose_body, loose_blobs = image(reg, "app", b"loose")
    loose = reg.put_manifest("app", Digest.parse(sha(loose_body)), mt.OCI_MANIFEST,
                             loose_body).digest
    child_body, _ = image(reg, "app", b"child")
    child = reg.put_manifest("app", Digest.parse(sha(child_body)), mt.OCI_MANIFEST,
                             child_body).digest
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                        "manifests": [descriptor(mt.OCI_MANIFEST, child_body)]}).encode()
    reg.put_manifest("app", "multi", mt.OCI_INDEX, index)
    empty = b"{}"
    blob(reg, "app", empty)

    def referrer(subject: bytes, kind: str) -> Digest:
        body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "artifactType": kind,
                           "config": descriptor("application/vnd.oci.empty.v1+json", empty),
                           "layers": [], "subject": descriptor(mt.OCI_MANIFEST, subject)}
                          ).encode()
        return reg.put_manifest("app", Digest.parse(sha(body)), mt.OCI_MANIFEST, body).digest

    sig_of_tagged = referrer(tagged_body, "application/x-sig")
    sig_of_loose = referrer(loose_body, "application/x-sig")

    kept = gc(driver, grace=0).run()  # default: untagged manifests stay
    assert kept.manifests_deleted == [] and kept.blobs_deleted == []

    report = gc(driver, grace=0, remove_untagged=True).run()
    assert sorted(report.manifests_deleted) == sorted([f"app@{loose}", f"app@{sig_of_loose}"])
    assert sorted(report.blobs_deleted) == sorted(str(d) for d in
                                                  [loose, sig_of_loose, *loose_blobs])
    for d in (tagged, child, sig_of_tagged):
        assert exists(driver, layout.revision_link("app", d))
    assert [r["digest"] for r in reg.referrers("app", tagged)] == [str(sig_of_tagged)]
    assert reg.referrers("app", loose) == []
    for d in tagged_blobs:
        assert exists(driver, layout.blob_data(d))
    consistent(driver)


def test_dry_run_changes_nothing(driver: StorageDriver) -> None:
    reg = Registry(driver)
    orphan = blob(reg, "app", b"orphan")
    before = sorted(fi.path for fi in driver.walk(""))
    report = gc(driver, grace=0, dry_run=True, remove_untagged=True).run()
    assert report.blobs_deleted == [str(orphan)]
    assert sorted(fi.path for fi in driver.walk("")) == before


# -- GC racing a manifest PUT ----------------------------------------------------------


def run_in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:  # reported to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def codes(err: object) -> list[str]:
    if isinstance(err, ErrorList):
        return sorted({e.code for e in err.errors})
    return [err.code] if isinstance(err, RegistryError) else [repr(err)]


def is_revision(path: str) -> bool:
    return "/_manifests/revisions/" in path and path.endswith("/link")


def test_race_gc_sweeps_before_the_manifest_lands() -> None:
    """PUT checked its blobs, then GC (grace 0) deletes them before the revision is
    written: the PUT must fail with MANIFEST_BLOB_UNKNOWN and leave nothing behind."""
    driver = HookedDriver()
    reg = Registry(driver)
    body, blobs = image(reg, "app", b"race")
    gate = driver.pause("put", is_revision)
    t, out = run_in_thread(lambda: reg.put_manifest("app", "v1", mt.OCI_MANIFEST, body))
    assert gate.reached.wait(10)
    report = gc(driver, grace=0).run()
    # the config, the layer, and the manifest's own bytes (written, not yet referenced)
    assert sorted(report.blobs_deleted) == sorted(str(d) for d in
                                                  [*blobs, Digest.parse(sha(body))])
    gate.release.set()
    t.join(10)
    assert codes(out.get("error")) == ["MANIFEST_BLOB_UNKNOWN"]
    assert not exists(driver, layout.revision_link("app", Digest.parse(sha(body))))
    assert not exists(driver, layout.tag_link("app", "v1"))
    consistent(driver)


def test_race_manifest_lands_before_gc_marks() -> None:
    """The revision and tag are written while GC has not marked yet: GC sees them."""
    driver = HookedDriver()
    reg = Registry(driver)
    body, _ = image(reg, "app", b"race")
    gate = driver.pause("put", lambda p: p.endswith("/tags/v1/link"), after=True)
    t, out = run_in_thread(lambda: reg.put_manifest("app", "v1", mt.OCI_MANIFEST, body))
    assert gate.reached.wait(10)
    assert gc(driver, grace=0).run().blobs_deleted == []
    gate.release.set()
    t.join(10)
    assert "error" not in out, out
    assert reg.get_manifest("app", "v1")[1] == body
    consistent(driver)


def test_race_gc_marked_then_push_lands_so_gc_keeps() -> None:
    """GC has written its sweeping marks; the PUT lands and waits on them; GC's second
    look sees the new revision and keeps the blobs; the PUT succeeds."""
    driver = HookedDriver()
    reg = Registry(driver)
    body, _ = image(reg, "app", b"race")
    gate = driver.pause("put", lambda p: p.endswith("/sweeping"), after=True)
    gt, gout = run_in_thread(lambda: gc(driver, grace=0).run())
    assert gate.reached.wait(10)
    pt, pout = run_in_thread(lambda: reg.put_manifest("app", "v1", mt.OCI_MANIFEST, body))
    pt.join(0.3)
    assert pt.is_alive()  # waiting for GC to decide
    gate.release.set()
    gt.join(10)
    pt.join(10)
    assert "error" not in pout and "error" not in gout, (pout, gout)
    report = gout["result"]
    assert report.blobs_deleted == [] and report.reprieved == 2  # type: ignore[attr-defined]
    assert reg.get_manifest("app", "v1")[1] == body
    consistent(driver)


def test_race_gc_decided_then_push_lands_so_push_fails_cleanly() -> None:
    """GC looked again (no revision yet) and is about to delete; the PUT lands, waits on
    the mark, sees the blob gone and takes its links back."""
    driver = HookedDriver()
    reg = Registry(driver)
    body, blobs = image(reg, "app", b"race")
    gate = driver.pause("delete", lambda p: p == layout.blob_dir(blobs[0]))
    gt, gout = run_in_thread(lambda: gc(driver, grace=0).run())
    assert gate.reached.wait(10)
    pt, pout = run_in_thread(lambda: reg.put_manifest("app", "v1", mt.OCI_MANIFEST, body))
    pt.join(0.3)
    assert pt.is_alive()
    gate.release.set()
    gt.join(10)
    pt.join(10)
    assert codes(pout.get("error")) == ["MANIFEST_BLOB_UNKNOWN"]
    assert "error" not in gout, gout
    assert not exists(driver, layout.tag_link("app", "v1"))
    assert not exists(driver, layout.revision_link("app", Digest.parse(sha(body))))
    consistent(driver)


def test_race_untagged_child_swept_under_an_index_push() -> None:
    """remove_untagged: GC sweeps an untagged child while an index naming it is pushed."""
    driver = HookedDriver()
    reg = Registry(driver)
    child_body, _ = image(reg, "app", b"child")
    reg.put_manifest("app", Digest.parse(sha(child_body)), mt.OCI_MANIFEST, child_body)
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                        "manifests": [descriptor(mt.OCI_MANIFEST, child_body)]}).encode()
    child_rev = layout.revision_dir("app", Digest.parse(sha(child_body)))
    gate = driver.pause("delete", lambda p: p == child_rev)
    gt, gout = run_in_thread(lambda: gc(driver, grace=0, remove_untagged=True).run())
    assert gate.reached.wait(10)
    pt, pout = run_in_thread(lambda: reg.put_manifest("app", "multi", mt.OCI_INDEX, index))
    gate.release.set()
    gt.join(10)
    pt.join(10)
    assert codes(pout.get("error")) == ["MANIFEST_BLOB_UNKNOWN"]
    assert "error" not in gout, gout
    assert not exists(driver, layout.tag_link("app", "multi"))
    consistent(driver)


def test_stress_pushes_and_collections_over_http() -> None:
    """Pushes (blobs then manifest) against back-to-back collections with grace 0:
    every PUT succeeds or fails with MANIFEST_BLOB_UNKNOWN, and the store stays
    consistent."""
    driver = InMemoryDriver()
    server = serve(driver)
    srv = next(server)
    stop = threading.Event()
    runs = [0]

    def collect() -> None:
        # back to back, with a 1-30 ms breath between runs: a pure-Python GC in a tight
        # loop holds the GIL so much that the server thread waits seconds per request,
        # and the varying breath lets some pushes finish between runs, some not
        pause = random.Random(7)
        while not stop.wait(pause.uniform(0.001, 0.03)):
            gc(driver, grace=0).run()
            runs[0] += 1

    gt = threading.Thread(target=collect, daemon=True)
    gt.start()
    outcomes: dict[str, int] = {}
    c = srv.client()
    try:
        for i in range(40):
            try:
                push_image(c, f"s/r{i % 4}", f"t{i}", seed=str(i).encode())
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except AssertionError as e:
                assert "MANIFEST_BLOB_UNKNOWN" in str(e), e
                outcomes["blob_unknown"] = outcomes.get("blob_unknown", 0) + 1
    finally:
        stop.set()
        gt.join(30)
        c.close()
        next(server, None)  # stops the server
    assert runs[0] > 0 and sum(outcomes.values()) == 40
    consistent(driver)
    g = GarbageCollector(driver)
    for name in g.repositories():
        for tag, d in g.tags(name).items():
            assert Registry(driver).get_manifest(name, tag)[0].digest == d
