"""``ContentStore`` on a local filesystem; the contract is in ``ketch.content``.

Layout under the store's root::

    <root>/
      blobs/
        sha256/<hex>              committed blob, mode 0444; appears only by rename(2)
        sha512/<hex>
      ingest/
        <sha256 of ref>/          one ingest; ref strings are arbitrary, so hashed for a name
          lock                    flock(LOCK_EX) held by the open writer, if any
          ref                     the ref itself (written last: an ingest without it is
                                  half-made and is started afresh)
          meta.json               {"expected": digest|null, "total": int|null,
                                   "started_at": iso8601}
          data                    bytes written so far; offset = its size
      labels/
        sha256/<hex>.json         {"labels": {...}, "updated_at": iso8601}; replaced atomically
      labels.lock                 flock'd around label read-modify-write

Why it is safe:

- Readers never see partial blobs: ``commit`` fsyncs ``data``, renames it into
  ``blobs/<alg>/<hex>`` and fsyncs that directory. A crash leaves either no blob or a
  whole one, plus possibly the ingest, which a later writer resumes or ``abort`` drops.
- The ref lock is ``flock`` on ``ingest/<h>/lock``: per open file, so it excludes other
  writers in this process and in other processes, and the kernel releases it when a
  writer's process dies. Commit and abort delete the ingest directory while holding the
  lock; whoever locks afterwards checks that its lock file is still the one on disk.
- Labels and ingest metadata are written to a temporary file in the same directory and
  ``os.replace``d into place.

Abandoned ingests stay until aborted; a garbage collector (not here yet) removes them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, BinaryIO

from ketch.content import Info, Status, check_commit, check_read_range, check_resume
from ketch.errors import Conflict, FailedPrecondition, Internal, InvalidArgument, NotFound
from ketch.oci.digest import ALGORITHMS, CANONICAL, Digest, Digester

__all__ = ["LocalContentStore", "LocalWriter"]

_CHUNK = 1 << 20


def _now() -> datetime:
    return datetime.now(UTC)


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, UTC)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _try_lock(lockfile: Path, ref: str) -> int | None:
    """An fd holding an exclusive flock on ``lockfile``; None if the file went away
    under us (the ingest was committed or aborted meanwhile: try again)."""
    try:
        fd = os.open(lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise Conflict(f"ref {ref} locked: another writer holds it") from None
        raise
    try:
        on_disk = os.stat(lockfile)
    except FileNotFoundError:
        os.close(fd)
        return None
    mine = os.fstat(fd)
    if (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino):
        os.close(fd)
        return None
    return fd


class LocalContentStore:
    """Blobs and ingests in files under ``root`` (created if missing).

    Several store objects, in one process or many, may share a root.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        for sub in ("blobs", "ingest", "labels"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._labels_mu = threading.Lock()

    # -- paths --------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        """Where the blob ``digest`` lives once committed."""
        return self.root / "blobs" / digest.algorithm / digest.hex

    def _labels_path(self, digest: Digest) -> Path:
        return self.root / "labels" / digest.algorithm / f"{digest.hex}.json"

    def _ingest_dir(self, ref: str) -> Path:
        name = hashlib.sha256(ref.encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / "ingest" / name

    # -- blobs --------------------------------------------------------------------------

    def _read_labels(self, digest: Digest) -> tuple[dict[str, str], datetime | None]:
        try:
            doc = json.loads(self._labels_path(digest).read_bytes())
        except FileNotFoundError:
            return {}, None
        return dict(doc["labels"]), datetime.fromisoformat(doc["updated_at"])

    def info(self, digest: Digest) -> Info:
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        labels, updated = self._read_labels(digest)
        created = _mtime(st)
        return Info(digest, st.st_size, created, updated or created, MappingProxyType(labels))

    def open(self, digest: Digest) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None

    def read(self, digest: Digest, offset: int = 0, length: int = -1) -> bytes:
        with self.open(digest) as f:
            check_read_range(os.fstat(f.fileno()).st_size, offset, length)
            f.seek(offset)
            return f.read(length)

    def delete(self, digest: Digest) -> None:
        try:
            os.unlink(self.blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        try:
            os.unlink(self._labels_path(digest))
        except FileNotFoundError:
            pass

    def walk(self) -> Iterator[Info]:
        for alg in ALGORITHMS:
            try:
                names = os.listdir(self.root / "blobs" / alg)
            except FileNotFoundError:
                continue
            for name in names:
                try:
                    yield self.info(Digest(alg, name))
                except (InvalidArgument, NotFound):
                    continue  # a stray file, or deleted while we walked

    def update_labels(self, digest: Digest, labels: Mapping[str, str]) -> Info:
        self.info(digest)
        self._merge_labels(digest, labels)
        return self.info(digest)

    def _merge_labels(self, digest: Digest, labels: Mapping[str, str]) -> None:
        path = self._labels_path(digest)
        path.parent.mkdir(exist_ok=True)
        with self._labels_mu, open(self.root / "labels.lock", "ab") as lk:
            fcntl.flock(lk.fileno(), fcntl.LOCK_EX)
            current, _ = self._read_labels(digest)
            for k, v in labels.items():
                if v:
                    current[k] = v
                else:
                    current.pop(k, None)
            doc = {"labels": current, "updated_at": _now().isoformat()}
            _atomic_write(path, json.dumps(doc, sort_keys=True).encode())

    # -- ingests ------------------------------------------------------------------------

    def writer(self, ref: str, *, expected: Digest | None = None,
               size: int | None = None) -> LocalWriter:
        if not ref:
            raise InvalidArgument("ingest ref must not be empty")
        d = self._ingest_dir(ref)
        for _ in range(100):
            d.mkdir(exist_ok=True)
            lock_fd = _try_lock(d / "lock", ref)
            if lock_fd is not None:
                break
        else:
            raise Internal(f"ref {ref}: could not lock {d} (removed over and over)")
        try:
            return self._open_ingest(d, ref, lock_fd, expected, size)
        except BaseException:
            os.close(lock_fd)
            raise

    def _open_ingest(self, d: Path, ref: str, lock_fd: int, expected: Digest | None,
                     size: int | None) -> LocalWriter:
        try:
            stored_ref = (d / "ref").read_text("utf-8", "surrogatepass")
        except FileNotFoundError:
            stored_ref = None
        if stored_ref is None:
            meta = {"expected": None if expected is None else str(expected), "total": size,
                    "started_at": _now().isoformat()}
            _atomic_write(d / "meta.json", json.dumps(meta).encode())
            os.close(os.open(d / "data", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                             0o600))
            _atomic_write(d / "ref", ref.encode("utf-8", "surrogatepass"))
        elif stored_ref != ref:
            raise Internal(f"ref {ref}: ingest dir {d} belongs to ref {stored_ref!r}")
        else:
            meta = json.loads((d / "meta.json").read_bytes())
            old_expected = None if meta["expected"] is None else Digest.parse(meta["expected"])
            check_resume(ref, old_expected, meta["total"], expected, size)
            if (old_expected is None and expected is not None) or (
                    meta["total"] is None and size is not None):
                new_expected = old_expected or expected
                meta["expected"] = None if new_expected is None else str(new_expected)
                meta["total"] = meta["total"] if meta["total"] is not None else size
                _atomic_write(d / "meta.json", json.dumps(meta).encode())
        return LocalWriter(self, d, ref, lock_fd, meta)

    def abort(self, ref: str) -> None:
        d = self._ingest_dir(ref)
        if not (d / "ref").exists():
            raise NotFound(f"ingest ref {ref}: not found")
        lock_fd = _try_lock(d / "lock", ref)
        if lock_fd is None:
            raise NotFound(f"ingest ref {ref}: not found")
        try:
            shutil.rmtree(d)
        finally:
            os.close(lock_fd)

    def status(self, ref: str) -> Status:
        st = self._status(self._ingest_dir(ref))
        if st is None or st.ref != ref:
            raise NotFound(f"ingest ref {ref}: not found")
        return st

    def statuses(self) -> list[Status]:
        found = (self._status(d) for d in (self.root / "ingest").iterdir())
        return sorted((s for s in found if s is not None), key=lambda s: s.ref)

    def _status(self, d: Path) -> Status | None:
        try:
            ref = (d / "ref").read_text("utf-8", "surrogatepass")
            meta = json.loads((d / "meta.json").read_bytes())
            st = os.stat(d / "data")
        except (FileNotFoundError, NotADirectoryError):
            return None  # being made or removed
        expected = None if meta["expected"] is None else Digest.parse(meta["expected"])
        return Status(ref, st.st_size, meta["total"], expected,
                      datetime.fromisoformat(meta["started_at"]), _mtime(st))


class LocalWriter:
    """The ``Writer`` of ``LocalContentStore``; holds the ref's flock while open."""

    def __init__(self, store: LocalContentStore, d: Path, ref: str, lock_fd: int,
                 meta: dict[str, Any]) -> None:
        self._store = store
        self._dir = d
        self._ref = ref
        self._lock_fd: int | None = lock_fd
        self._expected = None if meta["expected"] is None else Digest.parse(meta["expected"])
        self._total: int | None = meta["total"]
        self._digester = Digester(self._expected.algorithm if self._expected else CANONICAL)
        self._fd = os.open(d / "data", os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        self._offset = 0
        try:
            while chunk := os.read(self._fd, _CHUNK):
                self._digester.update(chunk)
                self._offset += len(chunk)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def offset(self) -> int:
        return self._offset

    def _check_open(self) -> int:
        if self._lock_fd is None:
            raise FailedPrecondition(f"writer for ref {self._ref} is closed")
        return self._fd

    def write(self, data: bytes) -> int:
        fd = self._check_open()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            self._digester.update(view[:n])
            self._offset += n
            view = view[n:]
        return len(data)

    def digest(self) -> Digest:
        return self._digester.digest()

    def _digest_with(self, algorithm: str) -> Digest:
        if algorithm == self._digester.algorithm:
            return self.digest()
        d = Digester(algorithm)
        os.lseek(self._fd, 0, os.SEEK_SET)
        while chunk := os.read(self._fd, _CHUNK):
            d.update(chunk)
        return d.digest()

    def commit(self, size: int | None = None, expected: Digest | None = None,
               labels: Mapping[str, str] | None = None) -> Digest:
        fd = self._check_open()
        want = expected or self._expected
        got = self._digest_with(want.algorithm if want else self._digester.algorithm)
        check_commit(self._ref, got, self._offset,
                     size if size is not None else self._total, want)
        blob = self._store.blob_path(got)
        if not blob.exists():
            os.fsync(fd)
            os.fchmod(fd, 0o444)
            data = self._dir / "data"
            os.utime(data)  # the blob's mtime is its creation time
            blob.parent.mkdir(exist_ok=True)
            os.rename(data, blob)
            _fsync_dir(blob.parent)
        if labels:
            self._store._merge_labels(got, labels)
        shutil.rmtree(self._dir)
        self._release()
        return got

    def _release(self) -> None:
        os.close(self._fd)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        if self._lock_fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                self._release()

    def __enter__(self) -> LocalWriter:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
