"""Published ports: what the API asks for, and the host ports that back it.

Terms:

* a **port binding** (:class:`PortBinding`) is one request as Docker's API states it — an entry of
  ``HostConfig.PortBindings`` such as ``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}``: the
  container port and protocol, a host address (``""`` means every IPv4 address, ``0.0.0.0``) and a
  host port that is exact, a range to pick one from (``"8000-8010"``) or empty (pick any port from
  the kernel's ephemeral range, ``/proc/sys/net/ipv4/ip_local_port_range``);
* a **port mapping** (:class:`PortMapping`) is a binding made concrete for one container
  endpoint: the host address and port chosen, the container's address and port, and the bridge
  the container sits on. The firewall turns mappings into DNAT rules
  (``ketch.network.firewall``).

Lifecycle: the engine parses the bindings when a container is created
(:func:`parse_port_bindings`, or :func:`parse_publish` for ``-p`` strings), asks the
:class:`PortAllocator` for mappings when the container's endpoint gets its address (it reserves
each host port by holding a real socket on it, so a port that another program — or another
container — uses is refused up front, with Docker's message), installs the mappings in the
firewall, and releases both when the endpoint goes away.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ketch.errors import Conflict, InvalidArgument

__all__ = [
    "PROTOCOLS",
    "PortAllocator",
    "PortBinding",
    "PortMapping",
    "ephemeral_range",
    "parse_port",
    "parse_port_bindings",
    "parse_publish",
    "ports_view",
]

PROTOCOLS = ("tcp", "udp", "sctp")
# Docker's fallback when the kernel's ephemeral range cannot be read
_FALLBACK_RANGE = (49153, 65535)


def _norm_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidArgument(f"invalid IP address: {value}") from None


def _check_port(port: int, what: str) -> None:
    if not 0 < port <= 65535:
        raise InvalidArgument(f"invalid {what}: {port}")


def _check_proto(proto: str) -> None:
    if proto not in PROTOCOLS:
        raise InvalidArgument(f"invalid proto: {proto}")


@dataclass(frozen=True)
class PortMapping:
    """One published port of one container endpoint: ``host_ip:host_port/proto`` goes to
    ``container_ip:container_port`` on ``bridge``. ``host_ip`` ``0.0.0.0`` means every local
    IPv4 address. Addresses are kept in their canonical text form."""

    proto: str
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int
    bridge: str

    def __post_init__(self) -> None:
        _check_proto(self.proto)
        _check_port(self.host_port, "hostPort")
        _check_port(self.container_port, "containerPort")
        object.__setattr__(self, "host_ip", _norm_ip(self.host_ip))
        object.__setattr__(self, "container_ip", _norm_ip(self.container_ip))

    @property
    def key(self) -> tuple[str, str, int]:
        """What identifies the mapping on the host: (proto, host_ip, host_port)."""
        return (self.proto, self.host_ip, self.host_port)

    def __str__(self) -> str:
        return (f"{_hostport(self.host_ip, self.host_port)}->"
                f"{_hostport(self.container_ip, self.container_port)}/{self.proto}")


def _hostport(ip: str, port: int | str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True)
class PortBinding:
    """One requested publication, as the API gives it.

    ``host_port``/``host_port_end`` is an exact port when equal, a range to pick one from when
    not, and ``0, 0`` for "any free port". ``host_ip`` ``""`` (the API's "every address")
    becomes ``0.0.0.0``."""

    proto: str
    container_port: int
    host_ip: str = "0.0.0.0"
    host_port: int = 0
    host_port_end: int = 0

    def __post_init__(self) -> None:
        _check_proto(self.proto)
        _check_port(self.container_port, "containerPort")
        object.__setattr__(self, "host_ip", _norm_ip(self.host_ip or "0.0.0.0"))
        if (self.host_port, self.host_port_end) != (0, 0):
            _check_port(self.host_port, "hostPort")
            _check_port(self.host_port_end, "hostPort")
            if self.host_port_end < self.host_port:
                raise InvalidArgument(
                    f"invalid hostPort: {self.host_port}-{self.host_port_end}")

    @property
    def exact(self) -> bool:
        """True when one particular host port was asked for."""
        return self.host_port != 0 and self.host_port == self.host_port_end

    @property
    def port_key(self) -> str:
        """The API's key for this binding: ``"80/tcp"``."""
        return f"{self.container_port}/{self.proto}"


def _range(text: str, what: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if m is None:
        raise InvalidArgument(f"invalid {what}: {text}")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    _check_port(lo, what)
    _check_port(hi, what)
    if hi < lo:
        raise InvalidArgument(f"invalid {what}: {text}")
    return lo, hi


def parse_port(key: str) -> tuple[int, int, str]:
    """``"80/tcp"`` → ``(80, 80, "tcp")``; ``"80-82/udp"`` → ``(80, 82, "udp")``; the protocol
    defaults to tcp, as in Docker's ``nat.Port``."""
    port, _, proto = key.partition("/")
    proto = (proto or "tcp").lower()
    _check_proto(proto)
    lo, hi = _range(port, "containerPort")
    return lo, hi, proto


def _expand(cport: tuple[int, int], proto: str, host_ip: str,
            host_port: str) -> list[PortBinding]:
    """Bindings for one container port (range) and one host part, paired as Docker pairs them:
    a container range takes an equally long host range port by port (or random ports); a single
    container port with a host range takes any one port of it."""
    clo, chi = cport
    ip = _norm_ip(host_ip) if host_ip else "0.0.0.0"
    if not host_port:
        return [PortBinding(proto, p, ip) for p in range(clo, chi + 1)]
    hlo, hhi = _range(host_port, "hostPort")
    if clo == chi:
        return [PortBinding(proto, clo, ip, hlo, hhi)]
    if hhi - hlo != chi - clo:
        raise InvalidArgument("invalid ranges specified for container and host Ports: "
                              f"{clo}-{chi} and {host_port}")
    return [PortBinding(proto, clo + i, ip, hlo + i, hlo + i) for i in range(chi - clo + 1)]


def parse_port_bindings(port_bindings: Mapping[str, Any] | None) -> list[PortBinding]:
    """Parse ``HostConfig.PortBindings`` (``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}``).

    A key with ``null`` or ``[]`` publishes nothing (the port is merely exposed). ``HostPort``
    may be exact, a range (``"8000-8010"``: any one port of it) or empty (any free port).
    Raises ``InvalidArgument`` naming the bad part."""
    out: list[PortBinding] = []
    for key, entries in (port_bindings or {}).items():
        cport = parse_port(str(key))
        if entries is None:
            continue
        if not isinstance(entries, Sequence) or isinstance(entries, str):
            raise InvalidArgument(f"invalid port binding for {key}: expected a list")
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise InvalidArgument(f"invalid port binding for {key}: expected an object")
            host_ip = str(entry.get("HostIp") or "")
            host_port = str(entry.get("HostPort") or "")
            out.extend(_expand(cport[:2], cport[2], host_ip, host_port))
    return out


def parse_publish(spec: str) -> dict[str, list[dict[str, str]]]:
    """Turn one ``-p``/``--publish`` value into ``HostConfig.PortBindings`` entries.

    Accepted forms, as ``docker run -p``: ``80``, ``8080:80``, ``127.0.0.1:8080:80``,
    ``127.0.0.1::80``, ``[::1]:8080:80``, ``8000-8010:80``, ``8000-8002:80-82``, each with an
    optional ``/tcp``, ``/udp`` or ``/sctp``. The keys are also what ``ExposedPorts`` needs."""
    rest, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    _check_proto(proto)
    host_ip = ""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0 or rest[end + 1:end + 2] != ":":
            raise InvalidArgument(f'invalid port specification: "{spec}"')
        host_ip, rest = rest[1:end], rest[end + 2:]
        _norm_ip(host_ip)
    parts = rest.split(":")
    if len(parts) == 1:
        host_port, cpart = "", parts[0]
    elif len(parts) == 2:
        host_port, cpart = parts
    elif len(parts) == 3 and not host_ip:
        host_ip, host_port, cpart = parts
        if host_ip:
            _norm_ip(host_ip)
    else:
        raise InvalidArgument(f'invalid port specification: "{spec}"')
    if not cpart:
        raise InvalidArgument(f"no port specified: {spec}<empty>")
    clo, chi = _range(cpart, "containerPort")
    bindings = _expand((clo, chi), proto, host_ip, host_port)
    out: dict[str, list[dict[str, str]]] = {}
    for b in bindings:
        hp = "" if (b.host_port, b.host_port_end) == (0, 0) else (
            str(b.host_port) if b.exact else f"{b.host_port}-{b.host_port_end}")
        out.setdefault(b.port_key, []).append({"HostIp": host_ip, "HostPort": hp})
    return out


def ports_view(mappings: Iterable[PortMapping],
               exposed: Iterable[str] = ()) -> dict[str, list[dict[str, str]] | None]:
    """``NetworkSettings.Ports`` as Docker reports it: every exposed port, ``None`` where
    nothing is published, else the host side of each mapping."""
    out: dict[str, list[dict[str, str]] | None] = {}
    for key in exposed:
        lo, hi, proto = parse_port(key)
        for p in range(lo, hi + 1):
            out.setdefault(f"{p}/{proto}", None)
    for m in sorted(mappings, key=lambda m: (m.container_port, m.proto, m.host_ip, m.host_port)):
        entry = out.get(f"{m.container_port}/{m.proto}")
        if entry is None:
            entry = out[f"{m.container_port}/{m.proto}"] = []
        entry.append({"HostIp": m.host_ip, "HostPort": str(m.host_port)})
    return out


def ephemeral_range(proc_sys: str = "/proc/sys") -> tuple[int, int]:
    """The kernel's ephemeral port range (of the calling thread's network namespace), or
    Docker's fallback 49153-65535 when it cannot be read."""
    try:
        with open(os.path.join(proc_sys, "net/ipv4/ip_local_port_range")) as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return _FALLBACK_RANGE
    if not 0 < lo <= hi <= 65535:
        return _FALLBACK_RANGE
    return lo, hi


@dataclass
class _Held:
    mapping: PortMapping
    sock: socket.socket | None = field(default=None, repr=False)


def _overlap(a: str, b: str) -> bool:
    """Would binding ``a`` and ``b`` on one port clash? (0.0.0.0 clashes with every IPv4
    address, :: with every IPv6 one.)"""
    if a == b:
        return True
    ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return ia.version == ib.version and (ia.is_unspecified or ib.is_unspecified)


class PortAllocator:
    """Reserves host ports for published ports by holding real sockets on them.

    A reservation is a listening TCP socket, a bound UDP socket or an SCTP socket on
    ``host_ip:host_port`` (``0.0.0.0`` for "every address"), made in the calling thread's
    network namespace and held until :meth:`release` (or :meth:`close`). While held, no other
    program can take the port, and a port some program already uses is refused. The sockets
    never see traffic: the firewall's DNAT rules take it before local delivery.

    Errors, in Docker's words: a port this allocator already gave out is
    ``Conflict("Bind for 0.0.0.0:8080 failed: port is already allocated")``; a port another
    program holds is ``Conflict("failed to bind host port for 0.0.0.0:8080:10.0.0.2:80/tcp:
    address already in use")``; an exhausted range is ``Conflict("all ports are allocated")``.
    Thread-safe.
    """

    def __init__(self, *, port_range: tuple[int, int] | None = None,
                 proc_sys: str = "/proc/sys") -> None:
        if port_range is not None:
            _check_port(port_range[0], "port range")
            _check_port(port_range[1], "port range")
            if port_range[1] < port_range[0]:
                raise InvalidArgument(f"invalid port range: {port_range[0]}-{port_range[1]}")
        self._range = port_range
        self._proc_sys = proc_sys
        self._lock = threading.Lock()
        self._held: dict[tuple[str, int], list[_Held]] = {}
        self._cursor: dict[tuple[str, int, int], int] = {}

    @property
    def port_range(self) -> tuple[int, int]:
        """Where ports for bindings without a host port come from."""
        if self._range is None:
            self._range = ephemeral_range(self._proc_sys)
        return self._range

    def allocated(self) -> list[PortMapping]:
        """Every mapping currently held, in port order."""
        with self._lock:
            return sorted((h.mapping for hs in self._held.values() for h in hs),
                          key=lambda m: (m.host_port, m.proto, m.host_ip))

    def allocate(self, binding: PortBinding, container_ip: str, bridge: str) -> PortMapping:
        """Reserve a host port for ``binding`` and return the mapping to ``container_ip``."""
        with self._lock:
            return self._allocate(binding, container_ip, bridge)

    def allocate_all(self, bindings: Iterable[PortBinding], container_ip: str,
                     bridge: str) -> list[PortMapping]:
        """Reserve every binding, or none: on an error the ones already made are released."""
        done: list[PortMapping] = []
        with self._lock:
            try:
                for b in bindings:
                    done.append(self._allocate(b, container_ip, bridge))
            except BaseException:
                for m in done:
                    self._release(m)
                raise
        return done

    def release(self, mapping: PortMapping) -> None:
        """Give the host port of ``mapping`` back. Releasing twice is harmless."""
        with self._lock:
            self._release(mapping)

    def close(self) -> None:
        """Release everything."""
        with self._lock:
            for hs in self._held.values():
                for h in hs:
                    if h.sock is not None:
                        h.sock.close()
            self._held.clear()

    # ---- internals (lock held) --------------------------------------------------------------

    def _taken_by_us(self, proto: str, ip: str, port: int) -> bool:
        return any(_overlap(h.mapping.host_ip, ip) for h in self._held.get((proto, port), ()))

    def _allocate(self, b: PortBinding, container_ip: str, bridge: str) -> PortMapping:
        container_ip = _norm_ip(container_ip)
        if b.exact:
            if self._taken_by_us(b.proto, b.host_ip, b.host_port):
                raise Conflict(f"Bind for {_hostport(b.host_ip, b.host_port)} failed: "
                               "port is already allocated")
            m = PortMapping(b.proto, b.host_ip, b.host_port, container_ip, b.container_port,
                            bridge)
            self._hold(m)
            return m
        lo, hi = (b.host_port, b.host_port_end) if b.host_port else self.port_range
        cursor_key = (b.proto, lo, hi)
        start = self._cursor.get(cursor_key, lo - 1) + 1
        size = hi - lo + 1
        for i in range(size):
            port = lo + (start - lo + i) % size
            if self._taken_by_us(b.proto, b.host_ip, port):
                continue
            m = PortMapping(b.proto, b.host_ip, port, container_ip, b.container_port, bridge)
            try:
                self._hold(m)
            except Conflict:
                continue  # some other program has it: try the next one
            self._cursor[cursor_key] = port
            return m
        raise Conflict("all ports are allocated")

    def _hold(self, m: PortMapping) -> None:
        try:
            sock = _reserve(m.proto, m.host_ip, m.host_port)
        except OSError as e:
            where = (f"failed to bind host port for {_hostport(m.host_ip, m.host_port)}:"
                     f"{m.container_ip}:{m.container_port}/{m.proto}")
            reason = os.strerror(e.errno).lower() if e.errno else str(e)
            if e.errno == errno.EADDRINUSE:
                raise Conflict(f"{where}: {reason}") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(f"{where}: {reason}") from None
            raise
        self._held.setdefault((m.proto, m.host_port), []).append(_Held(m, sock))

    def _release(self, m: PortMapping) -> None:
        hs = self._held.get((m.proto, m.host_port), [])
        for h in list(hs):
            if h.mapping.host_ip == m.host_ip:
                if h.sock is not None:
                    h.sock.close()
                hs.remove(h)
        if not hs:
            self._held.pop((m.proto, m.host_port), None)


def _reserve(proto: str, ip: str, port: int) -> socket.socket | None:
    """A socket that holds ``ip:port/proto`` in the calling thread's network namespace."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    if proto == "tcp":
        sock = socket.socket(family, socket.SOCK_STREAM)
    elif proto == "udp":
        sock = socket.socket(family, socket.SOCK_DGRAM)
    else:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
        except OSError as e:
            if e.errno in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT):
                return None  # no SCTP here: nothing else can take the port either
            raise
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if proto != "udp":
            # like any server: a port whose old connections linger in TIME_WAIT is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as e:
            raise OSError(e.errno, e.strerror, f"bind({_hostport(ip, port)}/{proto})") from None
        if proto != "udp":
            sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock
