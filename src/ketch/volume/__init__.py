"""Named volumes: the ``VolumeDriver`` seam and the ``Volume`` record.

The seam mirrors Docker's volume plugin protocol (``/VolumeDriver.*``) so an
in-process driver (``ketch.volume.local``) and a proxy of an external plugin are
interchangeable behind the engine. Terms:

volume
    Named storage a driver owns. Creating one need not make it available on
    the host yet; it lives until removed.
mount id
    An opaque string the caller (the engine: one per container use) passes to
    ``mount`` and ``unmount``. A driver counts the distinct ids it holds for a
    volume; the volume is *in use* while it holds any.
mountpoint
    The host path where the volume's data is available while mounted.

Lifecycle::

    create(name, opts, labels) ─► mount(name, id) ─► path(name) ─► unmount(name, id)
         │  (idempotent for the                 (again with other ids; the    │
         │   same opts)                          last unmount releases it)    ▼
         └──────────────────────────────────────────────────────────────► remove(name)

``remove`` of a volume in use is a ``Conflict``; operations on a name the
driver does not have are ``NotFound``; malformed names or options are
``InvalidArgument``. Errors are those of ``ketch.errors``.
"""

from __future__ import annotations

import builtins
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Volume", "VolumeDriver", "rfc3339_now"]


def rfc3339_now() -> str:
    """The current UTC time as RFC 3339 with nanosecond-style precision and ``Z``."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


@dataclass(frozen=True)
class Volume:
    """What a driver knows about one volume (Docker's ``Volume`` object).

    ``options`` are the driver options the volume was created with; ``status``
    is driver-defined detail (Docker's optional ``Status``), ``None`` if none.
    """

    name: str
    driver: str
    mountpoint: str
    created_at: str
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)
    scope: str = "local"
    status: Mapping[str, Any] | None = None

    def to_api(self) -> dict[str, Any]:
        """The Docker Engine API's ``Volume`` JSON (v1.47 definition)."""
        out: dict[str, Any] = {
            "CreatedAt": self.created_at,
            "Driver": self.driver,
            "Labels": dict(self.labels),
            "Mountpoint": self.mountpoint,
            "Name": self.name,
            "Options": dict(self.options),
            "Scope": self.scope,
        }
        if self.status is not None:
            out["Status"] = dict(self.status)
        return out


@runtime_checkable
class VolumeDriver(Protocol):
    """Creates, mounts and removes named volumes (see the module docstring).

    Methods map one to one onto the plugin protocol's calls: ``create`` ↔
    ``VolumeDriver.Create`` and so on. Implementations are safe to call from
    several threads.
    """

    def create(self, name: str, opts: Mapping[str, str] | None = None,
               labels: Mapping[str, str] | None = None) -> Volume:
        """Make volume ``name``; an existing one with the same ``opts`` is returned as is."""
        ...

    def remove(self, name: str) -> None:
        """Delete ``name`` and its data; ``Conflict`` while it is in use."""
        ...

    def get(self, name: str) -> Volume:
        """The volume called ``name``."""
        ...

    def list(self) -> builtins.list[Volume]:
        """Every volume of this driver, sorted by name."""
        ...

    def mount(self, name: str, mount_id: str) -> str:
        """Make ``name`` available for ``mount_id``; return its mountpoint.

        Mounting again with an id already held is a no-op returning the same path.
        """
        ...

    def unmount(self, name: str, mount_id: str) -> None:
        """Release ``mount_id``'s hold; the last release may unmount. Unknown ids: no-op."""
        ...

    def path(self, name: str) -> str | None:
        """Where ``name`` is available on the host now, or ``None`` if it is not."""
        ...

    def capabilities(self) -> dict[str, str]:
        """The driver's capabilities, as the plugin protocol's ``{"Scope": …}``."""
        ...
