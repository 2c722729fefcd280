"""A ``ContentStore`` held in memory, for unit tests of the layers above content.

It keeps the same contract as the store on disk, including ref locks (per store object,
since there are no other processes to exclude) and ingests that survive ``close()``.
Thread-safe: one lock guards all state.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import BinaryIO

from ketch.content import Info, Status, check_commit, check_read_range, check_resume
from ketch.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from ketch.oci.digest import CANONICAL, Digest, Digester, digest_of

__all__ = ["MemoryContentStore", "MemoryWriter"]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Blob:
    data: bytes
    created_at: datetime
    updated_at: datetime
    labels: dict[str, str] = field(default_factory=dict)

    def info(self, digest: Digest) -> Info:
        return Info(digest, len(self.data), self.created_at, self.updated_at,
                    MappingProxyType(dict(self.labels)))


@dataclass
class _Ingest:
    ref: str
    expected: Digest | None
    total: int | None
    started_at: datetime
    updated_at: datetime
    data: bytearray = field(default_factory=bytearray)
    locked: bool = False


class MemoryContentStore:
    """``ContentStore`` in a few dicts; see ``ketch.content`` for the contract."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._blobs: dict[Digest, _Blob] = {}
        self._ingests: dict[str, _Ingest] = {}

    def _blob(self, digest: Digest) -> _Blob:
        b = self._blobs.get(digest)
        if b is None:
            raise NotFound(f"content {digest}: not found")
        return b

    def info(self, digest: Digest) -> Info:
        with self._mu:
            return self._blob(digest).info(digest)

    def read(self, digest: Digest, offset: int = 0, length: int = -1) -> bytes:
        with self._mu:
            data = self._blob(digest).data
        check_read_range(len(data), offset, length)
        return data[offset:] if length == -1 else data[offset:offset + length]

    def open(self, digest: Digest) -> BinaryIO:
        with self._mu:
            return io.BytesIO(self._blob(digest).data)

    def delete(self, digest: Digest) -> None:
        with self._mu:
            self._blob(digest)
            del self._blobs[digest]

    def walk(self) -> Iterator[Info]:
        with self._mu:
            infos = [b.info(d) for d, b in self._blobs.items()]
        return iter(infos)

    def update_labels(self, digest: Digest, labels: Mapping[str, str]) -> Info:
        with self._mu:
            b = self._blob(digest)
            for k, v in labels.items():
                if v:
                    b.labels[k] = v
                else:
                    b.labels.pop(k, None)
            b.updated_at = _now()
            return b.info(digest)

    def writer(self, ref: str, *, expected: Digest | None = None,
               size: int | None = None) -> MemoryWriter:
        if not ref:
            raise InvalidArgument("ingest ref must not be empty")
        with self._mu:
            ing = self._ingests.get(ref)
            if ing is None:
                now = _now()
                ing = self._ingests[ref] = _Ingest(ref, expected, size, now, now)
            else:
                if ing.locked:
                    raise Conflict(f"ref {ref} locked: another writer holds it")
                check_resume(ref, ing.expected, ing.total, expected, size)
                ing.expected = ing.expected or expected
                ing.total = ing.total if ing.total is not None else size
            ing.locked = True
            return MemoryWriter(self, ing)

    def abort(self, ref: str) -> None:
        with self._mu:
            ing = self._ingests.get(ref)
            if ing is None:
                raise NotFound(f"ingest ref {ref}: not found")
            if ing.locked:
                raise Conflict(f"ref {ref} locked: another writer holds it")
            del self._ingests[ref]

    def status(self, ref: str) -> Status:
        with self._mu:
            ing = self._ingests.get(ref)
            if ing is None:
                raise NotFound(f"ingest ref {ref}: not found")
            return _status(ing)

    def statuses(self) -> list[Status]:
        with self._mu:
            return [_status(i) for _, i in sorted(self._ingests.items())]

    # -- used by MemoryWriter --------------------------------------------------------

    def _commit(self, ing: _Ingest, digest: Digest, labels: Mapping[str, str]) -> None:
        with self._mu:
            if digest not in self._blobs:
                now = _now()
                self._blobs[digest] = _Blob(bytes(ing.data), now, now,
                                            {k: v for k, v in labels.items() if v})
            elif labels:
                b = self._blobs[digest]
                b.labels.update({k: v for k, v in labels.items() if v})
            self._ingests.pop(ing.ref, None)

    def _unlock(self, ing: _Ingest) -> None:
        with self._mu:
            ing.locked = False


def _status(ing: _Ingest) -> Status:
    return Status(ing.ref, len(ing.data), ing.total, ing.expected,
                  ing.started_at, ing.updated_at)


class MemoryWriter:
    """The ``Writer`` of ``MemoryContentStore``."""

    def __init__(self, store: MemoryContentStore, ing: _Ingest) -> None:
        self._store = store
        self._ing = ing
        self._digester = Digester(ing.expected.algorithm if ing.expected else CANONICAL)
        self._digester.update(bytes(ing.data))
        self._open = True

    @property
    def ref(self) -> str:
        return self._ing.ref

    @property
    def offset(self) -> int:
        return len(self._ing.data)

    def _check_open(self) -> None:
        if not self._open:
            raise FailedPrecondition(f"writer for ref {self._ing.ref} is closed")

    def write(self, data: bytes) -> int:
        self._check_open()
        self._ing.data += data
        self._ing.updated_at = _now()
        self._digester.update(data)
        return len(data)

    def digest(self) -> Digest:
        return self._digester.digest()

    def commit(self, size: int | None = None, expected: Digest | None = None,
               labels: Mapping[str, str] | None = None) -> Digest:
        self._check_open()
        got = self.digest()
        want = expected or self._ing.expected
        if want is not None and want.algorithm != got.algorithm:
            got = digest_of(bytes(self._ing.data), want.algorithm)
        check_commit(self._ing.ref, got, self.offset,
                     size if size is not None else self._ing.total, want)
        self._store._commit(self._ing, got, labels or {})
        self._open = False
        return got

    def close(self) -> None:
        if self._open:
            self._open = False
            self._store._unlock(self._ing)

    def __enter__(self) -> MemoryWriter:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
