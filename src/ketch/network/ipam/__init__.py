"""IP address management: the ``IpamDriver`` seam and the ``Pool`` record.

The seam follows Docker's IPAM (the in-process default driver and remote
``IpamDriver.*`` plugins answer the same calls), so ``docker network create
--subnet/--ip-range/--gateway``, ``--ip`` on run/connect and automatic subnets
behave as with dockerd. Terms:

pool
    A subnet the driver has handed to one network, with its bookkeeping. Pools
    of one driver never overlap (IPv4 and IPv6 pools never meet). Its id is an
    opaque string; pass it back to every other call.
subnet
    The pool's network (``10.1.0.0/24``): every address a member may hold.
ip range
    Optional sub-network of the subnet (``--ip-range``). Automatic addresses
    come from it only; a *requested* address may lie anywhere in the subnet
    (as with ``docker run --ip``), which is how static and dynamic addresses share
    one network.
gateway
    The subnet address the bridge (host side) takes. Requested explicitly or,
    by default, the first free address of the ip range (or of the subnet). It is
    reserved for the pool's whole life.
reserved
    Addresses ``request_address(pool, None)`` never returns and an explicit
    request gets ``Conflict`` for: the gateway, the subnet's network address
    (IPv4 wider than /31; IPv6: the subnet-router anycast address) and, for IPv4
    wider than /31, the broadcast address.
default pools
    Subnets the driver chooses itself when ``request_pool`` is given no subnet
    (``docker network create`` without ``--subnet``). Each driver documents
    its own set and how it avoids networks already in use on the host.

Lifecycle::

    request_pool(subnet?, ip_range?, gateway?) ─► request_address(pool, addr?) ──┐
          │                                          ▲  (one per endpoint)       │
          │                                          └── release_address ◄───────┘
          ▼
    release_pool(pool)   frees the subnet and forgets every address still held

Automatic addresses are handed out round-robin: the search for a free address
starts after the one handed out last and wraps around, so an address that was
just released is not given to the next endpoint while others are free (stale
ARP/conntrack entries and DNS answers then do not reach a new container). An
explicit request takes any free, unreserved address at once, released or not.

Errors are those of ``ketch.errors``, in Docker's wording where users see them:
``NotFound`` for an unknown pool id; ``InvalidArgument`` for malformed or
inconsistent input (the message names the value); ``Conflict`` for an
overlapping subnet or an address in use; ``Unavailable`` when a pool has no
free address left. A refused call changes nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "ADDRESS_IN_USE",
    "NO_AVAILABLE_ADDRESSES",
    "NO_MORE_SUBNETS",
    "POOL_OVERLAP",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "IpamDriver",
    "Pool",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# dockerd's messages (libnetwork ipamapi), kept verbatim because users and tools match on them
POOL_OVERLAP = "invalid pool request: Pool overlaps with other one on this address space"
ADDRESS_IN_USE = "Address already in use"
NO_AVAILABLE_ADDRESSES = "no available addresses on this pool"
NO_MORE_SUBNETS = "all predefined address pools have been fully subnetted"


@dataclass(frozen=True)
class Pool:
    """One allocated pool, as ``request_pool`` returned it.

    ``gateway`` carries the subnet's prefix length (``10.1.0.1/24``), ready to
    put on a bridge. ``reserved`` is the set defined in the module docstring
    (the gateway included). ``options`` are the driver options it was requested
    with.
    """

    id: str
    subnet: IPNetwork
    ip_range: IPNetwork | None
    gateway: IPInterface
    reserved: frozenset[IPAddress]
    options: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class IpamDriver(Protocol):
    """Hands out subnets (pools) and addresses in them (see the module docstring).

    Lifecycle: ``request_pool`` → ``request_address``\\* → ``release_address``\\* →
    ``release_pool``. Implementations are safe to call from several threads.
    """

    def request_pool(self, *, subnet: str | None = None, ip_range: str | None = None,
                     gateway: str | None = None, v6: bool = False,
                     options: Mapping[str, str] | None = None) -> Pool:
        """Allocate a pool and reserve its gateway.

        ``subnet`` None: the next free default pool of the family ``v6`` selects.
        Otherwise ``subnet`` is CIDR without host bits (``10.1.0.5/24`` is
        refused, as dockerd does) of the family ``v6`` selects; ``ip_range``
        must lie inside it and ``gateway`` be an address of it. A subnet that
        overlaps another pool is a ``Conflict`` (``POOL_OVERLAP``).
        """
        ...

    def release_pool(self, pool_id: str) -> None:
        """Free the pool's subnet, with its gateway and any address still held."""
        ...

    def request_address(self, pool_id: str,
                        address: str | None = None) -> IPInterface:
        """Take ``address`` (anywhere in the subnet), or the next free one.

        ``None``: the next free, unreserved address of the ip range (or the
        subnet), round-robin. The answer carries the subnet's prefix length.
        ``Conflict`` (``ADDRESS_IN_USE``) if ``address`` is taken or reserved;
        ``InvalidArgument`` if it is outside the subnet; ``Unavailable``
        (``NO_AVAILABLE_ADDRESSES``) if nothing is free.
        """
        ...

    def release_address(self, pool_id: str, address: str) -> None:
        """Give ``address`` back. Releasing one that is not held is a no-op.

        The gateway and the other reserved addresses go with the pool only
        (``InvalidArgument`` here); an address outside the subnet is
        ``InvalidArgument``.
        """
        ...

    def pools(self) -> list[Pool]:
        """Every pool held, IPv4 before IPv6, each family in address order."""
        ...

    def addresses(self, pool_id: str) -> list[str]:
        """The addresses ``request_address`` handed out in the pool and nobody released,
        in address order (not the gateway or other reserved addresses). A daemon
        restarting after a crash compares them with its endpoints and releases the
        rest. ``NotFound`` for an unknown pool."""
        ...
