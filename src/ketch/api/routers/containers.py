"""Container and exec endpoints: HTTP in, container service calls out.

Translation only: query parameters and bodies are read here, every decision is
the engine's (``ketch.engine.containers``). Streams: ``wait`` answers its head at
once and its body when the condition is met (``docker run`` relies on that);
``logs`` streams framed or raw bytes; ``attach`` and ``exec start`` hijack the
connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ketch.api.filters import parse_filters
from ketch.api.httpstatus import json_response
from ketch.api.params import bool_arg, int_arg, json_body
from ketch.api.router import Route
from ketch.engine.containers import ops, query, streams
from ketch.engine.events import parse_time
from ketch.errors import Conflict, InvalidArgument
from ketch.httpserver import Request, Response, upgrade_response

if TYPE_CHECKING:
    from ketch.engine.containers.exec import ExecService
    from ketch.engine.containers.service import ContainerService

__all__ = ["ContainersRouter"]

_RAW = "application/vnd.docker.raw-stream"
_MUX = "application/vnd.docker.multiplexed-stream"


def _filters(request: Request) -> dict[str, list[str]]:
    return parse_filters(request.arg("filters"))


def _log_time(text: str | None) -> int | None:
    """A logs ``since``/``until`` bound in ns; unset or ``0`` is no bound."""
    if not text or text == "0":
        return None
    return parse_time(text)


class ContainersRouter:
    def __init__(self, containers: ContainerService, execs: ExecService) -> None:
        self.c = containers
        self.x = execs

    def routes(self) -> list[Route]:
        p = "/containers/{id}"
        return [
            Route("GET", "/containers/json", self.list),
            Route("POST", "/containers/create", self.create),
            Route("POST", "/containers/prune", self.prune),
            Route("GET", p + "/json", self.inspect),
            Route("POST", p + "/start", self.start),
            Route("POST", p + "/stop", self.stop),
            Route("POST", p + "/restart", self.restart),
            Route("POST", p + "/kill", self.kill),
            Route("POST", p + "/pause", self.pause),
            Route("POST", p + "/unpause", self.unpause),
            Route("POST", p + "/wait", self.wait),
            Route("POST", p + "/rename", self.rename),
            Route("POST", p + "/update", self.update),
            Route("POST", p + "/resize", self.resize),
            Route("POST", p + "/attach", self.attach),
            Route("GET", p + "/logs", self.logs),
            Route("GET", p + "/top", self.top),
            Route("GET", p + "/stats", self.stats),
            Route("DELETE", p, self.remove),
            Route("POST", p + "/exec", self.exec_create),
            Route("POST", "/exec/{id}/start", self.exec_start),
            Route("POST", "/exec/{id}/resize", self.exec_resize),
            Route("GET", "/exec/{id}/json", self.exec_inspect),
        ]

    async def list(self, request: Request) -> Response:
        size = bool_arg(request, "size")
        kw: dict[str, Any] = {"all": bool_arg(request, "all"), "size": size,
                              "limit": int_arg(request, "limit", -1) or -1,
                              "filters": _filters(request)}
        if size:  # walks writable layers: a thread
            return json_response(await asyncio.to_thread(query.list_containers, self.c, **kw))
        return json_response(query.list_containers(self.c, **kw))  # memory only: inline

    async def create(self, request: Request) -> Response:
        body = json_body(request, allow_empty=False)
        out = await self.c.create(request.arg("name") or None, body)
        return json_response(out, 201)

    async def inspect(self, request: Request) -> Response:
        out = await asyncio.to_thread(query.inspect, self.c, request.params["id"],
                                      bool_arg(request, "size"))
        out["ExecIDs"] = self.x.ids_of(out["Id"]) or None
        return json_response(out)

    async def start(self, request: Request) -> Response:
        await self.c.start(request.params["id"])
        return Response(204)

    async def stop(self, request: Request) -> Response:
        await self.c.stop(request.params["id"], request.arg("signal") or None,
                          int_arg(request, "t"))
        return Response(204)

    async def restart(self, request: Request) -> Response:
        await self.c.restart(request.params["id"], request.arg("signal") or None,
                             int_arg(request, "t"))
        return Response(204)

    async def kill(self, request: Request) -> Response:
        await self.c.kill(request.params["id"], request.arg("signal") or None)
        return Response(204)

    async def pause(self, request: Request) -> Response:
        await ops.pause(self.c, request.params["id"])
        return Response(204)

    async def unpause(self, request: Request) -> Response:
        await ops.unpause(self.c, request.params["id"])
        return Response(204)

    async def wait(self, request: Request) -> Response:
        ref = request.params["id"]
        self.c.get(ref)  # 404 before the head goes out
        condition = request.arg("condition") or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"invalid condition: {condition!r}")
        fut = asyncio.get_running_loop().create_task(self.c.wait(ref, condition))

        async def body() -> AsyncIterator[bytes]:
            try:
                res = await fut
            except Exception as e:
                res = {"StatusCode": -1, "Error": {"Message": str(e)}}
            yield json.dumps(res, separators=(",", ":")).encode() + b"\n"
        return Response(200, [("Content-Type", "application/json")], body())

    async def rename(self, request: Request) -> Response:
        name = request.arg("name")
        if not name:
            raise InvalidArgument("Neither old nor new names may be empty")
        await ops.rename(self.c, request.params["id"], name)
        return Response(204)

    async def update(self, request: Request) -> Response:
        return json_response(await ops.update(self.c, request.params["id"],
                                                 json_body(request) or {}))

    async def resize(self, request: Request) -> Response:
        c = self.c.get(request.params["id"])
        h, w = int_arg(request, "h", 0) or 0, int_arg(request, "w", 0) or 0
        lv = self.c.live(c.id)
        if lv.sup is None:
            raise InvalidArgument(f"cannot resize container {c.id}: it is not running")
        sup = lv.sup
        await asyncio.to_thread(sup.resize, h, w)
        return Response(200)

    async def attach(self, request: Request) -> Response:
        c = self.c.get(request.params["id"])
        hijack = streams.attach(
            self.c, request.params["id"], stdin=bool_arg(request, "stdin"),
            stdout=bool_arg(request, "stdout"), stderr=bool_arg(request, "stderr"),
            stream=bool_arg(request, "stream"), logs_first=bool_arg(request, "logs"),
            detach_keys=request.arg("detachKeys"))
        return upgrade_response(request, hijack,
                                content_type=_RAW if c.config.get("Tty") else _MUX)

    async def logs(self, request: Request) -> Response:
        tail_text = request.arg("tail") or "all"
        tail: int | str
        try:
            tail = "all" if tail_text == "all" else int(tail_text)
        except ValueError:
            raise InvalidArgument(f"invalid value for tail: {tail_text!r}") from None
        tty, chunks = streams.logs(
            self.c, request.params["id"], follow=bool_arg(request, "follow"),
            stdout=bool_arg(request, "stdout"), stderr=bool_arg(request, "stderr"),
            since=_log_time(request.arg("since")), until=_log_time(request.arg("until")),
            timestamps=bool_arg(request, "timestamps"), tail=tail)
        return Response(200, [("Content-Type", _RAW if tty else _MUX)], chunks)

    async def top(self, request: Request) -> Response:
        from ketch.engine.stats import top

        c = self.c.get(request.params["id"])
        if c.state.status not in ("running", "paused"):
            raise Conflict(f"container {c.id} is not running")
        pids = await asyncio.to_thread(self.c.runtime(c.runtime).ps, c.id)
        out = await asyncio.to_thread(top, pids, request.arg("ps_args") or "-ef")
        return json_response(out)

    async def stats(self, request: Request) -> Response:
        from ketch.engine.stats import docker_stats

        c = self.c.get(request.params["id"])
        stream = bool_arg(request, "stream", True) and not bool_arg(request, "one-shot")
        rt = self.c.runtime(c.runtime)
        cpus = os.cpu_count() or 1
        limit = c.host_config.get("PidsLimit") or None

        def sample(prev: dict[str, Any] | None) -> dict[str, Any]:
            raw: dict[str, Any] = {}
            if c.state.status in ("running", "paused"):
                try:
                    raw = rt.stats(c.id)
                except Exception:
                    raw = {}
            return docker_stats(raw, prev, name=c.name, id=c.id, num_cpus=cpus,
                                pids_limit=limit, read_time=time.time_ns())

        first = await asyncio.to_thread(sample, None)
        if not stream:
            if not bool_arg(request, "one-shot"):  # docker's non-stream: two samples apart
                await asyncio.sleep(1)
                first = await asyncio.to_thread(sample, first)
            return json_response(first)

        async def body() -> AsyncIterator[bytes]:
            prev = first
            yield json.dumps(prev, separators=(",", ":")).encode() + b"\n"
            while c.state.status in ("running", "paused"):
                await asyncio.sleep(1)
                prev = await asyncio.to_thread(sample, prev)
                yield json.dumps(prev, separators=(",", ":")).encode() + b"\n"
        return Response(200, [("Content-Type", "application/json")], body())

    async def remove(self, request: Request) -> Response:
        await self.c.remove(request.params["id"], force=bool_arg(request, "force"),
                            volumes=bool_arg(request, "v"))
        return Response(204)

    async def prune(self, request: Request) -> Response:
        return json_response(await ops.prune(self.c, _filters(request)))

    # ---- exec ----

    async def exec_create(self, request: Request) -> Response:
        body = json_body(request, allow_empty=False)
        return json_response(self.x.create(request.params["id"], body), 201)

    async def exec_start(self, request: Request) -> Response:
        body: Any = json_body(request) or {}
        hijack = await self.x.start(request.params["id"], body)
        if hijack is None:
            return Response(200, [("Content-Type", "application/json")], b"")
        tty = bool(body.get("Tty")) if isinstance(body, dict) else False
        return upgrade_response(request, hijack, content_type=_RAW if tty else _MUX)

    async def exec_resize(self, request: Request) -> Response:
        await self.x.resize(request.params["id"], int_arg(request, "h", 0) or 0,
                            int_arg(request, "w", 0) or 0)
        return Response(200)

    async def exec_inspect(self, request: Request) -> Response:
        return json_response(await self.x.inspect(request.params["id"]))
