"""The built-in network drivers, registered explicitly in one place.

- ``bridge``: :class:`BridgeDriver`, a Linux bridge per network and a veth pair per
  endpoint, with the firewall rules of :class:`~ketch.network.firewall.Firewall`;
- ``null``: :class:`NullDriver`, nothing but ``lo``;
- ``host``: :class:`HostDriver`, the host's own namespace.

External plugins add their proxies to the same mapping; nothing is discovered.
"""

from __future__ import annotations

from ketch.network.driver import NetworkDriver
from ketch.network.drivers.bridge import BridgeDriver
from ketch.network.drivers.host import HostDriver
from ketch.network.drivers.null import NullDriver
from ketch.network.firewall import Firewall

__all__ = ["BridgeDriver", "HostDriver", "NullDriver", "builtin_drivers"]


def builtin_drivers(firewall: Firewall | None, *, netns: str | None = None
                    ) -> dict[str, NetworkDriver]:
    """The built-in drivers by name. ``firewall`` and ``netns`` go to the bridge driver
    (see :class:`BridgeDriver`); the daemon makes this once at start."""
    drivers: list[NetworkDriver] = [BridgeDriver(firewall, netns=netns), NullDriver(),
                                    HostDriver()]
    return {d.name: d for d in drivers}
