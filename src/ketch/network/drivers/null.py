"""The ``null`` network driver: a container with a network namespace of its own and no
interface but ``lo`` (``docker run --network none``).

The engine creates the sandbox (``ketch.sys.netns.create`` brings ``lo`` up), so there is
nothing for the driver to make: every call succeeds and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from ketch.network.driver import EndpointSpec, NetworkSpec

__all__ = ["NullDriver"]


class NullDriver:
    """``null``: networks and endpoints that exist only in the engine's records."""

    name = "null"

    def create_network(self, net: NetworkSpec) -> dict[str, str]:
        """Nothing to make; no facts."""
        return {}

    def delete_network(self, net: NetworkSpec) -> None:
        """Nothing to remove."""

    def join(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str) -> dict[str, str]:
        """The sandbox keeps only its loopback; no facts."""
        return {}

    def leave(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str | None) -> None:
        """Nothing to undo."""

    def restore(self, nets: Sequence[NetworkSpec]) -> None:
        """Nothing can have been lost."""
