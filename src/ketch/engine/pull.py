"""``docker pull``: a registry image into the content store, its layers into snapshots.

Steps, with the progress messages dockerd sends (``id`` is the layer digest's 12 hex)::

    resolve     GET the manifest (index -> the platform's manifest)  "<tag>: Pulling from <repo>"
    config      fetch and store the config blob
    layers      per layer, up to ``max_downloads`` at once:
                "Pulling fs layer" / "Already exists", "Waiting",
                "Downloading" {current,total}, "Verifying Checksum", "Download complete",
                "Extracting", "Pull complete"
    record      store the manifest (and index) blobs; the caller names the image

Downloads go into content-store ingests named ``pull-<digest>``: a daemon killed
mid-pull leaves a resumable ingest, and the next pull continues it with ``Range``.
While a layer downloads it is also extracted, in parallel with the other layers, into a
parentless stage snapshot; stages are grafted onto their parents in order
(:mod:`ketch.engine.layerstage`). A blob whose digest or size does not match is
refused at commit: its ingest is dropped and its stage removed, and the pull fails
before any name is written — the image exists only once everything it needs does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from ketch.content import ContentStore, write_blob
from ketch.distribution.client import ManifestUnknown, NameUnknown, Registry
from ketch.distribution.platforms import select_manifest
from ketch.engine import layerstage
from ketch.errors import (
    Conflict,
    Forbidden,
    InvalidArgument,
    KetchError,
    NotFound,
    NotImplementedYet,
    Unauthorized,
)
from ketch.image import blobs, reference
from ketch.image.store import resolve_platform
from ketch.image.unpack import chain_ids, committed
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor, Platform
from ketch.oci.digest import Digest
from ketch.snapshot import Snapshotter

__all__ = ["Emit", "PullResult", "Puller", "source_label"]

log = logging.getLogger(__name__)

#: one progress message (a JSON object of Docker's stream); thread-safe callable
Emit = Callable[[dict[str, Any]], None]

_PULLABLE = frozenset({mt.OCI_LAYER, mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD, mt.DOCKER_LAYER,
                       mt.DOCKER_LAYER_GZIP, mt.OCI_LAYER_NONDISTRIBUTABLE,
                       mt.OCI_LAYER_NONDISTRIBUTABLE_GZIP,
                       mt.OCI_LAYER_NONDISTRIBUTABLE_ZSTD, mt.DOCKER_FOREIGN_LAYER})
_PROGRESS_EVERY = 0.1


def source_label(domain: str) -> str:
    """The content label naming the repository a blob came from (for cross-repo mounts)."""
    return f"ketch.io/distribution.source.{domain}"


class _Cancelled(Exception):
    pass


@dataclass(frozen=True)
class PullResult:
    target: Descriptor  #: what the image record points at (index or manifest)
    digest: Digest  #: the digest dockerd prints: what the reference resolved to


def _bar(current: int, total: int) -> str:
    width = 50
    filled = width * current // total if total else width
    arrow = ">" if filled < width else ""
    return (f"[{'=' * max(filled - (1 if arrow else 0), 0)}{arrow}"
            f"{' ' * (width - filled)}] {_size(current)}/{_size(total)}")


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"


class _Meter:
    """Throttled ``Downloading``/``Extracting`` messages of one layer."""

    def __init__(self, emit: Emit, status: str, layer_id: str, total: int) -> None:
        self.emit, self.status, self.id, self.total = emit, status, layer_id, total
        self.current = 0
        self._last = 0.0

    def add(self, n: int) -> None:
        if n <= 0:
            return
        self.current += n
        now = time.monotonic()
        if now - self._last >= _PROGRESS_EVERY or self.current >= self.total:
            self._last = now
            self.emit({"status": self.status, "id": self.id,
                       "progressDetail": {"current": self.current, "total": self.total},
                       "progress": _bar(self.current, self.total)})


class Puller:
    """One pull of one image (see the module doc). Not reusable."""

    def __init__(self, content: ContentStore, snapshotter: Snapshotter, registry: Registry,
                 emit: Emit, max_downloads: int = 4) -> None:
        self.content = content
        self.snapshotter = snapshotter
        self.registry = registry
        self.emit = emit
        self.max_downloads = max_downloads
        self._cancel = threading.Event()
        self._stage = layerstage.can_stage(snapshotter)

    # -- resolve --------------------------------------------------------------------------

    def pull(self, ref: reference.Reference, platform: Platform) -> PullResult:
        repo = ref.path
        what = str(ref.digest) if ref.digest is not None else (ref.tag or "latest")
        try:
            data, media, digest = self.registry.get_manifest(repo, what)
        except (NameUnknown, Unauthorized, Forbidden) as e:
            # dockerd's translation: a 404 to the CLI, which then does not prompt a login
            raise NotFound(f"pull access denied for {_familiar_repo(ref)}, repository does "
                           f"not exist or may require 'docker login': {e}") from None
        except ManifestUnknown as e:
            raise NotFound(f"manifest for {ref.familiar()} not found: {e}") from None
        top = Descriptor(media, digest, len(data))
        blobs_to_store = [(top, data)]
        manifest_desc, manifest_data = top, data
        if media in mt.INDEX_TYPES:
            index = _json(data, "index")
            entries = [Descriptor.from_json(m) for m in index.get("manifests") or []]
            chosen = select_manifest(entries, platform)
            mdata, mmedia, mdigest = self.registry.get_manifest(repo, str(chosen.digest))
            manifest_desc = Descriptor(mmedia, mdigest, len(mdata), platform=chosen.platform)
            manifest_data = mdata
            blobs_to_store.append((manifest_desc, mdata))
        elif media not in mt.MANIFEST_TYPES:
            raise InvalidArgument(f"unsupported manifest media type {media!r}")
        manifest = _json(manifest_data, "manifest")
        self.emit({"status": f"Pulling from {_familiar_repo(ref)}", "id": what})
        config_desc = Descriptor.from_json(manifest.get("config"))
        layers = [Descriptor.from_json(raw) for raw in manifest.get("layers") or []]
        for d in layers:
            if d.media_type not in _PULLABLE:
                raise NotImplementedYet(f"layer {d.digest}: unsupported media type "
                                        f"{d.media_type!r}")
        config = self._config(repo, config_desc, ref.domain)
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(layers):
            raise InvalidArgument(f"config {config_desc.digest}: {len(diff_ids)} diff_ids for "
                                  f"{len(layers)} layers")
        self._layers(repo, ref.domain, layers, diff_ids)
        for desc, raw in blobs_to_store:
            write_blob(self.content, f"pull-{desc.digest}", raw, desc.digest)
        target = top
        if top is not manifest_desc:
            try:
                host_choice = resolve_platform(self.content, top)
            except NotFound:
                host_choice = None
            if host_choice is None or host_choice.digest != manifest_desc.digest:
                target = Descriptor(manifest_desc.media_type, manifest_desc.digest,
                                    manifest_desc.size)  # another platform: name it alone
        return PullResult(target, digest)

    def _config(self, repo: str, desc: Descriptor, domain: str) -> dict[str, Any]:
        if not blobs.exists(self.content, desc.digest):
            raw = self.registry.fetch_blob(repo, desc.digest)
            write_blob(self.content, f"pull-{desc.digest}", raw, desc.digest,
                       {source_label(domain): repo})
        return _json(self.content.read(desc.digest), "config")

    # -- layers ---------------------------------------------------------------------------

    def _layers(self, repo: str, domain: str, layers: list[Descriptor],
                diff_ids: list[str]) -> None:
        chains = chain_ids(diff_ids)
        todo: list[int] = []
        for i, (desc, chain) in enumerate(zip(layers, chains, strict=True)):
            lid = desc.digest.hex[:12]
            if blobs.exists(self.content, desc.digest) and \
                    committed(self.snapshotter, chain):
                self.emit({"status": "Already exists", "id": lid, "progressDetail": {}})
            else:
                self.emit({"status": "Pulling fs layer", "id": lid, "progressDetail": {}})
                todo.append(i)
        for i in todo[self.max_downloads:]:
            self.emit({"status": "Waiting", "id": layers[i].digest.hex[:12],
                       "progressDetail": {}})
        futures: dict[int, Future[layerstage.Staged | None]] = {}
        pool = ThreadPoolExecutor(max_workers=self.max_downloads,
                                  thread_name_prefix="pull")
        try:
            for i in todo:
                futures[i] = pool.submit(self._fetch_in_worker, repo, domain, layers[i],
                                         diff_ids[i], chains[i])
            parent: str | None = None
            for i, (desc, chain) in enumerate(zip(layers, chains, strict=True)):
                fut = futures.get(i)
                if fut is not None:
                    staged = fut.result()
                    self._stack(desc, diff_ids[i], chain, parent, staged)
                parent = chain
        except BaseException:
            self._cancel.set()
            for f in futures.values():
                f.cancel()
            pool.shutdown(wait=True)
            for f in futures.values():
                if f.done() and not f.cancelled() and f.exception() is None:
                    layerstage.drop(self.snapshotter, f.result())
            raise
        pool.shutdown(wait=True)

    def _stack(self, desc: Descriptor, diff_id: str, chain: str, parent: str | None,
               staged: layerstage.Staged | None) -> None:
        lid = desc.digest.hex[:12]
        if committed(self.snapshotter, chain):
            layerstage.drop(self.snapshotter, staged)
        elif staged is not None and layerstage.graft(self.snapshotter, staged, chain, parent,
                                                     diff_id):
            self.emit({"status": "Extracting", "id": lid,
                       "progressDetail": {"current": desc.size, "total": desc.size},
                       "progress": _bar(desc.size, desc.size)})
        else:
            layerstage.drop(self.snapshotter, staged)
            meter = _Meter(self.emit, "Extracting", lid, desc.size)

            def open_blob() -> BinaryIO:
                return cast(BinaryIO, _Counting(self.content.open(desc.digest), meter))

            layerstage.apply_in_place(self.snapshotter, desc.media_type, open_blob, chain,
                                      parent, diff_id)
        self.emit({"status": "Pull complete", "id": lid, "progressDetail": {}})

    def _writer(self, desc: Descriptor) -> Any:
        """The ingest for ``desc``; waits while another pull holds it. None if the blob
        appeared meanwhile."""
        while True:
            if blobs.exists(self.content, desc.digest):
                return None
            try:
                return self.content.writer(f"pull-{desc.digest}", expected=desc.digest,
                                           size=desc.size)
            except Conflict:
                if self._cancel.wait(0.1):
                    raise _Cancelled() from None
            except InvalidArgument:  # an old ingest with other expectations
                with contextlib.suppress(KetchError):
                    self.content.abort(f"pull-{desc.digest}")

    def _fetch_in_worker(self, repo: str, domain: str, desc: Descriptor, diff_id: str,
                         chain: str) -> layerstage.Staged | None:
        try:
            return self._fetch(repo, domain, desc, diff_id, chain)
        finally:
            self.registry.transport.release_thread()

    def _fetch(self, repo: str, domain: str, desc: Descriptor, diff_id: str,
               chain: str) -> layerstage.Staged | None:
        """Download one layer (staging it on the way); returns its stage, if any."""
        lid = desc.digest.hex[:12]
        need_snapshot = not committed(self.snapshotter, chain)
        w = self._writer(desc)
        if w is None:
            self.emit({"status": "Download complete", "id": lid, "progressDetail": {}})
            return self._stage_blob(desc, diff_id) if need_snapshot else None
        pipe: layerstage.Pipe | None = None
        stager: Future[layerstage.Staged] | None = None
        if need_snapshot and self._stage and w.offset == 0:
            pipe = layerstage.Pipe()
            stager = _run_thread(self._stage_stream, desc, pipe, diff_id)
        meter = _Meter(self.emit, "Downloading", lid, desc.size)
        meter.current = w.offset

        def on_data(chunk: bytes) -> None:
            if self._cancel.is_set():
                raise _Cancelled()
            if pipe is not None:
                pipe.write(chunk)
            meter.add(len(chunk))

        try:
            try:
                self.registry.download(repo, desc, w, on_data)
                self.emit({"status": "Verifying Checksum", "id": lid, "progressDetail": {}})
            except BaseException:
                w.close()  # keep the ingest: the next pull resumes it
                raise
            try:
                w.commit(desc.size, desc.digest, {source_label(domain): repo})
            except InvalidArgument:
                w.close()
                with contextlib.suppress(KetchError):
                    self.content.abort(w.ref)
                raise InvalidArgument(f"filesystem layer verification failed for digest "
                                      f"{desc.digest}") from None
        except BaseException as e:
            if pipe is not None:
                pipe.close(_Cancelled() if not isinstance(e, Exception) else e)
                pipe.abandon()
            if stager is not None:
                with contextlib.suppress(BaseException):
                    layerstage.drop(self.snapshotter, stager.result())
            raise
        self.emit({"status": "Download complete", "id": lid, "progressDetail": {}})
        if pipe is None or stager is None:
            return self._stage_blob(desc, diff_id) if need_snapshot else None
        pipe.close()
        try:
            staged = stager.result()
        except KetchError as e:
            log.info("layer %s: staging failed (%s); applying it in place", lid, e)
            return None
        finally:
            pipe.abandon()
        if not _verified(staged, desc, diff_id):
            layerstage.drop(self.snapshotter, staged)
            return None
        return staged

    def _stage_stream(self, desc: Descriptor, pipe: layerstage.Pipe,
                      diff_id: str) -> layerstage.Staged:
        try:
            return layerstage.stage(self.snapshotter, desc.media_type, pipe, diff_id)
        except BaseException:
            pipe.abandon()  # the download goes on without us; it must not wait
            raise

    def _stage_blob(self, desc: Descriptor, diff_id: str) -> layerstage.Staged | None:
        """Stage a layer whose blob is here already (a resumed download, another image's)."""
        if not self._stage or self._cancel.is_set():
            return None
        try:
            with self.content.open(desc.digest) as f:
                staged = layerstage.stage(self.snapshotter, desc.media_type, f, diff_id)
        except KetchError as e:
            log.info("layer %s: staging failed (%s); applying it in place", desc.digest, e)
            return None
        if not _verified(staged, desc, diff_id):
            layerstage.drop(self.snapshotter, staged)
            return None
        return staged


def _verified(staged: layerstage.Staged, desc: Descriptor, diff_id: str) -> bool:
    """The stage unpacks to the config's diff_id. The blob's own digest needs no second
    hash here: the ingest verified it at commit, and a stage is used only after that."""
    if staged.result.diff_id != diff_id:
        log.warning("layer %s unpacks to %s, the config says %s", desc.digest,
                    staged.result.diff_id, diff_id)
        return False
    return True


class _Counting:
    """A blob reader that reports how much was read (``Extracting`` progress)."""

    def __init__(self, f: BinaryIO, meter: _Meter) -> None:
        self.f, self.meter = f, meter

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.meter.add(len(data))
        return data

    def __enter__(self) -> _Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def _run_thread(fn: Callable[..., layerstage.Staged], *args: Any
                ) -> Future[layerstage.Staged]:
    fut: Future[layerstage.Staged] = Future()

    def run() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:
            fut.set_exception(e)

    threading.Thread(target=run, name="pull-stage", daemon=True).start()
    return fut


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"{what}: invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{what}: not a JSON object")
    return obj


def _familiar_repo(ref: reference.Reference) -> str:
    return reference.Reference(ref.domain, ref.path).familiar()
