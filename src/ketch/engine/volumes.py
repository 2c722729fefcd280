"""The volumes service: Docker's volume semantics over the ``VolumeDriver`` seam.

The service owns the registry of volume drivers (``local`` now, plugin proxies
later) and adds what Docker layers above drivers: anonymous volumes, in-use
tracking by container, filters, prune, disk usage and events. Every public
method answers in the Docker Engine API's JSON shapes and raises
``ketch.errors`` classes with Docker's wording where clients parse it.

Who uses a volume
    A container *holds* a volume between :meth:`VolumeService.acquire` and
    :meth:`VolumeService.release`; the hold is the driver's mount id (the
    container ID). The set of holders is the driver's own persistent record
    (``LocalDriver.mount_ids``), so it survives a daemon restart. A held volume
    cannot be removed or pruned and is not ``dangling``.
Anonymous volume
    One created without a name: its name is 64 random hex digits and it
    carries the label ``com.docker.volume.anonymous``. Prune removes only
    these unless asked for ``all``; ``docker rm -v`` removes only these.

Events (type ``volume``, actor = volume name): ``create`` and ``destroy`` with
``driver``; ``mount`` and ``unmount`` with ``driver`` and ``container``;
``prune`` (actor ``""``) with ``reclaimed``.

Thread safety: one lock serialises the compound steps (look up, then create,
mount or remove) so a volume cannot vanish between them; slow work (sizes,
copy-up) runs outside it.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ketch.engine.events import EventBus
from ketch.errors import Conflict, FailedPrecondition, InvalidArgument, KetchError, NotFound
from ketch.volume import Volume, VolumeDriver
from ketch.volume.copyup import copy_up as _copy_up
from ketch.volume.local import LocalDriver

__all__ = ["ANONYMOUS_LABEL", "DEFAULT_DRIVER", "VolumeService", "dir_size"]

log = logging.getLogger(__name__)

DEFAULT_DRIVER = "local"
ANONYMOUS_LABEL = "com.docker.volume.anonymous"

Filters = Mapping[str, Sequence[str]]

LIST_FILTERS = frozenset({"name", "driver", "label", "dangling"})
PRUNE_FILTERS = frozenset({"label", "label!", "all"})


@runtime_checkable
class _KeepsHolders(Protocol):
    """A driver that records its mount ids itself (persistently), as ``LocalDriver`` does."""

    def mount_ids(self, name: str) -> builtins.list[str]: ...


def dir_size(path: str) -> int:
    """Bytes used under ``path`` the way ``docker system df`` counts them.

    The apparent size (``st_size``) of every non-directory entry, each inode
    once (hard links), symlinks as links (never followed). Entries that vanish
    during the walk are skipped; a missing ``path`` is 0.
    """
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                    continue
                key = (st.st_dev, st.st_ino)
                if st.st_size and key not in seen:
                    seen.add(key)
                    total += st.st_size
    return total


def _check_filters(filters: Filters, allowed: frozenset[str]) -> None:
    for key in filters:
        if key not in allowed:
            raise InvalidArgument(f"invalid filter '{key}'")


def _filter_bool(filters: Filters, key: str, default: bool) -> bool:
    """Docker's boolean filter: ``true``/``1`` or ``false``/``0``, nothing else, no mix."""
    values = list(filters.get(key) or [])
    if key not in filters:
        return default
    lowered = {v.strip().lower() for v in values}
    yes = bool(lowered & {"true", "1"})
    no = bool(lowered & {"false", "0"})
    if yes == no or lowered - {"true", "1", "false", "0"}:
        raise InvalidArgument(f"invalid filter '{key}={','.join(values)}'")
    return yes


def _matches_pattern(patterns: Iterable[str], value: str) -> bool:
    """Docker's ``name``/``driver`` match: any pattern equal to, or found (as a regexp) in,
    ``value``. A plain word thus matches as a substring."""
    for p in patterns:
        if p == value or p in value:
            return True
        with contextlib.suppress(re.error):
            if re.search(p, value):
                return True
    return False


def _label_matches(spec: str, labels: Mapping[str, str]) -> bool:
    key, sep, value = spec.partition("=")
    return key in labels and (not sep or labels[key] == value)


class VolumeService:
    """Volumes of one engine; see the module docstring for terms and events.

    ``root`` is ``<data-root>/volumes``, where the ``local`` driver keeps its
    volumes. ``drivers`` maps driver names to drivers; plugins add theirs.
    """

    def __init__(self, root: str, events: EventBus) -> None:
        self.events = events
        self.drivers: dict[str, VolumeDriver] = {DEFAULT_DRIVER: LocalDriver(root)}
        self._mu = threading.RLock()
        self._prune_mu = threading.Lock()
        # holders for drivers that do not keep them (in memory: plugins are re-asked on start)
        self._holds: dict[tuple[str, str], list[str]] = {}
        self._copy_locks: dict[str, threading.Lock] = {}

    # -- the /volumes API ------------------------------------------------------------

    def create(self, name: str | None = None, driver: str = DEFAULT_DRIVER,
               driver_opts: Mapping[str, str] | None = None,
               labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Create a volume and return its ``Volume`` JSON.

        No (or an empty) ``name`` makes an anonymous volume. An existing name
        with the same driver and options is returned unchanged (no event);
        another driver, or other options, is a ``Conflict``. An unknown driver
        is ``NotFound``; a bad name or option ``InvalidArgument``.
        """
        driver = driver or DEFAULT_DRIVER
        drv = self._driver(driver)
        all_labels = dict(labels or {})
        if not name:
            name = secrets.token_hex(32)
            all_labels[ANONYMOUS_LABEL] = ""
        with self._mu:
            found = self._lookup(name)
            if found is not None and found[0] != driver:
                raise Conflict(f"create {name}: driver '{found[0]}' already has volume "
                               f"'{name}': volume name must be unique")
            vol = drv.create(name, dict(driver_opts or {}), all_labels)
            if found is None:
                self.events.publish("volume", "create", name, {"driver": driver})
        return vol.to_api()

    def inspect(self, name: str, usage: bool = False) -> dict[str, Any]:
        """The ``Volume`` JSON of ``name``; with ``usage``, plus ``UsageData``.

        ``NotFound`` reads ``get <name>: no such volume``, as dockerd's does.
        """
        driver, vol = self._get(name)
        out = vol.to_api()
        if usage:
            out["UsageData"] = self._usage(driver, vol)
        return out

    def list(self, filters: Filters | None = None) -> dict[str, Any]:
        """``VolumeListResponse`` of volumes matching every filter given.

        Filters: ``name`` (any value found in the name; regexps work as in
        Docker), ``driver`` (likewise), ``label`` (all of ``key`` or
        ``key=value``), ``dangling`` (``true``: held by no container; ``false``:
        held). Unknown filters are ``InvalidArgument`` ``invalid filter '<key>'``.
        """
        filters = filters or {}
        _check_filters(filters, LIST_FILTERS)
        dangling = _filter_bool(filters, "dangling", False) if "dangling" in filters else None
        out = []
        for driver, vol in self._all():
            if filters.get("name") and not _matches_pattern(filters["name"], vol.name):
                continue
            if filters.get("driver") and not _matches_pattern(filters["driver"], driver):
                continue
            if not all(_label_matches(s, vol.labels) for s in filters.get("label", ())):
                continue
            if dangling is not None:
                try:
                    held = bool(self._users(driver, vol.name))
                except NotFound:  # removed meanwhile
                    continue
                if held == dangling:
                    continue
            out.append(vol.to_api())
        return {"Volumes": out, "Warnings": []}

    def remove(self, name: str, force: bool = False) -> None:
        """Remove ``name`` and its data.

        Held by containers: ``Conflict`` ``remove <name>: volume is in use -
        [<ids>]``, with or without ``force``. Unknown: ``NotFound`` ``get <name>:
        no such volume``, or nothing with ``force`` (Docker's purge semantics).
        """
        with self._mu:
            found = self._lookup(name)
            if found is None:
                if force:
                    return
                raise NotFound(f"get {name}: no such volume")
            driver, _ = found
            self._remove_locked(driver, name)

    def prune(self, filters: Filters | None = None) -> dict[str, Any]:
        """Remove unused ``local`` volumes; ``VolumePruneResponse``.

        Only anonymous volumes unless ``all=true`` (Docker ≥ 23); ``label``
        keeps volumes having all the given labels, ``label!`` drops volumes
        having any of them. Held volumes are never pruned. A second prune while
        one runs is a ``Conflict``.
        """
        filters = filters or {}
        _check_filters(filters, PRUNE_FILTERS)
        everything = _filter_bool(filters, "all", False)
        if not self._prune_mu.acquire(blocking=False):
            raise Conflict("a prune operation is already running")
        try:
            deleted: builtins.list[str] = []
            reclaimed = 0
            for driver, vol in self._all():
                if driver != DEFAULT_DRIVER:
                    continue
                if not everything and ANONYMOUS_LABEL not in vol.labels:
                    continue
                if not all(_label_matches(s, vol.labels) for s in filters.get("label", ())):
                    continue
                if any(_label_matches(s, vol.labels) for s in filters.get("label!", ())):
                    continue
                size = dir_size(vol.mountpoint)
                try:
                    with self._mu:
                        self._remove_locked(driver, vol.name)
                except (Conflict, NotFound):  # taken into use, or gone, meanwhile
                    continue
                except KetchError as e:
                    log.warning("prune: cannot remove volume %s: %s", vol.name, e)
                    continue
                deleted.append(vol.name)
                reclaimed += size
            self.events.publish("volume", "prune", "", {"reclaimed": str(reclaimed)})
            return {"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed}
        finally:
            self._prune_mu.release()

    def usage(self) -> builtins.list[dict[str, Any]]:
        """Every volume's ``Volume`` JSON with ``UsageData {Size, RefCount}`` (``/system/df``).

        ``Size`` is :func:`dir_size` of the mountpoint for ``local`` volumes and
        -1 for other drivers; ``RefCount`` the number of holders.
        """
        out = []
        for driver, vol in self._all():
            try:
                usage = self._usage(driver, vol)
            except NotFound:
                continue
            out.append({**vol.to_api(), "UsageData": usage})
        return out

    # -- for the container service ---------------------------------------------------

    def acquire(self, name: str, container_id: str, *,
                attributes: Mapping[str, str] | None = None) -> str:
        """Hold ``name`` for ``container_id`` and return its host path.

        A missing volume is created with the ``local`` driver first (as
        ``docker run -v name:/dst`` does). Holding again is a no-op. The
        ``mount`` event carries ``driver``, ``container`` and ``attributes``
        (e.g. ``destination``). Mount failures are ``FailedPrecondition``.
        """
        with self._mu:
            found = self._lookup(name)
            if found is None:
                self.create(name, DEFAULT_DRIVER)
                driver = DEFAULT_DRIVER
            else:
                driver = found[0]
            drv = self.drivers[driver]
            held = container_id in self._users(driver, name)
            path = drv.mount(name, container_id)
            if not held:
                if not isinstance(drv, _KeepsHolders):
                    self._holds.setdefault((driver, name), []).append(container_id)
                self.events.publish("volume", "mount", name, {
                    **(attributes or {}), "driver": driver, "container": container_id})
            return path

    def release(self, name: str, container_id: str) -> None:
        """Drop ``container_id``'s hold on ``name``; a no-op if it holds none or
        the volume does not exist (so cleanup can always call it)."""
        with self._mu:
            found = self._lookup(name)
            if found is None:
                return
            driver = found[0]
            if container_id not in self._users(driver, name):
                return
            self.drivers[driver].unmount(name, container_id)
            holds = self._holds.get((driver, name))
            if holds is not None:
                holds[:] = [h for h in holds if h != container_id]
                if not holds:
                    del self._holds[(driver, name)]
            self.events.publish("volume", "unmount", name,
                                {"driver": driver, "container": container_id})

    def users(self, name: str) -> builtins.list[str]:
        """IDs of the containers holding ``name``; ``NotFound`` for an unknown volume."""
        driver, _ = self._get(name)
        return self._users(driver, name)

    def copy_up(self, name: str, src_dir: str) -> bool:
        """Seed ``name`` with ``src_dir``'s content if the volume is empty; True if copied.

        The volume must be acquired (mounted) first, else ``FailedPrecondition``.
        See ``ketch.volume.copyup`` for what is kept. Concurrent calls for one
        volume copy once.
        """
        driver, _ = self._get(name)
        path = self.drivers[driver].path(name)
        if path is None:
            raise FailedPrecondition(f"copy-up into volume {name}: volume is not mounted")
        with self._mu:
            lock = self._copy_locks.setdefault(name, threading.Lock())
        with lock:
            return _copy_up(src_dir, path)

    def remove_anonymous_of(self, container_id: str,
                            names: Iterable[str]) -> builtins.list[str]:
        """``docker rm -v``: release ``container_id``'s holds on ``names`` and remove
        the anonymous ones nobody else holds. Named, missing and still-held
        volumes are left alone. Returns the names removed."""
        removed = []
        for name in names:
            with self._mu:
                found = self._lookup(name)
                if found is None:
                    continue
                driver, vol = found
                self.release(name, container_id)
                if ANONYMOUS_LABEL not in vol.labels:
                    continue
                try:
                    self._remove_locked(driver, name)
                except Conflict as e:
                    log.info("keeping volume %s of container %s: %s", name, container_id, e)
                    continue
            removed.append(name)
        return removed

    # -- internals ---------------------------------------------------------------------

    def _driver(self, name: str) -> VolumeDriver:
        try:
            return self.drivers[name]
        except KeyError:
            raise NotFound(f'error looking up volume plugin {name}: plugin "{name}" '
                           "not found") from None

    def _lookup(self, name: str) -> tuple[str, Volume] | None:
        """(driver name, volume) of ``name``, or None; invalid names are simply absent."""
        for driver, drv in self.drivers.items():
            try:
                return driver, drv.get(name)
            except (NotFound, InvalidArgument):
                continue
        return None

    def _get(self, name: str) -> tuple[str, Volume]:
        found = self._lookup(name)
        if found is None:
            raise NotFound(f"get {name}: no such volume")
        return found

    def _all(self) -> builtins.list[tuple[str, Volume]]:
        out = []
        for driver, drv in self.drivers.items():
            out += [(driver, v) for v in drv.list()]
        return sorted(out, key=lambda dv: dv[1].name)

    def _users(self, driver: str, name: str) -> builtins.list[str]:
        drv = self.drivers[driver]
        if isinstance(drv, _KeepsHolders):
            return drv.mount_ids(name)
        return list(self._holds.get((driver, name), []))

    def _usage(self, driver: str, vol: Volume) -> dict[str, int]:
        refs = len(self._users(driver, vol.name))
        size = dir_size(vol.mountpoint) if driver == DEFAULT_DRIVER else -1
        return {"Size": size, "RefCount": refs}

    def _remove_locked(self, driver: str, name: str) -> None:
        users = self._users(driver, name)
        if users:
            raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
        self.drivers[driver].remove(name)
        self._holds.pop((driver, name), None)
        self._copy_locks.pop(name, None)
        self.events.publish("volume", "destroy", name, {"driver": driver})
