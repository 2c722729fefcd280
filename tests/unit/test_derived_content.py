"""DerivedContent: layer blobs recorded by the snapshot that makes them, written out at
the first read. The maker here writes fixed bytes per chain ID (what a snapshot's
``diff_tar`` would give); the overlay path itself is covered through ketchd in
tests/compat/test_derived_layers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from ketch.content import ContentStore
from ketch.content.local import LocalContentStore
from ketch.engine.derived import DerivedContent
from ketch.errors import FailedPrecondition, NotFound
from ketch.oci.digest import digest_of
from tests.conformance.content_store_suite import ContentStoreSuite

LAYER = b"a layer tar, say" * 4096


class Snapshots:
    """Chain ID → the bytes its tar has; a chain missing from it is a removed snapshot."""

    def __init__(self) -> None:
        self.tars: dict[str, bytes] = {}
        self.made: list[str] = []

    def make(self, chain: str, out: IO[bytes]) -> None:
        self.made.append(chain)
        try:
            data = self.tars[chain]
        except KeyError:
            raise NotFound(f"snapshot {chain}: not found") from None
        for i in range(0, len(data), 1000):
            out.write(data[i:i + 1000])


@pytest.fixture
def snaps() -> Snapshots:
    return Snapshots()


@pytest.fixture
def store(tmp_path: Path, snaps: Snapshots) -> DerivedContent:
    return DerivedContent(LocalContentStore(tmp_path / "content"), str(tmp_path / "derived"),
                          snaps.make)


class TestDerivedContentIsAContentStore(ContentStoreSuite):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ContentStore]:
        yield DerivedContent(LocalContentStore(tmp_path / "content"),
                             str(tmp_path / "derived"), Snapshots().make)


def test_a_derived_blob_is_seen_before_it_is_written(store: DerivedContent,
                                                     snaps: Snapshots,
                                                     tmp_path: Path) -> None:
    d = digest_of(LAYER)
    snaps.tars["chain-a"] = LAYER
    store.add(d, len(LAYER), "chain-a", {"k": "v"})
    assert store.derived(d)
    info = store.info(d)
    assert (info.size, dict(info.labels)) == (len(LAYER), {"k": "v"})
    assert [i.digest for i in store.walk()] == [d]
    assert not list((tmp_path / "content").rglob(d.hex))  # nothing written yet
    assert snaps.made == []
    assert store.read(d, 5, 10) == LAYER[5:15]  # the first read writes it out
    assert not store.derived(d)
    with store.open(d) as f:
        assert f.read() == LAYER
    assert snaps.made == ["chain-a"]  # once
    assert dict(store.info(d).labels) == {"k": "v"}
    assert [i.digest for i in store.walk()] == [d]


def test_a_snapshot_that_no_longer_gives_the_bytes_is_skipped(store: DerivedContent,
                                                              snaps: Snapshots) -> None:
    d = digest_of(LAYER)
    snaps.tars["changed"] = LAYER[:-1] + b"!"
    snaps.tars["good"] = LAYER
    store.add(d, len(LAYER), "changed")
    store.add(d, len(LAYER), "good")
    with store.open(d) as f:
        assert f.read() == LAYER
    assert snaps.made == ["changed", "good"]


def test_no_snapshot_left_is_a_clear_error_and_stores_nothing(store: DerivedContent,
                                                              snaps: Snapshots) -> None:
    d = digest_of(LAYER)
    snaps.tars["wrong"] = b"other bytes" * 10
    store.add(d, len(LAYER), "wrong")
    store.add(d, len(LAYER), "gone")
    with pytest.raises(FailedPrecondition, match="cannot be made again"):
        store.open(d)
    assert store.derived(d)  # still recorded, nothing half-written in the store
    assert store.inner.statuses() == []
    with pytest.raises(NotFound):
        store.inner.info(d)


def test_labels_and_delete_of_a_derived_blob(store: DerivedContent, snaps: Snapshots) -> None:
    d = digest_of(LAYER)
    snaps.tars["c"] = LAYER
    store.add(d, len(LAYER), "c", {"a": "1", "b": "2"})
    assert dict(store.update_labels(d, {"a": "", "c": "3"}).labels) == {"b": "2", "c": "3"}
    store.delete(d)
    with pytest.raises(NotFound):
        store.info(d)
    with pytest.raises(NotFound):
        store.delete(d)
    assert list(store.walk()) == []


def test_a_blob_already_stored_is_not_recorded(store: DerivedContent, snaps: Snapshots) -> None:
    with store.writer("w") as w:
        w.write(LAYER)
        w.commit(len(LAYER), digest_of(LAYER))
    store.add(digest_of(LAYER), len(LAYER), "c")
    assert not store.derived(digest_of(LAYER))
    assert len(list(store.walk())) == 1


def test_removing_the_last_snapshot_writes_the_blob_out_first(store: DerivedContent,
                                                             snaps: Snapshots) -> None:
    one, two = b"first" * 1000, b"second" * 1000
    snaps.tars.update(a=one, b=two, c=two)
    store.add(digest_of(one), len(one), "a")
    store.add(digest_of(two), len(two), "b")
    store.add(digest_of(two), len(two), "c")
    store.before_chain_removed("b")  # "two" has "c" too: nothing to do
    assert snaps.made == []
    del snaps.tars["b"]
    store.chain_removed("b")
    store.before_chain_removed("a")  # "one" has only "a": written out now
    assert snaps.made == ["a"]
    del snaps.tars["a"]
    store.chain_removed("a")
    assert store.read(digest_of(one)) == one
    assert store.read(digest_of(two)) == two
    assert snaps.made == ["a", "c"]


def test_a_size_that_disagrees_is_refused(store: DerivedContent) -> None:
    d = digest_of(LAYER)
    store.add(d, len(LAYER), "a")
    with pytest.raises(FailedPrecondition):
        store.add(d, len(LAYER) + 1, "b")
