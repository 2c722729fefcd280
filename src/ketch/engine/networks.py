"""The networks service: Docker's network semantics over the ``NetworkDriver`` and
``IpamDriver`` seams.

The service owns the network *records* (name, id, options, the IPAM pool) and asks
drivers to make them real; it answers in the Docker Engine API's JSON shapes and
raises ``ketch.errors`` classes in dockerd's wording where users see it. Terms:

predefined network
    ``bridge`` (driver ``bridge``: the default for containers, on the bridge device
    ``default_bridge`` with the subnet of ``default_bip`` or a default IPAM pool),
    ``host`` (driver ``host``) and ``none`` (driver ``null``). Made on the first
    :meth:`NetworkService.start`, the same ids ever after; never removed or pruned.
    The names ``bridge``, ``host``, ``none`` and ``default`` cannot be taken.
endpoint
    One container's attachment to one network, as bookkeeping only
    (:meth:`~NetworkService.add_endpoint` / :meth:`~NetworkService.remove_endpoint`):
    the container service makes the interface (``driver.join``) and the address
    (``ipam.request_address``) and tells the service. Endpoints fill inspect's
    ``Containers``, make a network *in use* (not removable, not prunable, not
    dangling) and are kept in memory only: after a restart the container service
    adds again those of the containers it restores.
reference
    How users name a network: its full id, then its name, then a unique id prefix
    (dockerd's order); ``network X not found`` otherwise.

Lifecycle::

    NetworkService(...) ─► start(): load records ─► re-reserve lost IPAM pools
        ─► reconcile the default bridge with default_bridge/default_bip
        ─► driver.restore(records of that driver), per driver
        ─► create the predefined networks that are missing
    create / inspect / list / remove / prune        (the /networks API)
    add_endpoint / remove_endpoint / lookup          (container wiring)

Records: one JSON file per network, ``<state_dir>/<id>.json``, written atomically
(temp file, fsync, rename, fsync of the directory). A record that cannot be read
stops :meth:`start` with an error naming it: the network it describes still exists.

Events (type ``network``, actor = network id, attributes ``name`` and ``type`` =
driver): ``create``, ``destroy``, ``connect`` and ``disconnect`` (plus
``container``); ``prune`` (actor ``""``) with ``reclaimed`` ``0``.

Thread safety: one lock around every compound step (resolve, then create or
remove); slow driver calls hold it, which keeps the code simple.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ketch.engine.events import EventBus, parse_time
from ketch.errors import (
    Conflict,
    Forbidden,
    Internal,
    InvalidArgument,
    KetchError,
    NotFound,
    NotImplementedYet,
)
from ketch.network.driver import NetworkDriver, NetworkSpec
from ketch.network.drivers.bridge import OPT_BRIDGE_NAME, OPT_DEFAULT_BRIDGE
from ketch.network.drivers.host import HostDriver
from ketch.network.drivers.null import NullDriver
from ketch.network.ipam import IpamDriver, Pool
from ketch.runtime.state import atomic_write

__all__ = ["BRIDGE_NAME_OPTION", "DEFAULT_BRIDGE_OPTION", "DEFAULT_NETWORK", "PREDEFINED",
           "Endpoint", "NetworkRecord", "NetworkService"]

log = logging.getLogger(__name__)

DEFAULT_NETWORK = "bridge"
# name -> driver of the predefined networks
PREDEFINED: Mapping[str, str] = {"bridge": "bridge", "host": "host", "none": "null"}
_RESERVED = frozenset({*PREDEFINED, "default"})  # dockerd's IsPredefined
_SPECIAL_DRIVERS = frozenset({"host", "null"})  # no IPAM, one instance each
BRIDGE_NAME_OPTION = OPT_BRIDGE_NAME  # the bridge driver's names for these options
DEFAULT_BRIDGE_OPTION = OPT_DEFAULT_BRIDGE
STATE_VERSION = 1

Filters = Mapping[str, Sequence[str]]
LIST_FILTERS = frozenset({"dangling", "driver", "id", "label", "name", "scope", "type"})
PRUNE_FILTERS = frozenset({"label", "label!", "until"})


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One container on one network as inspect shows it; addresses in CIDR form."""

    container_id: str
    endpoint_id: str
    name: str = ""
    mac: str = ""
    ipv4: str = ""
    ipv6: str = ""

    def to_api(self) -> dict[str, str]:
        return {"Name": self.name, "EndpointID": self.endpoint_id, "MacAddress": self.mac,
                "IPv4Address": self.ipv4, "IPv6Address": self.ipv6}


@dataclasses.dataclass(frozen=True)
class NetworkRecord:
    """What the service keeps of one network (the file's content, see the module doc).

    ``subnet``/``gateway``/``ip_range`` are what IPAM gave (``gateway`` an address
    without prefix); ``pool_id`` is None for ``host`` and ``null`` networks.
    ``facts`` are what ``driver.create_network`` answered.
    """

    id: str
    name: str
    driver: str
    created_ns: int
    internal: bool = False
    attachable: bool = False
    enable_ipv6: bool = False
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ipam_options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    subnet: str | None = None
    gateway: str | None = None
    ip_range: str | None = None
    pool_id: str | None = None
    facts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # the user gave the subnet (--subnet): only then may containers ask for an address
    user_subnet: bool = False

    @property
    def bridge(self) -> str:
        """The Linux bridge a ``bridge``-driver network is on ("" for other drivers)."""
        return self.facts.get(BRIDGE_NAME_OPTION, "") if self.driver == "bridge" else ""

    def spec(self) -> NetworkSpec:
        """The driver's view of this network."""
        subnet = ipaddress.ip_network(self.subnet) if self.subnet else None
        gateway = (ipaddress.ip_interface(f"{self.gateway}/{subnet.prefixlen}")
                   if subnet is not None and self.gateway else None)
        return NetworkSpec(self.id, self.name, subnet, gateway, self.internal,
                           dict(self.options))

    def to_api(self, endpoints: Mapping[str, Endpoint]) -> dict[str, Any]:
        """Docker's ``Network`` object (API 1.47)."""
        config: builtins.list[dict[str, str]] = []
        if self.subnet:
            cfg = {"Subnet": self.subnet, "Gateway": self.gateway or ""}
            if self.ip_range:
                cfg["IPRange"] = self.ip_range
            config.append(cfg)
        return {
            "Name": self.name, "Id": self.id, "Created": _rfc3339_nano(self.created_ns),
            "Scope": "local", "Driver": self.driver, "EnableIPv6": self.enable_ipv6,
            "IPAM": {"Driver": "default", "Options": dict(self.ipam_options), "Config": config},
            "Internal": self.internal, "Attachable": self.attachable, "Ingress": False,
            "ConfigFrom": {"Network": ""}, "ConfigOnly": False,
            "Containers": {cid: ep.to_api() for cid, ep in sorted(endpoints.items())},
            "Options": dict(self.options), "Labels": dict(self.labels),
        }

    def to_file(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_file(cls, doc: Any) -> NetworkRecord:
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            version = doc.get("version") if isinstance(doc, dict) else None
            raise ValueError(f"version {version!r}, this ketch reads {STATE_VERSION}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in fields})


def _rfc3339_nano(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC (trailing zeros of the fraction dropped)."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return (f"{base}.{frac:09d}".rstrip("0") if frac else base) + "Z"


# -- reading the create body (a JSON object, already decoded) --------------------------

def _field(body: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise InvalidArgument(f"invalid network create request: {key} must be {what}")
    return value


def _text(body: Mapping[str, Any], key: str) -> str:
    return str(_field(body, key, str, "a string") or "")


def _flag(body: Mapping[str, Any], key: str) -> bool:
    return bool(_field(body, key, bool, "a boolean"))


def _strings(body: Mapping[str, Any], key: str) -> dict[str, str]:
    value = _field(body, key, dict, "an object of strings") or {}
    if not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument(f"invalid network create request: {key} must be an object of "
                              "strings")
    return dict(value)


def _ipam_request(body: Mapping[str, Any]) -> tuple[dict[str, str] | None, dict[str, str]]:
    """(the one IPv4 config or None, IPAM options) of a create body's ``IPAM``."""
    ipam = _field(body, "IPAM", dict, "an object") or {}
    driver = _text(ipam, "Driver")
    if driver not in ("", "default"):
        raise NotFound(f'plugin "{driver}" not found')
    options = _strings(ipam, "Options")
    configs = _field(ipam, "Config", builtins.list, "a list") or []
    v4: builtins.list[dict[str, str]] = []
    for cfg in configs:
        if not isinstance(cfg, dict):
            raise InvalidArgument("invalid network create request: IPAM.Config items must be "
                                  "objects")
        got = {k: _text(cfg, k) for k in ("Subnet", "IPRange", "Gateway")}
        if _field(cfg, "AuxiliaryAddresses", dict, "an object"):
            raise NotImplementedYet("IPAM auxiliary addresses are not supported yet")
        if any(":" in v for v in got.values()):
            raise NotImplementedYet("IPv6 networks are not supported yet")
        v4.append(got)
    if len(v4) > 1:
        raise InvalidArgument(f"only one IPv4 subnet per network is supported, got {len(v4)}")
    return (v4[0] if v4 else None), options


# -- filters --------------------------------------------------------------------------------

def _check_filters(filters: Filters, allowed: frozenset[str]) -> None:
    for key in filters:
        if key not in allowed:
            raise InvalidArgument(f"invalid filter '{key}'")


def _match(patterns: Sequence[str], value: str) -> bool:
    """dockerd's ``Match``: a pattern equal to ``value`` or found in it as a regexp."""
    for p in patterns:
        if p == value:
            return True
        with contextlib.suppress(re.error):
            if re.search(p, value):
                return True
    return False


def _labels_match(specs: Sequence[str], labels: Mapping[str, str]) -> bool:
    """dockerd's ``MatchKVList``: every ``key`` or ``key=value`` holds."""
    for spec in specs:
        key, sep, value = spec.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


class NetworkService:
    """Networks of one engine; see the module docstring for terms, lifecycle and events.

    ``drivers`` maps driver names to drivers and must hold ``bridge``; ``host`` and
    ``null`` default to built-in drivers that make nothing (a container on ``host``
    shares the host's namespace, one on ``none`` has only loopback). ``ipam`` hands
    out pools (its own state survives restarts, or pools are requested again on
    :meth:`start`). Call :meth:`start` once before anything else.
    """

    def __init__(self, state_dir: str, events: EventBus, drivers: Mapping[str, NetworkDriver],
                 ipam: IpamDriver, *, default_bridge: str = "ketch0",
                 default_bip: str | None = None) -> None:
        if "bridge" not in drivers:
            raise InvalidArgument("network service: no 'bridge' driver given")
        self.state_dir = state_dir
        self.events = events
        self.drivers: dict[str, NetworkDriver] = {"host": HostDriver(),
                                                  "null": NullDriver(), **drivers}
        self.ipam = ipam
        self.default_bridge = default_bridge
        self._bip: ipaddress.IPv4Interface | None = None
        if default_bip:
            try:
                bip = ipaddress.ip_interface(default_bip)
            except ValueError:
                raise InvalidArgument(f"invalid bip {default_bip}: want a gateway address "
                                      "with prefix, such as 172.30.0.1/16") from None
            if not isinstance(bip, ipaddress.IPv4Interface) or bip.ip in (
                    bip.network.network_address, bip.network.broadcast_address):
                raise InvalidArgument(f"invalid bip {default_bip}: want an IPv4 host address "
                                      "with prefix, such as 172.30.0.1/16")
            self._bip = bip
        self._mu = threading.RLock()
        self._prune_mu = threading.Lock()
        self._records: dict[str, NetworkRecord] = {}
        self._endpoints: dict[str, dict[str, Endpoint]] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Load records and bring drivers and predefined networks up (module doc).

        A driver's failing ``restore`` is logged and does not stop the others; a
        predefined network that cannot be created raises (nothing half-made).
        """
        with self._mu:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            self._records = self._load()
            self._endpoints = {i: self._endpoints.get(i, {}) for i in self._records}
            self._reserve_pools()
            bridge = self._by_name("bridge")
            if bridge is not None:
                self._reconcile_bridge(bridge)
            for name, drv in self.drivers.items():
                specs = [r.spec() for r in self._records.values() if r.driver == name]
                try:
                    drv.restore(specs)
                except KetchError as e:
                    log.error("network driver %s: restore of %d networks failed: %s",
                              name, len(specs), e)
            for name, driver in PREDEFINED.items():
                if self._by_name(name) is None:
                    self._create_locked(name, driver, self._predefined_options(name),
                                        ipam_cfg=self._predefined_ipam(name))

    # -- the /networks API ---------------------------------------------------------------

    def create(self, body: Mapping[str, Any]) -> dict[str, str]:
        """``POST /networks/create``: make a network from a ``NetworkCreateRequest``.

        Returns ``{"Id": id, "Warning": ""}`` and publishes ``create``. Errors, in
        dockerd's words: a predefined name is ``Forbidden``, an empty name
        ``InvalidArgument``, a taken name ``Conflict``, an unknown (IPAM) driver
        ``NotFound`` (``plugin "x" not found``); a second ``host``/``null`` network
        ``Forbidden``; more than one IPv4 config ``InvalidArgument``; IPv6, ingress,
        config-only networks are not done yet. IPAM and driver errors pass through,
        with the pool released: a refused create leaves nothing behind.
        ``CheckDuplicate`` is ignored (names are always unique, as in dockerd ≥ 25).
        """
        name = _text(body, "Name")
        driver = _text(body, "Driver") or "bridge"
        if name in _RESERVED:
            raise Forbidden(f"operation is not permitted on predefined {name} network")
        if not name.strip():
            raise InvalidArgument("invalid name: name is empty")
        internal, attachable = _flag(body, "Internal"), _flag(body, "Attachable")
        options, labels = _strings(body, "Options"), _strings(body, "Labels")
        scope = _text(body, "Scope")
        if scope == "swarm":
            raise Forbidden("cannot create a swarm scoped network when swarm is not active")
        if scope not in ("", "local"):
            raise InvalidArgument(f"invalid scope {scope!r}: want local")
        if _flag(body, "Ingress"):
            raise Forbidden("Ingress network can only be global scope network")
        config_from = _field(body, "ConfigFrom", dict, "an object") or {}
        if _flag(body, "ConfigOnly") or config_from.get("Network"):
            raise NotImplementedYet("config-only networks are not supported yet")
        if _flag(body, "EnableIPv6"):
            raise NotImplementedYet("IPv6 networks are not supported yet")
        ipam_cfg, ipam_options = _ipam_request(body)
        with self._mu:
            if self._by_name(name) is not None:
                raise Conflict(f"network with name {name} already exists")
            if driver not in self.drivers:
                raise NotFound(f'plugin "{driver}" not found')
            if driver in _SPECIAL_DRIVERS:
                raise Forbidden(f'only one instance of "{driver}" network is allowed')
            rec = self._create_locked(name, driver, options, labels=labels, internal=internal,
                                      attachable=attachable, ipam_cfg=ipam_cfg or {},
                                      ipam_options=ipam_options)
        return {"Id": rec.id, "Warning": ""}

    def inspect(self, ref: str, scope: str | None = None) -> dict[str, Any]:
        """``GET /networks/{ref}``: the ``Network`` object with its ``Containers``.

        ``scope`` other than ``local`` (or empty) finds nothing, as every ketch
        network is local. ``NotFound``: ``network <ref> not found``.
        """
        with self._mu:
            if scope and scope != "local":
                raise NotFound(f"network {ref} not found")
            rec = self._resolve(ref)
            return rec.to_api(self._endpoints.get(rec.id, {}))

    def list(self, filters: Filters | None = None) -> builtins.list[dict[str, Any]]:
        """``GET /networks``: matching networks, by name; ``Containers`` stays empty there
        (API ≥ 1.28). Filters as dockerd's: ``driver``, ``scope`` (exact), ``name``,
        ``id`` (equal, or found as a regexp), ``label`` (every ``key``/``key=value``),
        ``type`` (``custom``/``builtin``), ``dangling`` (one ``true``/``1`` or
        ``false``/``0``: unused custom networks, or the others)."""
        filters = {k: v for k, v in (filters or {}).items() if v}
        _check_filters(filters, LIST_FILTERS)
        dangling: bool | None = None
        if filters.get("dangling"):
            values = builtins.list(filters["dangling"])
            if len(values) > 1:
                raise InvalidArgument('got more than one value for filter key "dangling"')
            if values[0] not in ("0", "1", "false", "true"):
                raise InvalidArgument("invalid value for filter 'dangling', must be \"true\" "
                                      "(or \"1\"), or \"false\" (or \"0\")")
            dangling = values[0] in ("1", "true")
        types = set(filters.get("type", ()))
        if types - {"custom", "builtin"}:
            raise InvalidArgument(f"invalid filter: 'type'='{sorted(types)[0]}'")
        out = []
        with self._mu:
            for rec in sorted(self._records.values(), key=lambda r: (r.name, r.id)):
                builtin = rec.name in PREDEFINED
                used = bool(self._endpoints.get(rec.id))
                if (("driver" in filters and rec.driver not in filters["driver"])
                        or ("scope" in filters and "local" not in filters["scope"])
                        or ("name" in filters and not _match(filters["name"], rec.name))
                        or ("id" in filters and not _match(filters["id"], rec.id))
                        or not _labels_match(filters.get("label", ()), rec.labels)
                        or (types and ("builtin" if builtin else "custom") not in types)
                        or (dangling is not None and dangling == (builtin or used))):
                    continue
                out.append(rec.to_api({}))
        return out

    def remove(self, ref: str) -> None:
        """``DELETE /networks/{ref}``: remove a custom network that no container uses.

        Predefined: ``Forbidden`` ``<name> is a pre-defined network and cannot be
        removed``; in use: ``Forbidden`` ``error while removing network: network
        <name> id <id> has active endpoints``. Then the driver deletes it, its pool
        is released, its record goes, ``destroy`` is published.
        """
        with self._mu:
            self._remove_locked(self._resolve(ref))

    def prune(self, filters: Filters | None = None) -> dict[str, Any]:
        """``POST /networks/prune``: remove unused custom networks; ``{"NetworksDeleted":
        [names]}``, and one ``prune`` event.

        ``until`` (one value: a time or a Go duration before now) keeps networks
        created after it; ``label`` keeps those not having every given label;
        ``label!`` keeps those having every given label (dockerd's matching). A
        second prune while one runs is a ``Conflict``.
        """
        filters = {k: v for k, v in (filters or {}).items() if v}
        _check_filters(filters, PRUNE_FILTERS)
        until: int | None = None
        if filters.get("until"):
            if len(filters["until"]) > 1:
                raise InvalidArgument("more than one until filter specified")
            until = parse_time(filters["until"][0])
        if not self._prune_mu.acquire(blocking=False):
            raise Conflict("a prune operation is already running")
        try:
            deleted: builtins.list[str] = []
            with self._mu:
                for rec in sorted(self._records.values(), key=lambda r: (r.name, r.id)):
                    if (rec.name in PREDEFINED or self._endpoints.get(rec.id)
                            or (until is not None and rec.created_ns > until)
                            or not _labels_match(filters.get("label", ()), rec.labels)
                            or (filters.get("label!")
                                and _labels_match(filters["label!"], rec.labels))):
                        continue
                    try:
                        self._remove_locked(rec)
                    except KetchError as e:
                        log.warning("prune: cannot remove network %s: %s", rec.name, e)
                        continue
                    deleted.append(rec.name)
            self.events.publish("network", "prune", "", {"reclaimed": "0"})
            return {"NetworksDeleted": deleted}
        finally:
            self._prune_mu.release()

    def connect(self, ref: str, body: Mapping[str, Any]) -> None:
        """``POST /networks/{ref}/connect``: not done yet (the container service will)."""
        with self._mu:
            self._resolve(ref)
        raise NotImplementedYet("network connect: not yet")

    def disconnect(self, ref: str, body: Mapping[str, Any]) -> None:
        """``POST /networks/{ref}/disconnect``: not done yet (the container service will)."""
        with self._mu:
            self._resolve(ref)
        raise NotImplementedYet("network disconnect: not yet")

    # -- for container wiring ---------------------------------------------------------------

    def records(self) -> builtins.list[NetworkRecord]:
        """Every network's record."""
        with self._mu:
            return builtins.list(self._records.values())

    def release_unclaimed(self, claimed: Mapping[str, Iterable[str]]) -> builtins.list[str]:
        """Give back every address IPAM holds that no endpoint claims (``claimed``: network
        id → the addresses of its endpoints). A daemon killed between taking an address
        and recording it in the container leaves one held; the engine calls this at
        start, before any container is started. Returns what it released, as
        ``network/address``."""
        released = []
        for rec in self.records():
            if rec.pool_id is None:
                continue
            try:
                held = self.ipam.addresses(rec.pool_id)
            except NotFound:
                continue
            mine = set(claimed.get(rec.id, ()))
            for addr in held:
                if addr not in mine:
                    self.ipam.release_address(rec.pool_id, addr)
                    released.append(f"{rec.name}/{addr}")
        return released

    def lookup(self, ref: str) -> NetworkRecord:
        """The record of ``ref`` (id, name or unique id prefix); ``NotFound`` otherwise.
        ``record.spec()`` and ``drivers[record.driver]`` are what ``join`` needs."""
        with self._mu:
            return self._resolve(ref)

    def add_endpoint(self, ref: str, endpoint: Endpoint) -> None:
        """Record that ``endpoint.container_id`` is on network ``ref`` and publish
        ``connect``. A container already on it is ``Forbidden`` (``endpoint with
        name <name> already exists in network <network>``)."""
        with self._mu:
            rec = self._resolve(ref)
            eps = self._endpoints.setdefault(rec.id, {})
            if endpoint.container_id in eps:
                raise Forbidden(f"endpoint with name {endpoint.name or endpoint.container_id} "
                                f"already exists in network {rec.name}")
            eps[endpoint.container_id] = endpoint
            self.events.publish("network", "connect", rec.id, {
                "container": endpoint.container_id, "name": rec.name, "type": rec.driver})

    def remove_endpoint(self, ref: str, container_id: str) -> bool:
        """Forget ``container_id``'s endpoint on ``ref`` and publish ``disconnect``;
        False (and nothing published) when there was none or the network is unknown,
        so cleanup can always call it."""
        with self._mu:
            try:
                rec = self._resolve(ref)
            except (NotFound, InvalidArgument):
                return False
            if self._endpoints.get(rec.id, {}).pop(container_id, None) is None:
                return False
            self.events.publish("network", "disconnect", rec.id, {
                "container": container_id, "name": rec.name, "type": rec.driver})
            return True

    def endpoints_of(self, container_id: str) -> dict[str, Endpoint]:
        """Network id -> endpoint of every network ``container_id`` is on."""
        with self._mu:
            return {nid: eps[container_id] for nid, eps in self._endpoints.items()
                    if container_id in eps}

    # -- internals (callers hold self._mu) --------------------------------------------------

    def _by_name(self, name: str) -> NetworkRecord | None:
        return _by_name(self._records, name)

    def _resolve(self, ref: str) -> NetworkRecord:
        """dockerd's order: full id, full name, unique id prefix."""
        if ref in self._records:
            return self._records[ref]
        rec = self._by_name(ref) if ref else None
        if rec is not None:
            return rec
        hits = [r for r in self._records.values() if ref and r.id.startswith(ref)]
        if len(hits) > 1:
            raise InvalidArgument(f"network {ref} is ambiguous ({len(hits)} matches found "
                                  "based on ID prefix)")
        if not hits:
            raise NotFound(f"network {ref} not found")
        return hits[0]

    def _predefined_options(self, name: str) -> dict[str, str]:
        if name != "bridge":
            return {}
        return {DEFAULT_BRIDGE_OPTION: "true", BRIDGE_NAME_OPTION: self.default_bridge}

    def _predefined_ipam(self, name: str) -> dict[str, str] | None:
        if name != "bridge":
            return None
        if self._bip is None:
            return {}
        return {"Subnet": str(self._bip.network), "Gateway": str(self._bip.ip)}

    def _request_pool(self, cfg: Mapping[str, str], options: Mapping[str, str]) -> Pool:
        return self.ipam.request_pool(subnet=cfg.get("Subnet") or None,
                                      ip_range=cfg.get("IPRange") or None,
                                      gateway=cfg.get("Gateway") or None, options=options)

    def _create_locked(self, name: str, driver: str, options: Mapping[str, str], *,
                       labels: Mapping[str, str] | None = None, internal: bool = False,
                       attachable: bool = False, ipam_cfg: Mapping[str, str] | None = None,
                       ipam_options: Mapping[str, str] | None = None) -> NetworkRecord:
        """Pool, driver, record, event; each step undone if a later one fails.
        ``ipam_cfg`` None: no pool (``host``, ``null``)."""
        net_id = secrets.token_hex(32)
        while net_id in self._records:
            net_id = secrets.token_hex(32)
        pool = (self._request_pool(ipam_cfg, ipam_options or {})
                if ipam_cfg is not None else None)
        rec = NetworkRecord(
            net_id, name, driver, time.time_ns(), internal=internal, attachable=attachable,
            options=dict(options), labels=dict(labels or {}),
            ipam_options=dict(ipam_options or {}),
            subnet=str(pool.subnet) if pool else None,
            gateway=str(pool.gateway.ip) if pool else None,
            ip_range=str(pool.ip_range) if pool and pool.ip_range is not None else None,
            pool_id=pool.id if pool else None,
            user_subnet=bool(ipam_cfg and ipam_cfg.get("Subnet")))
        drv = self.drivers[driver]
        try:
            facts = drv.create_network(rec.spec())
        except BaseException:
            self._release_pool(rec)
            raise
        rec = dataclasses.replace(rec, facts=dict(facts or {}))
        try:
            self._save(rec)
        except BaseException:
            try:
                drv.delete_network(rec.spec())
            except KetchError as e:
                log.error("network %s: cannot undo driver create: %s", name, e)
            self._release_pool(rec)
            raise
        self._records[rec.id] = rec
        self._endpoints[rec.id] = {}
        self.events.publish("network", "create", rec.id, {"name": name, "type": driver})
        log.info("created network %s (%s, driver %s, subnet %s)", name, rec.id[:12], driver,
                 rec.subnet)
        return rec

    def _remove_locked(self, rec: NetworkRecord) -> None:
        if rec.name in PREDEFINED:
            raise Forbidden(f"{rec.name} is a pre-defined network and cannot be removed")
        if self._endpoints.get(rec.id):
            raise Forbidden(f"error while removing network: network {rec.name} id {rec.id} "
                            "has active endpoints")
        self.drivers[rec.driver].delete_network(rec.spec())
        self._release_pool(rec)
        self._unlink(rec.id)
        del self._records[rec.id]
        self._endpoints.pop(rec.id, None)
        self.events.publish("network", "destroy", rec.id, {"name": rec.name,
                                                           "type": rec.driver})

    def _release_pool(self, rec: NetworkRecord) -> None:
        if rec.pool_id is None:
            return
        try:
            self.ipam.release_pool(rec.pool_id)
        except KetchError as e:  # NotFound: lost with the IPAM state; else leaked, say so
            log.warning("network %s: cannot release address pool %s: %s", rec.name,
                        rec.pool_id, e)

    def _reserve_pools(self) -> None:
        """Request again the pools of records that the IPAM driver no longer holds."""
        held = {p.id for p in self.ipam.pools()}
        for rec in builtins.list(self._records.values()):
            if rec.pool_id is None or rec.pool_id in held:
                continue
            cfg = {"Subnet": rec.subnet or "", "IPRange": rec.ip_range or "",
                   "Gateway": rec.gateway or ""}
            try:
                pool = self._request_pool(cfg, rec.ipam_options)
                if pool.id != rec.pool_id:
                    self._records[rec.id] = dataclasses.replace(rec, pool_id=pool.id)
                    self._save(self._records[rec.id])
            except KetchError as e:
                log.error("network %s: cannot reserve its subnet %s again: %s",
                          rec.name, rec.subnet, e)

    def _reconcile_bridge(self, rec: NetworkRecord) -> None:
        """Rebuild the default bridge (same id) when ``default_bridge`` or
        ``default_bip`` differ from its record, as dockerd does with ``--bip``."""
        options = self._predefined_options("bridge")
        same_bip = self._bip is None or (rec.subnet == str(self._bip.network)
                                         and rec.gateway == str(self._bip.ip))
        if dict(rec.options) == options and same_bip:
            return
        log.info("default bridge network: reconfiguring (%s %s -> %s %s)",
                 rec.options.get(BRIDGE_NAME_OPTION), rec.subnet, self.default_bridge,
                 self._bip.network if self._bip else rec.subnet)
        try:
            self.drivers[rec.driver].delete_network(rec.spec())
        except KetchError as e:
            log.error("default bridge network: cannot remove the old bridge: %s", e)
        cfg = self._predefined_ipam("bridge") or {}
        if self._bip is None:  # keep the subnet, change only the device
            cfg = {"Subnet": rec.subnet or "", "Gateway": rec.gateway or ""}
        self._release_pool(rec)
        pool = self._request_pool(cfg, {})
        new = dataclasses.replace(
            rec, options=options, subnet=str(pool.subnet), gateway=str(pool.gateway.ip),
            ip_range=None, pool_id=pool.id, facts={})
        self._save(new)
        self._records[rec.id] = new

    # -- persistence ---------------------------------------------------------------------

    def _path(self, net_id: str) -> str:
        return os.path.join(self.state_dir, f"{net_id}.json")

    def _sync_dir(self) -> None:
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _save(self, rec: NetworkRecord) -> None:
        data = json.dumps(rec.to_file(), indent=1, sort_keys=True).encode() + b"\n"
        atomic_write(self._path(rec.id), data, 0o600, sync=True)
        self._sync_dir()

    def _unlink(self, net_id: str) -> None:
        try:
            os.unlink(self._path(net_id))
        except FileNotFoundError:
            pass
        self._sync_dir()

    def _load(self) -> dict[str, NetworkRecord]:
        out: dict[str, NetworkRecord] = {}
        for entry in sorted(os.listdir(self.state_dir)):
            if not entry.endswith(".json"):
                continue  # a temp file of an interrupted write
            path = os.path.join(self.state_dir, entry)
            try:
                with open(path, "rb") as f:
                    rec = NetworkRecord.from_file(json.loads(f.read()))
                if entry != f"{rec.id}.json":
                    raise ValueError(f"it holds network {rec.id}")
            except (OSError, ValueError, TypeError) as e:
                raise Internal(f"network record {path} cannot be read: {e}") from None
            if _by_name(out, rec.name) is not None:
                raise Internal(f"network record {path}: name {rec.name} is taken twice")
            out[rec.id] = rec
        return out


def _by_name(records: Mapping[str, NetworkRecord], name: str) -> NetworkRecord | None:
    return next((r for r in records.values() if r.name == name), None)
