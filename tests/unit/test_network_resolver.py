"""The embedded resolver on loopback (no root): real sockets on 127.0.0.1, a real fake
upstream server, real clients (our codec over UDP/TCP, and busybox nslookup as an
independent one when it is installed)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, ParamSpec

import pytest

from ketch.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from ketch.network.dnsmsg import (
    Edns,
    Flag,
    Message,
    Question,
    Rcode,
    Record,
    RRClass,
    RRType,
    encode,
    make_query,
    parse,
    reply,
)
from ketch.network.resolver import LOCAL_TTL, Resolver, Upstream, host_upstreams

P = ParamSpec("P")
IP = ipaddress.ip_address

MANY = [f"10.1.0.{i}" for i in range(1, 41)]
TABLES: dict[str, dict[str, list[str]]] = {
    "sb1": {
        "web": ["10.0.0.2"],
        "web-alias": ["10.0.0.2"],
        "0123456789ab": ["10.0.0.2"],  # short id
        "web.net1": ["10.0.0.2"],
        "db": ["10.0.0.3", "fd00::3"],
        "v4only": ["10.0.0.4"],
        "many": MANY,
    },
    "sb2": {"other": ["10.9.0.2"]},
}
PTRS = {"10.0.0.2": ["web.net1"]}


class Backend:
    """The engine's side: per-sandbox name tables, with a record of the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.fail = False

    def lookup(self, key: str, name: str, qtype: int) -> Sequence[str] | None:
        self.calls.append((key, name, qtype))
        if self.fail:
            raise RuntimeError("backend broke")
        return TABLES.get(key, {}).get(name)

    def reverse(
        self, key: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> list[str] | None:
        return PTRS.get(str(ip)) if key == "sb1" else None


def aio(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30))

    return wrapper


def bind_pair() -> tuple[socket.socket, socket.socket, int]:
    """UDP and TCP sockets on the same random loopback port."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        return udp, tcp, port
    raise RuntimeError("no free port pair")


class FakeUpstream:
    """A real DNS server on 127.0.0.1 (UDP and TCP, one port).

    modes: answer (external.example A 192.0.2.1, NXDOMAIN otherwise), silent,
    servfail, spoof (UDP: a wrong-id reply first), oversize (UDP reply of 40 A
    records regardless of the client's limit, full answer over TCP too)."""

    def __init__(self, mode: str = "answer") -> None:
        self.mode = mode
        self.seen: list[tuple[str, Message, tuple[str, int]]] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def answer(self, q: Message) -> bytes:
        name = q.questions[0].name.lower()
        if self.mode == "servfail":
            return encode(reply(q, rcode=Rcode.SERVFAIL))
        if self.mode == "oversize":
            recs = [Record.address(q.questions[0].name, IP(a), 30) for a in MANY]
            return encode(reply(q, answers=recs))
        if name == "external.example":
            if q.questions[0].qtype != RRType.A:
                return encode(reply(q))  # NODATA
            rec = Record.address("external.example", IP("192.0.2.1"), 30)
            return encode(reply(q, answers=[rec]))
        return encode(reply(q, rcode=Rcode.NXDOMAIN))

    async def start(self) -> Upstream:
        loop = asyncio.get_running_loop()
        udp, tcp, port = bind_pair()
        fake = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t: Any = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                q = parse(data)
                fake.seen.append(("udp", q, addr))
                if fake.mode == "silent":
                    return
                if fake.mode == "spoof":
                    bad = (q.id + 1) & 0xFFFF
                    self.t.sendto(encode(reply(Message(bad, q.flags, q.questions))), addr)
                    wrong_q = Question("evil.example", RRType.A)
                    self.t.sendto(encode(reply(Message(q.id, q.flags, (wrong_q,)))), addr)
                self.t.sendto(fake.answer(q), addr)

        async def on_tcp(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self._writers.add(w)
            try:
                while True:
                    (n,) = struct.unpack("!H", await r.readexactly(2))
                    q = parse(await r.readexactly(n))
                    self.seen.append(("tcp", q, w.get_extra_info("peername")))
                    if self.mode == "silent":
                        await asyncio.sleep(60)
                    resp = self.answer(q)
                    w.write(struct.pack("!H", len(resp)) + resp)
                    await w.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass  # (a cancelled handler task makes 3.11's streams log an error)
            finally:
                self._writers.discard(w)
                w.close()

        self._udp, _ = await loop.create_datagram_endpoint(Proto, sock=udp)
        self._tcp = await asyncio.start_server(on_tcp, sock=tcp)
        return Upstream(IP("127.0.0.1"), port)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        for w in list(self._writers):
            w.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()


@contextlib.asynccontextmanager
async def upstream(mode: str = "answer") -> AsyncIterator[tuple[FakeUpstream, Upstream]]:
    fake = FakeUpstream(mode)
    up = await fake.start()
    try:
        yield fake, up
    finally:
        await fake.stop()


@contextlib.asynccontextmanager
async def serving(r: Resolver, key: str = "sb1", **kw: Any) -> AsyncIterator[int]:
    udp, tcp, port = bind_pair()
    await r.serve_sockets(key, udp, tcp, **kw)
    try:
        yield port
    finally:
        await r.detach(key)


async def ask(port: int, data: bytes, *, tcp: bool = False, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    if tcp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(struct.pack("!H", len(data)) + data)
            async with asyncio.timeout(timeout):
                (n,) = struct.unpack("!H", await reader.readexactly(2))
                return await reader.readexactly(n)
        finally:
            writer.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect(("127.0.0.1", port))
        await loop.sock_sendall(s, data)
        async with asyncio.timeout(timeout):
            return await loop.sock_recv(s, 65535)


async def query(
    port: int,
    name: str,
    qtype: int = RRType.A,
    *,
    tcp: bool = False,
    edns: Edns | None = None,
    id: int = 0x1111,
) -> Message:
    wire = encode(make_query(name, qtype, id=id, edns=edns))
    m = parse(await ask(port, wire, tcp=tcp))
    assert m.id == id and m.qr
    return m


def addrs(m: Message) -> list[str]:
    return sorted(str(r.data) for r in m.answers)


# -- local answers ----------------------------------------------------------------------


@aio
async def test_container_names_aliases_and_short_ids_answer_locally() -> None:
    be = Backend()
    async with upstream() as (fake, up):
        r = Resolver(be.lookup, [up], reverse=be.reverse)
        async with serving(r) as port:
            for name in ("web", "web-alias", "0123456789ab", "web.net1"):
                m = await query(port, name)
                assert m.rcode == Rcode.NOERROR
                assert m.answers == (Record(name, RRType.A, RRClass.IN, LOCAL_TTL, IP("10.0.0.2")),)
                assert m.flags & Flag.RA and m.flags & Flag.RD and not m.flags & Flag.AA
            m = await query(port, "db", RRType.AAAA)
            assert addrs(m) == ["fd00::3"]
            m = await query(port, "db")
            assert addrs(m) == ["10.0.0.3"]
        r.close()
        assert fake.seen == []  # nothing of that went upstream


@aio
async def test_names_are_case_insensitive_and_case_is_echoed() -> None:
    be = Backend()
    r = Resolver(be.lookup, [])
    async with serving(r) as port:
        m = await query(port, "WeB.")
        assert m.questions[0].name == "WeB" and m.answers[0].name == "WeB"
        assert addrs(m) == ["10.0.0.2"]
    assert ("sb1", "web", RRType.A) in be.calls
    r.close()


@aio
async def test_known_name_without_that_record_type_is_nodata_not_forwarded() -> None:
    be = Backend()
    async with upstream() as (fake, up):
        r = Resolver(be.lookup, [up])
        async with serving(r) as port:
            for qtype in (RRType.AAAA, RRType.MX, RRType.TXT):
                m = await query(port, "v4only", qtype)
                assert (m.rcode, m.answers) == (Rcode.NOERROR, ())
        r.close()
        assert fake.seen == []


@aio
async def test_ptr_for_local_addresses() -> None:
    be = Backend()
    async with upstream() as (fake, up):
        r = Resolver(be.lookup, [up], reverse=be.reverse)
        async with serving(r) as port:
            m = await query(port, "2.0.0.10.in-addr.arpa", RRType.PTR)
            assert m.answers == (
                Record("2.0.0.10.in-addr.arpa", RRType.PTR, RRClass.IN, LOCAL_TTL, "web.net1"),
            )
            assert fake.seen == []
            m = await query(port, "9.9.0.10.in-addr.arpa", RRType.PTR)  # not ours
            assert m.rcode == Rcode.NXDOMAIN
            assert [q.questions[0].name for _, q, _ in fake.seen] == ["9.9.0.10.in-addr.arpa"]
        r.close()


@aio
async def test_names_are_scoped_to_the_asking_sandbox() -> None:
    be = Backend()
    async with upstream() as (fake, up):
        r = Resolver(be.lookup, [up])
        async with serving(r, "sb1") as p1, serving(r, "sb2") as p2:
            assert addrs(await query(p2, "other")) == ["10.9.0.2"]
            assert (await query(p2, "web")).rcode == Rcode.NXDOMAIN  # forwarded, unknown
            assert (await query(p1, "other")).rcode == Rcode.NXDOMAIN
            assert r.attached() == {"sb1", "sb2"}
        r.close()
        assert sorted(q.questions[0].name for _, q, _ in fake.seen) == ["other", "web"]


# -- forwarding -------------------------------------------------------------------------


@aio
async def test_other_names_are_forwarded_and_nxdomain_relayed() -> None:
    be = Backend()
    async with upstream() as (fake, up):
        r = Resolver(be.lookup, [up])
        async with serving(r) as port:
            m = await query(port, "external.example", id=0x2222)
            assert addrs(m) == ["192.0.2.1"] and m.answers[0].ttl == 30
            m = await query(port, "nosuch.example", id=0x3333)
            assert m.rcode == Rcode.NXDOMAIN and m.id == 0x3333
            m = await query(port, "version.bind")  # class IN but unknown: upstream decides
            assert m.rcode == Rcode.NXDOMAIN
        r.close()
        assert [q.questions[0].name for _, q, _ in fake.seen] == [
            "external.example",
            "nosuch.example",
            "version.bind",
        ]


@aio
async def test_forwarded_queries_get_fresh_ids_and_ports() -> None:
    async with upstream() as (fake, up):
        r = Resolver(Backend().lookup, [up])
        async with serving(r) as port:
            for _ in range(6):
                m = await query(port, "external.example", id=0x1111)
                assert m.id == 0x1111  # the client gets its own id back
        r.close()
    ids = {q.id for _, q, _ in fake.seen}
    ports = {peer[1] for _, _, peer in fake.seen}
    assert len(fake.seen) == 6
    assert len(ids) > 1 and ids != {0x1111}
    assert len(ports) > 1 and port not in ports


@aio
async def test_spoofed_replies_are_ignored() -> None:
    async with upstream("spoof") as (fake, up):
        r = Resolver(Backend().lookup, [up])
        async with serving(r) as port:
            m = await query(port, "external.example")
            assert addrs(m) == ["192.0.2.1"]
        r.close()
        assert len(fake.seen) == 1  # the decoys arrived first and were skipped


@aio
async def test_silent_upstream_times_out_to_servfail() -> None:
    async with upstream("silent") as (fake, up):
        r = Resolver(Backend().lookup, [up], timeout=0.3)
        async with serving(r) as port:
            for tcp in (False, True):
                t0 = time.monotonic()
                m = await query(port, "external.example", tcp=tcp)
                assert m.rcode == Rcode.SERVFAIL and m.answers == ()
                assert 0.25 < time.monotonic() - t0 < 3
        r.close()
        assert [proto for proto, _, _ in fake.seen] == ["udp", "tcp"]


@aio
async def test_failing_upstreams_are_skipped() -> None:
    async with (
        upstream("silent") as (silent, s_up),
        upstream("servfail") as (sf, sf_up),
        upstream() as (good, g_up),
    ):
        r = Resolver(Backend().lookup, [s_up, sf_up, g_up], timeout=0.3)
        async with serving(r) as port:
            assert addrs(await query(port, "external.example")) == ["192.0.2.1"]
            dead = Upstream(IP("127.0.0.1"), bind_pair_closed_port())
            async with serving(r, "sb3", upstreams=[dead, g_up]) as p3:
                t0 = time.monotonic()
                assert addrs(await query(p3, "external.example")) == ["192.0.2.1"]
                assert time.monotonic() - t0 < 0.25  # ICMP refusal, no timeout wait
        r.close()
        assert len(silent.seen) == len(sf.seen) == 1 and len(good.seen) == 2


def bind_pair_closed_port() -> int:
    udp, tcp, port = bind_pair()
    udp.close()
    tcp.close()
    return port


@aio
async def test_no_upstreams_means_servfail_without_sending() -> None:
    async with upstream() as (fake, up):
        r = Resolver(Backend().lookup, [up])
        async with serving(r, upstreams=()) as port:
            assert (await query(port, "external.example")).rcode == Rcode.SERVFAIL
            assert addrs(await query(port, "web")) == ["10.0.0.2"]
        r.close()
        assert fake.seen == []


@aio
async def test_too_many_forwards_in_flight_are_refused_per_sandbox() -> None:
    async with upstream("silent") as (fake, up):
        r = Resolver(Backend().lookup, [up], timeout=0.5, max_forwards=2)
        async with serving(r) as port, serving(r, "sb2") as port2:
            slow = [asyncio.create_task(query(port, "external.example")) for _ in range(2)]
            await asyncio.sleep(0.2)
            assert (await query(port, "external.example")).rcode == Rcode.REFUSED
            # another sandbox is not starved by the first one
            other = asyncio.create_task(query(port2, "external.example"))
            got = await asyncio.gather(*slow, other)
            assert [m.rcode for m in got] == [Rcode.SERVFAIL] * 3
        r.close()
        assert len(fake.seen) == 3  # the refused one never went out


# -- transports and sizes ---------------------------------------------------------------


@aio
async def test_tcp_local_and_forwarded() -> None:
    async with upstream() as (fake, up):
        r = Resolver(Backend().lookup, [up])
        async with serving(r) as port:
            assert addrs(await query(port, "web", tcp=True)) == ["10.0.0.2"]
            assert addrs(await query(port, "external.example", tcp=True)) == ["192.0.2.1"]
            # two queries on one connection, framed back to back
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for i, name in enumerate(("web", "db")):
                q = encode(make_query(name, RRType.A, id=i))
                writer.write(struct.pack("!H", len(q)) + q)
            got = []
            for _ in range(2):
                (n,) = struct.unpack("!H", await reader.readexactly(2))
                got.append(parse(await reader.readexactly(n)))
            writer.close()
            assert [(m.id, addrs(m)) for m in got] == [(0, ["10.0.0.2"]), (1, ["10.0.0.3"])]
        r.close()
        assert [proto for proto, _, _ in fake.seen] == ["tcp"]


@aio
async def test_big_local_answers_truncate_over_udp_only() -> None:
    r = Resolver(Backend().lookup, [])
    async with serving(r) as port:
        raw = await ask(port, encode(make_query("many", RRType.A, id=5)))
        m = parse(raw)
        assert len(raw) <= 512 and m.tc and 0 < len(m.answers) < len(MANY)
        m = await query(port, "many", edns=Edns(4096))
        assert not m.tc and addrs(m) == sorted(MANY)
        m = await query(port, "many", tcp=True)
        assert not m.tc and addrs(m) == sorted(MANY)
    r.close()


@aio
async def test_oversized_upstream_udp_reply_becomes_tc_then_tcp_works() -> None:
    async with upstream("oversize") as (fake, up):
        r = Resolver(Backend().lookup, [up])
        async with serving(r) as port:
            raw = await ask(port, encode(make_query("big.example", RRType.A, id=6)))
            m = parse(raw)
            assert len(raw) <= 512 and m.tc and m.answers == ()
            assert m.questions == (Question("big.example", RRType.A),) and m.id == 6
            m = await query(port, "big.example", tcp=True)
            assert len(m.answers) == len(MANY) and not m.tc
        r.close()
        assert [proto for proto, _, _ in fake.seen] == ["udp", "tcp"]


# -- bad input --------------------------------------------------------------------------


@aio
async def test_malformed_queries() -> None:
    be = Backend()
    r = Resolver(be.lookup, [])
    async with serving(r) as port:
        # a header that promises a question that is not there: FORMERR, same id
        m = parse(await ask(port, struct.pack("!HHHHHH", 0xABCD, 0x0100, 1, 0, 0, 0)))
        assert (m.id, m.rcode, m.qr) == (0xABCD, Rcode.FORMERR, True)
        # pointer loop in the question
        loop = struct.pack("!HHHHHH", 0xABCE, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
        assert parse(await ask(port, loop)).rcode == Rcode.FORMERR
        # less than a header, and a response sent to us: silence
        for junk in (b"\x01\x02\x03", encode(reply(make_query("web", RRType.A, id=1)))):
            with pytest.raises(TimeoutError):
                await ask(port, junk, timeout=0.3)
        # two questions
        two = Message(7, Flag.RD, (Question("web", RRType.A), Question("db", RRType.A)))
        assert parse(await ask(port, encode(two))).rcode == Rcode.FORMERR
        # not a QUERY
        status = Message(8, 2 << 11, (Question("web", RRType.A),))
        assert parse(await ask(port, encode(status))).rcode == Rcode.NOTIMP
        # unknown EDNS version
        m = await query(port, "web", edns=Edns(1232, version=1))
        assert m.rcode == Rcode.BADVERS and m.answers == ()
        # ... and the server still answers
        assert addrs(await query(port, "web")) == ["10.0.0.2"]
        # garbage over TCP closes that connection only
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\x03abc")
        assert await reader.read() == b""
        writer.close()
        assert addrs(await query(port, "web", tcp=True)) == ["10.0.0.2"]
    r.close()


@aio
async def test_backend_failure_is_servfail_and_serving_goes_on() -> None:
    be = Backend()
    r = Resolver(be.lookup, [])
    async with serving(r) as port:
        be.fail = True
        assert (await query(port, "web")).rcode == Rcode.SERVFAIL
        be.fail = False
        assert addrs(await query(port, "web")) == ["10.0.0.2"]
    r.close()


# -- an independent client --------------------------------------------------------------


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
@aio
async def test_busybox_nslookup() -> None:
    be = Backend()
    async with upstream() as (_fake, up):
        r = Resolver(be.lookup, [up], reverse=be.reverse)
        async with serving(r) as port:

            async def nslookup(*args: str) -> tuple[int, str]:
                p = await asyncio.create_subprocess_exec(
                    "busybox",
                    "nslookup",
                    *args,
                    f"127.0.0.1:{port}",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                out, _ = await p.communicate()
                return p.returncode or 0, out.decode()

            rc, out = await nslookup("db")
            assert rc == 0 and "10.0.0.3" in out and "fd00::3" in out
            rc, out = await nslookup("external.example")
            assert rc == 0 and "192.0.2.1" in out
            rc, out = await nslookup("10.0.0.2")
            assert rc == 0 and "web.net1" in out
            rc, out = await nslookup("nosuch.example")
            assert rc != 0 and "NXDOMAIN" in out
        r.close()


# -- lifecycle --------------------------------------------------------------------------


@aio
async def test_lifecycle_conflict_detach_and_close() -> None:
    r = Resolver(Backend().lookup, [])
    udp, tcp, port = bind_pair()
    await r.serve_sockets("sb1", udp, tcp)
    u2, t2, _ = bind_pair()
    with pytest.raises(Conflict):
        await r.serve_sockets("sb1", u2, t2)
    assert u2.fileno() == -1 and t2.fileno() == -1  # ownership taken even on failure
    with pytest.raises(Conflict):
        await r.attach("sb1", "/run/netns/whatever")
    assert addrs(await query(port, "web", tcp=True)) == ["10.0.0.2"]

    await r.detach("sb1")
    await r.detach("sb1")  # no-op
    assert r.attached() == frozenset()
    with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
        await ask(port, encode(make_query("web", RRType.A, id=1)), timeout=1)
    # the port is free again, for UDP and TCP
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", port))

    udp, tcp, port = bind_pair()
    await r.serve_sockets("sb1", udp, tcp)  # same key again after detach
    r.close()
    with pytest.raises(FailedPrecondition):
        await r.serve_sockets("sb9", *bind_pair()[:2])
    await asyncio.sleep(0)  # let the transports finish closing


@aio
async def test_close_cancels_inflight_queries() -> None:
    async with upstream("silent") as (fake, up):
        r = Resolver(Backend().lookup, [up], timeout=5)
        udp, tcp, port = bind_pair()
        await r.serve_sockets("sb1", udp, tcp)
        pending = asyncio.create_task(query(port, "external.example"))
        while not fake.seen:
            await asyncio.sleep(0.01)
        r.close()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pending), 0.5)
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending


@aio
async def test_attach_to_missing_namespace_is_not_found(tmp_path: Path) -> None:
    r = Resolver(Backend().lookup, [])
    with pytest.raises(NotFound):
        await r.attach("sb1", str(tmp_path / "no-such-netns"))
    assert r.attached() == frozenset()
    r.close()


# -- upstream configuration -------------------------------------------------------------


def test_host_upstreams(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# generated\n; comment\nsearch example.com\n"
        "nameserver 127.0.0.53\nnameserver bogus\nnameserver  2001:db8::1 \n"
        "nameserver 10.0.0.1\nnameserver 10.0.0.2\noptions edns0\n"
    )
    assert [str(u) for u in host_upstreams(str(conf))] == ["127.0.0.53", "2001:db8::1", "10.0.0.1"]
    conf.write_text("search example.com\n")
    assert [str(u) for u in host_upstreams(str(conf))] == ["8.8.8.8", "8.8.4.4"]
    assert [str(u) for u in host_upstreams(str(tmp_path / "missing"), ipv6=True)] == [
        "8.8.8.8",
        "8.8.4.4",
        "2001:4860:4860::8888",
    ]


def test_upstream_parse() -> None:
    assert Upstream.parse("1.2.3.4") == Upstream(IP("1.2.3.4"), 53)
    assert Upstream.parse("1.2.3.4:5353") == Upstream(IP("1.2.3.4"), 5353)
    assert Upstream.parse("::1") == Upstream(IP("::1"), 53)
    assert Upstream.parse("[::1]:5353") == Upstream(IP("::1"), 5353)
    assert str(Upstream.parse("[::1]:5353")) == "[::1]:5353"
    for bad in ("dns.example", "1.2.3.4:0", "1.2.3.4:x", "[::1]:99999", ""):
        with pytest.raises(InvalidArgument):
            Upstream.parse(bad)
