"""The upstream resolvers the embedded DNS forwards to: parsing server addresses and the
host's resolv.conf, with dockerd's fallback when it names none."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from ketch.errors import InvalidArgument

__all__ = ["DEFAULT_UPSTREAMS", "DEFAULT_UPSTREAMS_V6", "DNS_PORT", "MAX_UPSTREAMS",
           "Upstream", "host_upstreams"]

log = logging.getLogger(__name__)

DNS_PORT = 53
MAX_UPSTREAMS = 3  # glibc's MAXNS, docker's maxExtDNS
DEFAULT_UPSTREAMS = ("8.8.8.8", "8.8.4.4")  # docker's fallback when the host has none
DEFAULT_UPSTREAMS_V6 = ("2001:4860:4860::8888", "2001:4860:4860::8844")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Upstream:
    """A resolver to forward to (port 53 unless given)."""

    address: IPAddress
    port: int = DNS_PORT

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """``1.2.3.4``, ``1.2.3.4:5353``, ``::1`` or ``[::1]:5353``."""
        host, port = text, DNS_PORT
        try:
            if text.startswith("["):
                host, _, rest = text[1:].partition("]")
                if rest:
                    port = int(rest.removeprefix(":"))
            elif text.count(":") == 1:
                host, _, p = text.partition(":")
                port = int(p)
            up = cls(ipaddress.ip_address(host), port)
        except ValueError:
            raise InvalidArgument(f"invalid DNS server address {text!r}") from None
        if not 0 < port < 65536:
            raise InvalidArgument(f"invalid DNS server port in {text!r}")
        return up

    def __str__(self) -> str:
        if self.port == DNS_PORT:
            return str(self.address)
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


def host_upstreams(path: str = "/etc/resolv.conf", *, ipv6: bool = False) -> list[Upstream]:
    """The ``nameserver`` entries of the host's resolv.conf, at most three.

    Loopback servers are kept: forwarding happens in the daemon's namespace, where
    they work. With no usable entry (or no file) this is docker's fallback, 8.8.8.8
    and 8.8.4.4, plus Google's two IPv6 servers when ``ipv6``."""
    found: list[Upstream] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            found.append(Upstream(ipaddress.ip_address(fields[1])))
        except ValueError:
            log.warning("ignoring invalid nameserver %r in %s", fields[1], path)
    if not found:
        log.info("no nameserver in %s; using default external servers", path)
        defaults = DEFAULT_UPSTREAMS + (DEFAULT_UPSTREAMS_V6 if ipv6 else ())
        found = [Upstream(ipaddress.ip_address(a)) for a in defaults]
    return found[:MAX_UPSTREAMS]
