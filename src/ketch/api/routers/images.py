"""Image endpoints: list, inspect, history, tag, remove, prune, import, save/load, search.

HTTP only: decode the request, run the backend (``ketch.engine.images.ImageService``)
in a worker thread, encode the answer. Streams:

- request bodies (``load``, ``create?fromSrc=-``) reach us whole: the server spools a
  large body to an unnamed temp file before the handler runs (``Request.body_io``);
- ``save`` streams: the archive is written by a worker thread into a bounded queue and
  sent chunk by chunk. Its first chunk is awaited before the response starts, so an
  error found before any output (an unknown name) is still a proper HTTP error, as in
  dockerd;
- ``load`` and ``create`` answer with Docker's JSON message stream. Like dockerd, a
  failed ``load`` is reported inside that stream (``errorDetail``), with status 200.

``{name:path}`` routes are registered most specific first; the bare
``DELETE /images/{name:path}`` comes last.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

from ketch.api import version
from ketch.api.filters import parse_filters
from ketch.api.httpstatus import json_response
from ketch.api.router import Route
from ketch.errors import InvalidArgument, KetchError
from ketch.httpserver import Request, Response

if TYPE_CHECKING:  # the registry client loads with the first pull or push
    from ketch.distribution.auth import Credentials

__all__ = ["ImagesBackend", "ImagesRouter"]

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_QUEUE = 8
_JSON_STREAM = [("Content-Type", "application/json")]


class ImagesBackend(Protocol):
    """What the images router needs from the engine."""

    def list(self, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None,
             digests: bool = False, shared_size: bool = False) -> builtins.list[dict[str, Any]]: ...

    def inspect(self, name: str) -> dict[str, Any]: ...

    def history(self, name: str) -> builtins.list[dict[str, Any]]: ...

    def tag(self, name: str, repo: str, tag: str | None = None) -> None: ...

    def remove(self, name: str, force: bool = False, noprune: bool = False
               ) -> builtins.list[dict[str, str]]: ...

    def prune(self, filters: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]: ...

    def import_image(self, tar: IO[bytes], repo: str | None = None, tag: str | None = None,
                     changes: Sequence[str] = (), message: str | None = None,
                     platform: str | None = None) -> str: ...

    def pull(self, image: str, tag: str | None = None, platform: str | None = None,
             auth: Credentials | None = None,
             emit: Callable[[dict[str, Any]], None] | None = None
             ) -> builtins.list[dict[str, Any]]: ...

    def push(self, name: str, tag: str | None = None, auth: Credentials | None = None,
             emit: Callable[[dict[str, Any]], None] | None = None
             ) -> builtins.list[dict[str, Any]]: ...

    def load(self, tar: IO[bytes], quiet: bool = True) -> builtins.list[str]: ...

    def save(self, names: Sequence[str], out: IO[bytes]) -> None: ...

    def search(self, term: str) -> builtins.list[dict[str, Any]]: ...


def _bool(request: Request, name: str, default: bool = False) -> bool:
    """dockerd's boolean query values: "", 0, no, false, none are false."""
    raw = request.arg(name)
    if raw is None:
        return default
    return raw.strip().lower() not in ("", "0", "no", "false", "none")


def _message(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\r\n"


def _error_message(e: BaseException) -> bytes:
    return _message({"errorDetail": {"message": str(e)}, "error": str(e)})


class _QueueWriter:
    """A file-like for a worker thread: buffered writes go to an asyncio queue.

    ``put`` blocks while the queue is full (back-pressure from a slow client) and
    raises ``BrokenPipeError`` once the consumer has gone away.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 queue: asyncio.Queue[bytes | BaseException | None],
                 closed: threading.Event) -> None:
        self.loop, self.queue, self.closed = loop, queue, closed
        self.buf = bytearray()

    def put(self, item: bytes | BaseException | None) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        while True:
            try:
                fut.result(timeout=0.5)
                return
            except concurrent.futures.TimeoutError:
                if self.closed.is_set():
                    fut.cancel()
                    raise BrokenPipeError("the client went away") from None

    def write(self, data: bytes) -> int:
        if self.closed.is_set():
            raise BrokenPipeError("the client went away")
        self.buf += data
        if len(self.buf) >= _CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buf:
            data, self.buf = bytes(self.buf), bytearray()
            self.put(data)


async def _stream(work: Callable[[IO[bytes]], None]) -> AsyncIterator[bytes]:
    """Run ``work(out)`` in a thread and stream what it writes.

    Waits for the first chunk: an exception raised before any output is raised here.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(_QUEUE)
    closed = threading.Event()
    out = _QueueWriter(loop, queue, closed)

    def run() -> None:
        try:
            work(cast(IO[bytes], out))
            out.flush()
            out.put(None)
        except BrokenPipeError:
            pass
        except BaseException as e:  # handed to the event loop side
            with contextlib.suppress(BrokenPipeError):
                out.put(e)

    worker = loop.run_in_executor(None, run)
    first = await queue.get()
    if isinstance(first, BaseException):
        await worker
        raise first

    async def rest() -> AsyncIterator[bytes]:
        item: bytes | BaseException | None = first
        try:
            while item is not None:
                if isinstance(item, BaseException):
                    log.error("image archive stream failed after it started: %s", item)
                    return
                yield item
                item = await queue.get()
            await worker
        finally:
            closed.set()
            while not queue.empty():
                queue.get_nowait()

    return rest()


def _progress(work: Callable[[Callable[[dict[str, Any]], None]], object]
              ) -> Callable[[IO[bytes]], None]:
    """A ``_stream`` worker sending ``work``'s progress messages as they come.

    An error before the first message is raised (an HTTP error, as dockerd answers a
    pull of an unknown image); after it, it ends the stream as an ``errorDetail``.
    """
    def run(out: IO[bytes]) -> None:
        mu = threading.Lock()
        sent = False

        def emit(obj: dict[str, Any]) -> None:
            nonlocal sent
            with mu:
                out.write(_message(obj))
                out.flush()
                sent = True

        try:
            work(emit)
        except KetchError as e:
            if not sent:
                raise
            log.info("image transfer failed: %s", e)
            with mu:
                out.write(_error_message(e))
                out.flush()

    return run


class ImagesRouter:
    def __init__(self, backend: ImagesBackend) -> None:
        self.backend = backend

    def routes(self) -> builtins.list[Route]:
        return [
            Route("GET", "/images/json", self.list),
            Route("POST", "/images/create", self.create),
            Route("GET", "/images/get", self.get_many),
            Route("POST", "/images/load", self.load),
            Route("GET", "/images/search", self.search),
            Route("POST", "/images/prune", self.prune),
            Route("GET", "/images/{name:path}/json", self.inspect),
            Route("GET", "/images/{name:path}/history", self.history),
            Route("POST", "/images/{name:path}/tag", self.tag),
            Route("GET", "/images/{name:path}/get", self.get_one),
            Route("POST", "/images/{name:path}/push", self.push),
            Route("DELETE", "/images/{name:path}", self.remove),
        ]

    async def list(self, request: Request) -> Response:
        filters = parse_filters(request.arg("filters"))
        old = request.arg("filter")
        if old and version.compare(request.api_version, "1.41") < 0:
            filters.setdefault("reference", []).append(old)
        shared = _bool(request, "shared-size") and \
            version.compare(request.api_version, "1.42") >= 0
        images = await asyncio.to_thread(self.backend.list, _bool(request, "all"), filters,
                                         _bool(request, "digests"), shared)
        if version.compare(request.api_version, "1.44") < 0:
            for img in images:
                img["VirtualSize"] = img["Size"]
        return json_response(images)

    async def inspect(self, request: Request) -> Response:
        body = await asyncio.to_thread(self.backend.inspect, request.params["name"])
        if version.compare(request.api_version, "1.44") < 0:
            body["VirtualSize"] = body["Size"]
        return json_response(body)

    async def history(self, request: Request) -> Response:
        return json_response(await asyncio.to_thread(self.backend.history,
                                                     request.params["name"]))

    async def tag(self, request: Request) -> Response:
        await asyncio.to_thread(self.backend.tag, request.params["name"],
                                request.arg("repo") or "", request.arg("tag"))
        return Response(201)

    async def remove(self, request: Request) -> Response:
        name = request.params["name"]
        if not name.strip():
            raise InvalidArgument("image name cannot be blank")
        items = await asyncio.to_thread(self.backend.remove, name, _bool(request, "force"),
                                        _bool(request, "noprune"))
        return json_response(items)

    async def prune(self, request: Request) -> Response:
        filters = parse_filters(request.arg("filters"))
        return json_response(await asyncio.to_thread(self.backend.prune, filters))

    async def search(self, request: Request) -> Response:
        limit = request.arg("limit")
        if limit and (not limit.isdigit()):
            raise InvalidArgument(f"invalid limit specified: {limit!r}")
        return json_response(await asyncio.to_thread(self.backend.search,
                                                     request.arg("term") or ""))

    async def create(self, request: Request) -> Response:
        image, src = request.arg("fromImage"), request.arg("fromSrc")
        if image:
            return await self._pull(request, image)
        if not src:
            raise InvalidArgument("fromImage or fromSrc is required")
        if src != "-":
            raise InvalidArgument(f"importing from a URL ({src}) is not supported: "
                                  f"send the tarball in the request body (fromSrc=-)")
        image_id = await asyncio.to_thread(
            self.backend.import_image, request.body_io(), request.arg("repo") or None,
            request.arg("tag") or None, request.query.get("changes") or [],
            request.arg("message") or None, request.arg("platform") or None)
        return Response(200, list(_JSON_STREAM), _message({"status": image_id}))

    async def _pull(self, request: Request, image: str) -> Response:
        from ketch.distribution.auth import decode_registry_auth

        auth = decode_registry_auth(request.headers.get("X-Registry-Auth"))
        tag, platform = request.arg("tag") or None, request.arg("platform") or None
        body = await _stream(_progress(
            lambda emit: self.backend.pull(image, tag, platform, auth, emit)))
        return Response(200, list(_JSON_STREAM), body)

    async def push(self, request: Request) -> Response:
        from ketch.distribution.auth import decode_registry_auth

        auth = decode_registry_auth(request.headers.get("X-Registry-Auth"))
        name, tag = request.params["name"], request.arg("tag") or None
        body = await _stream(_progress(lambda emit: self.backend.push(name, tag, auth, emit)))
        return Response(200, list(_JSON_STREAM), body)

    async def load(self, request: Request) -> Response:
        quiet = _bool(request, "quiet", True)
        try:
            messages = await asyncio.to_thread(self.backend.load, request.body_io(), quiet)
        except KetchError as e:
            return Response(200, list(_JSON_STREAM), _error_message(e))
        body = b"".join(_message({"stream": m + "\n"}) for m in messages)
        return Response(200, list(_JSON_STREAM), body)

    async def _save(self, names: Sequence[str]) -> Response:
        if not names:
            raise InvalidArgument("no image names given to save")
        body = await _stream(lambda out: self.backend.save(names, out))
        return Response(200, [("Content-Type", "application/x-tar")], body)

    async def get_many(self, request: Request) -> Response:
        return await self._save(request.query.get("names") or [])

    async def get_one(self, request: Request) -> Response:
        return await self._save([request.params["name"]])
