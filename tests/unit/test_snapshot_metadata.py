"""The snapshotters' metadata store: rules, persistence, atomic replacement, locking."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ketch.errors import Conflict, FailedPrecondition, Internal, InvalidArgument, NotFound
from ketch.snapshot import Kind, Usage
from ketch.snapshot.metadata import MetadataStore, measure

REPO = Path(__file__).resolve().parents[2]


def test_empty_store_reads_empty_and_writes_nothing(tmp_path: Path) -> None:
    store = MetadataStore(str(tmp_path))
    with store.transaction(write=False) as tx:
        assert tx.records == {}
    with store.transaction() as tx:
        pass
    assert not Path(store.path).exists()


def test_rules(tmp_path: Path) -> None:
    store = MetadataStore(str(tmp_path))
    with store.transaction() as tx:
        tx.add("a", Kind.ACTIVE, None, {"k": "v"})
        with pytest.raises(Conflict):
            tx.add("a", Kind.VIEW, None, None)
        with pytest.raises(FailedPrecondition):
            tx.add("b", Kind.ACTIVE, "a", None)
        with pytest.raises(NotFound):
            tx.add("b", Kind.ACTIVE, "missing", None)
        with pytest.raises(InvalidArgument):
            tx.add("", Kind.ACTIVE, None, None)
        tx.commit("A", "a", Usage(10, 2), {"x": "y"})
        with pytest.raises(NotFound):
            tx.get("a")
        tx.add("b", Kind.ACTIVE, "A", None)
        tx.add("v", Kind.VIEW, "A", None)
        with pytest.raises(FailedPrecondition):
            tx.commit("V", "v", Usage(), None)
        with pytest.raises(Conflict, match="snapshot has children"):
            tx.delete("A")
        assert sorted(tx.children("A")) == ["b", "v"]
        assert [r.id for r in tx.chain("b")] == [tx.get("b").id, tx.get("A").id]
    with store.transaction(write=False) as tx:
        a = tx.get("A")
        assert (a.kind, a.usage, dict(a.labels)) == (Kind.COMMITTED, Usage(10, 2),
                                                     {"k": "v", "x": "y"})
        assert a.info("A").created.tzinfo is not None


def test_persists_and_never_reuses_ids(tmp_path: Path) -> None:
    with MetadataStore(str(tmp_path)).transaction() as tx:
        first = tx.add("a", Kind.ACTIVE, None, None).id
    with MetadataStore(str(tmp_path)).transaction() as tx:
        assert tx.get("a").id == first
        tx.delete("a")
    with MetadataStore(str(tmp_path)).transaction() as tx:
        assert "a" not in tx.records
        assert tx.add("a", Kind.ACTIVE, None, None).id != first
    data = json.loads(Path(tmp_path, "metadata.json").read_text())
    assert data["version"] == 1 and set(data["snapshots"]) == {"a"}


def test_failed_transaction_saves_nothing(tmp_path: Path) -> None:
    store = MetadataStore(str(tmp_path))
    with store.transaction() as tx:
        tx.add("keep", Kind.ACTIVE, None, None)
    before = Path(store.path).read_bytes()
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.add("lost", Kind.ACTIVE, None, None)
        raise RuntimeError("crash in the middle of an operation")
    assert Path(store.path).read_bytes() == before


def test_interrupted_save_leaves_the_old_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = MetadataStore(str(tmp_path))
    with store.transaction() as tx:
        tx.add("keep", Kind.ACTIVE, None, None)
    before = Path(store.path).read_bytes()

    def no_rename(src: str, dst: str) -> None:
        raise OSError("power lost before rename")

    monkeypatch.setattr(os, "rename", no_rename)
    with pytest.raises(OSError), store.transaction() as tx:
        tx.add("new", Kind.ACTIVE, None, None)
    monkeypatch.undo()
    assert Path(store.path).read_bytes() == before
    with store.transaction(write=False) as tx:
        assert set(tx.records) == {"keep"}


def test_read_only_transaction_refuses_changes(tmp_path: Path) -> None:
    with pytest.raises(Internal), MetadataStore(str(tmp_path)).transaction(write=False) as tx:
        tx.add("a", Kind.ACTIVE, None, None)


def test_unknown_version_is_refused(tmp_path: Path) -> None:
    store = MetadataStore(str(tmp_path))
    Path(store.path).write_text(json.dumps({"version": 99}))
    with pytest.raises(Internal, match="version"), store.transaction(write=False):
        pass


def _try_lock(path: str, op: int) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_lock_modes(tmp_path: Path) -> None:
    store = MetadataStore(str(tmp_path))
    with store.transaction():
        assert not _try_lock(store.lock_path, fcntl.LOCK_SH)
        assert not _try_lock(store.lock_path, fcntl.LOCK_EX)
    with store.transaction(write=False):
        assert _try_lock(store.lock_path, fcntl.LOCK_SH)
        assert not _try_lock(store.lock_path, fcntl.LOCK_EX)
    assert _try_lock(store.lock_path, fcntl.LOCK_EX)


_WORKER = """
import sys
from ketch.snapshot import Kind
from ketch.snapshot.metadata import MetadataStore
root, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = MetadataStore(root)
for i in range(n):
    with store.transaction() as tx:
        tx.add(f"{name}-{i}", Kind.ACTIVE, None, None)
    with store.transaction(write=False) as tx:
        assert f"{name}-{i}" in tx.records
"""


def test_concurrent_processes_and_threads_lose_nothing(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, root, f"p{n}", "20"], env=env)
             for n in range(4)]
    store = MetadataStore(root)

    def work(n: int) -> None:
        for i in range(20):
            with store.transaction() as tx:
                tx.add(f"t{n}-{i}", Kind.ACTIVE, None, None)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    with store.transaction(write=False) as tx:
        assert len(tx.records) == 7 * 20
        assert len({r.id for r in tx.records.values()}) == 7 * 20
        assert tx.next_id == 7 * 20 + 1


def test_measure_counts_hard_links_once(tmp_path: Path) -> None:
    d = tmp_path / "tree"
    d.mkdir()
    (d / "f").write_bytes(b"x" * 8192)
    os.link(d / "f", d / "g")
    (d / "sub").mkdir()
    os.symlink("f", d / "sub" / "l")
    u = measure(str(d))
    assert u.inodes == 4  # tree, f (= g), sub, l
    assert u.size >= 8192
