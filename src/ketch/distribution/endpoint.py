"""Where a registry named in an image reference lives, and how to talk to it.

A reference's *domain* (``docker.io``, ``ghcr.io``, ``127.0.0.1:5000``) names a
registry; the *endpoint* is the base URL its v2 API answers on:

- ``docker.io`` (and ``index.docker.io``) is served by ``registry-1.docker.io`` over HTTPS;
- every other domain is served by itself, over HTTPS;
- a domain on loopback (``localhost``, ``127.0.0.0/8``, ``::1``) is *insecure-allowed*,
  as dockerd treats it: HTTPS is tried first and plain HTTP is used when the other end
  does not speak TLS. Non-loopback registries are never contacted over plain HTTP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["DOCKER_HUB", "Endpoint", "endpoint_for", "is_loopback", "normalize_domain",
           "split_host"]

DOCKER_HUB = "docker.io"
_HUB_HOST = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io",
                          "https://index.docker.io/v1/", "registry.hub.docker.com"})


def split_host(domain: str) -> tuple[str, int | None]:
    """(host, port or None) of ``host[:port]`` or ``[v6]:port``."""
    if domain.startswith("["):
        host, _, rest = domain[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if domain.count(":") == 1:
        host, _, port = domain.partition(":")
        return host, int(port)
    return domain, None


def is_loopback(domain: str) -> bool:
    """True for ``localhost`` and loopback addresses, with or without a port."""
    host, _ = split_host(domain)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A registry's v2 API: ``domain`` as users write it, ``host`` as dialled."""

    domain: str
    host: str
    insecure: bool  #: plain HTTP allowed when TLS fails (loopback only)

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://{self.host}{path}"


def normalize_domain(domain: str) -> str:
    """``docker.io`` for Docker Hub's spellings (server addresses of ``docker login``)."""
    d = domain.strip().lower()
    for prefix in ("https://", "http://"):
        if d.startswith(prefix):
            d = d[len(prefix):]
    d = d.split("/", 1)[0]
    return DOCKER_HUB if d in _HUB_ALIASES or domain in _HUB_ALIASES else d


def endpoint_for(domain: str) -> Endpoint:
    """The endpoint of the registry ``domain`` names (see the module doc)."""
    d = normalize_domain(domain)
    if d == DOCKER_HUB:
        return Endpoint(DOCKER_HUB, _HUB_HOST, False)
    return Endpoint(d, d, is_loopback(d))
