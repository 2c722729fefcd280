"""The container store: records on disk, an index by ID and name in memory.

Layout: ``<root>/<id>/config.v2.json`` per container (see :mod:`.model`), plus
whatever else the engine keeps per container in that directory (its log, the
hostname/hosts/resolv.conf files it bind-mounts). A directory whose record is
missing or unreadable is a container whose create never completed (the daemon
was killed in between); it is removed at load, so a restart is consistent.

Lookup takes what ``docker inspect`` takes: a full ID, a name (with or without
the leading ``/``), or a unique ID prefix. Unknown references raise ``NotFound``
with Docker's wording ``No such container: X``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading

from ketch.engine.containers.model import Container
from ketch.errors import Conflict, InvalidArgument, NotFound

__all__ = ["ContainerStore", "validate_name"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+\Z")


def validate_name(name: str) -> str:
    """The canonical ``/name`` form; InvalidArgument with Docker's message if invalid."""
    if not _NAME.match(name):
        raise InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                              "are allowed")
    return name if name.startswith("/") else "/" + name


class ContainerStore:
    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, 0o710, exist_ok=True)
        self._by_id: dict[str, Container] = {}
        self._by_name: dict[str, str] = {}
        self._mu = threading.RLock()
        self._load()

    def _load(self) -> None:
        for entry in sorted(os.listdir(self.root)):
            d = os.path.join(self.root, entry)
            try:
                with open(os.path.join(d, "config.v2.json"), "rb") as f:
                    c = Container.from_record(json.loads(f.read()))
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.warning("removing incomplete container %s: %s", entry, e)
                shutil.rmtree(d, ignore_errors=True)
                continue
            if c.id != entry:
                log.warning("skipping container dir %s: record names %s", entry, c.id)
                continue
            self._by_id[c.id] = c
            self._by_name[c.name] = c.id

    def dir(self, container_id: str) -> str:
        return os.path.join(self.root, container_id)

    def reserve(self, c: Container) -> None:
        """Index ``c`` under its name and ID (not yet saved); Conflict if the name is taken."""
        with self._mu:
            owner = self._by_name.get(c.name)
            if owner is not None:
                raise Conflict(f'Conflict. The container name "{c.name}" is already in use by '
                               f'container "{owner}". You have to remove (or rename) that '
                               "container to be able to reuse that name.")
            self._by_id[c.id] = c
            self._by_name[c.name] = c.id

    def save(self, c: Container, *, sync: bool = True) -> None:
        """Write ``c``'s record (atomically; ``sync=False`` skips the fsync, for facts a
        power loss makes moot anyway, such as a pid)."""
        d = self.dir(c.id)
        os.makedirs(d, 0o710, exist_ok=True)
        c.save(d, sync=sync)

    def forget(self, c: Container) -> None:
        """Unindex ``c`` and unlink its record: from here on it does not exist, even after
        a crash (a directory without a record is removed at the next load)."""
        with self._mu:
            self._by_id.pop(c.id, None)
            if self._by_name.get(c.name) == c.id:
                del self._by_name[c.name]
        try:
            os.unlink(os.path.join(self.dir(c.id), "config.v2.json"))
        except FileNotFoundError:
            pass

    def drop(self, c: Container) -> None:
        """Forget ``c`` and delete its directory."""
        self.forget(c)
        shutil.rmtree(self.dir(c.id), ignore_errors=True)

    def rename(self, c: Container, new_name: str) -> None:
        new = validate_name(new_name)
        with self._mu:
            if new == c.name:
                raise InvalidArgument("Renaming a container with the same name as its current "
                                      "name")
            owner = self._by_name.get(new)
            if owner is not None:
                raise Conflict(f'Conflict. The container name "{new}" is already in use by '
                               f'container "{owner}". You have to remove (or rename) that '
                               "container to be able to reuse that name.")
            del self._by_name[c.name]
            c.name = new
            self._by_name[new] = c.id

    def get(self, ref: str) -> Container:
        with self._mu:
            c = self._by_id.get(ref)
            if c is not None:
                return c
            cid = self._by_name.get(ref if ref.startswith("/") else "/" + ref)
            if cid is not None:
                return self._by_id[cid]
            if ref and all(ch in "0123456789abcdef" for ch in ref):
                found = [c for i, c in self._by_id.items() if i.startswith(ref)]
                if len(found) == 1:
                    return found[0]
                if len(found) > 1:
                    raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}")

    def all(self) -> list[Container]:
        with self._mu:
            return list(self._by_id.values())

    def name_taken(self, name: str) -> bool:
        with self._mu:
            return name in self._by_name
