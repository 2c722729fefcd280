"""What the API shows of a container's network, the names the embedded DNS answers, and
the /etc/hosts and /etc/resolv.conf a sandboxed container gets (see
:mod:`ketch.engine.containers.network` for the lifecycle)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ketch.engine.containers.model import Container
from ketch.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService

__all__ = ["DNS_ADDRESS", "attach_names", "container_ips", "etc_files", "networks_view",
           "settings", "summary_ports"]

DNS_ADDRESS = "127.0.0.11"
_HOSTS_BASE = (b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
               b"fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n"
               b"ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")


# ---- /etc files --------------------------------------------------------------------------

def _host_resolv() -> bytes:
    try:
        with open("/etc/resolv.conf", "rb") as f:
            return f.read()
    except OSError:
        return b""


def etc_files(c: Container, hostname: str, addresses: Sequence[str], user_network: bool,
              gateway: str | None) -> tuple[bytes, bytes]:
    """(/etc/hosts, /etc/resolv.conf) as dockerd writes them for a sandboxed container."""
    hc = c.host_config
    hosts = _HOSTS_BASE
    for entry in hc.get("ExtraHosts") or []:
        text = str(entry)
        name, sep, ip = text.partition("=") if "=" in text else text.partition(":")
        if not sep or not name or not ip:
            raise InvalidArgument(f"invalid extra host {entry!r}: want name:ip")
        if ip == "host-gateway":
            if gateway is None:
                raise InvalidArgument("host-gateway: this container has no gateway")
            ip = gateway
        hosts += f"{ip}\t{name}\n".encode()
    for a in addresses[:1]:
        names = [hostname]
        domain = c.config.get("Domainname") or ""
        if domain:
            names.insert(0, f"{hostname}.{domain}")
        hosts += f"{a}\t{' '.join(names)}\n".encode()
    dns = [str(s) for s in hc.get("Dns") or []]
    search = [str(s) for s in hc.get("DnsSearch") or []]
    opts = [str(s) for s in hc.get("DnsOptions") or []]
    host = _host_resolv().decode(errors="replace").splitlines()
    host_ns = [ln.split()[1] for ln in host if ln.startswith("nameserver") and
               len(ln.split()) > 1]
    host_search = next((ln.split()[1:] for ln in reversed(host) if ln.startswith("search")), [])
    host_opts = next((ln.split()[1:] for ln in reversed(host) if ln.startswith("options")), [])
    lines: list[str] = []
    if user_network:
        # the embedded DNS forwards to dns (or the host's servers) itself
        lines.append(f"nameserver {DNS_ADDRESS}")
        if search or host_search:
            lines.append("search " + " ".join(search or host_search))
        lines.append("options " + " ".join(["ndots:0", *(opts or host_opts)]))
    else:
        servers = dns or [s for s in host_ns if not s.startswith("127.")] or \
            ["8.8.8.8", "8.8.4.4"]
        lines += [f"nameserver {s}" for s in servers]
        if search or host_search:
            lines.append("search " + " ".join(search or host_search))
        if opts or host_opts:
            lines.append("options " + " ".join(opts or host_opts))
    return hosts, ("\n".join(lines) + "\n").encode()


# ---- views -------------------------------------------------------------------------------

def container_ips(c: Container) -> list[str]:
    return [e["IPAddress"] for e in c.endpoints.values() if e.get("IPAddress")]


def summary_ports(c: Container) -> list[dict[str, Any]]:
    """``docker ps``'s ``Ports``."""
    out: list[dict[str, Any]] = []
    published = set()
    for d in c.ports:
        out.append({"IP": d["host_ip"], "PrivatePort": d["container_port"],
                    "PublicPort": d["host_port"], "Type": d["proto"]})
        published.add((d["container_port"], d["proto"]))
    for key in c.config.get("ExposedPorts") or {}:
        port, _, proto = str(key).partition("/")
        with contextlib.suppress(ValueError):
            if (int(port), proto or "tcp") not in published:
                out.append({"PrivatePort": int(port), "Type": proto or "tcp"})
    return out


_EP_FIELDS = ("IPAMConfig", "Links", "Aliases", "MacAddress", "DriverOpts", "NetworkID",
              "EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "IPv6Gateway",
              "GlobalIPv6Address", "GlobalIPv6PrefixLen", "DNSNames")


def networks_view(c: Container) -> dict[str, Any]:
    """``NetworkSettings.Networks``: every network the container is on."""
    return {name: {k: ep.get(k) for k in _EP_FIELDS} for name, ep in c.endpoints.items()}


def settings(c: Container, running: bool) -> dict[str, Any]:
    """``NetworkSettings`` of inspect."""
    from ketch.network.portmap import PortMapping, ports_view

    maps = [PortMapping(d["proto"], d["host_ip"], int(d["host_port"]), d["container_ip"],
                        int(d["container_port"]), d["bridge"]) for d in c.ports]
    nets = networks_view(c)
    first = next(iter(c.endpoints.items()), None)
    legacy = first[1] if first is not None and first[0] == "bridge" else {}
    return {
        "Bridge": "", "SandboxID": c.id if c.sandbox else "", "SandboxKey": c.sandbox,
        "Ports": ports_view(maps, c.config.get("ExposedPorts") or {}) if running else {},
        "HairpinMode": False, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
        "EndpointID": legacy.get("EndpointID", ""), "Gateway": legacy.get("Gateway", ""),
        "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "IPAddress": legacy.get("IPAddress", ""), "IPPrefixLen": legacy.get("IPPrefixLen", 0),
        "IPv6Gateway": "", "MacAddress": legacy.get("MacAddress", ""), "Networks": nets,
    }


# ---- the embedded DNS's view -------------------------------------------------------------

def attach_names(svc: ContainerService) -> tuple[Any, Any]:
    """(lookup, reverse) callbacks for :class:`ketch.network.resolver.Resolver`."""

    def shared(asker: str) -> tuple[Container | None, set[str]]:
        try:
            c = svc.store.get(asker)
        except NotFound:
            return None, set()
        return c, {ep["NetworkID"] for n, ep in c.endpoints.items()
                   if n != "bridge" and ep.get("Joined")}

    def lookup(key: str, name: str, qtype: int) -> list[str] | None:
        _c, nets = shared(key)
        if not nets:
            return None
        name = name.lower().rstrip(".")
        found: list[str] = []
        for other in svc.store.all():
            for net_name, ep in other.endpoints.items():
                if ep.get("NetworkID") not in nets or not ep.get("Joined"):
                    continue
                names = {n.lower() for n in ep.get("DNSNames") or []}
                names |= {f"{n}.{net_name}".lower() for n in list(names)}
                if name in names and ep.get("IPAddress"):
                    found.append(ep["IPAddress"])
        return found or None

    def reverse(key: str, ip: Any) -> list[str] | None:
        _c, nets = shared(key)
        text = str(ip)
        for other in svc.store.all():
            for net_name, ep in other.endpoints.items():
                if ep.get("NetworkID") in nets and ep.get("IPAddress") == text:
                    return [f"{other.name.lstrip('/')}.{net_name}"]
        return None

    return lookup, reverse
