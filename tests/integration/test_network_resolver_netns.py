"""The embedded resolver attached to real network namespaces (root).

Every test works in throwaway namespaces (the ``netns`` fixture and ``second_netns``
below) and checks from outside with other tools: busybox nslookup and a TCP client
run with ``ip netns exec``, and ``ss`` for what is bound where. The host namespace
only gets a fake upstream on 127.0.0.1 (a plain loopback socket, which is where the
daemon's forwarded queries go)."""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec

import pytest

from ketch.errors import Conflict
from ketch.network.dnsmsg import Rcode, Record, RRType, encode, parse, reply
from ketch.network.resolver import Resolver, Upstream

pytestmark = pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")

P = ParamSpec("P")
IP = ipaddress.ip_address
TABLES = {"sb-a": {"web": ["10.1.2.3"], "db": ["10.1.2.4"]}, "sb-b": {"cache": ["10.7.0.9"]}}

TCP_CLIENT = """
import socket, struct, sys
from ketch.network.dnsmsg import RRType, encode, make_query, parse
q = encode(make_query(sys.argv[1], RRType.A, id=77))
with socket.create_connection(("127.0.0.11", 53), timeout=5) as s:
    s.sendall(struct.pack("!H", len(q)) + q)
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
        chunk = s.recv(65535)
        if not chunk:
            break
        buf += chunk
m = parse(buf[2:])
print(m.id, m.rcode, " ".join(str(r.data) for r in m.answers))
"""


def aio(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 60))

    return wrapper


def lookup(key: str, name: str, qtype: int) -> Sequence[str] | None:
    return TABLES.get(key, {}).get(name)


def lo_up(netns: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", Path(netns).name, "ip", "link", "set", "lo", "up"], check=True
    )


@pytest.fixture
def sandbox(netns: str) -> str:
    lo_up(netns)
    return netns


@pytest.fixture
def second_netns() -> Iterator[str]:
    name = f"ketch-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        lo_up(f"/run/netns/{name}")
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def run(*argv: str) -> tuple[int, str]:
    p = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await p.communicate()
    return p.returncode or 0, out.decode()


async def in_ns(netns: str, *argv: str) -> tuple[int, str]:
    return await run("ip", "netns", "exec", Path(netns).name, *argv)


async def bound_dns(netns: str | None) -> list[str]:
    """'udp 127.0.0.11:53' style entries that ss lists as bound/listening there."""
    argv = ("ss", "-H", "-lnut")
    rc, out = await (in_ns(netns, *argv) if netns else run(*argv))
    assert rc == 0, out
    return sorted(
        f"{f[0]} {f[4]}"
        for f in (line.split() for line in out.splitlines())
        if len(f) >= 5 and f[4] == "127.0.0.11:53"
    )


class FakeUpstream(asyncio.DatagramProtocol):
    """A UDP DNS server on the host's 127.0.0.1: external.example -> 192.0.2.1."""

    def __init__(self) -> None:
        self.t: Any = None
        self.seen: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = parse(data)
        name = q.questions[0].name
        self.seen.append(name)
        if name != "external.example":
            self.t.sendto(encode(reply(q, rcode=Rcode.NXDOMAIN)), addr)
        elif q.questions[0].qtype == RRType.A:
            rec = Record.address(name, IP("192.0.2.1"), 30)
            self.t.sendto(encode(reply(q, answers=[rec])), addr)
        else:
            self.t.sendto(encode(reply(q)), addr)


async def start_upstream() -> tuple[FakeUpstream, asyncio.DatagramTransport, Upstream]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    transport, proto = await loop.create_datagram_endpoint(FakeUpstream, sock=sock)
    return proto, transport, Upstream(IP("127.0.0.1"), port)


@aio
async def test_attach_serves_the_namespace_and_detach_frees_it(sandbox: str) -> None:
    fake, transport, up = await start_upstream()
    r = Resolver(lookup, [up])
    try:
        assert await bound_dns(None) == []
        await r.attach("sb-a", sandbox)

        rc, out = await in_ns(sandbox, "busybox", "nslookup", "web", "127.0.0.11")
        assert rc == 0 and "10.1.2.3" in out, out
        # forwarded from the daemon's namespace: the fake upstream lives on the host's
        # loopback, which the sandbox itself cannot reach
        rc, out = await in_ns(sandbox, "busybox", "nslookup", "external.example", "127.0.0.11")
        assert rc == 0 and "192.0.2.1" in out, out
        rc, out = await in_ns(
            sandbox, "busybox", "nslookup", "external.example", f"127.0.0.1:{up.port}"
        )
        assert rc != 0, out
        rc, out = await in_ns(sandbox, "busybox", "nslookup", "nosuch.example", "127.0.0.11")
        assert rc != 0 and "NXDOMAIN" in out, out
        assert "external.example" in fake.seen and "web" not in fake.seen

        rc, out = await in_ns(sandbox, sys.executable, "-c", TCP_CLIENT, "db")
        assert rc == 0 and out.split() == ["77", "0", "10.1.2.4"], out

        assert await bound_dns(sandbox) == ["tcp 127.0.0.11:53", "udp 127.0.0.11:53"]
        assert await bound_dns(None) == []  # nothing in the host's namespace

        await r.detach("sb-a")
        assert await bound_dns(sandbox) == []
        rc, out = await in_ns(sandbox, "busybox", "nslookup", "web", "127.0.0.11")
        assert rc != 0, out

        await r.attach("sb-a", sandbox)  # the address can be bound again
        assert await bound_dns(sandbox) == ["tcp 127.0.0.11:53", "udp 127.0.0.11:53"]
        with pytest.raises(Conflict):
            await r.attach("sb-a", sandbox)
        rc, out = await in_ns(sandbox, "busybox", "nslookup", "db", "127.0.0.11")
        assert rc == 0 and "10.1.2.4" in out, out
    finally:
        await r.detach("sb-a")
        r.close()
        transport.close()


@aio
async def test_each_namespace_gets_its_own_names(sandbox: str, second_netns: str) -> None:
    r = Resolver(lookup, [])  # no forwarding: other names are SERVFAIL
    try:
        await r.attach("sb-a", sandbox)
        await r.attach("sb-b", second_netns)
        rc, out = await in_ns(second_netns, "busybox", "nslookup", "cache", "127.0.0.11")
        assert rc == 0 and "10.7.0.9" in out, out
        rc, out = await in_ns(second_netns, "busybox", "nslookup", "web", "127.0.0.11")
        assert rc != 0 and "SERVFAIL" in out, out
        rc, out = await in_ns(sandbox, "busybox", "nslookup", "web", "127.0.0.11")
        assert rc == 0 and "10.1.2.3" in out, out
        await r.detach("sb-a")
        # the other sandbox is untouched
        rc, out = await in_ns(second_netns, "busybox", "nslookup", "cache", "127.0.0.11")
        assert rc == 0 and "10.7.0.9" in out, out
    finally:
        r.close()
    await asyncio.sleep(0)
    assert await bound_dns(second_netns) == []


@aio
async def test_bind_failure_leaves_nothing_attached(sandbox: str) -> None:
    holder = Resolver(lookup, [])
    r = Resolver(lookup, [])
    try:
        await holder.attach("someone-else", sandbox)  # holds 127.0.0.11:53 there
        with pytest.raises(OSError) as info:
            await r.attach("sb-a", sandbox)
        assert info.value.errno == errno.EADDRINUSE
        assert "127.0.0.11:53" in str(info.value)
        assert r.attached() == frozenset()
        await holder.detach("someone-else")
        await r.attach("sb-a", sandbox)  # the failed attempt left no socket behind
        rc, out = await in_ns(sandbox, "busybox", "nslookup", "web", "127.0.0.11")
        assert rc == 0 and "10.1.2.3" in out, out
    finally:
        holder.close()
        r.close()
        await asyncio.sleep(0)
