"""``POST /build``: dockerd's classic builder endpoint, over :mod:`ketch.engine.build`.

HTTP only: the body is the build context (a tar, plain or compressed), the query
carries the options (``t`` several times, ``dockerfile``, ``buildargs`` and ``labels``
as JSON objects, ``nocache``, ``pull``, ``rm``, ``forcerm``, ``target``, ``q``,
``networkmode``, ``platform``). The answer is docker's JSON message stream. As in
dockerd, an error before the first message (a broken context, a Dockerfile that does
not parse, an unknown target) is an HTTP error; after it, the stream ends with
``{"errorDetail": ..., "error": ...}``.

The body reaches the builder either spooled by the server (``request.body_io()``) or,
when the server streams it (``HTTPServer(stream_body=streams_body)``), straight from
the socket: the builder's extraction thread reads it through :class:`BodyReader`, so
a 100 MB context is not written to a temp file first. (ketchd does not stream it yet:
``BodyStream`` loses bytes when its reader pauses between reads, as a thread does.)
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

from ketch.api import version
from ketch.api.params import bool_arg
from ketch.api.router import Route
from ketch.errors import InvalidArgument, KetchError, NotImplementedYet
from ketch.httpserver import Request, Response

if TYPE_CHECKING:
    from ketch.engine.build import BuildOptions
    from ketch.engine.engine import Engine

__all__ = ["BodyReader", "BuildBackend", "BuildRouter", "parse_options", "streams_body"]

log = logging.getLogger(__name__)

_JSON_STREAM = [("Content-Type", "application/json")]


class BuildBackend(Protocol):
    """What the build router needs: :meth:`ketch.engine.build.Builder.build`."""

    async def build(self, context: IO[bytes], opts: BuildOptions,
                    emit: Callable[[dict[str, Any]], None]) -> str: ...


class _FirstBuildMakes:
    """``engine.builder`` as a backend, looked up at each build (made at the first)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def build(self, context: IO[bytes], opts: BuildOptions,
                    emit: Callable[[dict[str, Any]], None]) -> str:
        return await self.engine.builder.build(context, opts, emit)


def streams_body(request: Request) -> bool:
    """Whether ``request`` is a ``POST /build`` (any API version prefix): a server may
    hand its body over as a stream instead of spooling it (``stream_body=``)."""
    return request.method == "POST" and \
        version.split_path(request.path)[1].rstrip("/") == "/build"


class _AsyncBody(Protocol):
    async def read(self, n: int = ...) -> bytes: ...


class BodyReader:
    """A streamed request body as a blocking binary file, for a worker thread.

    ``read(n)`` waits on the event loop for up to ``n`` bytes (``b""`` at the end);
    calling it on the loop's own thread would deadlock, so that raises instead.
    """

    def __init__(self, stream: _AsyncBody, loop: asyncio.AbstractEventLoop) -> None:
        self.stream = stream
        self.loop = loop
        self.home = threading.get_ident()

    def read(self, n: int = -1) -> bytes:
        if threading.get_ident() == self.home:
            raise RuntimeError("BodyReader.read on the event loop thread")
        if n is None or n < 0:
            parts = []
            while part := self.read(1 << 20):
                parts.append(part)
            return b"".join(parts)
        if n == 0:
            return b""
        return asyncio.run_coroutine_threadsafe(self.stream.read(n), self.loop).result()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _message(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\r\n"


def _json_object(request: Request, name: str) -> dict[str, Any]:
    text = request.arg(name) or ""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidArgument(f"invalid {name} JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{name} must be a JSON object")
    return value


def parse_options(request: Request) -> BuildOptions:
    """The query of ``POST /build`` as :class:`~ketch.engine.build.BuildOptions`."""
    from ketch.engine.build import BuildOptions

    if request.arg("remote"):
        raise NotImplementedYet("remote build contexts (git, URLs) are not supported; "
                                "send the context as the request body")
    if (request.arg("version") or "1") == "2":
        raise NotImplementedYet("BuildKit builds (version=2) are not supported by ketchd; "
                                "use the classic builder (DOCKER_BUILDKIT=0)")
    args = _json_object(request, "buildargs")
    labels = _json_object(request, "labels")
    if any(v is not None and not isinstance(v, str) for v in args.values()):
        raise InvalidArgument("buildargs values must be strings")
    if any(not isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("labels values must be strings")
    return BuildOptions(
        tags=tuple(t for t in request.query.get("t", []) if t),
        dockerfile=request.arg("dockerfile") or "Dockerfile",
        build_args=args, no_cache=bool_arg(request, "nocache"),
        pull=bool_arg(request, "pull"), remove=bool_arg(request, "rm", True),
        force_remove=bool_arg(request, "forcerm"), target=request.arg("target") or None,
        labels=labels, quiet=bool_arg(request, "q"),
        network_mode=request.arg("networkmode") or "default",
        platform=request.arg("platform") or None)


class BuildRouter:
    """Mounts ``POST /build`` on a :class:`BuildBackend`."""

    def __init__(self, backend: BuildBackend) -> None:
        self.backend = backend

    @classmethod
    def for_engine(cls, engine: Engine) -> BuildRouter:
        """A router over ``engine.builder``, which is made at the first build."""
        return cls(_FirstBuildMakes(engine))

    def routes(self) -> builtins.list[Route]:
        return [Route("POST", "/build", self.build)]

    async def build(self, request: Request) -> Response:
        opts = parse_options(request)
        loop = asyncio.get_running_loop()
        home = threading.get_ident()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        def emit(obj: dict[str, Any]) -> None:
            data = _message(obj)
            if threading.get_ident() == home:
                queue.put_nowait(data)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, data)

        context: IO[bytes] = request.body_io() if request.stream is None else \
            cast(IO[bytes], BodyReader(request.stream, loop))

        async def work() -> str:
            try:
                return await self.backend.build(context, opts, emit)
            finally:
                emit_end()

        def emit_end() -> None:
            if threading.get_ident() == home:
                queue.put_nowait(None)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        task = loop.create_task(work())
        first = await queue.get()
        if first is None:  # ended before any output: an error is an HTTP error
            await task

        async def body() -> AsyncIterator[bytes]:
            item = first
            try:
                while item is not None:
                    yield item
                    item = await queue.get()
                try:
                    await task
                except KetchError as e:
                    log.info("build failed: %s", e)
                    yield _message({"errorDetail": {"message": str(e)}, "error": str(e)})
                except Exception as e:  # an engine bug: still end the stream readably
                    log.exception("build failed")
                    text = f"build failed: {type(e).__name__}: {e}"
                    yield _message({"errorDetail": {"message": text}, "error": text})
            finally:
                if not task.done():  # the client went away: stop the build
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

        return Response(200, list(_JSON_STREAM), body())
