"""The image service: what ``docker image ...`` does, over the image store and content.

Terms
-----
image
    What ``docker images`` lists: one image ID (the config digest) with all the store
    records (names) pointing at it. A record is *tagged* (``busybox:latest``) or the
    image's *dangling* record: ``ketch-dangling@<target digest>``, which keeps an
    image that lost its last tag (retagging, ``rmi -f`` of a used image, an unnamed
    ``import``/``commit``/``load``) in the store. An image has a dangling record
    exactly when it has no tagged one; ``RepoTags`` never shows it.
parent
    The image a ``commit`` started from, kept as the content label
    ``ketch.io/image.parent`` on the child's config blob. An image with children
    cannot be deleted (a hard conflict, as in dockerd); an untagged parent is an
    *intermediate* image that ``docker images`` hides without ``-a``.
garbage
    Removing the last record of an image deletes the blobs only it reached (index,
    manifests, config, layers) and then its layer snapshots from the top down, stopping
    at the first that still has children (a container's rootfs, another image's
    layer). Blobs an ongoing ``save`` reads are *leased* and survive.

Removal follows dockerd (``daemon/images/image_delete.go``): removing a name untags it
and deletes the image when that was its last name and nothing else holds it; conflicts
are Docker's, word for word, because scripts match them. ``in_use`` (and, if the
container service knows, ``running``) say which containers use an image ID.

Every read-modify-write of names happens under one re-entrant lock: the daemon calls
these methods from a thread pool. Loading/importing ingests blobs first, outside the
lock, and adds names afterwards under it.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from ketch.content import write_blob
from ketch.engine.image_core import (
    DANGLING_REPO,
    LABEL_PARENT,
    ImageEntry,
    ImageMeta,
    familiar,
    target_name,
)
from ketch.engine.image_delete import ImageDeletion
from ketch.engine.image_distribution import ImageDistribution
from ketch.engine.image_filters import (
    LIST_FILTERS,
    check_filters,
    dangling_filter,
    format_time,
    glob_match,
    match_labels,
    parse_created,
    parse_until,
)
from ketch.errors import InvalidArgument, KetchError, NotFound, Unavailable
from ketch.image import archive, blobs, reference
from ketch.image.changes import apply_changes
from ketch.image.store import Image, host_platform
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor
from ketch.oci.digest import Digest, digest_of

__all__ = ["DANGLING_REPO", "LABEL_PARENT", "ImageService", "target_name"]

log = logging.getLogger(__name__)

_ZERO_TIME = "0001-01-01T00:00:00Z"


class ImageService(ImageDeletion, ImageDistribution):
    """``docker image`` operations; results are Docker API JSON shapes (module doc)."""

    def _repo_digests(self, img: ImageEntry,
                      tags: builtins.list[str] | None = None) -> builtins.list[str]:
        """``repo@digest`` of the image's names (of those in ``tags`` if given, and of
        every ``repo@digest`` name, which ``RepoTags`` never shows).

        A ``repo@digest`` name is a digest a registry knows: a pull by digest, or what
        a push uploaded (:meth:`ImageDistribution._push`; the pushed manifest differs
        from the local one when layers were gzip'd on the way out). A repository that
        has such a name lists it, and not the local target's digest, for its tags; a
        repository without one lists its tags' target digest (a pull by tag stores the
        registry's manifest, so that digest is the registry's too).
        """
        def repo_of(r: Image) -> str:
            ref = r.reference
            return reference.Reference(ref.domain, ref.path).familiar()

        pinned = {repo_of(r) for r in img.tagged if r.reference.digest is not None}
        out: builtins.list[str] = []
        for r in img.tagged:
            ref, repo = r.reference, repo_of(r)
            if ref.digest is not None:
                d = f"{repo}@{ref.digest}"
            elif repo in pinned or (tags is not None and familiar(r.name) not in tags):
                continue
            else:
                d = f"{repo}@{r.target.digest}"
            if d not in out:
                out.append(d)
        return out

    def _summary(self, img: ImageEntry, meta: ImageMeta,
                 tags: builtins.list[str]) -> dict[str, Any]:
        created = self._created(meta)
        return {
            "Id": img.id,
            "ParentId": self._parent(img.id),
            "RepoTags": tags,
            "RepoDigests": self._repo_digests(img, tags),
            "Created": int(created.timestamp()) if created else 0,
            "Size": sum(self._layer_size(d) for d in meta.layers),
            "SharedSize": -1,
            "Labels": dict((meta.config.get("config") or {}).get("Labels") or {}),
            "Containers": -1,
        }

    def list(self, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None,
             digests: bool = False, shared_size: bool = False) -> builtins.list[dict[str, Any]]:
        """``GET /images/json``: ``ImageSummary`` dicts, newest first.

        Filters as in :mod:`ketch.engine.image_filters`; ``RepoDigests`` are always
        given (``digests`` is accepted for the API's sake); ``SharedSize`` is -1
        unless ``shared_size``; ``Containers`` is -1 (``usage`` counts them).
        """
        filters = filters or {}
        check_filters(filters, LIST_FILTERS)
        dangling = dangling_filter(filters, None)
        bounds = {k: self._created(self._meta_of(self.store.get(v[-1])))
                  for k, v in filters.items() if k in ("before", "since") and v}
        until = parse_until(filters["until"][-1]) if filters.get("until") else None
        images = self._images()
        found: builtins.list[tuple[float, dict[str, Any]]] = []
        for img in images.values():
            try:
                meta = self._meta_of(img.record)
            except KetchError as e:
                log.warning("image %s: cannot read its content: %s", img.id, e)
                continue
            tags = _tags(img)
            if not img.tagged:
                if dangling is False or "reference" in filters:
                    continue
                if (dangling or not all) and self._children(img.id, images):
                    continue
            elif dangling:
                continue
            if "reference" in filters:
                tags = [t for t in tags if any(glob_match(p, t, t.rsplit(":", 1)[0])
                                               for p in filters["reference"])]
                if not tags:
                    continue
            created = self._created(meta)
            ts = created.timestamp() if created else 0.0
            before, since = bounds.get("before"), bounds.get("since")
            if (before is not None and ts >= before.timestamp()) or \
                    (since is not None and ts <= since.timestamp()) or \
                    (until is not None and ts > until):
                continue
            labels = (meta.config.get("config") or {}).get("Labels") or {}
            if not match_labels(labels, filters.get("label") or []):
                continue
            found.append((ts, self._summary(img, meta, tags)))
        found.sort(key=lambda f: (f[0], f[1]["Id"]), reverse=True)  # newest first
        out = [summary for _, summary in found]
        if shared_size:
            self._shared_sizes(out, images)
        return out

    def _shared_sizes(self, summaries: Iterable[dict[str, Any]],
                      images: Mapping[str, ImageEntry]) -> None:
        users: collections.Counter[Digest] = collections.Counter()
        layers: dict[str, builtins.list[Descriptor]] = {}
        for i, img in images.items():
            with contextlib.suppress(KetchError):
                layers[i] = self._meta_of(img.record).layers
                users.update({d.digest for d in layers[i]})
        for s in summaries:
            s["SharedSize"] = sum(self._layer_size(d) for d in layers.get(s["Id"], [])
                                  if users[d.digest] > 1)

    def resolve(self, name: str) -> Image:
        """The store record ``name`` means (any spelling); NotFound ``No such image: X``."""
        return self.store.get(name)

    def inspect(self, name: str) -> dict[str, Any]:
        """``GET /images/{name}/json``."""
        record = self.store.get(name)
        img = self._images()[record.id]
        meta = self._meta_of(record)
        cfg = meta.config
        history = cfg.get("history") or []
        comment = cfg.get("comment") or (history[-1].get("comment", "") if history else "")
        tagged = img.tagged
        last_tag = max((r.created for r in tagged), default=None)
        out: dict[str, Any] = {
            "Id": img.id,
            "RepoTags": _tags(img),
            "RepoDigests": self._repo_digests(img),
            "Parent": self._parent(img.id),
            "Comment": comment,
            "Created": cfg.get("created") or _ZERO_TIME,
            "DockerVersion": cfg.get("docker_version") or "",
            "Author": cfg.get("author") or "",
            "Config": cfg.get("config") or {},
            "Architecture": cfg.get("architecture", ""),
            "Os": cfg.get("os", ""),
            "Size": sum(self._layer_size(d) for d in meta.layers),
            "GraphDriver": {"Name": "overlayfs", "Data": {}},
            "RootFS": {"Type": "layers", "Layers": list(cfg["rootfs"]["diff_ids"])},
            "Metadata": {"LastTagTime": format_time(last_tag) if last_tag else _ZERO_TIME},
        }
        if cfg.get("variant"):
            out["Variant"] = cfg["variant"]
        if cfg.get("os.version"):
            out["OsVersion"] = cfg["os.version"]
        return out

    def history(self, name: str) -> builtins.list[dict[str, Any]]:
        """``GET /images/{name}/history``: newest layer first."""
        record = self.store.get(name)
        img = self._images()[record.id]
        meta = self._meta_of(record)
        entries = list(meta.config.get("history") or [])
        if not entries:
            entries = [{"created": meta.config.get("created")} for _ in meta.layers]
        sizes = [self._layer_size(d) for d in meta.layers]
        out, layer = [], 0
        for h in entries:
            size = 0
            if not h.get("empty_layer") and layer < len(sizes):
                size = sizes[layer]
                layer += 1
            created = parse_created(h.get("created"))
            out.append({"Id": "<missing>", "Created": int(created.timestamp()) if created else 0,
                        "CreatedBy": h.get("created_by", ""), "Tags": None, "Size": size,
                        "Comment": h.get("comment", "")})
        out.reverse()
        if out:
            out[0]["Id"] = img.id
            out[0]["Tags"] = _tags(img) or None
        return out

    def search(self, term: str) -> builtins.list[dict[str, Any]]:
        """``GET /images/search``: always empty (no registry access yet)."""
        return []

    def usage(self) -> dict[str, Any]:
        """The image part of ``GET /system/df``: ``LayersSize`` and ``Images``."""
        images = self._images()
        summaries = self.list(all=True)
        self._shared_sizes(summaries, images)
        seen: dict[Digest, int] = {}
        for img in images.values():
            with contextlib.suppress(KetchError):
                for d in self._meta_of(img.record).layers:
                    seen.setdefault(d.digest, self._layer_size(d))
        for s in summaries:
            s["Containers"] = len(self.in_use(s["Id"]))
        return {"LayersSize": sum(seen.values()), "Images": summaries}

    def tag(self, name: str, repo: str, tag: str | None = None) -> None:
        """``POST /images/{name}/tag``: give the image ``name`` the name ``repo:tag``."""
        full = target_name(repo, tag)
        with self._mu:
            record = self.store.get(name)
            rec, _ = self._set_name(full, record.target)
        self._publish("tag", rec.id, familiar(full))

    # -- creating -------------------------------------------------------------------------

    def _check_present(self, digests: Iterable[Digest]) -> None:
        for d in digests:
            try:
                self.content.info(d)
            except NotFound:
                raise Unavailable(f"content {d} was removed while the image was being "
                                  f"stored; try again") from None

    def _store(self, config: dict[str, Any], layers: Sequence[Descriptor], name: str | None,
               action: str, parent: str | None = None) -> str:
        data = json.dumps(config, separators=(",", ":")).encode()
        cfg = Descriptor(mt.OCI_CONFIG, write_blob(self.content, f"config-{digest_of(data)}",
                                                   data), len(data))
        if parent:
            self.content.update_labels(cfg.digest, {LABEL_PARENT: parent})
        manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                               "config": cfg.to_json(),
                               "layers": [d.to_json() for d in layers]},
                              sort_keys=True, separators=(",", ":")).encode()
        target = Descriptor(mt.OCI_MANIFEST, write_blob(
            self.content, f"manifest-{digest_of(manifest)}", manifest), len(manifest))
        with self._mu:
            self._check_present([cfg.digest, target.digest, *(d.digest for d in layers)])
            rec = self._set_name(name, target)[0] if name else self._keep(target)
        self._publish(action, rec.id)
        if name:
            self._publish("tag", rec.id, familiar(name))
        return rec.id

    def import_image(self, tar: IO[bytes], repo: str | None = None, tag: str | None = None,
                     changes: Sequence[str] = (), message: str | None = None,
                     platform: str | None = None) -> str:
        """``POST /images/create?fromSrc=-``: a rootfs tarball (plain, gzip, bzip2 or xz)
        becomes a one-layer image; returns its ID."""
        name = target_name(repo, tag) if repo else None
        plat = _platform(platform)
        section = apply_changes({}, changes)
        layer = blobs.ingest_layer(self.content, tar, ref="import")
        now = format_time(datetime.now(UTC))
        msg = message or "Imported from -"
        config: dict[str, Any] = {**plat, "created": now, "comment": msg, "config": section,
                                  "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
                                  "history": [{"created": now, "comment": msg}]}
        return self._store(config, [layer.descriptor], name, "import")

    def commit(self, layer_tar: IO[bytes], parent: str | None,
               container_config: Mapping[str, Any], repo: str | None = None,
               tag: str | None = None, comment: str = "", author: str = "",
               changes: Sequence[str] = ()) -> str:
        """An image of ``parent`` plus the diff ``layer_tar``, with ``container_config``
        (after ``changes``) as its config; returns the new image ID."""
        name = target_name(repo, tag) if repo else None
        section = apply_changes(dict(container_config), changes)
        base: dict[str, Any] = {}
        base_layers: builtins.list[Descriptor] = []
        parent_id = None
        if parent:
            record = self.store.get(parent)
            parent_id = record.id
            meta = self._meta_of(record)
            base, base_layers = meta.config, meta.layers
        layer = blobs.ingest_layer(self.content, layer_tar, ref="commit")
        now = format_time(datetime.now(UTC))
        cmd = container_config.get("Cmd") or []
        entry = {"created": now, "created_by": cmd if isinstance(cmd, str) else " ".join(cmd)}
        entry.update({k: v for k, v in (("author", author), ("comment", comment)) if v})
        config: dict[str, Any] = {k: base[k] for k in ("architecture", "os", "variant",
                                                       "os.version") if k in base}
        if not config:
            config.update(_platform(None))
        config.update({"created": now, "config": section,
                       "rootfs": {"type": "layers", "diff_ids": [
                           *((base.get("rootfs") or {}).get("diff_ids") or []),
                           layer.diff_id]},
                       "history": [*(base.get("history") or []), entry]})
        config.update({k: v for k, v in (("author", author), ("comment", comment)) if v})
        return self._store(config, [*base_layers, layer.descriptor], name, "commit", parent_id)

    # -- archives -------------------------------------------------------------------------

    def load(self, tar: IO[bytes], quiet: bool = True) -> builtins.list[str]:
        """``POST /images/load``: the messages ``docker load`` prints, one per name/image.

        ``quiet`` is accepted for the API's sake: there is no progress to hide.
        """
        found = archive.read_archive(self.content, tar, tmpdir=self.tmpdir)
        messages: builtins.list[str] = []
        loaded: builtins.list[str] = []
        with self._mu:
            self._check_present(found.blobs)
            for img in found.images:
                rec = None
                for name in img.names:
                    rec, displaced = self._set_name(name, img.target)
                    short = familiar(name)
                    if displaced:
                        messages.append(f"The image {short} already exists, renaming the old "
                                        f"one with ID {displaced} to empty string")
                    messages.append(f"Loaded image: {short}")
                if rec is None:
                    rec = self._keep(img.target)
                    messages.append(f"Loaded image ID: {rec.id}")
                loaded.append(rec.id)
        for image_id in dict.fromkeys(loaded):
            self._publish("load", image_id)
        return messages

    def save(self, names: Sequence[str], out: IO[bytes]) -> None:
        """``GET /images/get``: the archive of ``names`` written to ``out``."""
        with self._mu:
            entries = archive.resolve_save_names(self.store, names)
            leased = {d.digest for e in entries
                      for d in blobs.closure(self.content, e.image.target)}
            with self._lease_mu:
                self._leases.update(leased)
        try:
            archive.write_archive(self.content, entries, out)
        finally:
            with self._lease_mu:
                self._leases.subtract(leased)
                self._leases += collections.Counter()  # drop zero counts
        for image_id in dict.fromkeys(e.image.id for e in entries):
            self._publish("save", image_id)


def _platform(text: str | None) -> dict[str, str]:
    """``os/arch[/variant]`` (default: this host) as config fields."""
    host = host_platform()
    if not text:
        out = {"architecture": host.architecture, "os": host.os}
        if host.variant:
            out["variant"] = host.variant
        return out
    parts = text.lower().split("/")
    if len(parts) > 3 or not all(parts):
        raise InvalidArgument(f"invalid platform {text!r}: want os[/arch[/variant]]")
    if parts[0] != "linux":
        raise InvalidArgument(f"unsupported os {parts[0]!r}: only linux images are supported")
    out = {"os": "linux", "architecture": parts[1] if len(parts) > 1 else host.architecture}
    if len(parts) == 3:
        out["variant"] = parts[2]
    return out


def _tags(img: ImageEntry) -> builtins.list[str]:
    """``RepoTags``: the image's tagged names; ``repo@digest`` names (a pull by digest)
    are ``RepoDigests`` only, and ``docker images`` shows them as ``<none>`` tags."""
    return [familiar(r.name) for r in img.tagged if r.reference.digest is None]
