"""The ``host`` network driver: the container shares the host's network namespace
(``docker run --network host``).

The engine runs such a container without a network namespace of its own, so the driver
has nothing to make or remove; it exists so that ``host`` is a network like the others
(listed, inspected, joined). It must never touch the namespace it is given: for a host
endpoint that is the daemon's own.
"""

from __future__ import annotations

from ketch.network.drivers.null import NullDriver

__all__ = ["HostDriver"]


class HostDriver(NullDriver):
    """``host``: networks and endpoints that exist only in the engine's records; every
    call succeeds and changes nothing (as ``null``'s)."""

    name = "host"
