"""Online garbage collection: no read-only window, safe against pushes in flight.

A run has three phases, each over the live storage while the registry serves:

1. **Uploads.** Upload sessions idle longer than ``upload_ttl`` (by the last write to
   their data, else their start time) are removed.
2. **Manifests** (only with ``remove_untagged``). Per repository the *reachable*
   manifests are: tagged ones, revisions younger than ``grace``, the children of a
   reachable index, and referrers whose ``subject`` is reachable — to a fixed point.
   The other revisions are swept (revision link, referrer entry).
3. **Blobs.** Every manifest with a revision link in any repository marks itself (its
   bytes are a blob too), its config and its layers. A blob is swept when it is not
   marked and it is older than ``grace``: its age counts from the newest of its data
   file and its ``_layers`` links, so finishing an upload or a mount renews it. Then
   the repositories' links to the swept blobs go too.

Sweeping is a two-sided protocol, the reason no lock is needed::

    GC, per batch of candidates            manifest PUT (``Registry.put_manifest``)
    ───────────────────────────            ───────────────────────────────────────
    G1 write <object>/sweeping             P1 write revision link, then tags
    G2 mark again from what exists now     P2 for each blob / child / itself:
       (all revision links; tags)              wait while <object>/sweeping is fresh,
    G3 still unmarked → delete the object      then check it still exists
       (data and mark in one delete);      P3 anything gone → take back P1's links,
       marked → delete the mark                answer MANIFEST_BLOB_UNKNOWN

Both sides write their intent before they read the other's. If P2 runs before G1, P1
came before G1 too, so G2 sees the new revision and keeps the blob. If P2 runs after
G1, it sees the mark and waits for G3, then checks existence: kept → success, deleted →
the push is taken back. Either way no manifest is left pointing at a deleted blob, and
a pushed blob waiting for its manifest survives as long as it is younger than
``grace``. (With ``grace = 0`` such a blob may be swept and the manifest PUT then fails
cleanly with MANIFEST_BLOB_UNKNOWN — the client pushes the blob again.)

A ``sweeping`` mark holds the time it was written. A GC that has not decided a batch
within ``DECIDE_LIMIT`` seconds of writing its marks abandons the batch (removes the
marks, deletes nothing), and PUTs stop waiting on marks older than ``MARK_TTL`` (a GC
that crashed mid-batch), so a pause of more than ``MARK_TTL - DECIDE_LIMIT`` seconds
between GC's deadline check and its delete call is the one assumption. The registry
storage must be read-your-writes consistent (a local filesystem; S3 since 2020).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ketch.errors import InvalidArgument
from ketch.oci.digest import Digest
from ketch.registry import layout
from ketch.registry.errors import ManifestInvalid
from ketch.registry.manifest import ParsedManifest, parse_manifest
from ketch.registry.storage import PathNotFound, StorageDriver

__all__ = ["DECIDE_LIMIT", "MARK_TTL", "GCOptions", "GCReport", "GarbageCollector",
           "read_mark", "wait_settled"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DECIDE_LIMIT = 10.0
MARK_TTL = 30.0
_WAIT_STEP = 0.02


def read_mark(driver: StorageDriver, path: str) -> float | None:
    """When the ``sweeping`` mark at ``path`` was written; None if there is none."""
    try:
        raw = driver.get_content(path)
    except PathNotFound:
        return None
    try:
        return float(json.loads(raw)["at"])
    except (ValueError, KeyError, TypeError):
        return 0.0  # unreadable: treat as ancient (stale)


def wait_settled(driver: StorageDriver, path: str, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once no fresh ``sweeping`` mark is at ``path`` (GC decided, or gave up)."""
    while True:
        at = read_mark(driver, path)
        if at is None or clock() - at > MARK_TTL:
            return
        sleep(_WAIT_STEP)


@dataclass(frozen=True, slots=True)
class GCOptions:
    grace: float = 3600.0
    upload_ttl: float = 86400.0
    remove_untagged: bool = False
    dry_run: bool = False
    batch: int = 256

    def __post_init__(self) -> None:
        if self.grace < 0 or self.upload_ttl < 0 or self.batch < 1:
            raise InvalidArgument("gc: grace and upload_ttl must be >= 0, batch >= 1")


@dataclass
class GCReport:
    blobs_deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    manifests_deleted: list[str] = field(default_factory=list)  # "repo@digest"
    uploads_deleted: list[str] = field(default_factory=list)  # "repo/uuid"
    blobs_kept_young: int = 0
    reprieved: int = 0  # unmarked at first, referenced when checked again
    abandoned: int = 0  # batches given up (over DECIDE_LIMIT)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"blobs_deleted": self.blobs_deleted, "bytes_freed": self.bytes_freed,
                "manifests_deleted": self.manifests_deleted,
                "uploads_deleted": self.uploads_deleted,
                "blobs_kept_young": self.blobs_kept_young, "reprieved": self.reprieved,
                "abandoned_batches": self.abandoned, "seconds": round(self.seconds, 3)}


def _digest_at(path: str, alg: int, hex_: int) -> Digest | None:
    """The digest spelled by path components ``alg`` and ``hex_`` (negative indexes)."""
    parts = path.split("/")
    try:
        return Digest.parse(f"{parts[alg]}:{parts[hex_]}")
    except (IndexError, InvalidArgument):
        return None


class GarbageCollector:
    """One collector over one driver; ``run()`` does a whole pass (blocking)."""

    def __init__(self, driver: StorageDriver, options: GCOptions | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.driver, self.options, self.clock = driver, options or GCOptions(), clock
        self._parsed: dict[Digest, ParsedManifest | None] = {}
        self._run_id = secrets.token_hex(8)

    # -- reading the tree ----------------------------------------------------------------

    def repositories(self) -> list[str]:
        """Every repository directory (holding ``_manifests``, ``_layers`` or
        ``_uploads``)."""
        found: list[str] = []

        def visit(path: str) -> None:
            try:
                children = self.driver.list(path)
            except PathNotFound:
                return
            leaves = [c.rsplit("/", 1)[1] for c in children]
            if any(leaf.startswith("_") for leaf in leaves):
                found.append(path[len(layout.REPOSITORIES) + 1:])
            for child, leaf in zip(children, leaves, strict=True):
                if not leaf.startswith("_"):
                    visit(child)

        visit(layout.REPOSITORIES)
        return sorted(found)

    def _walk_files(self, path: str) -> Iterator[tuple[str, float]]:
        try:
            for fi in self.driver.walk(path):
                if not fi.is_dir:
                    yield fi.path, fi.mtime
        except PathNotFound:
            return

    def revisions(self, name: str) -> dict[Digest, float]:
        """Manifest digest → revision link mtime, for ``name``."""
        out: dict[Digest, float] = {}
        for path, mtime in self._walk_files(layout.revisions_dir(name)):
            if path.endswith("/link"):
                d = _digest_at(path, -3, -2)
                if d is not None:
                    out[d] = mtime
        return out

    def tags(self, name: str) -> dict[str, Digest]:
        out: dict[str, Digest] = {}
        for path, _ in self._walk_files(layout.tags_dir(name)):
            if not path.endswith("/link"):
                continue
            try:
                out[path.split("/")[-2]] = Digest.parse(
                    self.driver.get_content(path).decode().strip())
            except (PathNotFound, InvalidArgument, UnicodeDecodeError):
                continue
        return out

    def manifest(self, name: str, digest: Digest) -> ParsedManifest | None:
        """The parsed manifest (cached: content-addressed, so immutable); None if its
        bytes or revision are unreadable."""
        if digest in self._parsed:
            return self._parsed[digest]
        parsed: ParsedManifest | None = None
        try:
            media = json.loads(self.driver.get_content(layout.revision_link(name, digest)))
            body = self.driver.get_content(layout.blob_data(digest))
            parsed = parse_manifest(body, media.get("mediaType"))
        except (PathNotFound, ValueError, ManifestInvalid, AttributeError):
            return None  # not cached: a PUT may be writing it right now
        self._parsed[digest] = parsed
        return parsed

    # -- phase 1: uploads ----------------------------------------------------------------

    def _uploads(self, repos: list[str], report: GCReport) -> None:
        now = self.clock()
        for name in repos:
            try:
                ids = [p.rsplit("/", 1)[1] for p in self.driver.list(layout.uploads_dir(name))]
            except PathNotFound:
                continue
            for upload_id in ids:
                times = [m for _, m in self._walk_files(layout.upload_dir(name, upload_id))]
                if times and now - max(times) <= self.options.upload_ttl:
                    continue
                report.uploads_deleted.append(f"{name}/{upload_id}")
                if not self.options.dry_run:
                    self._delete(layout.upload_dir(name, upload_id))

    # -- phase 2: untagged manifests -----------------------------------------------------

    def reachable(self, name: str) -> tuple[set[Digest], dict[Digest, float]]:
        """(reachable manifests, all revisions) of ``name``; see the module docstring."""
        revisions = self.revisions(name)
        now = self.clock()
        live = {d for d in self.tags(name).values() if d in revisions}
        live |= {d for d, m in revisions.items() if now - m < self.options.grace}
        changed = True
        while changed:
            changed = False
            for d in list(revisions):
                if d in live:
                    m = self.manifest(name, d)
                    for child in m.children if m is not None else []:
                        if child.digest in revisions and child.digest not in live:
                            live.add(child.digest)
                            changed = True
                else:
                    m = self.manifest(name, d)
                    if m is not None and m.subject is not None and m.subject.digest in live:
                        live.add(d)
                        changed = True
        return live, revisions

    def _manifests(self, repos: list[str], report: GCReport) -> None:
        for name in repos:
            live, revisions = self.reachable(name)
            dead = sorted((d for d in revisions if d not in live), key=str)
            for batch in _batches(dead, self.options.batch):
                if self.options.dry_run:
                    report.manifests_deleted += [f"{name}@{d}" for d in batch]
                    continue
                marks = [layout.revision_sweeping(name, d) for d in batch]
                started = self._mark(marks)
                live, _ = self.reachable(name)  # G2: what exists now
                for d, mark in zip(batch, marks, strict=True):
                    if d in live:
                        report.reprieved += 1
                        self._delete(mark)
                    elif self.clock() - started > DECIDE_LIMIT:
                        report.abandoned += 1
                        self._unmark(marks)
                        break
                    else:
                        self._delete_revision(name, d)
                        report.manifests_deleted.append(f"{name}@{d}")

    def _delete_revision(self, name: str, d: Digest) -> None:
        m = self.manifest(name, d)
        if m is not None and m.subject is not None:
            self._delete(layout.referrer_link(name, m.subject.digest, d).rsplit("/", 1)[0])
        self._delete(layout.revision_dir(name, d))

    # -- phase 3: blobs ------------------------------------------------------------------

    def marked(self, repos: list[str]) -> set[Digest]:
        """Every blob some manifest with a revision link needs (and the manifests)."""
        out: set[Digest] = set()
        for name in repos:
            for d in self.revisions(name):
                out.add(d)
                m = self.manifest(name, d)
                if m is None:
                    continue
                out.update(b.digest for b in m.blobs)
        return out

    def _link_times(self, repos: list[str]) -> dict[Digest, float]:
        newest: dict[Digest, float] = {}
        for name in repos:
            for path, mtime in self._walk_files(layout.layers_dir(name)):
                d = _digest_at(path, -3, -2)
                if d is not None and mtime > newest.get(d, 0.0):
                    newest[d] = mtime
        return newest

    def _blobs(self, repos: list[str], report: GCReport) -> None:
        marked = self.marked(repos)
        links = self._link_times(repos)
        now = self.clock()
        candidates: list[tuple[Digest, int]] = []
        for fi in self._walk_blob_data():
            d = _digest_at(fi[0], -4, -2)
            if d is None or d in marked:
                continue
            if now - max(fi[1], links.get(d, 0.0)) < self.options.grace:
                report.blobs_kept_young += 1
                continue
            candidates.append((d, fi[2]))
        for batch in _batches(candidates, self.options.batch):
            if self.options.dry_run:
                report.blobs_deleted += [str(d) for d, _ in batch]
                report.bytes_freed += sum(size for _, size in batch)
                continue
            marks = [layout.blob_sweeping(d) for d, _ in batch]
            started = self._mark(marks)
            repos = self.repositories()  # G2: mark again from what exists now
            marked = self.marked(repos)
            links = self._link_times(repos)
            swept: list[Digest] = []
            for (d, size), mark in zip(batch, marks, strict=True):
                young = self.clock() - links.get(d, 0.0) < self.options.grace
                if d in marked or young:
                    report.reprieved += 1
                    self._delete(mark)
                    continue
                if self.clock() - started > DECIDE_LIMIT:
                    report.abandoned += 1
                    self._unmark(marks)
                    break
                self._delete(layout.blob_dir(d))
                swept.append(d)
                report.blobs_deleted.append(str(d))
                report.bytes_freed += size
            for name in repos:
                for d in swept:
                    self._delete(layout.layer_link(name, d).rsplit("/", 1)[0])

    def _walk_blob_data(self) -> Iterator[tuple[str, float, int]]:
        try:
            for fi in self.driver.walk(layout.BLOBS):
                if not fi.is_dir and fi.path.endswith("/data"):
                    yield fi.path, fi.mtime, fi.size
        except PathNotFound:
            return

    # -- marks ---------------------------------------------------------------------------

    def _mark(self, paths: list[str]) -> float:
        """Write a ``sweeping`` mark at each path; the time they count from."""
        started = self.clock()
        raw = json.dumps({"run": self._run_id, "at": started}).encode()
        for p in paths:
            self.driver.put_content(p, raw)
        return started

    def _unmark(self, paths: list[str]) -> None:
        for p in paths:
            self._delete(p)

    def _delete(self, path: str) -> None:
        try:
            self.driver.delete(path)
        except PathNotFound:
            pass

    # -- the whole pass ------------------------------------------------------------------

    def run(self) -> GCReport:
        """One collection; safe while the registry serves (see the module docstring)."""
        t0 = time.monotonic()
        report = GCReport()
        repos = self.repositories()
        self._uploads(repos, report)
        if self.options.remove_untagged:
            self._manifests(repos, report)
        self._parsed.clear()
        self._blobs(self.repositories(), report)
        report.seconds = time.monotonic() - t0
        log.info("gc: %d blobs (%d bytes), %d manifests, %d uploads removed in %.2fs%s",
                 len(report.blobs_deleted), report.bytes_freed,
                 len(report.manifests_deleted), len(report.uploads_deleted), report.seconds,
                 " (dry run)" if self.options.dry_run else "")
        return report


def _batches(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
