"""The conformance suite of the ``ContentStore`` seam (``ketch.content``).

Subclass ``ContentStoreSuite`` in a test module and provide one fixture:

``store``
    a fresh, empty ``ContentStore`` private to the test; the fixture disposes of it
    (and of any directory under it) afterwards.

The tests follow the lifecycle in ``ketch.content``'s docstring: ingest, commit,
read, labels, delete, and the ways an ingest can stop (close, abort, failed commit).
Writers are always closed, also when a test fails, so a backend that holds OS locks is
left clean.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime

import pytest

from ketch.content import ContentStore, Writer, write_blob
from ketch.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from ketch.oci.digest import Digest, digest_of

__all__ = ["ContentStoreSuite"]

PAYLOAD = bytes(range(256)) * 300 + b"tail"  # ~77 KB, not a multiple of any chunk size
MISSING = digest_of(b"never written")


class ContentStoreSuite:
    """What every ``ContentStore`` must do; subclass it with a ``store`` fixture."""

    @pytest.fixture
    def writers(self) -> Iterator[ExitStack]:
        """Register writers here (``writers.enter_context(w)``) to close them on failure."""
        with ExitStack() as stack:
            yield stack

    def open_writer(self, writers: ExitStack, store: ContentStore, ref: str, *,
                    expected: Digest | None = None, size: int | None = None) -> Writer:
        w = store.writer(ref, expected=expected, size=size)
        writers.enter_context(w)
        return w

    # -- ingest and read back -----------------------------------------------------------

    def test_write_commit_read_back(self, store: ContentStore, writers: ExitStack) -> None:
        w = self.open_writer(writers, store, "ref-a")
        assert isinstance(w, Writer)
        assert w.offset == 0
        for i in range(0, len(PAYLOAD), 10_000):
            assert w.write(PAYLOAD[i:i + 10_000]) == len(PAYLOAD[i:i + 10_000])
        assert w.offset == len(PAYLOAD)
        assert w.digest() == digest_of(PAYLOAD)
        d = w.commit(len(PAYLOAD), digest_of(PAYLOAD))
        assert d == digest_of(PAYLOAD)
        assert store.read(d) == PAYLOAD
        with store.open(d) as f:
            assert f.read() == PAYLOAD

    def test_commit_without_expectations_names_blob_by_content(
            self, store: ContentStore, writers: ExitStack) -> None:
        w = self.open_writer(writers, store, "ref-a")
        w.write(b"hello")
        assert w.commit() == digest_of(b"hello")
        assert store.read(digest_of(b"hello")) == b"hello"

    def test_empty_blob(self, store: ContentStore) -> None:
        d = write_blob(store, "empty", b"")
        assert d == digest_of(b"")
        assert store.read(d) == b""
        assert store.info(d).size == 0

    def test_read_at_offset_and_length(self, store: ContentStore) -> None:
        d = write_blob(store, "r", PAYLOAD)
        assert store.read(d, 0, 10) == PAYLOAD[:10]
        assert store.read(d, 1000, 5000) == PAYLOAD[1000:6000]
        assert store.read(d, 1000) == PAYLOAD[1000:]
        assert store.read(d, len(PAYLOAD) - 3, 100) == PAYLOAD[-3:]  # short only at the end
        assert store.read(d, len(PAYLOAD)) == b""
        assert store.read(d, 5, 0) == b""
        with pytest.raises(InvalidArgument):
            store.read(d, -1)
        with pytest.raises(InvalidArgument):
            store.read(d, len(PAYLOAD) + 1)
        with pytest.raises(InvalidArgument):
            store.read(d, 0, -2)

    def test_open_is_seekable(self, store: ContentStore) -> None:
        d = write_blob(store, "s", PAYLOAD)
        with store.open(d) as f:
            assert f.seekable()
            f.seek(500)
            assert f.read(4) == PAYLOAD[500:504]
            assert f.seek(0, io.SEEK_END) == len(PAYLOAD)
            f.seek(-4, io.SEEK_END)
            assert f.read() == b"tail"

    def test_reader_survives_delete(self, store: ContentStore) -> None:
        d = write_blob(store, "s", PAYLOAD)
        with store.open(d) as f:
            store.delete(d)
            assert f.read() == PAYLOAD

    def test_info(self, store: ContentStore) -> None:
        before = datetime.now().astimezone()
        d = write_blob(store, "i", PAYLOAD)
        info = store.info(d)
        assert info.digest == d
        assert info.size == len(PAYLOAD)
        assert info.created_at.tzinfo is not None
        assert info.created_at.timestamp() >= before.timestamp() - 2
        assert info.updated_at >= info.created_at
        assert dict(info.labels) == {}

    def test_walk(self, store: ContentStore) -> None:
        assert list(store.walk()) == []
        blobs = {write_blob(store, f"w{i}", b"x" * i) for i in range(1, 4)}
        infos = list(store.walk())
        assert {i.digest for i in infos} == blobs
        assert len(infos) == 3
        assert sorted(i.size for i in infos) == [1, 2, 3]

    def test_delete(self, store: ContentStore) -> None:
        keep = write_blob(store, "k", b"keep")
        d = write_blob(store, "d", b"drop")
        store.delete(d)
        with pytest.raises(NotFound):
            store.info(d)
        with pytest.raises(NotFound):
            store.delete(d)
        assert [i.digest for i in store.walk()] == [keep]

    def test_not_found(self, store: ContentStore) -> None:
        with pytest.raises(NotFound):
            store.info(MISSING)
        with pytest.raises(NotFound):
            store.read(MISSING)
        with pytest.raises(NotFound):
            store.open(MISSING)
        with pytest.raises(NotFound):
            store.delete(MISSING)
        with pytest.raises(NotFound):
            store.update_labels(MISSING, {"a": "b"})
        with pytest.raises(NotFound):
            store.abort("no such ref")
        with pytest.raises(NotFound):
            store.status("no such ref")

    def test_sha512(self, store: ContentStore, writers: ExitStack) -> None:
        want = digest_of(b"five twelve", "sha512")
        w = self.open_writer(writers, store, "x", expected=want)
        w.write(b"five twelve")
        assert w.digest() == want
        assert w.commit() == want
        assert store.read(want) == b"five twelve"

    # -- verification at commit -------------------------------------------------------

    def test_digest_mismatch_stores_nothing(self, store: ContentStore,
                                            writers: ExitStack) -> None:
        w = self.open_writer(writers, store, "bad")
        w.write(b"actual")
        wrong = digest_of(b"claimed")
        with pytest.raises(InvalidArgument) as e:
            w.commit(expected=wrong)
        msg = str(e.value)
        assert f"digest mismatch: expected {wrong}, got {digest_of(b'actual')}" in msg
        assert list(store.walk()) == []
        with pytest.raises(NotFound):
            store.info(digest_of(b"actual"))
        # the writer stays open and holds the ref; close and abort drop the ingest
        with pytest.raises(Conflict):
            store.abort("bad")
        w.close()
        store.abort("bad")
        assert store.statuses() == []

    def test_expected_given_to_writer_is_checked(self, store: ContentStore,
                                                 writers: ExitStack) -> None:
        w = self.open_writer(writers, store, "bad", expected=digest_of(b"claimed"), size=6)
        w.write(b"actual")
        with pytest.raises(InvalidArgument, match="digest mismatch"):
            w.commit()
        assert list(store.walk()) == []

    def test_size_mismatch(self, store: ContentStore, writers: ExitStack) -> None:
        w = self.open_writer(writers, store, "short", size=10)
        w.write(b"12345")
        with pytest.raises(InvalidArgument, match="size mismatch: expected 10, got 5"):
            w.commit()
        with pytest.raises(InvalidArgument, match="size mismatch"):
            w.commit(size=4)
        assert list(store.walk()) == []
        w.write(b"67890")  # still open: finishing the content makes it commit fine
        assert w.commit() == digest_of(b"1234567890")

    def test_commit_existing_content_is_fine(self, store: ContentStore,
                                             writers: ExitStack) -> None:
        d = write_blob(store, "first", b"same")
        w = self.open_writer(writers, store, "second", expected=d)
        w.write(b"same")
        assert w.commit() == d
        assert [i.digest for i in store.walk()] == [d]
        assert store.statuses() == []

    def test_writer_closed_after_commit(self, store: ContentStore,
                                        writers: ExitStack) -> None:
        w = self.open_writer(writers, store, "c")
        w.write(b"x")
        w.commit()
        with pytest.raises(FailedPrecondition):
            w.write(b"y")
        with pytest.raises(FailedPrecondition):
            w.commit()
        w.close()  # no-op
        # the ref is free and fresh again
        w2 = self.open_writer(writers, store, "c")
        assert w2.offset == 0

    # -- resumable ingest ---------------------------------------------------------------

    def test_resume_after_close(self, store: ContentStore, writers: ExitStack) -> None:
        half = len(PAYLOAD) // 2
        w = self.open_writer(writers, store, "resume", expected=digest_of(PAYLOAD),
                             size=len(PAYLOAD))
        w.write(PAYLOAD[:half])
        w.close()
        with pytest.raises(FailedPrecondition):
            w.write(b"more")
        assert store.status("resume").offset == half
        with pytest.raises(NotFound):
            store.info(digest_of(PAYLOAD))

        w2 = self.open_writer(writers, store, "resume")
        assert w2.offset == half
        assert w2.digest() == digest_of(PAYLOAD[:half])
        w2.write(PAYLOAD[half:])
        assert w2.digest() == digest_of(PAYLOAD)
        assert w2.commit() == digest_of(PAYLOAD)  # expected and size kept from the start
        assert store.read(digest_of(PAYLOAD)) == PAYLOAD
        assert store.statuses() == []

    def test_resume_with_contradicting_expectations(self, store: ContentStore,
                                                    writers: ExitStack) -> None:
        w = self.open_writer(writers, store, "r", expected=digest_of(b"abc"), size=3)
        w.write(b"a")
        w.close()
        with pytest.raises(InvalidArgument):
            store.writer("r", expected=digest_of(b"xyz"))
        with pytest.raises(InvalidArgument):
            store.writer("r", size=4)
        # the failed attempts did not leave the ref locked
        w2 = self.open_writer(writers, store, "r", expected=digest_of(b"abc"), size=3)
        assert w2.offset == 1

    def test_same_ref_is_locked(self, store: ContentStore, writers: ExitStack) -> None:
        w = self.open_writer(writers, store, "busy")
        w.write(b"1")
        with pytest.raises(Conflict, match="locked"):
            store.writer("busy")
        w.close()
        w2 = self.open_writer(writers, store, "busy")
        assert w2.offset == 1

    def test_different_refs_same_content(self, store: ContentStore,
                                         writers: ExitStack) -> None:
        a = self.open_writer(writers, store, "a")
        b = self.open_writer(writers, store, "b")
        for i in range(0, len(PAYLOAD), 7000):
            a.write(PAYLOAD[i:i + 7000])
            b.write(PAYLOAD[i:i + 7000])
        assert a.commit(len(PAYLOAD), digest_of(PAYLOAD)) == digest_of(PAYLOAD)
        assert b.commit(len(PAYLOAD), digest_of(PAYLOAD)) == digest_of(PAYLOAD)
        assert [i.digest for i in store.walk()] == [digest_of(PAYLOAD)]
        assert store.read(digest_of(PAYLOAD)) == PAYLOAD
        assert store.statuses() == []

    def test_refs_are_arbitrary_strings(self, store: ContentStore) -> None:
        refs = ["../../etc/passwd", "a/b/c", "ünïcödé ref", "x" * 1000, "."]
        for i, ref in enumerate(refs):
            with store.writer(ref) as w:
                w.write(str(i).encode())
        assert [s.ref for s in store.statuses()] == sorted(refs)
        for i, ref in enumerate(refs):
            with store.writer(ref) as w:
                assert w.offset == len(str(i))
            store.abort(ref)
        assert store.statuses() == []
        with pytest.raises(InvalidArgument):
            store.writer("")

    def test_abort(self, store: ContentStore, writers: ExitStack) -> None:
        w = self.open_writer(writers, store, "gone")
        w.write(b"partial")
        w.close()
        store.abort("gone")
        with pytest.raises(NotFound):
            store.status("gone")
        with pytest.raises(NotFound):
            store.abort("gone")
        w2 = self.open_writer(writers, store, "gone")
        assert w2.offset == 0
        assert list(store.walk()) == []

    def test_statuses(self, store: ContentStore, writers: ExitStack) -> None:
        assert store.statuses() == []
        want = digest_of(b"0123456789")
        a = self.open_writer(writers, store, "a", expected=want, size=10)
        a.write(b"0123")
        b = self.open_writer(writers, store, "b")
        b.write(b"zz")
        b.close()  # closed ingests are listed too
        sa, sb = store.statuses()
        assert (sa.ref, sa.offset, sa.total, sa.expected) == ("a", 4, 10, want)
        assert (sb.ref, sb.offset, sb.total, sb.expected) == ("b", 2, None, None)
        assert sa.started_at.tzinfo is not None
        assert sa.updated_at >= sa.started_at or (
            sa.started_at - sa.updated_at).total_seconds() < 1  # coarse fs timestamps
        assert store.status("a") == sa
        a.write(b"456789")
        assert store.status("a").offset == 10
        a.commit()
        assert [s.ref for s in store.statuses()] == ["b"]

    # -- labels ---------------------------------------------------------------------------

    def test_labels(self, store: ContentStore, writers: ExitStack) -> None:
        w = self.open_writer(writers, store, "l")
        w.write(b"labelled")
        d = w.commit(labels={"gc.root": "yes", "keep": "1"})
        assert dict(store.info(d).labels) == {"gc.root": "yes", "keep": "1"}
        info = store.update_labels(d, {"gc.root": "", "new": "v"})
        assert dict(info.labels) == {"keep": "1", "new": "v"}
        assert dict(store.info(d).labels) == {"keep": "1", "new": "v"}
        assert info.updated_at >= info.created_at
        assert {dict(i.labels)["new"] for i in store.walk()} == {"v"}
        # labels go with the blob
        store.delete(d)
        d2 = write_blob(store, "l2", b"labelled")
        assert d2 == d
        assert dict(store.info(d).labels) == {}

    def test_info_labels_are_a_snapshot(self, store: ContentStore) -> None:
        d = write_blob(store, "s", b"x", labels={"a": "1"})
        info = store.info(d)
        store.update_labels(d, {"a": "2"})
        assert info.labels["a"] == "1"
        with pytest.raises(TypeError):
            info.labels["a"] = "3"  # type: ignore[index]

    def test_write_blob_restarts_stale_ingest(self, store: ContentStore) -> None:
        with store.writer("stale") as w:
            w.write(b"garbage")
        d = write_blob(store, "stale", b"good", expected=digest_of(b"good"))
        assert store.read(d) == b"good"
        assert store.statuses() == []

