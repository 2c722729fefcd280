"""A container's network: its sandbox, endpoints, published ports, names and /etc files.

The network *mode* (``HostConfig.NetworkMode``) decides the sandbox:

    host            the daemon's network namespace; no sandbox, no endpoints
    none            a fresh namespace the runtime makes (loopback only)
    container:<id>  the namespace of that (running) container
    bridge, <name>  a sandbox of our own, ``<exec-root>/netns/<id>``, with one endpoint on
                    that network (``eth0``) and one per further network the create body's
                    ``NetworkingConfig.EndpointsConfig`` names or ``network connect`` adds

Lifecycle of a sandboxed container, on every start::

    prepare(svc, c)   (thread, before the bundle is written) make the sandbox, take the
                      addresses from IPAM, write /etc/hosts and /etc/resolv.conf; returns
                      the namespace path the runtime spec joins
    join_all(svc, c)  (thread, right after prepare, while the rootfs mounts and the
                      supervisor creates the container) the drivers' joins (veth
                      pairs) and the published ports
    plug(svc, c, j)   (async, while the supervisor creates the container) waits for
                      ``join_all`` (or runs it), then the embedded DNS
    release(svc, c)   (thread, at exit, failed start or removal; idempotent) the reverse

An endpoint's record lives in the container (``c.endpoints``, by network name) so that a
restarted daemon knows what to reconnect or release; ``restore`` does that for running
containers (live-restore), ``release`` for the rest. The embedded DNS (127.0.0.11 inside
the sandbox) serves containers on user-defined networks, as dockerd's does: container
names, network aliases and short ids of containers sharing a network with the asker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ketch.engine.containers.model import Container
from ketch.engine.containers.netviews import (
    attach_names,
    container_ips,
    etc_files,
    networks_view,
    settings,
    summary_ports,
)
from ketch.errors import (
    Conflict,
    FailedPrecondition,
    Forbidden,
    InvalidArgument,
    KetchError,
    NotFound,
)

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService
    from ketch.engine.networks import NetworkRecord, NetworkService
    from ketch.network.firewall import Firewall
    from ketch.network.portmap import PortAllocator, PortMapping
    from ketch.network.resolver import Resolver

__all__ = [
    "NetContext",
    "attach_names",
    "connect",
    "container_ips",
    "disconnect",
    "etc_files",
    "join_all",
    "mapping_of",
    "networks_view",
    "plan",
    "plug",
    "prepare",
    "release",
    "restore",
    "sandbox_path",
    "sandboxed",
    "settings",
    "summary_ports",
]

log = logging.getLogger(__name__)

@dataclass
class NetContext:
    """The daemon's networking parts a container service uses (None parts: absent)."""

    networks: NetworkService
    ports: PortAllocator
    firewall: Firewall | None = None
    resolver: Resolver | None = None
    loop: asyncio.AbstractEventLoop | None = None
    # container id -> the sandbox the DNS serves
    dns: set[str] = field(default_factory=set)


# ---- modes -------------------------------------------------------------------------------

def mode_of(c: Container) -> str:
    return str(c.host_config.get("NetworkMode") or "bridge")


def _sandboxed(mode: str) -> bool:
    return mode not in ("host", "none") and not mode.startswith("container:")


def sandboxed(c: Container) -> bool:
    """Whether the container gets a network namespace of its own (bridge and user
    networks), whose /etc/hosts and resolv.conf :func:`prepare` writes."""
    return _sandboxed(mode_of(c))


def sandbox_path(svc: ContainerService, c: Container) -> str:
    return os.path.join(svc.config.exec_root, "netns", c.id)


def _wanted(c: Container) -> list[tuple[str, dict[str, Any]]]:
    """(network reference, endpoint config) in interface order: the mode's network
    first, then the create body's further networks, then those connected later."""
    mode = mode_of(c)
    cfgs: Mapping[str, Any] = (c.networking_config.get("EndpointsConfig") or {})
    out = [(mode, dict(cfgs.get(mode) or {}))]
    for ref, cfg in cfgs.items():
        if ref != mode:
            out.append((ref, dict(cfg or {})))
    return out


def plan(net: NetContext | None, hc: dict[str, Any], networking: dict[str, Any]
         ) -> list[str]:
    """Check a create body's network settings (networks exist, static addresses are
    allowed there); normalises ``hc["NetworkMode"]`` and ``networking`` (the CLI names
    the default network ``default``); returns warnings."""
    mode = hc.get("NetworkMode") or "default"
    cfgs = networking.get("EndpointsConfig") or {}
    if not isinstance(cfgs, dict):
        raise InvalidArgument("NetworkingConfig.EndpointsConfig: want an object")
    if mode == "default":
        mode = "bridge"
        if "default" in cfgs:
            cfgs["bridge"] = cfgs.pop("default")
    hc["NetworkMode"] = mode
    if cfgs:
        networking["EndpointsConfig"] = cfgs
    if mode in ("host", "none") or mode.startswith("container:"):
        if cfgs and any(k != mode for k in cfgs):
            raise InvalidArgument(f"conflicting options: container cannot be connected to "
                                  f"other networks in network mode {mode}")
        if mode.startswith("container:") and (hc.get("PortBindings") or
                                              hc.get("PublishAllPorts")):
            raise InvalidArgument("conflicting options: port publishing and the container "
                                  "type network mode")
        return []
    if net is None:
        raise FailedPrecondition("this daemon has no networking: use --network none or host")
    for ref in [mode, *[k for k in cfgs if k != mode]]:
        rec = net.networks.lookup(ref)
        cfg = cfgs.get(ref) or {}
        if not isinstance(cfg, Mapping):
            raise InvalidArgument(f"EndpointsConfig[{ref}]: want an object")
        _check_endpoint(rec, cfg)
    return []


def _check_endpoint(rec: NetworkRecord, cfg: Mapping[str, Any]) -> None:
    """A static address must be in a user-defined network's own subnet (dockerd's rules)."""
    want = ((cfg.get("IPAMConfig") or {}).get("IPv4Address") or "")
    if want:
        if rec.name == "bridge":
            raise InvalidArgument("user specified IP address is supported on user "
                                  "defined networks only")
        if rec.pool_id is None or not rec.subnet or not rec.user_subnet:
            raise InvalidArgument("user specified IP address is supported only when "
                                  "connecting to networks with user configured subnets")
        try:
            addr = ipaddress.ip_address(want)
        except ValueError:
            raise InvalidArgument(f"invalid IPv4 address: {want}") from None
        if addr not in ipaddress.ip_network(rec.subnet):
            raise InvalidArgument(f"no configured subnet contains IP address {want}")


# ---- start: prepare, plug ----------------------------------------------------------------

def prepare(svc: ContainerService, c: Container) -> str | None:
    """Before the bundle: the sandbox, addresses and /etc files. Returns the network
    namespace path the spec joins (None: the mode needs no path — host, none)."""
    from ketch.runtime.state import atomic_write

    mode = mode_of(c)
    if mode.startswith("container:"):
        other = svc.get(mode.split(":", 1)[1])
        if other.state.status not in ("running", "paused") or not other.state.pid:
            raise Conflict(f"cannot join network of a non running container: {other.id}")
        c.sandbox = ""
        return other.sandbox or f"/proc/{other.state.pid}/ns/net"
    if not _sandboxed(mode):
        return None
    net = svc.net
    if net is None:
        raise FailedPrecondition("this daemon has no networking: use --network none or host")
    from ketch.sys import netns

    path = sandbox_path(svc, c)
    c.sandbox = path
    c.endpoints = {}
    try:
        for i, (ref, cfg) in enumerate(_wanted(c)):
            rec = net.networks.lookup(ref)
            c.endpoints[rec.name] = _allocate(net, rec, cfg, i)
        first = next(iter(c.endpoints.values()), None)
        user = any(name != "bridge" for name in c.endpoints)
        hostname = c.config.get("Hostname") or c.id[:12]
        hosts, resolv = etc_files(
            c, hostname, [first["IPAddress"]] if first and first["IPAddress"] else [],
            user, first["Gateway"] if first else None)
        d = svc.store.dir(c.id)
        atomic_write(os.path.join(d, "hosts"), hosts, 0o644, sync=False)
        atomic_write(os.path.join(d, "resolv.conf"), resolv, 0o644, sync=False)
        # The sandbox and the addresses recorded before the namespace exists: a daemon
        # killed from here on knows to release them.
        svc.save(c, sync=False)
        os.makedirs(os.path.dirname(path), 0o711, exist_ok=True)
        if not netns.is_netns(path):
            netns.create(path)
    except BaseException:
        release(svc, c)
        raise
    return path


def _allocate(net: NetContext, rec: NetworkRecord, cfg: Mapping[str, Any],
              index: int) -> dict[str, Any]:
    """An endpoint record with its address taken from IPAM (the one asked for, else a
    free one)."""
    ipam_cfg = dict(cfg.get("IPAMConfig") or {})
    want = ipam_cfg.get("IPv4Address") or None
    addr = ""
    prefix = 0
    if rec.pool_id is not None:
        try:
            iface = net.networks.ipam.request_address(rec.pool_id, want)
        except Conflict as e:
            raise Conflict(f"failed to set up container networking: address {want} on "
                           f"network {rec.name}: {e}") from None
        addr, prefix = str(iface.ip), iface.network.prefixlen
    return {
        "NetworkID": rec.id, "EndpointID": secrets.token_hex(32), "IPAddress": addr,
        "IPPrefixLen": prefix, "Gateway": rec.gateway or "", "MacAddress": "",
        "IPAMConfig": ipam_cfg or None, "Aliases": list(cfg.get("Aliases") or []) or None,
        "DriverOpts": cfg.get("DriverOpts"), "Links": None, "IfName": f"eth{index}",
        "HostInterface": "", "DNSNames": None, "Joined": False,
        "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
    }


def join_all(svc: ContainerService, c: Container) -> None:
    """The drivers' joins and the published ports (thread; after :func:`prepare`)."""
    net = svc.net
    assert net is not None
    from ketch.engine.networks import Endpoint
    from ketch.network.driver import EndpointSpec

    for name, ep in c.endpoints.items():
        if ep.get("Joined"):
            continue
        rec = net.networks.lookup(ep["NetworkID"])
        spec = EndpointSpec(
            id=ep["EndpointID"], container_id=c.id, ifname=ep["IfName"],
            address=ipaddress.ip_interface(f"{ep['IPAddress']}/{ep['IPPrefixLen']}")
            if ep["IPAddress"] else None, gateway=ep["IfName"] == "eth0")
        facts = net.networks.drivers[rec.driver].join(rec.spec(), spec, c.sandbox)
        ep["MacAddress"] = facts.get("MacAddress", "")
        ep["HostInterface"] = facts.get("HostInterface", "")
        ep["Joined"] = True
        ep["DNSNames"] = _dns_names(c, name, ep)
        net.networks.add_endpoint(rec.id, Endpoint(
            c.id, ep["EndpointID"], name=c.name.lstrip("/"), mac=ep["MacAddress"],
            ipv4=f"{ep['IPAddress']}/{ep['IPPrefixLen']}" if ep["IPAddress"] else ""))
    _publish(svc, c)


def _dns_names(c: Container, network: str, ep: Mapping[str, Any]) -> list[str] | None:
    if network == "bridge":
        return None
    names = [c.name.lstrip("/"), *(ep.get("Aliases") or []), c.id[:12]]
    if c.config.get("Hostname") and c.config["Hostname"] != c.id[:12]:
        names.append(c.config["Hostname"])
    return list(dict.fromkeys(names))


def _publish(svc: ContainerService, c: Container) -> None:
    """Reserve host ports and program their DNAT, to the first bridge endpoint."""
    from ketch.network.portmap import PortBinding, parse_port, parse_port_bindings

    net = svc.net
    assert net is not None
    hc = c.host_config
    bindings = parse_port_bindings(hc.get("PortBindings") or {})
    if hc.get("PublishAllPorts"):
        have = {(b.container_port, b.proto) for b in bindings}
        for key in c.config.get("ExposedPorts") or {}:
            lo, hi, proto = parse_port(key)
            for p in range(lo, hi + 1):
                if (p, proto) not in have:
                    bindings.append(PortBinding(proto, p))
    if not bindings or c.ports:
        return
    ep = next((e for e in c.endpoints.values() if e["IPAddress"]), None)
    if ep is None:
        raise InvalidArgument("published ports need a network with addresses")
    rec = net.networks.lookup(ep["NetworkID"])
    if rec.driver != "bridge":
        raise InvalidArgument(f"network {rec.name}: ports can be published on bridge "
                              "networks only")
    bridge = rec.bridge
    maps = net.ports.allocate_all(bindings, ep["IPAddress"], bridge)
    done: list[PortMapping] = []
    try:
        if net.firewall is not None:
            for m in maps:
                net.firewall.add_port(m)
                done.append(m)
    except BaseException:
        for m in done:
            with contextlib.suppress(Exception):
                net.firewall.remove_port(m)  # type: ignore[union-attr]
        for m in maps:
            net.ports.release(m)
        raise
    c.ports = [_mapping_json(m) for m in maps]


def _mapping_json(m: PortMapping) -> dict[str, Any]:
    return {"proto": m.proto, "host_ip": m.host_ip, "host_port": m.host_port,
            "container_ip": m.container_ip, "container_port": m.container_port,
            "bridge": m.bridge}


def mapping_of(d: Mapping[str, Any]) -> PortMapping:
    from ketch.network.portmap import PortMapping

    return PortMapping(d["proto"], d["host_ip"], int(d["host_port"]), d["container_ip"],
                       int(d["container_port"]), d["bridge"])


async def plug(svc: ContainerService, c: Container,
               joined: concurrent.futures.Future[Any] | None = None) -> None:
    """Joins and ports (``joined``: already under way in a thread, see
    ``setup.prepare_start``; else run here in a thread), then the embedded DNS for
    user-defined networks."""
    if joined is not None:
        await asyncio.wrap_future(joined)
    if not c.sandbox or svc.net is None:
        return
    if joined is None:
        await asyncio.to_thread(join_all, svc, c)
    await _serve_dns(svc, c)


async def _serve_dns(svc: ContainerService, c: Container) -> None:
    net = svc.net
    if net is None or net.resolver is None or c.id in net.dns or not c.sandbox:
        return
    if not any(name != "bridge" for name in c.endpoints):
        return
    await net.resolver.attach(c.id, c.sandbox)
    net.dns.add(c.id)


# ---- stop: release -----------------------------------------------------------------------

def release(svc: ContainerService, c: Container) -> None:
    """Undo :func:`prepare` and :func:`plug` (idempotent; thread or loop-free context)."""
    net = svc.net
    if net is None or not (c.sandbox or c.endpoints or c.ports):
        return
    if c.id in net.dns and net.resolver is not None and net.loop is not None:
        net.dns.discard(c.id)
        resolver = net.resolver
        with contextlib.suppress(RuntimeError):  # the loop is closed: sockets went with it
            asyncio.run_coroutine_threadsafe(resolver.detach(c.id), net.loop)
    for d in c.ports:
        m = mapping_of(d)
        if net.firewall is not None:
            with contextlib.suppress(KetchError, OSError):
                net.firewall.remove_port(m)
        with contextlib.suppress(KetchError, OSError):
            net.ports.release(m)
    c.ports = []
    for name, ep in c.endpoints.items():
        _release_endpoint(net, c, name, ep, defer=True)
    if c.sandbox and c.sandbox == sandbox_path(svc, c):
        from ketch.sys import netns

        try:
            netns.delete(c.sandbox)
        except OSError as e:
            log.warning("container %s: removing its network namespace: %s", c.short_id, e)
    c.sandbox = ""


_LEAVES: concurrent.futures.ThreadPoolExecutor | None = None


def _leave(net: NetContext, c: Container, name: str, rec: NetworkRecord, spec: Any,
           sandbox: str | None) -> None:
    try:
        net.networks.drivers[rec.driver].leave(rec.spec(), spec, sandbox)
    except Exception as e:  # keep releasing the rest
        log.warning("container %s: leaving network %s: %s", c.short_id, name, e)


def _release_endpoint(net: NetContext, c: Container, name: str, ep: dict[str, Any], *,
                      defer: bool = False) -> None:
    """Leave the network, give the address back; the record stays, emptied.

    ``defer``: the driver's leave runs in the background. A stopped container's sandbox
    goes right after, and with it the kernel destroys its veths anyway; deleting a veth
    takes the kernel some 20 ms, which `docker run --rm` and `docker stop` need not wait
    for."""
    from ketch.network.driver import EndpointSpec

    global _LEAVES
    try:
        rec = net.networks.lookup(ep["NetworkID"])
    except NotFound:
        return
    if ep.get("Joined"):
        spec = EndpointSpec(id=ep["EndpointID"], container_id=c.id, ifname=ep["IfName"])
        if defer:
            if _LEAVES is None:
                _LEAVES = concurrent.futures.ThreadPoolExecutor(1, "net-leave")
            _LEAVES.submit(_leave, net, c, name, rec, spec, None)
        else:
            _leave(net, c, name, rec, spec, c.sandbox or None)
        net.networks.remove_endpoint(rec.id, c.id)
        ep["Joined"] = False
    if ep.get("IPAddress") and rec.pool_id is not None:
        with contextlib.suppress(KetchError, OSError):
            net.networks.ipam.release_address(rec.pool_id, ep["IPAddress"])
    ep.update(IPAddress="", IPPrefixLen=0, Gateway="", MacAddress="", HostInterface="",
              EndpointID="")


# ---- connect / disconnect ----------------------------------------------------------------

async def connect(svc: ContainerService, c: Container, ref: str,
                  cfg: Mapping[str, Any]) -> None:
    """``docker network connect``: recorded for the next start; joined now if running."""
    net = svc.net
    if net is None:
        raise FailedPrecondition("this daemon has no networking")
    rec = net.networks.lookup(ref)
    mode = mode_of(c)
    if not _sandboxed(mode):
        raise Forbidden(f"container sharing network namespace with another container or "
                        f"host cannot be connected to any other network (mode {mode})")
    cfgs = c.networking_config.setdefault("EndpointsConfig", {})
    if (rec.name in c.endpoints and c.endpoints[rec.name].get("Joined")) or rec.name in cfgs \
            or rec.name == mode or rec.id == mode:
        raise Forbidden(f"endpoint with name {c.name.lstrip('/')} already exists in network "
                        f"{rec.name}")
    _check_endpoint(rec, cfg)
    cfgs[rec.name] = dict(cfg)
    if c.state.status in ("running", "paused") and c.sandbox:
        def join() -> None:
            c.endpoints[rec.name] = _allocate(net, rec, cfg, len(c.endpoints))
            try:
                join_all(svc, c)
            except BaseException:
                _release_endpoint(net, c, rec.name, c.endpoints.pop(rec.name))
                raise

        try:
            await asyncio.to_thread(join)
        except BaseException:
            cfgs.pop(rec.name, None)
            raise
        await _serve_dns(svc, c)
    svc.save(c)


async def disconnect(svc: ContainerService, c: Container, ref: str, force: bool) -> None:
    """``docker network disconnect``."""
    net = svc.net
    if net is None:
        raise FailedPrecondition("this daemon has no networking")
    try:
        rec = net.networks.lookup(ref)
        name = rec.name
    except NotFound:
        if not force:
            raise
        name = ref
    cfgs = c.networking_config.setdefault("EndpointsConfig", {})
    on = name in c.endpoints or name in cfgs or mode_of(c) == name
    if not on:
        raise Forbidden(f"container {c.id} is not connected to network {name}")
    cfgs.pop(name, None)
    ep = c.endpoints.pop(name, None)
    if mode_of(c) == name:
        c.host_config["NetworkMode"] = "none" if not cfgs else next(iter(cfgs))
    if ep is not None:
        await asyncio.to_thread(_release_endpoint, net, c, name, ep)
    if (c.id in net.dns and net.resolver is not None
            and not any(n != "bridge" for n in c.endpoints)):
        net.dns.discard(c.id)
        await net.resolver.detach(c.id)
    svc.save(c)


async def restore(svc: ContainerService, c: Container) -> None:
    """After a daemon restart, for a container that kept running: its endpoints back in
    the networks' books, its host ports held again, its DNS served."""
    net = svc.net
    if net is None or not c.sandbox:
        return
    from ketch.engine.networks import Endpoint

    for ep in c.endpoints.values():
        if not ep.get("Joined"):
            continue
        try:
            rec = net.networks.lookup(ep["NetworkID"])
        except NotFound:
            continue
        with contextlib.suppress(KetchError):
            net.networks.add_endpoint(rec.id, Endpoint(
                c.id, ep["EndpointID"], name=c.name.lstrip("/"), mac=ep["MacAddress"],
                ipv4=f"{ep['IPAddress']}/{ep['IPPrefixLen']}" if ep["IPAddress"] else ""))
    if c.ports:
        from ketch.network.portmap import PortBinding

        for d in c.ports:
            m = mapping_of(d)
            try:
                net.ports.allocate(PortBinding(m.proto, m.container_port, m.host_ip,
                                               m.host_port), m.container_ip, m.bridge)
            except KetchError as e:
                log.warning("container %s: holding host port %s again: %s", c.short_id,
                            m.host_port, e)
    await _serve_dns(svc, c)


