"""The content store: immutable blobs addressed by digest, written through resumable ingests.

Terms
-----
blob
    Committed content, named by the ``Digest`` of its bytes. A blob never changes; it
    exists or it does not. Readers only ever see whole, verified blobs.
ref
    A caller-chosen string naming one ingest (e.g. ``"pull-<image>-layer-<digest>"``).
    Any string is allowed; the same ref means the same ingest.
ingest
    Content being written under a ref, kept by the store until it is committed or
    aborted. It survives a ``Writer.close()``, a crash of the writing process, and (for
    stores on disk) a restart, so a later writer for the same ref continues where the
    last one stopped.
labels
    Mutable ``str -> str`` metadata on a blob (e.g. garbage-collection roots). Labels are
    the only thing about a blob that changes.

Lifecycle of an ingest
----------------------
1. ``w = store.writer(ref, expected=d, size=n)`` opens the ingest, creating it or
   resuming it. ``w.offset`` is how many bytes it already holds; the caller sends the
   rest (e.g. an HTTP range request from ``w.offset``). While ``w`` is open it holds the
   ref exclusively: another ``writer(ref)`` raises ``Conflict`` ("ref locked"), in this
   process or any other.
2. ``w.write(data)`` appends; ``w.digest()`` is the digest of everything written so far.
3. ``w.commit(size, expected)`` checks the total size and digest (arguments first, else
   what ``writer()`` was given). On a mismatch it raises ``InvalidArgument`` and stores
   nothing; the writer stays open so the caller can ``close()`` and ``abort()``. On
   success the bytes become blob ``w.digest()`` atomically, the ingest is gone and the
   writer is closed. If that blob exists already, commit succeeds all the same.
4. Or ``w.close()``: the ingest stays (resumable) and the ref is free again. A crashed
   process behaves as if it had closed its writers.
5. ``store.abort(ref)`` drops an ingest that no writer holds.

Two ingests under different refs may carry the same content; both commit fine and leave
one blob. ``Writer`` is a context manager whose exit is ``close()`` (a no-op after a
successful commit).

Implementations: ``ketch.content.local.LocalContentStore`` (files under a directory) and
``ketch.content.memory.MemoryContentStore`` (unit tests). Both pass
``tests/conformance/content_store_suite.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType, TracebackType
from typing import BinaryIO, Protocol, runtime_checkable

from ketch.errors import InvalidArgument
from ketch.oci.digest import Digest

__all__ = [
    "ContentStore",
    "Info",
    "Status",
    "Writer",
    "check_commit",
    "check_read_range",
    "check_resume",
    "write_blob",
]


@dataclass(frozen=True, slots=True)
class Info:
    """What the store knows of a blob. ``labels`` is a read-only snapshot."""

    digest: Digest
    size: int
    created_at: datetime
    updated_at: datetime
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)


@dataclass(frozen=True, slots=True)
class Status:
    """The state of one ingest: ``offset`` bytes written of ``total`` (None: unknown)."""

    ref: str
    offset: int
    total: int | None
    expected: Digest | None
    started_at: datetime
    updated_at: datetime


@runtime_checkable
class Writer(Protocol):
    """An open ingest, held exclusively until ``commit()`` succeeds or ``close()``."""

    @property
    def ref(self) -> str: ...

    @property
    def offset(self) -> int:
        """Bytes in the ingest so far, including those written by earlier writers."""
        ...

    def write(self, data: bytes) -> int:
        """Append all of ``data``; returns ``len(data)``. ``FailedPrecondition`` if closed."""
        ...

    def digest(self) -> Digest:
        """The digest of every byte in the ingest so far (the blob's name if committed)."""
        ...

    def commit(self, size: int | None = None, expected: Digest | None = None,
               labels: Mapping[str, str] | None = None) -> Digest:
        """Verify, then store the ingest as a blob; return its digest. See the module doc."""
        ...

    def close(self) -> None:
        """Release the ref, keeping the ingest for a later writer. Idempotent."""
        ...

    def __enter__(self) -> Writer: ...

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


@runtime_checkable
class ContentStore(Protocol):
    """Blobs by digest plus resumable ingests; the lifecycle is in the module docstring.

    Every method that takes a digest raises ``NotFound`` if no such blob is committed.
    """

    def info(self, digest: Digest) -> Info:
        """Size, times and labels of a blob."""
        ...

    def read(self, digest: Digest, offset: int = 0, length: int = -1) -> bytes:
        """Up to ``length`` bytes (all with -1) from ``offset``; short only at the end.

        ``InvalidArgument`` if ``offset`` is negative or past the end, or ``length < -1``.
        """
        ...

    def open(self, digest: Digest) -> BinaryIO:
        """A seekable reader of the blob; the caller closes it. It stays valid if the
        blob is deleted meanwhile."""
        ...

    def delete(self, digest: Digest) -> None:
        """Remove a blob and its labels."""
        ...

    def walk(self) -> Iterator[Info]:
        """Every committed blob, once each, in no particular order."""
        ...

    def update_labels(self, digest: Digest, labels: Mapping[str, str]) -> Info:
        """Merge ``labels`` into the blob's labels; a key mapped to ``""`` is removed.
        Returns the updated ``Info``."""
        ...

    def writer(self, ref: str, *, expected: Digest | None = None,
               size: int | None = None) -> Writer:
        """Open (create or resume) the ingest ``ref``.

        ``InvalidArgument`` if ``ref`` is empty or if ``expected``/``size`` contradict
        what the resumed ingest was started with; ``Conflict`` if a writer holds ``ref``.
        """
        ...

    def abort(self, ref: str) -> None:
        """Drop an ingest. ``NotFound`` if there is none, ``Conflict`` if a writer holds it."""
        ...

    def status(self, ref: str) -> Status:
        """The state of one ingest; ``NotFound`` if there is none."""
        ...

    def statuses(self) -> list[Status]:
        """Every ingest, held by a writer or not, sorted by ref."""
        ...


def write_blob(store: ContentStore, ref: str, data: bytes, expected: Digest | None = None,
               labels: Mapping[str, str] | None = None) -> Digest:
    """Ingest ``data`` in one go (restarting ``ref`` if a stale ingest exists); return its
    digest."""
    w = store.writer(ref)
    if w.offset:
        w.close()
        store.abort(ref)
        w = store.writer(ref)
    with w:
        w.write(data)
        return w.commit(len(data), expected, labels)


# -- argument checks every implementation makes the same way ---------------------------

def check_read_range(size: int, offset: int, length: int) -> None:
    """The argument checks of ``ContentStore.read``."""
    if offset < 0 or offset > size:
        raise InvalidArgument(f"read offset {offset} outside blob of {size} bytes")
    if length < -1:
        raise InvalidArgument(f"read length {length}: want >= 0, or -1 for the rest")


def check_commit(ref: str, got: Digest, got_size: int,
                 size: int | None, expected: Digest | None) -> None:
    """The verification step of ``Writer.commit``."""
    if size is not None and size != got_size:
        raise InvalidArgument(f"ref {ref}: size mismatch: expected {size}, got {got_size}")
    if expected is not None and expected != got:
        raise InvalidArgument(f"ref {ref}: digest mismatch: expected {expected}, got {got}")


def check_resume(ref: str, old_expected: Digest | None, old_total: int | None,
                 expected: Digest | None, size: int | None) -> None:
    """A resumed ingest keeps what it was started with; contradictions are errors."""
    if expected is not None and old_expected is not None and expected != old_expected:
        raise InvalidArgument(
            f"ref {ref}: ingest in progress expects {old_expected}, not {expected}")
    if size is not None and old_total is not None and size != old_total:
        raise InvalidArgument(
            f"ref {ref}: ingest in progress expects {old_total} bytes, not {size}")
