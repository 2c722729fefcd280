"""``POST /build``: dockerd's classic builder endpoint, over :mod:`ketch.engine.build`.

HTTP only: the body is the build context (a tar, plain or compressed), the query
carries the options (``t`` several times, ``dockerfile``, ``buildargs`` and ``labels``
as JSON objects, ``nocache``, ``pull``, ``rm``, ``forcerm``, ``target``, ``q``,
``networkmode``, ``platform``). The answer is docker's JSON message stream. As in
dockerd, an error before the first message (a broken context, a Dockerfile that does
not parse, an unknown target) is an HTTP error; after it, the stream ends with
``{"errorDetail": ..., "error": ...}``.

The context cache (a ketch extension ``ketch build`` uses; docker clients never see
it, see ``docs/build.md``):

``POST /ketch/build/contexts/{key}``
    body ``{"entries": [record, ...]}`` (the client's manifest) → ``{"need": [path,
    ...]}``, the files the daemon does not hold as described. A dockerd answers 404,
    and the client sends the whole context as usual.
``POST /build?ketchcontext={key}&...``
    the body is a synced tar: ``.ketch-context.json`` (the manifest) first, then only
    the needed files; applied to the tree kept for ``key``. A file neither sent nor
    held is 409 ``build context changed since it was checked; retry``.
``POST /build/prune``
    docker's ``BuildPrune``: removes every kept context no build uses;
    ``{"CachesDeleted": [key, ...], "SpaceReclaimed": bytes}`` (the query is accepted
    and not applied: there is no other build cache to choose from).

The body reaches the builder either spooled by the server (``request.body_io()``) or,
when the server streams it (``HTTPServer(stream_body=streams_body)``, as ketchd does),
straight from the socket: the builder's extraction thread reads it through
:class:`BodyReader`, so a 100 MB context is not written to a temp file first.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar, cast

from ketch.api import version
from ketch.api.httpstatus import json_response
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
_T = TypeVar("_T")


class BuildBackend(Protocol):
    """What the build router needs: :class:`ketch.engine.build.Builder`'s entry points
    and its context cache (:class:`ketch.engine.build.contexts.ContextCache`)."""

    async def build(self, context: IO[bytes], opts: BuildOptions,
                    emit: Callable[[dict[str, Any]], None]) -> str: ...

    async def build_synced(self, key: str, context: IO[bytes], opts: BuildOptions,
                           emit: Callable[[dict[str, Any]], None]) -> str: ...

    async def context_need(self, key: str, manifest: object) -> builtins.list[str]: ...

    async def prune_contexts(self) -> tuple[builtins.list[str], int]: ...


class _FirstBuildMakes:
    """``engine.builder`` as a backend, looked up at each call (made at the first)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def build(self, context: IO[bytes], opts: BuildOptions,
                    emit: Callable[[dict[str, Any]], None]) -> str:
        return await self.engine.builder.build(context, opts, emit)

    async def build_synced(self, key: str, context: IO[bytes], opts: BuildOptions,
                           emit: Callable[[dict[str, Any]], None]) -> str:
        return await self.engine.builder.build_synced(key, context, opts, emit)

    async def context_need(self, key: str, manifest: object) -> builtins.list[str]:
        return await asyncio.to_thread(self.engine.builder.contexts.need, key, manifest)

    async def prune_contexts(self) -> tuple[builtins.list[str], int]:
        return await self.engine.builder.contexts.prune()


def streams_body(request: Request) -> bool:
    """Whether ``request`` is a ``POST /build`` (any API version prefix): a server may
    hand its body over as a stream instead of spooling it (``stream_body=``)."""
    return request.method == "POST" and \
        version.split_path(request.path)[1].rstrip("/") == "/build"


class _AsyncBody(Protocol):
    async def read(self, n: int = ...) -> bytes: ...


class BodyReader:
    """A streamed request body as a blocking binary file, for a worker thread.

    ``read(n)`` waits on the event loop until it has ``n`` bytes, or the body's end
    (``b""`` once it has ended); ``readinto(b)`` likewise fills ``b``. A stream with
    ``readinto`` (:class:`ketch.httpstream.BodyStream`) is read straight into the
    buffer, one hop to the loop per call, so tarfile's 1 MiB reads cost ~100 hops for a
    100 MB context; a stream with only ``read`` is read until the count is met. Calling
    either on the loop's own thread would deadlock, so that raises RuntimeError instead.
    """

    def __init__(self, stream: _AsyncBody, loop: asyncio.AbstractEventLoop) -> None:
        self.stream = stream
        self.loop = loop
        self.home = threading.get_ident()
        self._into: Callable[[bytearray], Coroutine[Any, Any, int]] | None = \
            getattr(stream, "readinto", None)

    def _wait(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.get_ident() == self.home:
            coro.close()
            raise RuntimeError("BodyReader read on the event loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def readinto(self, b: bytearray | memoryview) -> int:
        """Fill ``b`` with body bytes; the count (short only at the body's end)."""
        if isinstance(b, bytearray) and self._into is not None:
            filled = self._wait(self._into(b))
            while 0 < filled < len(b):  # short: the end (0 next) or an error (raised next)
                rest = bytearray(len(b) - filled)
                got = self._wait(self._into(rest))
                if not got:
                    break
                b[filled:filled + got] = rest[:got]
                filled += got
            return filled
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while part := self.read(1 << 20):
                parts.append(part)
            return b"".join(parts)
        if n == 0:
            return b""
        if self._into is not None:
            buf = bytearray(n)
            got = self.readinto(buf)
            return bytes(buf) if got == n else bytes(buf[:got])
        parts, left = [], n
        while left:
            part = self._wait(self.stream.read(left))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

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
    """Mounts ``POST /build``, the context check and ``POST /build/prune`` on a
    :class:`BuildBackend`."""

    def __init__(self, backend: BuildBackend) -> None:
        self.backend = backend

    @classmethod
    def for_engine(cls, engine: Engine) -> BuildRouter:
        """A router over ``engine.builder``, which is made at the first build."""
        return cls(_FirstBuildMakes(engine))

    def routes(self) -> builtins.list[Route]:
        out = [Route("POST", "/build", self.build),
               Route("POST", "/ketch/build/contexts/{key}", self.context_need)]
        out.append(Route("POST", "/build/prune", self.prune))
        return out

    async def context_need(self, request: Request) -> Response:
        """``POST /ketch/build/contexts/{key}``: ``{"entries": [...]}`` → ``{"need": [...]}``."""
        from ketch.engine.build.contexts import check_key

        key = check_key(request.params["key"])
        try:
            manifest = json.loads(request.body_io().read())
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("invalid build context manifest: not JSON") from None
        return json_response({"need": await self.backend.context_need(key, manifest)})

    async def prune(self, request: Request) -> Response:
        """``POST /build/prune`` (docker's BuildPrune): every idle kept context goes."""
        keys, size = await self.backend.prune_contexts()
        return json_response({"CachesDeleted": keys, "SpaceReclaimed": size})

    async def build(self, request: Request) -> Response:
        opts = parse_options(request)
        key = request.arg("ketchcontext")
        if key is not None:
            from ketch.engine.build.contexts import check_key

            check_key(key)
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
                if key is not None:
                    return await self.backend.build_synced(key, context, opts, emit)
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
