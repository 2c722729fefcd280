"""A raw HTTP/1.1 client and a loopback harness for tests of ketch.httpserver.

``serve(http, test)`` starts ``http`` on 127.0.0.1 (TLS with ``tls=(server, client)``
contexts), runs ``test(connect)`` with a timeout, and closes every connection and the
server afterwards, also when the test fails. ``connect()`` opens a :class:`Conn`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

from ketch.httpserver import HTTPServer

__all__ = ["Conn", "Connect", "serve"]


class Conn:
    """One client connection: raw request bytes out, parsed responses in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    async def send(self, data: bytes, *, pieces: int = 1, pause: float = 0.0) -> None:
        """Write ``data`` in ``pieces`` writes, ``pause`` seconds apart."""
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            self.w.write(data[i:i + step])
            await self.w.drain()
            if pause:
                await asyncio.sleep(pause)

    async def head_only(self) -> tuple[int, dict[str, str]]:
        """A response's status and headers (lower-case names); the body is left unread."""
        head = await self.r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in
                   (ln.partition(":") for ln in lines[1:] if ln)}
        return int(lines[0].split()[1]), headers

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """A response with a Content-Length body: (status, headers, body)."""
        status, headers = await self.head_only()
        return status, headers, await self.r.readexactly(int(headers.get("content-length", "0")))


Connect = Callable[[], Awaitable[Conn]]


def serve(http: HTTPServer, test: Callable[[Connect], Awaitable[None]], *,
          tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
          timeout: float = 30) -> None:
    async def main() -> None:
        server = await http.start_tcp("127.0.0.1", 0, tls[0] if tls else None)
        port = server.sockets[0].getsockname()[1]
        conns: list[Conn] = []

        async def connect() -> Conn:
            c = Conn(*await asyncio.open_connection("127.0.0.1", port,
                                                    ssl=tls[1] if tls else None))
            conns.append(c)
            return c

        try:
            await asyncio.wait_for(test(connect), timeout)
        finally:
            for c in conns:
                c.w.close()
            server.close()
            await server.wait_closed()
            await http.close_connections()

    asyncio.run(main())
