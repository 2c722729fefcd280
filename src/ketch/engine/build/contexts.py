"""The build context cache: the daemon's copy of each client's context directory.

``ketch build`` (never the docker CLI, whose ``POST /build`` is untouched) keeps the last
context it sent for a directory here, under a *key* the client picks (16..64 lower-case
hex digits: a hash of its host name, the directory and the Dockerfile), and then sends
only the files whose stat changed. Records, manifests, held files and how a synced tar
is applied to a tree are :mod:`ketch.engine.build.intake`'s; this module keeps the
trees. Layout::

    <data-root>/build/contexts/
        <key>/
            tree/            the context as the last build of this key left it
            manifest.json    the held files: record, sha256, stat key in tree/
                             (written to a temp name, then renamed)
            dirty            exists while a sync writes tree/ (a crash leaves it)

Lifecycle of a key:

1. :meth:`ContextCache.need` (``POST /ketch/build/contexts/<key>``): the manifest's files
   the daemon does not hold as described. Lock-free: the answer may be stale by the
   time the build comes, which step 2 catches.
2. :meth:`ContextCache.sync` (``POST /build?ketchcontext=<key>``): an async context
   manager that holds the key's lock for the whole build, so the tree never changes
   under it. It applies the synced tar (``intake.apply_synced``); then every manifest
   file that was not sent must be held with an identical record and an unchanged stat
   key, else :class:`~ketch.errors.Conflict` ``"build context changed since it was
   checked; retry"`` (409; the client then sends everything). It saves the held files,
   seeds the digest cache with them (so an unchanged file is never re-read or
   re-hashed, not even after a daemon restart) and yields a
   :class:`~ketch.image.build.context.BuildContext` on ``tree/`` (``.dockerignore``
   applied). The tree is the cache: nothing removes it after the build.
3. At most ``max_keys`` keys: making a new one first removes the least recently used
   idle ones (by the key directory's mtime, touched by every sync), each under its own
   lock. :meth:`ContextCache.prune` removes every idle key (``POST /build/prune``).

A daemon restart keeps every key. Opening the cache removes the temp files a crash left
in keys marked ``dirty``; a file a crash left half-replaced no longer matches its stat
key, so step 1 asks for it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import tarfile
import threading
from collections.abc import AsyncIterator, Mapping
from typing import IO

from ketch.engine.build.intake import (
    TEMP_PREFIX,
    Held,
    Record,
    apply_synced,
    needed,
    parse_manifest,
    unchanged,
)
from ketch.engine.volumes import dir_size
from ketch.errors import Conflict, InvalidArgument
from ketch.image.build.context import BuildContext, DigestCache, open_context_tar

__all__ = ["CHANGED", "ContextCache", "check_key"]

log = logging.getLogger(__name__)

#: the message of the 409 a sync answers when a file it was not sent is not held
CHANGED = "build context changed since it was checked; retry"

_KEY = re.compile(r"[0-9a-f]{16,64}")
_TMP = TEMP_PREFIX


def check_key(key: str) -> str:
    """``key`` if it is a context key (``[0-9a-f]{16,64}``), else InvalidArgument."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidArgument(f"invalid build context key {key!r}: want 16 to 64 "
                              "lower-case hex digits")
    return key


class ContextCache:
    """Context trees under ``root`` (``<data-root>/build/contexts``); see the module doc.

    ``need`` may run in any thread; ``sync`` and ``prune`` on the daemon's event loop.
    """

    def __init__(self, root: str, *, max_keys: int = 8) -> None:
        self.root = root
        self.max_keys = max_keys
        self._mu = threading.Lock()  # guards _held
        self._held: dict[str, dict[str, Held]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}  # syncs running or waiting, per key
        os.makedirs(root, 0o700, exist_ok=True)
        for key in self.keys():
            kdir = self._dir(key)
            for name in os.listdir(kdir):  # a manifest.json a crash left half-written
                if name.startswith(_TMP):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(kdir, name))
            if os.path.exists(os.path.join(kdir, "dirty")):
                _remove_temps(os.path.join(kdir, "tree"))
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(kdir, "dirty"))

    def keys(self) -> list[str]:
        """The keys that have a directory, oldest use first."""
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as it:
            for e in it:
                if _KEY.fullmatch(e.name) and e.is_dir(follow_symlinks=False):
                    found.append((e.stat(follow_symlinks=False).st_mtime_ns, e.name))
        return [k for _, k in sorted(found)]

    def need(self, key: str, body: object) -> list[str]:
        """Paths of the manifest ``body`` (``{"entries": [...]}``) to send (blocking I/O)."""
        manifest = parse_manifest(body)
        return needed(manifest, self.held(check_key(key)), self._tree(key))

    def held(self, key: str) -> dict[str, Held]:
        """The files held for ``key`` (read from its manifest.json once)."""
        with self._mu:
            found = self._held.get(key)
            if found is None:
                found = _load(os.path.join(self._dir(key), "manifest.json"))
                if os.path.isdir(self._dir(key)):  # no entry for keys never synced
                    self._held[key] = found
            return found

    @contextlib.asynccontextmanager
    async def sync(self, key: str, stream: IO[bytes],
                   digests: DigestCache) -> AsyncIterator[BuildContext]:
        """Apply the synced context tar ``stream`` to ``key``'s tree; yield it as a
        BuildContext, the key locked until the block ends (see the module doc)."""
        check_key(key)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with self._lock(key):
                if not os.path.isdir(self._dir(key)):
                    await self._make_room(key)
                work = asyncio.ensure_future(asyncio.to_thread(self._apply, key, stream,
                                                               digests))
                try:
                    ctx = await asyncio.shield(work)
                except asyncio.CancelledError:  # the thread goes on: keep the lock till
                    with contextlib.suppress(BaseException):  # it is done with the tree
                        await work
                    raise
                yield ctx
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]

    async def prune(self) -> tuple[list[str], int]:
        """Remove every key no build uses: (the keys, the bytes of their files)."""
        deleted, reclaimed = [], 0
        for key in self.keys():
            size = await self._evict(key)
            if size is not None:
                deleted.append(key)
                reclaimed += size
        return deleted, reclaimed

    # -- internals ------------------------------------------------------------------------

    def _dir(self, key: str) -> str:
        return os.path.join(self.root, key)

    def _tree(self, key: str) -> str:
        return os.path.join(self.root, key, "tree")

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _make_room(self, new: str) -> None:
        """Evict the least recently used idle keys until ``new`` fits in ``max_keys``."""
        keys = [k for k in self.keys() if k != new]
        excess = len(keys) + 1 - self.max_keys
        for key in keys:
            if excess <= 0:
                break
            if await self._evict(key) is not None:
                log.info("build context cache: evicted %s (least recently used)", key)
                excess -= 1

    async def _evict(self, key: str) -> int | None:
        """Remove ``key`` unless a sync uses or awaits it; the bytes freed (None: kept)."""
        if self._users.get(key):
            return None
        lock = self._lock(key)
        if lock.locked():
            return None
        async with lock:  # free and nobody waits: taken at once, so no sync starts on it
            self._users[key] = 1
            try:
                return await asyncio.to_thread(self._remove, key)
            finally:
                del self._users[key]

    def _remove(self, key: str) -> int:
        kdir = self._dir(key)
        size = dir_size(kdir)
        shutil.rmtree(kdir, ignore_errors=True)
        with self._mu:
            self._held.pop(key, None)
        return size

    def _apply(self, key: str, stream: IO[bytes], digests: DigestCache) -> BuildContext:
        """Step 2 of the module doc, in a worker thread, the key locked."""
        kdir = self._dir(key)
        os.makedirs(os.path.join(kdir, "tree"), 0o700, exist_ok=True)
        os.utime(kdir)
        tree = os.path.realpath(os.path.join(kdir, "tree"))
        dirty = os.path.join(kdir, "dirty")
        with open(dirty, "wb"):
            pass
        held = self.held(key)
        try:
            with open_context_tar(stream) as tar:
                manifest, sent = apply_synced(tar, tree)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise InvalidArgument(f"failed to read build context: {e}") from None
        now: dict[str, Held] = {}
        missing: list[str] = []
        for rec in manifest.files():
            h = sent.get(rec.path)
            if h is None:
                h = held.get(rec.path)
                if h is None or h.record != rec or not unchanged(tree, h):
                    missing.append(rec.path)
                    continue
            now[rec.path] = h
        _save(os.path.join(kdir, "manifest.json"), now)
        with self._mu:
            self._held[key] = now
        os.unlink(dirty)
        if missing:
            log.info("build context %s: %d files not sent and not held, e.g. %r", key,
                     len(missing), missing[0])
            raise Conflict(CHANGED)
        for path, h in now.items():  # the key BuildContext.digest looks up
            digests[(os.path.join(tree, path), *h.stat)] = h.digest
        return BuildContext.from_directory(tree)


def _remove_temps(tree: str) -> None:
    for dirpath, _dirs, files in os.walk(tree):  # os.walk does not follow symlinks
        for name in files:
            if name.startswith(_TMP):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))


def _load(path: str) -> dict[str, Held]:
    """Held files from ``manifest.json``; a missing or broken one holds nothing (every
    file is sent again, nothing worse)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        out: dict[str, Held] = {}
        for e in data["files"]:
            rec = Record.from_json({k: v for k, v in e.items() if k not in ("digest", "stat")})
            st = e["stat"]
            if not (isinstance(e["digest"], str) and isinstance(st, list) and len(st) == 5
                    and all(isinstance(v, int) for v in st)):
                raise ValueError("bad held file")
            out[rec.path] = Held(rec, e["digest"], (st[0], st[1], st[2], st[3], st[4]))
        return out
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InvalidArgument) as e:
        log.warning("build context cache: ignoring %s: %s", path, e)
        return {}


def _save(path: str, held: Mapping[str, Held]) -> None:
    """Write-then-rename. No fsync: it is a cache, and a torn file loads as empty."""
    files = [{**h.record.to_json(), "digest": h.digest, "stat": list(h.stat)}
             for h in held.values()]
    tmp = os.path.join(os.path.dirname(path), _TMP + secrets.token_hex(8))
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "files": files}, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
