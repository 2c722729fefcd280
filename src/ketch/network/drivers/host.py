"""The ``host`` network driver: the container shares the host's network namespace
(``docker run --network host``).

The engine runs such a container without a network namespace of its own, so the driver
has nothing to make or remove; it exists so that ``host`` is a network like the others
(listed, inspected, joined). It must never touch the namespace it is given: for a host
endpoint that is the daemon's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from ketch.network.driver import EndpointSpec, NetworkSpec

__all__ = ["HostDriver"]


class HostDriver:
    """``host``: every call is a no-op."""

    name = "host"

    def create_network(self, net: NetworkSpec) -> dict[str, str]:
        """Nothing to make; no facts."""
        return {}

    def delete_network(self, net: NetworkSpec) -> None:
        """Nothing to remove."""

    def join(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str) -> dict[str, str]:
        """The container uses the host's interfaces as they are; no facts."""
        return {}

    def leave(self, net: NetworkSpec, ep: EndpointSpec, sandbox: str | None) -> None:
        """Nothing to undo."""

    def restore(self, nets: Sequence[NetworkSpec]) -> None:
        """Nothing can have been lost."""
