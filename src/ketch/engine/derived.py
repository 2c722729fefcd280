"""Layer blobs kept as the snapshot they were made in, written out when first read.

A COPY step of the builder writes its files into an overlay snapshot. Writing the
layer's tar into the content store as well doubles the bytes a build writes, and a
built layer's tar is read only when the image leaves the engine (``docker push``,
``docker save``). dockerd keeps built layers the same way: as the graph driver's
directory, the tar made again when it is pushed or saved.

:class:`DerivedContent` wraps the engine's :class:`~ketch.content.ContentStore`. Besides
the blobs of the store it holds *derived* blobs: a digest, a size, labels, and the
committed snapshots (chain IDs) whose layer tar has that digest. For every reader it is
the store with those blobs in it: ``info`` and ``walk`` show them; ``open`` and ``read``
first *materialize* one — :func:`ketch.engine.diff.diff_tar` of a snapshot written to
the store through a writer that checks the digest — and from then on it is an
ordinary blob. The tar is the same bytes each time: ``diff_tar`` writes a snapshot's
changes in a fixed order with its stored metadata, and a committed snapshot does not
change. A snapshot whose tar no longer has the digest is skipped (logged); with none
left, reading the blob is FailedPrecondition.

Records live in ``<root>/<algorithm>/<hex>.json`` (``{"size", "chains", "labels",
"created_at", "updated_at"}``), written atomically with fsync before the image that
names the blob, like a committed blob. ``delete`` removes a blob's record and its
materialized copy. Before an image's garbage collection removes a layer snapshot it
calls :meth:`DerivedContent.before_chain_removed`, which materializes every blob that
still exists and has no other snapshot; :meth:`chain_removed` then forgets the chain.

Lifecycle: made once by the engine around its local content store; thread-safe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any, BinaryIO, cast

from ketch.content import ContentStore, Info, Status, Writer
from ketch.errors import FailedPrecondition, InvalidArgument, KetchError, NotFound
from ketch.oci.digest import ALGORITHMS, Digest
from ketch.runtime.state import atomic_write

__all__ = ["DerivedContent", "Maker"]

log = logging.getLogger(__name__)

#: writes the layer tar of the committed snapshot ``chain`` to ``out``
Maker = Callable[[str, IO[bytes]], None]


def _now() -> datetime:
    return datetime.now(UTC)


class DerivedContent:
    """A content store plus derived blobs (see the module doc); a ``ContentStore``."""

    def __init__(self, inner: ContentStore, root: str, make: Maker) -> None:
        self.inner = inner
        self.root = root
        self.make = make
        self._mu = threading.Lock()  # records: read-modify-write
        self._making = [threading.Lock() for _ in range(16)]  # striped by digest
        os.makedirs(root, 0o700, exist_ok=True)

    # -- records --------------------------------------------------------------------------

    def _path(self, digest: Digest) -> str:
        return os.path.join(self.root, digest.algorithm, f"{digest.hex}.json")

    def _load(self, digest: Digest) -> dict[str, Any] | None:
        try:
            with open(self._path(digest), "rb") as f:
                doc: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as e:  # a torn record cannot happen (rename); say so if it does
            log.error("derived blob record %s is unreadable: %s", digest, e)
            return None
        return doc

    def _save(self, digest: Digest, doc: Mapping[str, Any]) -> None:
        path = self._path(digest)
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        atomic_write(path, json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())

    def _drop(self, digest: Digest) -> bool:
        try:
            os.unlink(self._path(digest))
        except FileNotFoundError:
            return False
        return True

    def _records(self) -> Iterator[Digest]:
        for alg in ALGORITHMS:
            try:
                names = os.listdir(os.path.join(self.root, alg))
            except FileNotFoundError:
                continue
            for name in names:
                if name.endswith(".json") and not name.startswith("."):
                    with contextlib.suppress(InvalidArgument):
                        yield Digest(alg, name[:-5])

    def add(self, digest: Digest, size: int, chain: str,
            labels: Mapping[str, str] | None = None) -> None:
        """Record that the committed snapshot ``chain`` makes the layer ``digest`` of
        ``size`` bytes (adding the chain to a blob already recorded). A blob already
        in the store needs no record."""
        with self._mu:
            if self._in_store(digest):
                return
            now = _now().isoformat()
            doc = self._load(digest) or {"size": size, "chains": [], "labels": {},
                                         "created_at": now}
            if doc["size"] != size:
                raise FailedPrecondition(f"layer {digest}: made with {size} bytes, recorded "
                                         f"with {doc['size']}")
            if chain not in doc["chains"]:
                doc["chains"].append(chain)
            for k, v in (labels or {}).items():
                doc["labels"][k] = v
            doc["updated_at"] = now
            self._save(digest, doc)

    def derived(self, digest: Digest) -> bool:
        """Is ``digest`` a derived blob not written out yet?"""
        return self._load(digest) is not None and not self._in_store(digest)

    def _in_store(self, digest: Digest) -> bool:
        try:
            self.inner.info(digest)
        except NotFound:
            return False
        return True

    # -- materializing --------------------------------------------------------------------

    def materialize(self, digest: Digest) -> None:
        """Write the derived blob ``digest`` into the store (nothing if it is there);
        NotFound if it is neither, FailedPrecondition if no snapshot makes it."""
        with self._making[int(digest.hex[:8], 16) % len(self._making)]:
            if self._in_store(digest):
                return
            doc = self._load(digest)
            if doc is None:
                raise NotFound(f"content {digest}: not found")
            for chain in doc["chains"]:
                try:
                    self._write(digest, doc["size"], chain)
                except (KetchError, OSError) as e:
                    log.error("layer %s from snapshot %s: %s", digest, chain, e)
                    continue
                if doc["labels"]:
                    self.inner.update_labels(digest, doc["labels"])
                with self._mu:
                    self._drop(digest)
                return
            raise FailedPrecondition(f"layer {digest} cannot be made again: none of its "
                                     f"snapshots ({', '.join(doc['chains']) or 'none'}) "
                                     "gives its bytes")

    def _write(self, digest: Digest, size: int, chain: str) -> None:
        w = self.inner.writer(f"derive-{digest}", expected=digest, size=size)
        try:
            self.make(chain, cast(IO[bytes], _WriterFile(w)))
            w.commit(size, digest)
        except BaseException:
            w.close()
            with contextlib.suppress(KetchError):
                self.inner.abort(w.ref)
            raise

    def before_chain_removed(self, chain: str) -> None:
        """Materialize every recorded blob whose only snapshot is ``chain``, which is
        about to go (a blob that cannot be made is logged, not raised: the removal is
        the caller's to decide)."""
        for digest in list(self._records()):
            doc = self._load(digest)
            if doc is not None and doc["chains"] == [chain]:
                try:
                    self.materialize(digest)
                except KetchError as e:
                    log.error("layer %s: %s", digest, e)

    def chain_removed(self, chain: str) -> None:
        """Forget the removed snapshot ``chain`` in every record."""
        with self._mu:
            for digest in list(self._records()):
                doc = self._load(digest)
                if doc is not None and chain in doc["chains"]:
                    doc["chains"].remove(chain)
                    self._save(digest, doc)

    # -- ContentStore ---------------------------------------------------------------------

    def info(self, digest: Digest) -> Info:
        try:
            return self.inner.info(digest)
        except NotFound:
            doc = self._load(digest)
            if doc is None:
                raise
        return Info(digest, doc["size"], datetime.fromisoformat(doc["created_at"]),
                    datetime.fromisoformat(doc["updated_at"]),
                    MappingProxyType(dict(doc["labels"])))

    def open(self, digest: Digest) -> BinaryIO:
        try:
            return self.inner.open(digest)
        except NotFound:
            self.materialize(digest)
        return self.inner.open(digest)

    def read(self, digest: Digest, offset: int = 0, length: int = -1) -> bytes:
        try:
            return self.inner.read(digest, offset, length)
        except NotFound:
            self.materialize(digest)
        return self.inner.read(digest, offset, length)

    def delete(self, digest: Digest) -> None:
        with self._mu:
            dropped = self._drop(digest)
        try:
            self.inner.delete(digest)
        except NotFound:
            if not dropped:
                raise

    def walk(self) -> Iterator[Info]:
        seen: set[Digest] = set()
        for info in self.inner.walk():
            seen.add(info.digest)
            yield info
        for digest in list(self._records()):
            if digest not in seen:
                with contextlib.suppress(NotFound):
                    yield self.info(digest)

    def update_labels(self, digest: Digest, labels: Mapping[str, str]) -> Info:
        with self._mu:
            doc = None if self._in_store(digest) else self._load(digest)
            if doc is not None:
                for k, v in labels.items():
                    if v:
                        doc["labels"][k] = v
                    else:
                        doc["labels"].pop(k, None)
                doc["updated_at"] = _now().isoformat()
                self._save(digest, doc)
                return self.info(digest)
        return self.inner.update_labels(digest, labels)

    def writer(self, ref: str, *, expected: Digest | None = None,
               size: int | None = None) -> Writer:
        return self.inner.writer(ref, expected=expected, size=size)

    def abort(self, ref: str) -> None:
        self.inner.abort(ref)

    def status(self, ref: str) -> Status:
        return self.inner.status(ref)

    def statuses(self) -> list[Status]:
        return self.inner.statuses()


class _WriterFile:
    """A content writer as the binary file ``diff_tar`` writes to."""

    def __init__(self, w: Writer) -> None:
        self.w = w

    def write(self, data: bytes) -> int:
        return self.w.write(bytes(data))

    def flush(self) -> None:
        pass
