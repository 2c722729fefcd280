"""The ``NetworkDriver`` seam: what turns a network record into links, and an endpoint
into an interface inside a container's network namespace.

The engine owns the records (names, ids, IPAM pools, which container is on which
network) and asks a driver to make them real. Terms:

network
    A :class:`NetworkSpec`: an id, the driver's options, and the IPAM answer (subnet,
    gateway). For the bridge driver: one Linux bridge carrying the gateway address.
endpoint
    An :class:`EndpointSpec`: one container's attachment to one network, with the
    address IPAM gave it and the interface name it gets inside the sandbox
    (``eth0``, ``eth1``…).
sandbox
    A network namespace, named by a path (``<exec-root>/netns/<container id>``); the
    engine creates it (``ketch.sys.netns``) before the first join and deletes it after
    the last leave. The container's runtime spec joins it by path.

Lifecycle::

    create_network(net) ─► join(net, ep, sandbox) ─► leave(net, ep, sandbox) ─► delete_network(net)
          ▲                   (once per endpoint)       (the sandbox may be gone already:
          │                                             nothing left inside it is the driver's)
          └── restore(nets): after a daemon restart, make sure every network of this driver
              exists as recorded (recreate what a reboot lost), remove nothing else

Contract: every method is idempotent (creating what exists with the same spec, or
removing what is gone, is not an error), leaves nothing half-made when it raises
(``ketch.errors`` classes; ``InvalidArgument`` for bad options, ``Conflict`` when a
host resource such as a bridge name belongs to something else), and touches only what
it made. Drivers are called from worker threads, one call per network at a time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["EndpointSpec", "NetworkDriver", "NetworkSpec"]


@dataclass(frozen=True)
class NetworkSpec:
    """One network as the driver sees it.

    ``options`` are the user's ``-o`` driver options (``com.docker.network.bridge.name``,
    ``com.docker.network.driver.mtu``, …); ``internal`` networks have no way out.
    """

    id: str
    name: str
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    gateway: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None
    internal: bool = False
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointSpec:
    """One container's interface on one network."""

    id: str
    container_id: str
    ifname: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None
    mac: str | None = None
    # True for the endpoint that gives the container its default route
    gateway: bool = True


@runtime_checkable
class NetworkDriver(Protocol):
    """A network driver (``bridge``, ``null``, ``host``; an external plugin's proxy)."""

    name: str

    def create_network(self, net: NetworkSpec) -> dict[str, str]:
        """Make ``net`` real; returns facts for inspect (e.g. the bridge's name)."""
        ...

    def delete_network(self, net: NetworkSpec) -> None:
        """Remove what :meth:`create_network` made."""
        ...

    def join(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str) -> dict[str, str]:
        """Give the sandbox an interface ``ep.ifname`` on ``net`` with ``ep.address``
        (and a default route through the gateway if ``ep.gateway`` and the network is
        not internal); returns facts for inspect (``MacAddress``…)."""
        ...

    def leave(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str | None) -> None:
        """Undo :meth:`join`; ``sandbox`` None when it is already gone."""
        ...

    def restore(self, nets: Sequence[NetworkSpec]) -> None:
        """After a restart: make sure ``nets`` exist as recorded."""
        ...
