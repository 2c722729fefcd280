"""Attach and logs: a container's streams as the API hands them to clients.

Attach connects a hijacked client connection to the container's supervisor,
which does the real work (fan-out, stdin, detach keys, framing). This module
only pumps bytes both ways, waits for a not-yet-started container (``docker run``
attaches before it starts), and replays the log first when asked (``logs=1``).

Logs read the json-file log in a worker thread and hand entries to the event
loop; ``follow`` ends when the container is no longer running (or restarting)
or the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from ketch.engine.containers.model import Container
from ketch.engine.supervisor.protocol import DEFAULT_DETACH_KEYS, STDERR, STDOUT
from ketch.engine.supervisor.protocol import frame as _frame
from ketch.engine.supervisor.protocol import parse_detach_keys as _parse_detach_keys
from ketch.errors import Conflict, InvalidArgument, NotImplementedYet

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService
    from ketch.engine.logs import LogEntry

__all__ = ["Hijack", "attach", "frame", "logs", "parse_detach_keys", "pump"]

Hijack = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_STREAM_IDS = {"stdout": STDOUT, "stderr": STDERR}


def frame(stream: str, data: bytes) -> bytes:
    """A log entry of ``stream`` (its name) as one multiplexed frame."""
    return _frame(_STREAM_IDS.get(stream, STDOUT), data)


def parse_detach_keys(text: str | None) -> list[int]:
    """Docker's ``--detach-keys`` (the supervisor protocol's parser); unset or empty
    means Docker's default, ctrl-p ctrl-q."""
    return _parse_detach_keys(text or "") or list(DEFAULT_DETACH_KEYS)


async def pump(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
               sup_r: asyncio.StreamReader, sup_w: asyncio.StreamWriter) -> None:
    """Copy client→supervisor and supervisor→client until the supervisor side ends."""
    async def upstream() -> None:
        try:
            while data := await client_r.read(65536):
                sup_w.write(data)
                await sup_w.drain()
        except (ConnectionError, OSError):
            pass
        with contextlib.suppress(OSError, RuntimeError):
            if sup_w.can_write_eof():
                sup_w.write_eof()

    up = asyncio.get_running_loop().create_task(upstream())
    try:
        while data := await sup_r.read(65536):
            client_w.write(data)
            await client_w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        up.cancel()
        with contextlib.suppress(BaseException):
            await up
        sup_w.close()
        with contextlib.suppress(OSError, RuntimeError):
            if client_w.can_write_eof():
                client_w.write_eof()


def _tty(c: Container) -> bool:
    return bool(c.config.get("Tty"))


def attach(svc: ContainerService, ref: str, *, stdin: bool, stdout: bool, stderr: bool,
           stream: bool, logs_first: bool, detach_keys: str | None) -> Hijack:
    """Checks now (404/409 before the upgrade), the stream later: returns the hijacker."""
    c = svc.get(ref)
    keys = parse_detach_keys(detach_keys)
    if stream and c.state.status in ("exited", "dead", "removing") and not logs_first:
        raise Conflict("You cannot attach to a stopped container, start it first")
    if c.state.status == "paused" and stream:
        raise Conflict(f"container {c.id} is paused, unpause the container before attach")
    lv = svc.live(c.id)
    waiting = stream and lv.sup is None
    if waiting:
        lv.attaching += 1
        lv.attached.clear()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = waiting
        try:
            if logs_first and c.log_path:
                async for chunk in _log_chunks(c, stdout=stdout, stderr=stderr, follow=False):
                    writer.write(chunk)
                    await writer.drain()
            if not stream:
                return
            if lv.sup is None:
                await lv.sup_ready.wait()
            sup = lv.sup
            if sup is None:
                return
            sr, sw = await sup.open_attach(stdin, stdout, stderr, keys)
            if counted:
                counted = False
                lv.attaching -= 1
                if lv.attaching <= 0:
                    lv.attached.set()
            await pump(reader, writer, sr, sw)
        finally:
            if counted:
                lv.attaching -= 1
                if lv.attaching <= 0:
                    lv.attached.set()
    return run


async def _thread_iter(make: Callable[[threading.Event], Iterator[bytes]],
                       stop: threading.Event) -> AsyncIterator[bytes]:
    """Run a blocking generator in a thread; yield its items on the loop."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=256)

    gone = threading.Event()  # the consumer left: drop what is left

    def put(item: bytes | BaseException | None) -> None:
        while not gone.is_set():
            fut = asyncio.run_coroutine_threadsafe(q.put(item), loop)
            try:
                fut.result(timeout=1)
                return
            except TimeoutError:
                fut.cancel()
            except Exception:
                return

    def work() -> None:
        try:
            for item in make(stop):
                if gone.is_set():
                    return
                put(item)
            put(None)
        except BaseException as e:
            put(e)

    t = threading.Thread(target=work, name="logs", daemon=True)
    t.start()
    try:
        while True:
            item = await q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        gone.set()
        stop.set()


def _entries_to_chunks(entries: Iterator[LogEntry], tty: bool) -> Iterator[bytes]:
    for e in entries:
        yield e.data if tty else frame(e.stream, e.data)


async def _log_chunks(c: Container, *, stdout: bool = True, stderr: bool = True,
                      follow: bool = False, since: int | None = None, until: int | None = None,
                      timestamps: bool = False, tail: Any = None,
                      stop: threading.Event | None = None) -> AsyncIterator[bytes]:
    from ketch.engine.logs.jsonfile import JSONFileOptions, JSONFileReader

    opts = JSONFileOptions.from_log_opts((c.host_config.get("LogConfig") or {}).get("Config")
                                         or {})
    reader = JSONFileReader(c.log_path, max_files=opts.max_file)
    stop = stop or threading.Event()

    def make(ev: threading.Event) -> Iterator[bytes]:
        return _entries_to_chunks(reader.read(stdout=stdout, stderr=stderr, since=since,
                                              until=until, tail=tail, timestamps=timestamps,
                                              follow=follow, stop=ev), _tty(c))
    async for chunk in _thread_iter(make, stop):
        yield chunk


def logs(svc: ContainerService, ref: str, *, follow: bool, stdout: bool, stderr: bool,
         since: int | None, until: int | None, timestamps: bool, tail: Any
         ) -> tuple[bool, AsyncIterator[bytes]]:
    """(tty, chunks) for GET /containers/{id}/logs; errors are raised before streaming."""
    c = svc.get(ref)
    if not c.log_path:
        lt = (c.host_config.get("LogConfig") or {}).get("Type", "none")
        raise NotImplementedYet(f'configured logging driver does not support reading: "{lt}"')
    if not (stdout or stderr):
        raise InvalidArgument("Bad parameters: you must choose at least one stream")
    live = follow and c.state.status in ("running", "paused", "restarting", "created")

    async def gen() -> AsyncIterator[bytes]:
        stop = threading.Event()
        watcher = None
        if live:
            async def watch() -> None:
                while True:
                    await svc.wait(c.id, "not-running")
                    await asyncio.sleep(0.15)  # the reader's poll picks up the last lines
                    if c.state.status != "restarting":
                        break
                stop.set()
            watcher = asyncio.get_running_loop().create_task(watch())
        try:
            async for chunk in _log_chunks(c, stdout=stdout, stderr=stderr, follow=live,
                                           since=since, until=until, timestamps=timestamps,
                                           tail=tail, stop=stop):
                yield chunk
        finally:
            stop.set()
            if watcher is not None:
                watcher.cancel()
    return _tty(c), gen()
