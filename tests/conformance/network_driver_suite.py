"""The conformance suite of the ``NetworkDriver`` seam.

Subclass ``NetworkDriverSuite`` in a test module and provide one fixture:

``new_driver``
    ``new_driver() -> NetworkDriver``: the implementation under test, ready to use.

and override these when the driver makes real things:

``sandboxes``
    a :class:`Sandboxes`: ``new()`` makes a sandbox and returns its path, ``remove(path)``
    destroys it (the engine deleting a container's namespace). Make them as the engine
    does (``ketch.sys.netns.create``: ``lo`` up). The default makes plain files, which is
    enough for drivers that never look inside (``null``, ``host``).
``observe``
    ``observe(sandboxes) -> object``: everything the driver may change, seen *without*
    the driver (``ip``, ``nft``...), for the host side and the given sandboxes; compared
    with ``==``. The default sees nothing (``None``), for drivers that change nothing.

Networks are IPv4, ``10.123.45.0/24`` (and ``10.123.46.0/24`` for a second one) with the
gateway ``.1`` and endpoints from ``.2`` as ``eth0``; run drivers that make real links in a
namespace of their own.

Every test walks part of the lifecycle of the ``ketch.network.driver`` docstring and checks
its contract: repeating a call changes nothing, undoing leaves exactly what was there
before, and removing what is gone is not an error. The ``lab`` fixture leaves and deletes
whatever a test made through it, even when the test failed.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from ketch.errors import KetchError
from ketch.network.driver import EndpointSpec, NetworkDriver, NetworkSpec

__all__ = ["SUBNET", "FileSandboxes", "Lab", "NetworkDriverSuite", "NewDriver", "Observe",
           "Sandboxes", "same"]

NewDriver = Callable[[], NetworkDriver]
Observe = Callable[[Sequence[str]], object]

SUBNET = ipaddress.IPv4Network("10.123.45.0/24")


def _new_id() -> str:
    """A 64-hex id, as the engine makes them."""
    return uuid.uuid4().hex + uuid.uuid4().hex


class Sandboxes(Protocol):
    """Where a suite gets sandboxes from (see the module docstring)."""

    def new(self) -> str: ...

    def remove(self, path: str) -> None: ...


class FileSandboxes:
    """Sandboxes that are empty files: for drivers that never enter them."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def new(self) -> str:
        path = self._root / f"sandbox-{uuid.uuid4().hex[:8]}"
        path.touch()
        return str(path)

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)


class Lab:
    """Specs for one test, and a record of what it made, undone by :meth:`cleanup`."""

    def __init__(self, driver: NetworkDriver) -> None:
        self.driver = driver
        self.networks: list[NetworkSpec] = []
        self.endpoints: list[tuple[NetworkSpec, EndpointSpec]] = []
        self._next = 2

    def network(self, subnet: ipaddress.IPv4Network = SUBNET, *, internal: bool = False,
                options: dict[str, str] | None = None) -> NetworkSpec:
        gateway = ipaddress.IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")
        net = NetworkSpec(id=_new_id(), name=f"n-{uuid.uuid4().hex[:6]}", subnet=subnet,
                          gateway=gateway, internal=internal, options=options or {})
        self.networks.append(net)
        return net

    def endpoint(self, net: NetworkSpec, *, ifname: str = "eth0",
                 gateway: bool = True) -> EndpointSpec:
        assert isinstance(net.subnet, ipaddress.IPv4Network)
        host = net.subnet.network_address + self._next
        self._next += 1
        ep = EndpointSpec(id=_new_id(), container_id=_new_id(), ifname=ifname,
                          address=ipaddress.IPv4Interface(f"{host}/{net.subnet.prefixlen}"),
                          gateway=gateway)
        self.endpoints.append((net, ep))
        return ep

    def cleanup(self) -> None:
        for net, ep in self.endpoints:
            try:
                self.driver.leave(net, ep, None)
            except (KetchError, OSError):
                pass
        for net in self.networks:
            try:
                self.driver.delete_network(net)
            except (KetchError, OSError):
                pass


def same(got: object, want: object) -> None:
    """``assert got == want``, showing both (this module is not assertion-rewritten)."""
    if got != want:
        raise AssertionError(f"state differs:\n  got:  {got!r}\n  want: {want!r}")


def _is_facts(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items())


class NetworkDriverSuite:
    """The lifecycle of the ``NetworkDriver`` docstring, test by test."""

    @pytest.fixture
    def sandboxes(self, tmp_path: Path) -> Sandboxes:
        return FileSandboxes(tmp_path)

    @pytest.fixture
    def observe(self) -> Observe:
        return lambda sandboxes: None

    @pytest.fixture
    def lab(self, new_driver: NewDriver) -> Iterator[Lab]:
        lb = Lab(new_driver())
        try:
            yield lb
        finally:
            lb.cleanup()

    def test_satisfies_protocol(self, lab: Lab) -> None:
        assert isinstance(lab.driver, NetworkDriver)
        assert isinstance(lab.driver.name, str) and lab.driver.name

    def test_create_and_delete_are_idempotent(self, lab: Lab, observe: Observe) -> None:
        d = lab.driver
        net = lab.network()
        before = observe([])
        facts = d.create_network(net)
        assert _is_facts(facts), facts
        made = observe([])
        same(d.create_network(net), facts)
        same(observe([]), made)
        d.delete_network(net)
        same(observe([]), before)
        d.delete_network(net)
        same(observe([]), before)

    def test_delete_of_a_network_never_created(self, lab: Lab, observe: Observe) -> None:
        before = observe([])
        lab.driver.delete_network(lab.network())
        same(observe([]), before)

    def test_join_and_leave_are_idempotent(self, lab: Lab, observe: Observe,
                                           sandboxes: Sandboxes) -> None:
        d = lab.driver
        net = lab.network()
        d.create_network(net)
        box = sandboxes.new()
        ep = lab.endpoint(net)
        before = observe([box])
        facts = d.join(net, ep, box)
        assert _is_facts(facts), facts
        joined = observe([box])
        same(d.join(net, ep, box), facts)
        same(observe([box]), joined)
        d.leave(net, ep, box)
        same(observe([box]), before)
        d.leave(net, ep, box)
        same(observe([box]), before)

    def test_leave_with_sandbox_none(self, lab: Lab, observe: Observe,
                                     sandboxes: Sandboxes) -> None:
        d = lab.driver
        net = lab.network()
        d.create_network(net)
        box = sandboxes.new()
        ep = lab.endpoint(net)
        before = observe([box])
        d.join(net, ep, box)
        d.leave(net, ep, None)
        same(observe([box]), before)
        d.leave(net, ep, None)
        same(observe([box]), before)

    def test_leave_after_the_sandbox_is_gone(self, lab: Lab, observe: Observe,
                                             sandboxes: Sandboxes) -> None:
        d = lab.driver
        net = lab.network()
        d.create_network(net)
        host_before = observe([])
        box = sandboxes.new()
        ep = lab.endpoint(net)
        d.join(net, ep, box)
        sandboxes.remove(box)
        d.leave(net, ep, None)
        same(observe([]), host_before)
        d.delete_network(net)

    def test_leave_of_an_endpoint_never_joined(self, lab: Lab, observe: Observe,
                                               sandboxes: Sandboxes) -> None:
        d = lab.driver
        net = lab.network()
        d.create_network(net)
        box = sandboxes.new()
        before = observe([box])
        ep = lab.endpoint(net)
        d.leave(net, ep, box)
        d.leave(net, ep, None)
        same(observe([box]), before)

    def test_two_endpoints_come_and_go_independently(self, lab: Lab, observe: Observe,
                                                     sandboxes: Sandboxes) -> None:
        d = lab.driver
        net = lab.network()
        d.create_network(net)
        a, b = sandboxes.new(), sandboxes.new()
        ep_a, ep_b = lab.endpoint(net), lab.endpoint(net)
        empty = observe([a, b])
        d.join(net, ep_a, a)
        only_a = observe([a, b])
        d.join(net, ep_b, b)
        d.leave(net, ep_b, b)
        same(observe([a, b]), only_a)
        d.leave(net, ep_a, a)
        same(observe([a, b]), empty)

    def test_restore_changes_nothing_that_exists(self, lab: Lab, observe: Observe,
                                                 sandboxes: Sandboxes) -> None:
        d = lab.driver
        net = lab.network()
        d.create_network(net)
        box = sandboxes.new()
        d.join(net, lab.endpoint(net), box)
        state = observe([box])
        d.restore([net])
        same(observe([box]), state)
        d.restore([])
        same(observe([box]), state)

    def test_networks_are_independent(self, lab: Lab, observe: Observe) -> None:
        d = lab.driver
        first = lab.network(SUBNET)
        before = observe([])
        d.create_network(first)
        only_first = observe([])
        second = lab.network(ipaddress.IPv4Network("10.123.46.0/24"))
        d.create_network(second)
        d.delete_network(second)
        same(observe([]), only_first)
        d.delete_network(first)
        same(observe([]), before)

