"""The build cache: which image a build step made, by what went into the step.

A step's *key* is the sha256 of a canonical JSON list: the parent image ID (or
``scratch``), the instruction as the step saw it (expanded, plus the build-args that
reach it) and, for COPY/ADD, the content digest of the sources
(:meth:`ketch.image.build.context.BuildContext.digest`: contents and modes, never
mtimes). The value is the ID of the image the step produced: each step's result is a
real (untagged) image in the image store, so a hit reuses it as it is, and its layer
snapshots with it.

The map lives in ``<data-root>/build/cache.json`` and is rewritten atomically after
every new entry, so it survives daemon restarts; entries whose image was removed
(``docker image prune``, ``rmi``) are dropped when they are looked up. Only steps
that finished are recorded, so a failed build leaves the cache of the steps before
the failure and nothing else.

In memory only, :meth:`BuildCache.file_digests` keeps context file digests by (path,
device, inode, size, mtime, ctime) for :meth:`BuildContext.digest`, so a directory
context used twice is not re-read (a context extracted from a tar is new files each
time, so it never hits).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from typing import Any

from ketch.runtime.state import atomic_write

__all__ = ["BuildCache", "step_key"]

_MAX_FILES = 100_000


def step_key(*parts: Any) -> str:
    """The cache key of a step from JSON-able parts (see the module doc)."""
    data = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(data.encode("utf-8", "surrogateescape")).hexdigest()


class BuildCache:
    """``key → image ID``, persisted under ``root``; safe to use from several threads.

    ``exists(image_id)`` tells whether an image is still in the store; a lookup of an
    entry whose image is gone forgets the entry.
    """

    def __init__(self, root: str, exists: Callable[[str], bool]) -> None:
        self.root = root
        self._exists = exists
        self._mu = threading.Lock()
        os.makedirs(root, 0o700, exist_ok=True)
        self._path = os.path.join(root, "cache.json")
        self._entries: dict[str, str] = self._load(self._path)
        self.files: dict[tuple[str, int, int, int, int, int], str] = {}

    @staticmethod
    def _load(path: str) -> dict[str, str]:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def get(self, key: str) -> str | None:
        """The image ID recorded for ``key``, if that image still exists."""
        with self._mu:
            found = self._entries.get(key)
        if found is None:
            return None
        if self._exists(found):
            return found
        with self._mu:
            if self._entries.get(key) == found:
                del self._entries[key]
                self._save()
        return None

    def put(self, key: str, image_id: str) -> None:
        """Record that the step ``key`` made ``image_id`` (written to disk now)."""
        with self._mu:
            self._entries[key] = image_id
            self._save()

    def __len__(self) -> int:
        with self._mu:
            return len(self._entries)

    def _save(self) -> None:
        atomic_write(self._path, json.dumps(self._entries, separators=(",", ":")).encode())

    def file_digests(self) -> dict[tuple[str, int, int, int, int, int], str]:
        """The shared context-file digest map (bounded; cleared when it grows large)."""
        if len(self.files) > _MAX_FILES:
            self.files.clear()
        return self.files
