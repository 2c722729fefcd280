"""``LocalIpam``: the default IPAM driver, pools and addresses in one JSON file.

Behaviour follows dockerd's default IPAM (27.x), see ``ketch.network.ipam`` for
the contract. Choices of this driver:

- Default pools are dockerd's: 172.17.0.0/16 … 172.31.0.0/16 as /16s, then
  192.168.0.0/16 carved into /20s; no IPv6 defaults. The first candidate, in
  the order given, that overlaps neither a pool nor a network ``taken()``
  reports (the host's routes and addresses) wins, so a released default subnet
  is the first one handed out again (as dockerd 27's allocator does).
- Subnets given explicitly are checked against other pools only, not against
  the host's networks (dockerd does not either: the user asked for them).
- Without ``gateway`` the gateway is the first free address of the ip range,
  or of the subnet. With an ip range that can be its first address even when it
  ends in .0 (``--subnet 10.0.0.0/16 --ip-range 10.0.5.0/24`` → 10.0.5.0): it is
  a host address of the /16, and dockerd picks the same.
- Pool ids are ``LocalDefault/<subnet>[/<ip range>]``, as dockerd's.

State file (``state_path``), rewritten whole and atomically (temp file, fsync,
rename, fsync of the directory) after every change, read once at
construction::

    {"version": 1,
     "pools": [{"subnet": "10.1.0.0/24", "ip_range": null, "gateway": "10.1.0.1",
                "options": {}, "addresses": ["10.1.0.2", …], "last": "10.1.0.2"}]}

``addresses`` are those handed out (gateway and reserved ones excluded),
``last`` the round-robin cursor. A file that cannot be read as such is an
error naming it, never silently replaced: the networks it describes still
exist on the host.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ketch.errors import (
    Conflict,
    Internal,
    InvalidArgument,
    KetchError,
    NotFound,
    Unavailable,
)
from ketch.network.ipam import (
    ADDRESS_IN_USE,
    NO_AVAILABLE_ADDRESSES,
    NO_MORE_SUBNETS,
    POOL_OVERLAP,
    IPAddress,
    IPInterface,
    IPNetwork,
    Pool,
)
from ketch.runtime.state import atomic_write

__all__ = ["ADDRESS_SPACE", "DEFAULTS", "STATE_VERSION", "LocalIpam"]

log = logging.getLogger(__name__)

ADDRESS_SPACE = "LocalDefault"
STATE_VERSION = 1

# (base, size): carve ``base`` into subnets of prefix length ``size`` (dockerd's defaults)
DEFAULTS: tuple[tuple[str, int], ...] = (
    ("172.17.0.0/16", 16),
    ("172.18.0.0/16", 16),
    ("172.19.0.0/16", 16),
    ("172.20.0.0/14", 16),
    ("172.24.0.0/14", 16),
    ("172.28.0.0/14", 16),
    ("192.168.0.0/16", 20),
)


def _family(version: int) -> str:
    return "IPv6" if version == 6 else "IPv4"


def _parse_network(text: str, what: str) -> IPNetwork:
    """``text`` as CIDR without host bits; dockerd's messages otherwise."""
    addr, sep, bits = text.partition("/")
    bad = InvalidArgument(f"invalid {what} {text}: invalid CIDR block notation")
    # ipaddress also takes "10.0.0.0" (a /32), netmasks and zone ids; CIDR is all dockerd takes
    if (not sep or not bits.isascii() or not bits.isdigit() or "%" in addr
            or (len(bits) > 1 and bits[0] == "0")):
        raise bad
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise bad from None
    if iface.ip != iface.network.network_address:
        raise InvalidArgument(f"invalid {what} {text}: it should be {iface.network}")
    return iface.network


def _parse_address(text: str, what: str) -> IPAddress:
    if "%" in text:
        raise InvalidArgument(f"invalid {what} {text}: invalid address")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text}: invalid address") from None


def _inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    """Whether ``inner`` lies within ``outer`` (False across families)."""
    return (inner.version == outer.version
            and int(inner.network_address) >= int(outer.network_address)
            and int(inner.broadcast_address) <= int(outer.broadcast_address))


def _base_reserved(net: IPNetwork) -> set[int]:
    """Network and broadcast addresses as dockerd reserves them (RFC 3021, RFC 4291)."""
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.version == 6:
        return {first}  # subnet-router anycast
    if net.prefixlen >= 31:
        return set()  # point-to-point /31 and a single /32 use every address
    return {first, last}


class _PoolState:
    """A pool plus its bookkeeping; addresses as ints for cheap sets."""

    __slots__ = ("cursor", "held", "hi", "lo", "pool", "reserved")

    def __init__(self, pool: Pool, held: set[int], cursor: int | None) -> None:
        self.pool = pool
        rng = pool.ip_range or pool.subnet
        self.lo, self.hi = int(rng.network_address), int(rng.broadcast_address)
        self.reserved = {int(a) for a in pool.reserved}
        self.held = held
        self.cursor = cursor

    def next_free(self) -> int | None:
        """The first free address of the range after ``cursor``, wrapping around.

        Every step either returns or passes a held/reserved address, so the
        walk is bounded by their number even in a /64.
        """
        lo, hi, cur = self.lo, self.hi, self.cursor
        a = cur + 1 if cur is not None and lo <= cur < hi else lo
        blocked = self.held
        reserved = self.reserved
        for _ in range(min(hi - lo + 1, len(blocked) + len(reserved) + 1)):
            if a not in blocked and a not in reserved:
                return a
            a = a + 1 if a < hi else lo
        return None

    def record(self) -> dict[str, Any]:
        p = self.pool
        return {
            "subnet": str(p.subnet),
            "ip_range": str(p.ip_range) if p.ip_range is not None else None,
            "gateway": str(p.gateway.ip),
            "options": dict(p.options),
            "addresses": [str(self.addr(a)) for a in sorted(self.held)],
            "last": str(self.addr(self.cursor)) if self.cursor is not None else None,
        }

    def addr(self, value: int) -> IPAddress:
        if self.pool.subnet.version == 4:
            return ipaddress.IPv4Address(value)
        return ipaddress.IPv6Address(value)


def _make_pool(net: IPNetwork, rng: IPNetwork | None, gw: IPAddress | None,
               options: Mapping[str, str]) -> tuple[Pool, int | None]:
    """The pool record and, when the gateway was chosen here, the round-robin cursor."""
    base = _base_reserved(net)
    cursor: int | None = None
    if gw is not None:
        if int(gw) in base:
            which = "network" if int(gw) == int(net.network_address) else "broadcast"
            raise InvalidArgument(f"invalid gateway {gw}: it is the {which} address of {net}")
    else:
        lo_net = rng or net
        lo, hi = int(lo_net.network_address), int(lo_net.broadcast_address)
        a = lo
        while a <= hi and a in base:  # base holds at most two addresses
            a += 1
        if a > hi:
            what = f"ip-range {rng}" if rng is not None else f"subnet {net}"
            raise InvalidArgument(f"invalid {what}: no address left for a gateway")
        gw = ipaddress.ip_address(a) if net.version == 4 else ipaddress.IPv6Address(a)
        cursor = a
    pool_id = f"{ADDRESS_SPACE}/{net}" + (f"/{rng}" if rng is not None else "")
    reserved = frozenset(
        (ipaddress.IPv4Address(a) if net.version == 4 else ipaddress.IPv6Address(a))
        for a in base | {int(gw)}
    )
    gateway = ipaddress.ip_interface((gw, net.prefixlen))
    return Pool(pool_id, net, rng, gateway, reserved, dict(options)), cursor


class LocalIpam:
    """The default ``IpamDriver`` (see the module docstring).

    ``state_path``: the JSON file holding pools and addresses, loaded here and
    rewritten after every change; ``None`` keeps everything in memory (tests,
    throwaway engines). ``default_pools``: ``(base, size)`` pairs to carve
    automatic subnets from, tried in order. ``taken``: called on every
    automatic pool request, returns networks in use on the host (routes and
    interface networks); a candidate overlapping one is skipped. Default routes
    (``/0``) in its answer are ignored, since they overlap everything.

    Safe to call from several threads. One instance per state file: two
    instances on one file would overwrite each other's changes.
    """

    def __init__(self, state_path: str | None, *,
                 default_pools: Sequence[tuple[str, int]] = DEFAULTS,
                 taken: Callable[[], Iterable[IPNetwork]] = lambda: ()) -> None:
        self._path = state_path
        self._taken = taken
        self._defaults = [self._check_default(base, size) for base, size in default_pools]
        self._lock = threading.Lock()
        self._pools: dict[str, _PoolState] = self._load() if state_path is not None else {}

    @staticmethod
    def _check_default(base: str, size: int) -> tuple[IPNetwork, int]:
        net = _parse_network(base, "default address pool")
        if not net.prefixlen <= size <= net.max_prefixlen:
            raise InvalidArgument(
                f"invalid default address pool {base}: size /{size} must be between "
                f"/{net.prefixlen} and /{net.max_prefixlen}")
        return net, size

    # -- the IpamDriver calls ------------------------------------------------------------

    def request_pool(self, *, subnet: str | None = None, ip_range: str | None = None,
                     gateway: str | None = None, v6: bool = False,
                     options: Mapping[str, str] | None = None) -> Pool:
        """See ``IpamDriver.request_pool``; empty strings count as not given."""
        opts = dict(options or {})
        if not subnet:
            if ip_range:
                raise InvalidArgument(f"invalid ip-range {ip_range}: it needs a subnet")
            if gateway:
                raise InvalidArgument(f"invalid gateway {gateway}: it needs a subnet")
            version = 6 if v6 else 4
            # outside the lock: it may ask the kernel, and our state does not depend on it
            host = [n for n in self._taken() if n.version == version and n.prefixlen > 0]
            with self._lock:
                net = self._choose_default(version, host)
                return self._add(net, None, None, opts)
        net, rng, gw = self._check_request(subnet, ip_range or None, gateway or None, v6)
        with self._lock:
            for other in self._pools.values():
                if other.pool.subnet.version == net.version and other.pool.subnet.overlaps(net):
                    raise Conflict(POOL_OVERLAP)
            return self._add(net, rng, gw, opts)

    def release_pool(self, pool_id: str) -> None:
        """See ``IpamDriver.release_pool``."""
        with self._lock:
            state = self._get(pool_id)
            del self._pools[pool_id]
            try:
                self._save()
            except BaseException:
                self._pools[pool_id] = state
                raise
        log.info("released address pool %s", pool_id)

    def request_address(self, pool_id: str, address: str | None = None) -> IPInterface:
        """See ``IpamDriver.request_address``; an empty string counts as ``None``."""
        with self._lock:
            st = self._get(pool_id)
            old_cursor = st.cursor
            if not address:
                value = st.next_free()
                if value is None:
                    raise Unavailable(NO_AVAILABLE_ADDRESSES)
                st.cursor = value
            else:
                value = self._in_subnet(st, address, "address")
                if value in st.held or value in st.reserved:
                    raise Conflict(ADDRESS_IN_USE)
            st.held.add(value)
            try:
                self._save(durable=False)
            except BaseException:
                st.held.discard(value)
                st.cursor = old_cursor
                raise
            return ipaddress.ip_interface((st.addr(value), st.pool.subnet.prefixlen))

    def release_address(self, pool_id: str, address: str) -> None:
        """See ``IpamDriver.release_address``."""
        with self._lock:
            st = self._get(pool_id)
            value = self._in_subnet(st, address, "address")
            if value in st.reserved:
                raise InvalidArgument(
                    f"cannot release address {address}: it is reserved in pool {pool_id} "
                    "(gateway, network or broadcast address) until the pool is released")
            if value not in st.held:
                return
            st.held.discard(value)
            try:
                self._save(durable=False)
            except BaseException:
                st.held.add(value)
                raise

    def addresses(self, pool_id: str) -> list[str]:
        """See ``IpamDriver.addresses``."""
        with self._lock:
            st = self._get(pool_id)
            return [str(st.addr(a)) for a in sorted(st.held)]

    def pools(self) -> list[Pool]:
        """See ``IpamDriver.pools``."""
        with self._lock:
            states = list(self._pools.values())
        return [s.pool for s in sorted(
            states, key=lambda s: (s.pool.subnet.version, s.lo, s.pool.subnet.prefixlen))]

    # -- helpers (callers hold the lock where state is touched) ---------------------------

    def _get(self, pool_id: str) -> _PoolState:
        try:
            return self._pools[pool_id]
        except KeyError:
            raise NotFound(f"cannot find address pool for poolID:{pool_id}") from None

    @staticmethod
    def _in_subnet(st: _PoolState, text: str, what: str) -> int:
        addr = _parse_address(text, what)
        if addr not in st.pool.subnet:  # also false across families
            raise InvalidArgument(
                f"requested address is out of range: {addr} is not in {st.pool.subnet}")
        return int(addr)

    @staticmethod
    def _check_request(subnet: str, ip_range: str | None, gateway: str | None,
                       v6: bool) -> tuple[IPNetwork, IPNetwork | None, IPAddress | None]:
        """Parse and cross-check an explicit request, in dockerd's words (ValidateIPAM)."""
        net = _parse_network(subnet, "subnet")
        want = 6 if v6 else 4
        if net.version != want:
            raise InvalidArgument(
                f"invalid subnet {subnet}: an {_family(net.version)} block was given for an "
                f"{_family(want)} pool")
        rng: IPNetwork | None = None
        if ip_range is not None:
            rng = _parse_network(ip_range, "ip-range")
            if rng.version != net.version:
                raise InvalidArgument(
                    f"invalid ip-range {ip_range}: parent subnet is an "
                    f"{_family(net.version)} block")
            if rng.prefixlen < net.prefixlen:
                raise InvalidArgument(
                    f"invalid ip-range {ip_range}: CIDR block is bigger than its parent "
                    f"subnet {net}")
            if not _inside(rng, net):
                raise InvalidArgument(
                    f"invalid ip-range {ip_range}: parent subnet {net} doesn't contain ip-range")
        gw: IPAddress | None = None
        if gateway is not None:
            gw = _parse_address(gateway, "gateway")
            if gw.version != net.version:
                raise InvalidArgument(
                    f"invalid gateway {gateway}: parent subnet is an "
                    f"{_family(net.version)} block")
            if gw not in net:
                raise InvalidArgument(
                    f"invalid gateway {gateway}: parent subnet {net} doesn't contain this "
                    "address")
        return net, rng, gw

    def _choose_default(self, version: int, host: list[IPNetwork]) -> IPNetwork:
        """The first default subnet overlapping neither a pool nor ``host``.

        Candidates are skipped past whole blockers at a time, so the search is
        bounded by the number of blockers, not the number of candidates.
        """
        blockers = [(int(n.network_address), int(n.broadcast_address)) for n in host]
        blockers += [(int(s.pool.subnet.network_address), int(s.pool.subnet.broadcast_address))
                     for s in self._pools.values() if s.pool.subnet.version == version]
        for base, size in self._defaults:
            if base.version != version:
                continue
            step = 1 << (base.max_prefixlen - size)
            cand, end = int(base.network_address), int(base.broadcast_address)
            while cand + step - 1 <= end:
                last = cand + step - 1
                hit = max((b_hi for b_lo, b_hi in blockers if b_lo <= last and b_hi >= cand),
                          default=None)
                if hit is None:
                    addr = ipaddress.IPv4Address(cand) if version == 4 \
                        else ipaddress.IPv6Address(cand)
                    return ipaddress.ip_network((addr, size))
                cand = (hit // step + 1) * step  # first aligned candidate after the blocker
        raise InvalidArgument(NO_MORE_SUBNETS)

    def _add(self, net: IPNetwork, rng: IPNetwork | None, gw: IPAddress | None,
             options: Mapping[str, str]) -> Pool:
        pool, cursor = _make_pool(net, rng, gw, options)
        self._pools[pool.id] = _PoolState(pool, set(), cursor)
        try:
            self._save()
        except BaseException:
            del self._pools[pool.id]
            raise
        log.info("allocated address pool %s (gateway %s)", pool.id, pool.gateway)
        return pool

    # -- persistence ------------------------------------------------------------------------

    def _save(self, *, durable: bool = True) -> None:
        """Write the state (write-then-rename). ``durable``: fsync it and its directory
        (pools). Address changes skip that: an address only matters while its container
        runs, which a power loss ends too, and a killed daemon loses nothing the kernel
        was handed; the engine reconciles addresses with its containers at start."""
        if self._path is None:
            return
        doc = {"version": STATE_VERSION,
               "pools": [s.record() for s in self._pools.values()]}
        data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        directory = os.path.dirname(os.path.abspath(self._path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        atomic_write(self._path, data, 0o600, sync=durable)
        if not durable:
            return
        # the rename is only durable once the directory entry is on disk
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _load(self) -> dict[str, _PoolState]:
        assert self._path is not None
        try:
            with open(self._path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
                version = doc.get("version") if isinstance(doc, dict) else None
                raise ValueError(f"version {version!r}, this ketch reads {STATE_VERSION}")
            pools: dict[str, _PoolState] = {}
            for rec in doc["pools"]:
                st = _state_from_record(rec)
                for other in pools.values():
                    if (other.pool.subnet.version == st.pool.subnet.version
                            and other.pool.subnet.overlaps(st.pool.subnet)):
                        raise ValueError(f"pools {other.pool.id} and {st.pool.id} overlap")
                pools[st.pool.id] = st
        except (ValueError, KeyError, TypeError, AttributeError, KetchError) as e:
            raise Internal(
                f"corrupt IPAM state file {self._path}: {e}; it still describes the "
                "networks' addresses: repair it, or move it aside to forget them") from None
        return pools


def _state_from_record(rec: Mapping[str, Any]) -> _PoolState:
    """One pool of the state file, checked as strictly as a request; ValueError if wrong."""
    net = ipaddress.ip_network(rec["subnet"])
    rng = ipaddress.ip_network(rec["ip_range"]) if rec["ip_range"] is not None else None
    if rng is not None and not _inside(rng, net):
        raise ValueError(f"ip range {rng} is not inside {net}")
    gw = ipaddress.ip_address(rec["gateway"])
    if gw not in net:
        raise ValueError(f"gateway {gw} is not in {net}")
    options = rec["options"]
    if not isinstance(options, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
        raise ValueError(f"options of {net} are not a string map")
    pool, _ = _make_pool(net, rng, gw, options)
    held: set[int] = set()
    for text in rec["addresses"]:
        addr = ipaddress.ip_address(text)
        if addr not in net or int(addr) in {int(a) for a in pool.reserved}:
            raise ValueError(f"address {addr} cannot be held in {net}")
        held.add(int(addr))
    last = rec["last"]
    cursor = int(ipaddress.ip_address(last)) if last is not None else None
    if cursor is not None and ipaddress.ip_address(last) not in net:
        raise ValueError(f"round-robin position {last} is not in {net}")
    return _PoolState(pool, held, cursor)
