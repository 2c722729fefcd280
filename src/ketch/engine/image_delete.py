"""Image removal and garbage collection: dockerd's rules, then what only the image held.

``remove`` follows ``daemon/images/image_delete.go``: a name given is untagged first
(refused without force when a container uses an image that has no other tag), and
when it was its repository's last tag the repository's ``repo@digest`` names go too;
the image itself goes when nothing holds it. An image ID removes the image's names
without force when they are one tag and digest names of the same repository. Hard
conflicts (child images, running containers) cannot be forced; soft ones (other tags,
stopped containers) can. The messages are dockerd's, word for word.

Collecting after the last record of an image is gone: every blob its target reaches
that no remaining image reaches and no ``save`` leases, then its layer snapshots from
the top down until one still has children (a container's rootfs; the snapshotter says
``Conflict``).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ketch.engine.derived import DerivedContent
from ketch.engine.image_core import ImageCore, ImageEntry, familiar, is_dangling, short_id
from ketch.engine.image_filters import (
    PRUNE_FILTERS,
    check_filters,
    dangling_filter,
    match_labels,
    parse_until,
)
from ketch.errors import Conflict, KetchError, NotFound
from ketch.image import blobs
from ketch.image.store import Image
from ketch.image.unpack import chain_ids
from ketch.oci.digest import Digest

__all__ = ["ImageDeletion"]

log = logging.getLogger(__name__)


class _Conflict(Conflict):
    """dockerd's image delete conflict: hard ones cannot be forced."""

    def __init__(self, image_id: str, message: str, *, hard: bool = False,
                 used: bool = False) -> None:
        force = "cannot be forced" if hard else "must be forced"
        super().__init__(f"conflict: unable to delete {short_id(image_id)} ({force}) - {message}")
        self.used = used



def _single_reference(records: Sequence[Image]) -> bool:
    """dockerd's isSingleReference: names all in one repository, at most one of them a
    tag (the others ``repo@digest``); False for none."""
    if len(records) <= 1:
        return len(records) == 1
    tags = [r for r in records if r.reference.digest is None]
    return len(tags) <= 1 and len({r.reference.name for r in records}) == 1


class ImageDeletion(ImageCore):
    """``docker rmi`` and ``docker image prune`` (see the module doc)."""

    def _users(self, image_id: str) -> tuple[builtins.list[str], builtins.list[str]]:
        running = list(self.running(image_id))
        return running, [c for c in self.in_use(image_id) if c not in running]

    def _check(self, image_id: str, images: Mapping[str, ImageEntry], *, hard: bool = True,
               references: bool, stopped: bool) -> _Conflict | None:
        running, others = self._users(image_id)
        if hard and self._children(image_id, images):
            return _Conflict(image_id, "image has dependent child images", hard=True)
        if hard and running:
            return _Conflict(image_id, "image is being used by running container "
                             f"{short_id(running[0])}", hard=True, used=True)
        if references and image_id in images and images[image_id].tagged:
            return _Conflict(image_id, "image is referenced in multiple repositories")
        if stopped and others:
            return _Conflict(image_id, f"image is being used by stopped container "
                             f"{short_id(others[0])}", used=True)
        return None

    def remove(self, name: str, force: bool = False, noprune: bool = False
               ) -> builtins.list[dict[str, str]]:
        """``DELETE /images/{name}``: ``[{"Untagged": ...}, {"Deleted": ...}]``."""
        return self._remove(name, force, not noprune)[0]

    def _remove(self, name: str, force: bool, prune: bool
                ) -> tuple[builtins.list[dict[str, str]], int]:
        items: builtins.list[dict[str, str]] = []
        with self._mu:
            record = self.store.get(name)
            image_id, target = record.id, record.target
            images = self._images()
            tagged = images[image_id].tagged
            by_id = image_id.startswith(name) or image_id.removeprefix("sha256:").startswith(name)
            quiet = False
            if not by_id:
                users = self.in_use(image_id)
                if not force and _single_reference(tagged) and users:
                    raise Conflict(f'conflict: unable to remove repository reference "{name}" '
                                   f"(must force) - container {short_id(users[0])} is using "
                                   f"its referenced image {short_id(image_id)}")
                self._untag(record, items)
                remaining = [r for r in tagged if r.name != record.name]
                repo = record.reference.name
                if record.reference.digest is None and not any(
                        r.reference.name == repo and r.reference.digest is None
                        for r in remaining):
                    # the repository's last tag went: its digest names go with it
                    for r in [r for r in remaining if r.reference.name == repo]:
                        self._untag(r, items)
                        remaining.remove(r)
                if remaining:
                    return items, 0
                quiet = True
            elif _single_reference(tagged):
                c = self._check(image_id, images, references=False, stopped=not force)
                if c is not None:
                    raise c
                for r in tagged:
                    self._untag(r, items)
            reclaimed = self._delete(image_id, items, force=force, prune=prune, quiet=quiet,
                                     gone=[record, *tagged])
            if reclaimed is None:
                if not self._images().get(image_id):
                    self._keep(target)
                reclaimed = 0
        return items, reclaimed

    def _untag(self, record: Image, items: builtins.list[dict[str, str]]) -> None:
        self.store.delete(record.name)
        if not is_dangling(record):
            items.append({"Untagged": familiar(record.name)})
            self._publish("untag", record.id)

    def _delete(self, image_id: str, items: builtins.list[dict[str, str]], *, force: bool,
                prune: bool, quiet: bool, gone: Sequence[Image] = ()) -> int | None:
        """dockerd's imageDeleteHelper: bytes reclaimed, or None when the image stays.

        ``gone``: records of the image already removed (their content is collected too).
        """
        images = self._images()
        c = self._check(image_id, images, references=not force, stopped=not force)
        if c is not None:
            dangling = not images.get(image_id, ImageEntry(image_id)).tagged and \
                not self._children(image_id, images)
            if quiet and (not dangling or c.used):
                return None
            raise c
        parent = self._parent(image_id)
        removed = images.get(image_id, ImageEntry(image_id)).records
        for r in removed:
            self._untag(r, items)
        self._publish("delete", image_id)
        items.append({"Deleted": image_id})
        reclaimed = self._collect([*gone, *removed])
        if prune and parent and parent in self._images():
            reclaimed += self._delete(parent, items, force=False, prune=True, quiet=True) or 0
        return reclaimed

    def _collect(self, removed: Sequence[Image]) -> int:
        """Delete what only ``removed`` reached: blobs, then layer snapshots (top down)."""
        remaining = self.store.list()
        keep: set[Digest] = set()
        keep_chains: set[str] = set()
        for r in remaining:
            keep.update(d.digest for d in blobs.closure(self.content, r.target))
            with contextlib.suppress(KetchError):
                keep_chains.update(chain_ids(self._meta_of(r).config["rootfs"]["diff_ids"]))
        reclaimed = 0
        derived = self.content if isinstance(self.content, DerivedContent) else None
        for r in removed:
            chains: builtins.list[str] = []
            with contextlib.suppress(KetchError):
                chains = chain_ids(self._meta_of(r).config["rootfs"]["diff_ids"])
            for d in blobs.closure(self.content, r.target):
                with self._lease_mu:
                    if d.digest in keep or self._leases[d.digest]:
                        continue
                    with contextlib.suppress(NotFound):
                        size = self.content.info(d.digest).size
                        self.content.delete(d.digest)
                        reclaimed += size
            for chain in reversed(chains):
                if chain in keep_chains:
                    continue
                try:
                    size = self.snapshotter.usage(chain).size
                    if derived is not None:  # a layer still used elsewhere, kept only as
                        derived.before_chain_removed(chain)  # this snapshot, is written out
                    self.snapshotter.remove(chain)
                    if derived is not None:
                        derived.chain_removed(chain)
                    reclaimed += size
                except NotFound:
                    continue
                except Conflict:  # children: a container's rootfs or a layer above
                    break
                except (KetchError, OSError) as e:
                    log.warning("image layer snapshot %s: not removed: %s", chain, e)
                    break
        return reclaimed

    def prune(self, filters: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
        """``POST /images/prune``: unused dangling images (all unused with dangling=false)."""
        filters = filters or {}
        check_filters(filters, PRUNE_FILTERS)
        dangling_only = dangling_filter(filters, True)
        until = parse_until(filters["until"][-1]) if filters.get("until") else None
        deleted: builtins.list[dict[str, str]] = []
        reclaimed = 0
        with self._mu:
            images = self._images()
            for img in images.values():
                try:
                    meta = self._meta_of(img.record)
                except KetchError:
                    continue
                children = self._children(img.id, images)
                if (dangling_only and (img.tagged or children)) or \
                        (not img.tagged and children):
                    continue
                created = self._created(meta)
                if until is not None and created is not None and created.timestamp() > until:
                    continue
                labels = (meta.config.get("config") or {}).get("Labels") or {}
                if not match_labels(labels, filters.get("label") or []):
                    continue
                negated = filters.get("label!") or []
                if negated and any(match_labels(labels, [e]) for e in negated):
                    continue
                names = [r.name for r in img.tagged] or [img.id]
                for n in names:
                    try:
                        items, freed = self._remove(n, False, True)
                    except (Conflict, NotFound):
                        continue
                    deleted += items
                    reclaimed += freed
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

