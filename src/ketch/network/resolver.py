"""The embedded DNS server that containers on user-defined networks ask at 127.0.0.11.

Docker's model: a container on a user-defined network has ``nameserver 127.0.0.11``
in its resolv.conf. The daemon answers container names, network aliases and short
ids of the containers that share a network with the asker, and forwards every other
question to the host's upstream resolvers.

How ketch does it: the daemon's own event loop serves every sandbox. For each one,
:meth:`Resolver.attach` creates a UDP and a TCP socket bound to 127.0.0.11:53 *inside
the sandbox's network namespace* (a socket stays in the namespace it was created in,
so a short-lived thread enters it with setns(), binds, returns to its own namespace
and exits) and hands them to :meth:`Resolver.serve_sockets`. No NAT rule is needed.
Forwarded queries leave from the daemon's namespace, so host-only upstreams such as
systemd-resolved's 127.0.0.53 work as they do for docker's "host loopback" servers.

Lifecycle::

    r = Resolver(lookup, host_upstreams(), reverse=reverse)
    await r.attach(key, "/run/netns/<sandbox>")    # serve one sandbox
    ...                                            # lookup(key, name, qtype) decides
    await r.detach(key)                            # stop serving it, free the port
    r.close()                                      # stop everything (daemon shutdown)

What is answered locally (class IN only; TTL 600 like docker):

- ``lookup(key, name, qtype)`` gets the lower-cased name without the trailing dot.
  ``None`` means "not ours": the query is forwarded. Otherwise the name is ours: for
  A/AAAA the addresses of that family are the answers (shuffled, as docker does); an
  empty result, or any other qtype, gives NOERROR with no answers (the name exists,
  the record type does not), so a container-only name never leaks upstream.
- PTR for a complete ``in-addr.arpa``/``ip6.arpa`` name asks ``reverse(key, ip)``;
  ``None`` forwards, names become PTR answers.

Forwarding: the query is re-sent as-is except for a fresh random id, over the
transport the client used (UDP replies with TC set reach the client so it retries
over TCP), from a new socket with a kernel-chosen random port for each attempt. A
reply must come from the upstream's address and port (connected socket), carry our
id and echo the question. Each upstream gets ``timeout`` seconds; on timeout, error,
SERVFAIL or REFUSED the next is tried; when none answers the client gets SERVFAIL.
A sandbox attached with ``upstreams=()`` never forwards (docker's internal
networks) and gets SERVFAIL too. A sandbox with more than ``max_forwards``
forwarded queries in flight gets REFUSED (docker's per-container limit of 1024),
so one noisy container cannot starve the others.

UDP answers are cut at 512 bytes, or the client's EDNS payload size, at record
boundaries with TC set; TCP uses RFC 1035 two-byte length framing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
import random
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from ketch.errors import Conflict, FailedPrecondition, NotFound
from ketch.network.dnsmsg import (
    HEADER_SIZE,
    MAX_MESSAGE,
    MAX_UDP_PLAIN,
    DnsFormatError,
    Flag,
    Message,
    Opcode,
    Question,
    Rcode,
    Record,
    RRClass,
    RRType,
    address_from_reverse,
    encode,
    error_reply,
    parse,
    parse_header,
    peek,
    reply,
)
from ketch.network.resolvconf import (
    DEFAULT_UPSTREAMS,
    DEFAULT_UPSTREAMS_V6,
    DNS_PORT,
    MAX_UPSTREAMS,
    Upstream,
    host_upstreams,
)
from ketch.sys.ns import CLONE, setns

__all__ = [
    "DEFAULT_UPSTREAMS",
    "DEFAULT_UPSTREAMS_V6",
    "DNS_PORT",
    "FORWARD_TIMEOUT",
    "LISTEN_ADDRESS",
    "LOCAL_TTL",
    "MAX_UPSTREAMS",
    "Lookup",
    "Resolver",
    "Reverse",
    "Upstream",
    "host_upstreams",
]

log = logging.getLogger(__name__)

LISTEN_ADDRESS = "127.0.0.11"
LOCAL_TTL = 600  # docker's respTTL
FORWARD_TIMEOUT = 2.0  # seconds per upstream
_MAX_FORWARDS = 1024  # per sandbox, docker's maxConcurrent
_MAX_TCP_CONNS = 64  # per sandbox
_MAX_UDP_PENDING = 1024  # per sandbox; more datagrams are dropped, as a full socket would
_TCP_IDLE = 10.0  # seconds a client connection may sit between queries

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Lookup = Callable[[str, str, int], Sequence[IPAddress | str] | None]
"""``lookup(sandbox_key, name, qtype)``: addresses, ``[]`` for NODATA, None to forward."""
Reverse = Callable[[str, IPAddress], Sequence[str] | None]
"""``reverse(sandbox_key, ip)``: names for a PTR answer, or None to forward."""


@dataclass(eq=False)
class _Sandbox:
    key: str
    upstreams: tuple[Upstream, ...]
    udp: asyncio.DatagramTransport | None = None
    udp_gone: asyncio.Future[None] | None = None  # done once the UDP socket is closed
    server: asyncio.Server | None = None
    forwarding: int = 0  # forwarded queries in flight
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def shut(self) -> None:
        """Stop accepting and cancel what is in flight (synchronous part of detach)."""
        if self.udp is not None:
            self.udp.close()
        if self.server is not None:
            self.server.close()
        for w in self.writers:
            w.close()
        for t in self.tasks:
            t.cancel()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, sb: _Sandbox) -> None:
        self._resolver = resolver
        self._sb = sb
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the selector loop's datagram transport does not subclass DatagramTransport
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(self._sb.tasks) >= _MAX_UDP_PENDING:
            return
        task = asyncio.get_running_loop().create_task(self._serve(data, addr))
        self._sb.tasks.add(task)
        task.add_done_callback(self._sb.tasks.discard)

    async def _serve(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        resp = await self._resolver._respond(self._sb, data, tcp=False)
        t = self._transport
        if resp is not None and t is not None and not t.is_closing():
            t.sendto(resp, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns[%s]: udp error: %s", self._sb.key, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        gone = self._sb.udp_gone
        if gone is not None and not gone.done():
            gone.set_result(None)


def _bind_pair(address: str, port: int, where: str) -> tuple[socket.socket, socket.socket]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        for sock, proto in ((udp, "udp"), (tcp, "tcp")):
            if proto == "tcp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError as e:
                raise OSError(
                    e.errno, e.strerror, f"bind({proto} {address}:{port}) in {where}"
                ) from None
            sock.setblocking(False)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


def _bind_in_netns(netns: str, address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Runs in a dedicated thread: enter ``netns``, bind, go back. Only this thread's
    namespace changes; if going back fails the thread is about to exit anyway."""
    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network namespace {netns} does not exist") from None
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target, CLONE.NEWNET)
            try:
                return _bind_pair(address, port, netns)
            finally:
                try:
                    setns(own, CLONE.NEWNET)
                except OSError as e:
                    log.warning("dns: could not return from %s (thread exits): %s", netns, e)
        finally:
            os.close(own)
    finally:
        os.close(target)


def _udp_limit(query: Message) -> int:
    if query.edns is None:
        return MAX_UDP_PLAIN
    return max(MAX_UDP_PLAIN, query.edns.udp_size)


def _truncated(data: bytes, limit: int) -> bytes:
    """A relayed reply too big for the client: keep header and question, set TC."""
    header, questions, end = peek(data)
    if end > limit:
        return error_reply(header, Rcode.SERVFAIL)
    flags = header.flags | Flag.TC
    return struct.pack("!HHHHHH", header.id, flags, len(questions), 0, 0, 0) + data[HEADER_SIZE:end]


class Resolver:
    """Serves the embedded DNS of any number of sandboxes from one event loop.

    ``lookup`` and ``reverse`` are called on the event loop for every query and must
    not block (they read the engine's in-memory tables). ``upstreams`` is the default
    forwarding list (see :func:`host_upstreams`); a sandbox may have its own. All
    methods must be called from the loop's thread.
    """

    def __init__(
        self,
        lookup: Lookup,
        upstreams: Sequence[Upstream],
        *,
        reverse: Reverse | None = None,
        timeout: float = FORWARD_TIMEOUT,
        max_forwards: int = _MAX_FORWARDS,
    ) -> None:
        self._lookup = lookup
        self._reverse = reverse
        self._upstreams = tuple(upstreams)
        self._timeout = timeout
        self._max_forwards = max_forwards
        self._sandboxes: dict[str, _Sandbox] = {}
        self._pending: set[str] = set()
        self._closed = False

    def attached(self) -> frozenset[str]:
        """Keys of the sandboxes being served."""
        return frozenset(self._sandboxes)

    def _check_free(self, key: str) -> None:
        if self._closed:
            raise FailedPrecondition("the DNS resolver is closed")
        if key in self._sandboxes or key in self._pending:
            raise Conflict(f"DNS resolver already attached to sandbox {key}")

    async def attach(
        self, sandbox_key: str, netns_path: str, *, upstreams: Sequence[Upstream] | None = None
    ) -> None:
        """Bind 127.0.0.11:53 (UDP and TCP) inside the network namespace at
        ``netns_path`` and serve it until :meth:`detach` (queries arrive once the
        namespace's ``lo`` is up). Raises Conflict if the key is attached, NotFound
        if the namespace does not exist, OSError (EADDRINUSE, ...) if binding fails."""
        self._check_free(sandbox_key)
        self._pending.add(sandbox_key)
        try:
            udp, tcp = await self._bind_in_thread(sandbox_key, netns_path)
        finally:
            self._pending.discard(sandbox_key)
        await self.serve_sockets(sandbox_key, udp, tcp, upstreams=upstreams)

    async def _bind_in_thread(self, key: str, netns: str) -> tuple[socket.socket, socket.socket]:
        # A fresh thread rather than an executor: a pooled thread would be reused
        # by unrelated work and must never be left in a container's namespace.
        fut: concurrent.futures.Future[tuple[socket.socket, socket.socket]]
        fut = concurrent.futures.Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(_bind_in_netns(netns, LISTEN_ADDRESS, DNS_PORT))
            except BaseException as e:
                fut.set_exception(e)

        def orphaned(f: concurrent.futures.Future[tuple[socket.socket, socket.socket]]) -> None:
            if not f.cancelled() and f.exception() is None:
                for s in f.result():
                    s.close()

        threading.Thread(target=run, name=f"ketch-dns-bind-{key[:12]}", daemon=True).start()
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(orphaned)  # the caller gave up: close what gets bound
            raise

    async def serve_sockets(
        self,
        sandbox_key: str,
        udp: socket.socket,
        tcp: socket.socket,
        *,
        upstreams: Sequence[Upstream] | None = None,
    ) -> None:
        """Serve already bound sockets for ``sandbox_key`` (what :meth:`attach` does
        after binding; tests pass loopback sockets). Takes ownership: the sockets are
        closed by :meth:`detach`/:meth:`close`, or at once if this raises.
        ``upstreams`` overrides the resolver's list; ``()`` disables forwarding."""
        try:
            self._check_free(sandbox_key)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        ups = self._upstreams if upstreams is None else tuple(upstreams)
        sb = _Sandbox(sandbox_key, ups)
        self._sandboxes[sandbox_key] = sb
        loop = asyncio.get_running_loop()
        sb.udp_gone = loop.create_future()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self, sb), sock=udp
            )
            sb.udp = transport
            sb.server = await asyncio.start_server(
                lambda r, w: self._serve_tcp(sb, r, w), sock=tcp, backlog=64
            )
        except BaseException:
            self._sandboxes.pop(sandbox_key, None)
            sb.shut()
            udp.close()
            tcp.close()
            raise
        log.debug("dns[%s]: serving on %s", sandbox_key, udp.getsockname())

    async def detach(self, sandbox_key: str) -> None:
        """Stop serving the sandbox and close its sockets, so the address can be
        bound again. Queries in flight are dropped. Unknown keys are a no-op, so
        cleanup paths may call it unconditionally."""
        sb = self._sandboxes.pop(sandbox_key, None)
        if sb is None:
            return
        sb.shut()
        if sb.server is not None:
            await sb.server.wait_closed()
        if sb.udp is not None and sb.udp_gone is not None:
            await sb.udp_gone  # the transport closes its socket on a later loop turn
        if sb.tasks:
            await asyncio.gather(*sb.tasks, return_exceptions=True)

    def close(self) -> None:
        """Stop serving every sandbox and refuse new ones. In-flight queries are
        cancelled; sockets close as their transports finish closing on the loop."""
        self._closed = True
        sandboxes, self._sandboxes = self._sandboxes, {}
        for sb in sandboxes.values():
            sb.shut()

    # -- serving -----------------------------------------------------------------------

    async def _serve_tcp(
        self, sb: _Sandbox, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        current = self._sandboxes.get(sb.key) is sb  # not detached (and re-attached) meanwhile
        if len(sb.writers) >= _MAX_TCP_CONNS or task is None or not current:
            writer.close()
            return
        sb.writers.add(writer)
        sb.tasks.add(task)
        try:
            while True:
                try:
                    async with asyncio.timeout(_TCP_IDLE):
                        (size,) = struct.unpack("!H", await reader.readexactly(2))
                        data = await reader.readexactly(size)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                resp = await self._respond(sb, data, tcp=True)
                if resp is None:
                    return
                writer.write(struct.pack("!H", len(resp)) + resp)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            # Cancelled only by detach()/close(). End normally: on 3.11 asyncio's
            # done-callback for this task calls task.exception() and would log a
            # spurious error for a cancelled task.
            return
        finally:
            sb.writers.discard(writer)
            sb.tasks.discard(task)
            writer.close()

    async def _respond(self, sb: _Sandbox, data: bytes, *, tcp: bool) -> bytes | None:
        """The bytes to send back for one query, or None to stay silent (responses
        sent to us, garbage shorter than a header)."""
        try:
            query = parse(data)
        except DnsFormatError as e:
            try:
                header = parse_header(data)
            except DnsFormatError:
                return None
            if header.qr:
                return None
            log.debug("dns[%s]: malformed query: %s", sb.key, e)
            return error_reply(header, Rcode.FORMERR)
        if query.qr:
            return None
        try:
            return await self._answer(sb, query, data, tcp=tcp)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dns[%s]: failed to answer %s", sb.key, query.questions)
            return error_reply(parse_header(data), Rcode.SERVFAIL)

    async def _answer(self, sb: _Sandbox, query: Message, data: bytes, *, tcp: bool) -> bytes:
        if query.opcode != Opcode.QUERY:
            return encode(reply(query, rcode=Rcode.NOTIMP))
        if len(query.questions) != 1:
            return encode(reply(query, rcode=Rcode.FORMERR))
        if query.edns is not None and query.edns.version > 0:
            return encode(reply(query, rcode=Rcode.BADVERS))
        limit = MAX_MESSAGE if tcp else _udp_limit(query)
        records = self._local(sb.key, query.questions[0])
        if records is not None:
            return encode(reply(query, answers=records), limit)
        return await self._forward(sb, query, data, limit, tcp=tcp)

    def _local(self, key: str, q: Question) -> list[Record] | None:
        if q.qclass != RRClass.IN:
            return None
        if q.qtype == RRType.PTR and self._reverse is not None:
            ip = address_from_reverse(q.name)
            if ip is not None:
                names = self._reverse(key, ip)
                if names is None:
                    return None
                return [Record.ptr(q.name, n.removesuffix("."), LOCAL_TTL) for n in names]
        found = self._lookup(key, q.name.lower(), q.qtype)
        if found is None:
            return None
        if q.qtype not in (RRType.A, RRType.AAAA):
            return []
        version = 4 if q.qtype == RRType.A else 6
        ips = [ipaddress.ip_address(a) if isinstance(a, str) else a for a in found]
        ips = [ip for ip in ips if ip.version == version]
        random.shuffle(ips)
        return [Record.address(q.name, ip, LOCAL_TTL) for ip in ips]

    async def _forward(
        self, sb: _Sandbox, query: Message, data: bytes, limit: int, *, tcp: bool
    ) -> bytes:
        if not sb.upstreams:
            return encode(reply(query, rcode=Rcode.SERVFAIL))
        if sb.forwarding >= self._max_forwards:
            log.warning("dns[%s]: over %d forwarded queries in flight", sb.key, self._max_forwards)
            return encode(reply(query, rcode=Rcode.REFUSED))
        sb.forwarding += 1
        try:
            for up in sb.upstreams:
                qid = secrets.randbits(16)
                wire = struct.pack("!H", qid) + data[2:]
                exchange = self._exchange_tcp if tcp else self._exchange_udp
                got = await exchange(up, wire, qid, query.questions[0])
                if got is None:
                    continue
                rcode = parse_header(got).rcode
                if rcode in (Rcode.SERVFAIL, Rcode.REFUSED):
                    log.debug("dns[%s]: %s answered %s", sb.key, up, Rcode(rcode).name)
                    continue
                resp = data[:2] + got[2:]
                return resp if len(resp) <= limit else _truncated(resp, limit)
        finally:
            sb.forwarding -= 1
        return encode(reply(query, rcode=Rcode.SERVFAIL))

    @staticmethod
    def _matches(data: bytes, qid: int, question: Question) -> bool:
        try:
            header, questions, _ = peek(data)
        except DnsFormatError:
            return False
        if not header.qr or header.id != qid:
            return False
        if not questions:  # some servers drop the question from error replies
            return header.rcode != Rcode.NOERROR
        return len(questions) == 1 and questions[0].same(question)

    async def _exchange_udp(
        self, up: Upstream, wire: bytes, qid: int, question: Question
    ) -> bytes | None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if up.address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self._timeout):
                # connected: the kernel drops datagrams from any other address/port
                sock.connect((str(up.address), up.port))
                await loop.sock_sendall(sock, wire)
                while True:
                    got = await loop.sock_recv(sock, MAX_MESSAGE)
                    if self._matches(got, qid, question):
                        return got
                    log.debug("dns: ignoring non-matching reply from %s", up)
        except (TimeoutError, OSError) as e:
            log.debug("dns: upstream %s (udp): %s", up, e or "timeout")
            return None
        finally:
            sock.close()

    async def _exchange_tcp(
        self, up: Upstream, wire: bytes, qid: int, question: Question
    ) -> bytes | None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if up.address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._timeout):
                await loop.sock_connect(sock, (str(up.address), up.port))
                reader, writer = await asyncio.open_connection(sock=sock)
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                got = await reader.readexactly(size)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            log.debug("dns: upstream %s (tcp): %s", up, e or "timeout")
            return None
        finally:
            if writer is not None:
                writer.close()
            else:
                sock.close()
        if len(got) < HEADER_SIZE or not self._matches(got, qid, question):
            log.debug("dns: non-matching tcp reply from %s", up)
            return None
        return got
