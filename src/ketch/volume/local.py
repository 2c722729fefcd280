"""The ``local`` volume driver: directories under a root, optionally mounted filesystems.

Layout::

    <root>/
      lock                  flock held by every mutating call (threads and processes)
      .tmp-<random>/        a volume being created or removed (renamed into/out of place)
      <name>/
        opts.json           {"Name", "CreatedAt", "Labels", "Options"}; written once
        mounts.json         {"BootID", "IDs"}: the mount ids holding the volume
        _data/              the mountpoint: the data itself, or where it is mounted

Options follow Docker's local driver: with none, ``_data`` is a plain directory
and "mounting" only counts ids. With ``type``, ``device`` and ``o`` the volume is
a mount(2) of ``device`` on ``_data`` with filesystem ``type`` and options ``o``
(``type=tmpfs device=tmpfs o=size=100m,uid=1000``; a bind is ``type=none
o=bind device=/host/path``). It is mounted by the first ``mount`` and unmounted
by the last ``unmount``.

Held ids are persisted so a restarted daemon (a new ``LocalDriver`` on the same
root) still knows which volumes are in use. On start it reconciles them with
the kernel: ids recorded under another boot are dropped (nothing survives a
reboot), ids of a mount-type volume that is no longer mounted are dropped, and a
mount nobody holds (a crash between mount and record) is unmounted.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from ketch.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from ketch.runtime.state import atomic_write
from ketch.snapshot import Mount, unmount
from ketch.volume import Volume, rfc3339_now

__all__ = ["LocalDriver", "validate_name"]

log = logging.getLogger(__name__)

DRIVER = "local"
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_VALID_OPTS = ("type", "device", "o")
_TMP = ".tmp-"


def validate_name(name: str) -> None:
    """Docker's rule for local volume names; ``InvalidArgument`` in Docker's words."""
    if len(name) < 2:
        raise InvalidArgument(
            "volume name is too short, names should be at least two alphanumeric characters")
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f'"{name}" includes invalid characters for a local volume name, '
            'only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed')


def _validate_opts(opts: Mapping[str, str]) -> None:
    for key in opts:
        if key not in _VALID_OPTS:
            raise InvalidArgument(f'invalid option: "{key}"')
    if opts and not ("type" in opts and "device" in opts):
        missing = "type" if "type" not in opts else "device"
        raise InvalidArgument(f'missing required option: "{missing}"')


def _mount_spec(opts: Mapping[str, str]) -> Mount | None:
    """The mount(2) the options describe, or None for a plain directory."""
    if not opts:
        return None
    words = tuple(w for w in opts.get("o", "").split(",") if w)
    if "bind" in words or "rbind" in words:
        return Mount("bind", opts["device"], words)
    return Mount(opts["type"], opts["device"], words)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:  # not Linux, or /proc not mounted: treat ids as always current
        return ""


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {_unescape(line.split()[4]) for line in f}


class LocalDriver:
    """``VolumeDriver`` for volumes under ``root`` (see the module docstring)."""

    def __init__(self, root: str) -> None:
        os.makedirs(root, 0o701, exist_ok=True)
        self.root = os.path.realpath(root)
        self._boot = _boot_id()
        self._mutex = threading.Lock()
        with self._locked():
            self._reconcile()

    # -- the VolumeDriver protocol -------------------------------------------------

    def create(self, name: str, opts: Mapping[str, str] | None = None,
               labels: Mapping[str, str] | None = None) -> Volume:
        validate_name(name)
        options = dict(opts or {})
        _validate_opts(options)
        with self._locked():
            with contextlib.suppress(NotFound):
                existing = self._load(name)
                if dict(existing.options) != options:
                    raise Conflict(f'volume "{name}" already exists with different options')
                return existing
            record = {"Name": name, "CreatedAt": rfc3339_now(),
                      "Labels": dict(labels or {}), "Options": options}
            tmp = self._tmpdir()
            try:
                os.mkdir(os.path.join(tmp, "_data"), 0o755)
                atomic_write(os.path.join(tmp, "opts.json"), json.dumps(record).encode())
                os.rename(tmp, self._dir(name))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return self._volume(record)

    def remove(self, name: str) -> None:
        validate_name(name)
        with self._locked():
            vol = self._load(name)
            if self._ids(name):
                raise Conflict(f"remove {name}: volume is in use")
            data = vol.mountpoint
            if data in _mount_points():  # stale mount: never let rmtree walk into it
                unmount(data, detach=True)
                if data in _mount_points():
                    raise FailedPrecondition(f"remove {name}: {data} is still mounted")
            tmp = self._tmpdir()
            os.rmdir(tmp)
            os.rename(self._dir(name), tmp)
            shutil.rmtree(tmp)

    def get(self, name: str) -> Volume:
        validate_name(name)
        return self._load(name)

    def list(self) -> builtins.list[Volume]:
        out = []
        for name in sorted(os.listdir(self.root)):
            if name.startswith(_TMP) or not _NAME_RE.fullmatch(name):
                continue
            with contextlib.suppress(NotFound):
                out.append(self._load(name))
        return out

    def mount(self, name: str, mount_id: str) -> str:
        validate_name(name)
        with self._locked():
            vol = self._load(name)
            ids = self._ids(name)
            if mount_id in ids:
                return vol.mountpoint
            spec = _mount_spec(vol.options)
            if spec is not None and not ids:
                try:
                    spec.mount(vol.mountpoint)
                except OSError as e:
                    raise FailedPrecondition(
                        f"error while mounting volume '{vol.mountpoint}': {e}") from e
            self._save_ids(name, [*ids, mount_id])
            return vol.mountpoint

    def unmount(self, name: str, mount_id: str) -> None:
        validate_name(name)
        with self._locked():
            vol = self._load(name)
            ids = self._ids(name)
            if mount_id not in ids:
                return
            rest = [i for i in ids if i != mount_id]
            if not rest and _mount_spec(vol.options) is not None:
                try:
                    unmount(vol.mountpoint)
                except OSError as e:
                    raise FailedPrecondition(
                        f"error while unmounting volume '{vol.mountpoint}': {e}") from e
            self._save_ids(name, rest)

    def path(self, name: str) -> str | None:
        validate_name(name)
        vol = self._load(name)
        if _mount_spec(vol.options) is None or vol.mountpoint in _mount_points():
            return vol.mountpoint
        return None

    def capabilities(self) -> dict[str, str]:
        return {"Scope": "local"}

    # -- beyond the protocol -------------------------------------------------------

    def mount_ids(self, name: str) -> builtins.list[str]:
        """The ids holding ``name`` (for the engine to reconcile with its containers)."""
        validate_name(name)
        self._load(name)
        return self._ids(name)

    # -- internals -----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _tmpdir(self) -> str:
        path = os.path.join(self.root, f"{_TMP}{uuid.uuid4().hex}")
        os.mkdir(path, 0o701)
        return path

    def _volume(self, record: Mapping[str, Any]) -> Volume:
        name = record["Name"]
        return Volume(name=name, driver=DRIVER,
                      mountpoint=os.path.join(self._dir(name), "_data"),
                      created_at=record["CreatedAt"], labels=record["Labels"],
                      options=record["Options"])

    def _load(self, name: str) -> Volume:
        try:
            with open(os.path.join(self._dir(name), "opts.json"), "rb") as f:
                record = json.loads(f.read())
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such volume: {name}") from None
        return self._volume(record)

    def _ids(self, name: str) -> builtins.list[str]:
        try:
            with open(os.path.join(self._dir(name), "mounts.json"), "rb") as f:
                record = json.loads(f.read())
        except FileNotFoundError:
            return []
        if record.get("BootID", "") != self._boot:
            return []
        ids: builtins.list[str] = record["IDs"]
        return ids

    def _save_ids(self, name: str, ids: builtins.list[str]) -> None:
        # not fsync'd: after a power loss the boot id differs and the record is void anyway
        atomic_write(os.path.join(self._dir(name), "mounts.json"),
                     json.dumps({"BootID": self._boot, "IDs": ids}).encode(), sync=False)

    def _reconcile(self) -> None:
        points = _mount_points()
        for entry in os.listdir(self.root):
            path = os.path.join(self.root, entry)
            if entry.startswith(_TMP):  # an interrupted create or remove
                if not any(p == path or p.startswith(path + "/") for p in points):
                    shutil.rmtree(path, ignore_errors=True)
                continue
            if not _NAME_RE.fullmatch(entry):
                continue
            try:
                vol = self._load(entry)
            except NotFound:
                continue
            ids = self._ids(entry)
            mounted = vol.mountpoint in points
            if _mount_spec(vol.options) is not None:
                if ids and not mounted:
                    log.warning("volume %s: not mounted any more; dropping holders %s",
                                entry, ids)
                    ids = []
                elif mounted and not ids:
                    log.warning("volume %s: mounted but not held; unmounting", entry)
                    unmount(vol.mountpoint, detach=True)
            if os.path.exists(os.path.join(path, "mounts.json")):
                self._save_ids(entry, ids)
