"""The metadata store every snapshotter keeps beside its data.

Layout under a snapshotter's root::

    <root>/
      metadata.json        {"version": 1, "next_id": N, "snapshots": {key: record}}
                           replaced whole on every change: written to
                           metadata.json.tmp, fsynced, renamed over, directory fsynced
      metadata.lock        flock(2)ed: shared to read, exclusive to change
      snapshots/<id>/      the data, named by a short numeric id (see overlay.py for why)

A record is ``{"id", "kind", "parent", "labels", "created"}`` plus ``"size"`` and
``"inodes"`` once committed. Keys are chosen by callers; ids by the store, never
reused (``next_id`` only grows), so a directory left behind by a crash cannot be
mistaken for a later snapshot's.

The lock lives in its own file because metadata.json is replaced by rename: a
lock on the old inode would not exclude a process that opened the new one.
``flock`` locks belong to an open file description, so each transaction opens
the lock file anew and threads of one process exclude each other too.

The snapshot rules shared by every snapshotter (a parent must be committed, a
key must be new, a snapshot with children stays) are checked here, in
:class:`Tx`, so each snapshotter only moves data.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ketch.errors import Conflict, FailedPrecondition, Internal, InvalidArgument, NotFound
from ketch.runtime.state import atomic_write
from ketch.snapshot import Info, Kind, Mount, Usage

__all__ = ["MetadataStore", "Record", "StoreSnapshotter", "Tx", "measure"]

VERSION = 1


@dataclass(frozen=True)
class Record:
    """One snapshot as stored: its key's data directory id, kind, parent and labels."""

    id: str
    kind: Kind
    parent: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    created: str = ""
    usage: Usage | None = None  # recorded at commit; None while active or a view

    def info(self, key: str) -> Info:
        return Info(key=key, parent=self.parent, kind=self.kind, labels=dict(self.labels),
                    created=datetime.datetime.fromisoformat(self.created))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind.value, "parent": self.parent,
                               "labels": dict(self.labels), "created": self.created}
        if self.usage is not None:
            out["size"] = self.usage.size
            out["inodes"] = self.usage.inodes
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Record:
        usage = Usage(int(d["size"]), int(d["inodes"])) if "size" in d else None
        return cls(id=str(d["id"]), kind=Kind(d["kind"]), parent=d.get("parent"),
                   labels=dict(d.get("labels") or {}), created=str(d["created"]), usage=usage)


class Tx:
    """The store's content while its lock is held; changes are written when the block ends."""

    def __init__(self, data: Mapping[str, Any], writable: bool) -> None:
        self.next_id = int(data.get("next_id", 1))
        self.records: dict[str, Record] = {
            k: Record.from_json(v) for k, v in (data.get("snapshots") or {}).items()}
        self.writable = writable
        self.dirty = False

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "next_id": self.next_id,
                "snapshots": {k: r.to_json() for k, r in self.records.items()}}

    def _changing(self) -> None:
        if not self.writable:
            raise Internal("metadata changed in a read-only transaction")
        self.dirty = True

    def get(self, key: str) -> Record:
        try:
            return self.records[key]
        except KeyError:
            raise NotFound(f"snapshot {key!r} does not exist") from None

    def children(self, key: str) -> list[str]:
        return [k for k, r in self.records.items() if r.parent == key]

    def chain(self, key: str) -> list[Record]:
        """``key``'s record, then its parent's, up to the first snapshot."""
        out = [self.get(key)]
        parent = out[0].parent
        while parent is not None:
            out.append(self.get(parent))
            parent = out[-1].parent
        return out

    def add(self, key: str, kind: Kind, parent: str | None,
            labels: Mapping[str, str] | None) -> Record:
        """Check the rules for a new active or view snapshot and record it."""
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        if key in self.records:
            raise Conflict(f"snapshot {key!r} already exists")
        if parent is not None and self.get(parent).kind is not Kind.COMMITTED:
            raise FailedPrecondition(f"parent {parent!r} is not a committed snapshot")
        self._changing()
        rec = Record(id=str(self.next_id), kind=kind, parent=parent, labels=dict(labels or {}),
                     created=datetime.datetime.now(datetime.UTC).isoformat())
        self.next_id += 1
        self.records[key] = rec
        return rec

    def commit(self, name: str, key: str, usage: Usage,
               labels: Mapping[str, str] | None) -> Record:
        """Move active ``key`` to committed ``name`` (same data directory)."""
        rec = self.get(key)
        if rec.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is {rec.kind.value}, not active")
        if not name:
            raise InvalidArgument("commit name must not be empty")
        if name in self.records:
            raise Conflict(f"snapshot {name!r} already exists")
        self._changing()
        del self.records[key]
        merged = {**rec.labels, **(labels or {})}
        new = replace(rec, kind=Kind.COMMITTED, labels=merged, usage=usage)
        self.records[name] = new
        return new

    def delete(self, key: str) -> Record:
        rec = self.get(key)
        if self.children(key):
            raise Conflict(f"snapshot {key!r}: snapshot has children")
        self._changing()
        del self.records[key]
        return rec


class MetadataStore:
    """metadata.json and its lock under ``root`` (created if missing)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.path = os.path.join(root, "metadata.json")
        self.lock_path = os.path.join(root, "metadata.lock")
        os.makedirs(root, mode=0o700, exist_ok=True)

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        data: dict[str, Any] = json.loads(raw)
        if data.get("version") != VERSION:
            raise Internal(f"{self.path}: unknown metadata version {data.get('version')!r}")
        return data

    def _save(self, tx: Tx) -> None:
        # compact: json's C encoder (indent= falls back to the pure-Python one)
        atomic_write(self.path, json.dumps(tx.to_json(), separators=(",", ":")).encode())
        dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)  # make the rename itself durable
        finally:
            os.close(dfd)

    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> Iterator[Tx]:
        """Hold the lock (exclusive to ``write``) for the block and yield the content.

        A writing block that ends normally saves its changes; one that raises
        saves nothing, so the file never holds a half-done operation.
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            tx = Tx(self._load(), write)
            yield tx
            if tx.dirty:
                self._save(tx)
        finally:
            os.close(fd)  # releases the lock


def measure(path: str) -> Usage:
    """Blocks allocated (in bytes) and distinct inodes under ``path``, not crossing mounts."""
    top = os.lstat(path)
    seen = {(top.st_dev, top.st_ino)}
    size = top.st_blocks * 512
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if st.st_dev != top.st_dev or (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return Usage(size=size, inodes=len(seen))


class StoreSnapshotter:
    """Everything of a snapshotter except making and mounting data directories.

    Subclasses say how a new snapshot's directory is filled (``_create``) and
    how a snapshot is mounted (``_mounts``); the rules, the metadata and the
    bookkeeping of removal are shared. A snapshot's own layer is always
    ``<root>/snapshots/<id>/fs``.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.store = MetadataStore(self.root)
        self.snapshots_dir = os.path.join(self.root, "snapshots")
        os.makedirs(self.snapshots_dir, mode=0o700, exist_ok=True)

    # -- for subclasses -----------------------------------------------------------------

    def _dir(self, rec: Record) -> str:
        return os.path.join(self.snapshots_dir, rec.id)

    def _fs(self, rec: Record) -> str:
        return os.path.join(self.snapshots_dir, rec.id, "fs")

    def _create(self, tx: Tx, key: str, rec: Record) -> None:
        """Make ``self._dir(rec)`` and fill it for new snapshot ``key``."""
        raise NotImplementedError

    def _mounts(self, tx: Tx, key: str, rec: Record) -> list[Mount]:
        raise NotImplementedError

    # -- the Snapshotter protocol -------------------------------------------------------

    def _new(self, key: str, kind: Kind, parent: str | None,
             labels: Mapping[str, str] | None) -> list[Mount]:
        # the lock is held while the directory is made: for a copying snapshotter
        # that blocks other changes for the copy's duration, but the parent cannot
        # vanish mid-copy and a failed copy leaves neither record nor directory
        with self.store.transaction() as tx:
            rec = tx.add(key, kind, parent, labels)
            try:
                self._create(tx, key, rec)
                return self._mounts(tx, key, rec)
            except BaseException:
                shutil.rmtree(self._dir(rec), ignore_errors=True)
                raise

    def prepare(self, key: str, parent: str | None = None,
                labels: Mapping[str, str] | None = None) -> list[Mount]:
        return self._new(key, Kind.ACTIVE, parent, labels)

    def view(self, key: str, parent: str | None = None,
             labels: Mapping[str, str] | None = None) -> list[Mount]:
        return self._new(key, Kind.VIEW, parent, labels)

    def mounts(self, key: str) -> list[Mount]:
        with self.store.transaction(write=False) as tx:
            rec = tx.get(key)
            if rec.kind is Kind.COMMITTED:
                raise FailedPrecondition(f"snapshot {key!r} is committed; view it to mount it")
            return self._mounts(tx, key, rec)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        with self.store.transaction() as tx:
            rec = tx.get(key)
            usage = measure(self._fs(rec)) if rec.kind is Kind.ACTIVE else Usage()
            tx.commit(name, key, usage, labels)

    def remove(self, key: str) -> None:
        with self.store.transaction() as tx:
            rec = tx.delete(key)
        # the record is gone (durably) before the data: a crash in between leaves
        # an orphan directory for cleanup(), never a record without data
        shutil.rmtree(self._dir(rec))

    def stat(self, key: str) -> Info:
        with self.store.transaction(write=False) as tx:
            return tx.get(key).info(key)

    def walk(self) -> list[Info]:
        with self.store.transaction(write=False) as tx:
            return [r.info(k) for k, r in tx.records.items()]

    def usage(self, key: str) -> Usage:
        with self.store.transaction(write=False) as tx:
            rec = tx.get(key)
            if rec.usage is not None:
                return rec.usage
            return measure(self._fs(rec))

    def cleanup(self) -> list[str]:
        """Remove data directories no record points at (left by a crash); return their ids."""
        with self.store.transaction() as tx:
            ids = {r.id for r in tx.records.values()}
            gone = sorted(n for n in os.listdir(self.snapshots_dir) if n not in ids)
            for name in gone:
                shutil.rmtree(os.path.join(self.snapshots_dir, name))
        return gone
