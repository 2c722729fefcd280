"""Registry storage: the ``StorageDriver`` Protocol and its built-in backends.

Built-ins are listed here, by name, and nowhere else (``DRIVERS``); ``open_driver``
builds one from configuration parameters.
"""

from __future__ import annotations

from typing import Any

from ketch.errors import InvalidArgument
from ketch.registry.storage.driver import (
    FileInfo,
    FileWriter,
    InvalidPath,
    PathNotFound,
    StorageDriver,
    check_path,
)
from ketch.registry.storage.filesystem import FilesystemDriver
from ketch.registry.storage.inmemory import InMemoryDriver

__all__ = [
    "DRIVERS",
    "FileInfo",
    "FileWriter",
    "FilesystemDriver",
    "InMemoryDriver",
    "InvalidPath",
    "PathNotFound",
    "StorageDriver",
    "check_path",
    "open_driver",
]

DRIVERS: dict[str, type[Any]] = {
    "filesystem": FilesystemDriver,
    "inmemory": InMemoryDriver,
}


def open_driver(name: str, params: dict[str, Any]) -> StorageDriver:
    """The built-in driver ``name`` constructed with ``params`` (``InvalidArgument`` on
    an unknown name or parameter)."""
    if name == "filesystem":
        if "root" not in params:
            raise InvalidArgument("storage driver 'filesystem' needs a root directory")
        extra = set(params) - {"root", "fsync"}
        if extra:
            raise InvalidArgument(f"unknown filesystem storage options: {sorted(extra)}")
        return FilesystemDriver(params["root"], fsync=bool(params.get("fsync", True)))
    if name == "inmemory":
        if params:
            raise InvalidArgument(f"unknown inmemory storage options: {sorted(params)}")
        return InMemoryDriver()
    raise InvalidArgument(f"unknown storage driver {name!r} (have: {', '.join(DRIVERS)})")
