"""The content store conformance suite on both stores, plus what only the local one does."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.content import ContentStore, write_blob
from ketch.content.local import LocalContentStore
from ketch.content.memory import MemoryContentStore
from ketch.errors import Conflict
from ketch.oci.digest import digest_of
from tests.conformance.content_store_suite import PAYLOAD, ContentStoreSuite

SRC = Path(__file__).resolve().parents[2] / "src"


class TestMemoryContentStore(ContentStoreSuite):
    @pytest.fixture
    def store(self) -> Iterator[ContentStore]:
        yield MemoryContentStore()


class TestLocalContentStore(ContentStoreSuite):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ContentStore]:
        yield LocalContentStore(tmp_path / "content")


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blobs").rglob("*") if p.is_file())


def test_protocols_are_satisfied(tmp_path: Path) -> None:
    assert isinstance(MemoryContentStore(), ContentStore)
    assert isinstance(LocalContentStore(tmp_path), ContentStore)


def test_local_blob_invisible_until_commit(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    d = digest_of(PAYLOAD)
    with store.writer("ref", expected=d) as w:
        w.write(PAYLOAD[:1000])
        assert blob_files(tmp_path) == []
        w.write(PAYLOAD[1000:])
        assert blob_files(tmp_path) == []
        assert not store.blob_path(d).exists()
        assert list(store.walk()) == []
        w.commit()
    assert blob_files(tmp_path) == [store.blob_path(d)]
    assert store.blob_path(d) == tmp_path / "blobs" / "sha256" / d.hex
    assert store.blob_path(d).read_bytes() == PAYLOAD
    assert stat.S_IMODE(store.blob_path(d).stat().st_mode) == 0o444
    assert list((tmp_path / "ingest").iterdir()) == []


def test_local_state_survives_a_new_store_object(tmp_path: Path) -> None:
    d = write_blob(LocalContentStore(tmp_path), "a", b"kept", labels={"k": "v"})
    with LocalContentStore(tmp_path).writer("partial", size=10) as w:
        w.write(b"12345")
    again = LocalContentStore(tmp_path)
    assert again.read(d) == b"kept"
    assert dict(again.info(d).labels) == {"k": "v"}
    (st,) = again.statuses()
    assert (st.ref, st.offset, st.total) == ("partial", 5, 10)
    with again.writer("partial") as w:
        assert w.offset == 5
        w.write(b"67890")
        assert w.commit() == digest_of(b"1234567890")


def test_local_lock_spans_store_objects(tmp_path: Path) -> None:
    one, two = LocalContentStore(tmp_path), LocalContentStore(tmp_path)
    with one.writer("shared") as w:
        w.write(b"abc")
        with pytest.raises(Conflict, match="locked"):
            two.writer("shared")
        with pytest.raises(Conflict):
            two.abort("shared")
    with two.writer("shared") as w2:
        assert w2.offset == 3


def test_local_walk_skips_stray_files(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    d = write_blob(store, "a", b"x")
    (tmp_path / "blobs" / "sha256" / ".tmp-junk").write_bytes(b"junk")
    (tmp_path / "blobs" / "sha256" / ("A" * 64)).write_bytes(b"junk")
    assert [i.digest for i in store.walk()] == [d]


def test_local_killed_writer_is_resumed(tmp_path: Path) -> None:
    """A writer process dies holding the ref: the kernel drops its lock, its bytes stay."""
    half = len(PAYLOAD) // 2
    child = textwrap.dedent(f"""
        import sys, time
        from ketch.content.local import LocalContentStore
        w = LocalContentStore(sys.argv[1]).writer("crash", size={len(PAYLOAD)})
        w.write(sys.stdin.buffer.read({half}))
        print("written", flush=True)
        time.sleep(60)
    """)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(PAYLOAD[:half])
        proc.stdin.close()
        assert proc.stdout.readline() == b"written\n"
        store = LocalContentStore(tmp_path)
        with pytest.raises(Conflict, match="locked"):
            store.writer("crash")
        assert store.status("crash").offset == half
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    with store.writer("crash") as w:
        assert w.offset == half
        w.write(PAYLOAD[half:])
        assert w.commit(expected=digest_of(PAYLOAD)) == digest_of(PAYLOAD)
    assert store.read(digest_of(PAYLOAD)) == PAYLOAD
    assert store.statuses() == []
