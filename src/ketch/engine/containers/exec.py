"""Exec: extra processes in a running container (``docker exec``).

An exec is created (its config checked and remembered, in memory like dockerd),
then started once: the container's supervisor runs it and carries its stdio over
the hijacked connection. Exit codes come from the supervisor, which records
them even when no client is attached.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ketch.engine.containers.streams import Hijack, parse_detach_keys, pump
from ketch.engine.specconv import process_user
from ketch.errors import Conflict, InvalidArgument, NotFound
from ketch.sys.caps import bounding_set

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService

__all__ = ["ExecService"]

_FIELDS = frozenset({"AttachStdin", "AttachStdout", "AttachStderr", "ConsoleSize",
                     "DetachKeys", "Tty", "Env", "Cmd", "Privileged", "User", "WorkingDir",
                     # sent by clients, meaningless at create: the docker CLI's Detach
                     # (start decides), docker-py's Container (the path names it)
                     "Detach", "Container"})


@dataclass
class Exec:
    id: str
    container_id: str
    config: dict[str, Any]
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ExecService:
    def __init__(self, containers: ContainerService) -> None:
        self.containers = containers
        self._execs: dict[str, Exec] = {}

    def ids_of(self, container_id: str) -> list[str]:
        return [e.id for e in self._execs.values() if e.container_id == container_id]

    def forget(self, container_id: str) -> None:
        for i in self.ids_of(container_id):
            del self._execs[i]

    def _get(self, exec_id: str) -> Exec:
        e = self._execs.get(exec_id)
        if e is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return e

    def create(self, ref: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidArgument("exec config must be a JSON object")
        unknown = set(body) - _FIELDS
        if unknown:
            raise InvalidArgument(f"unknown field {sorted(unknown)[0]!r} in exec config")
        c = self.containers.get(ref)
        if c.state.status == "paused":
            raise Conflict(f"container {c.id} is paused, unpause the container before exec")
        if c.state.status not in ("running",):
            raise Conflict(f"container {c.id} is not running")
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd or not all(isinstance(a, str) for a in cmd):
            raise InvalidArgument("No exec command specified")
        for e in body.get("Env") or []:
            if not isinstance(e, str) or e.startswith("="):
                raise InvalidArgument(f"invalid environment variable: {e}")
        if body.get("WorkingDir") and not str(body["WorkingDir"]).startswith("/"):
            raise InvalidArgument(f"the working directory '{body['WorkingDir']}' is invalid, "
                                  "it needs to be an absolute path")
        parse_detach_keys(body.get("DetachKeys"))
        cfg = dict(body)
        cfg["Cmd"] = list(cmd)
        eid = secrets.token_hex(32)
        self._execs[eid] = Exec(eid, c.id, cfg)
        self.containers._event(c, f"exec_create: {' '.join(cmd)}", execID=eid)
        return {"Id": eid}

    def _process(self, e: Exec, tty: bool) -> dict[str, Any]:
        c = self.containers.get(e.container_id)
        with open(os.path.join(self.containers.bundle_dir(c), "config.json"), "rb") as f:
            spec = json.load(f)
        proc = dict(spec["process"])
        cfg = e.config
        proc["args"] = cfg["Cmd"]
        proc["terminal"] = tty
        proc.pop("consoleSize", None)
        size = cfg.get("ConsoleSize")
        if tty and isinstance(size, list) and len(size) == 2 and all(size):
            proc["consoleSize"] = {"height": size[0], "width": size[1]}
        env: dict[str, str] = {}
        for item in [*proc.get("env", []), *(cfg.get("Env") or [])]:
            env[item.split("=", 1)[0]] = item
        proc["env"] = list(env.values())
        if cfg.get("WorkingDir"):
            proc["cwd"] = cfg["WorkingDir"]
        if cfg.get("User"):
            proc["user"] = process_user(cfg["User"], self.containers.rootfs_dir(c))
        if cfg.get("Privileged"):
            caps = bounding_set()
            proc["capabilities"] = {k: list(caps) for k in ("bounding", "effective",
                                                            "permitted")}
        return proc

    async def start(self, exec_id: str, body: Any) -> Hijack | None:
        """Start the exec; None when detached, else the hijacker that carries its stdio."""
        body = body if isinstance(body, dict) else {}
        e = self._get(exec_id)
        if e.started:
            raise Conflict(f"Error: Exec command {exec_id} has already run")
        c = self.containers.get(e.container_id)
        lv = self.containers.live(c.id)
        if c.state.status != "running" or lv.sup is None:
            raise Conflict(f"container {c.id} is not running")
        tty = bool(body.get("Tty", e.config.get("Tty")))
        if body.get("ConsoleSize"):
            e.config["ConsoleSize"] = body["ConsoleSize"]
        proc = await asyncio.to_thread(self._process, e, tty)
        detach = bool(body.get("Detach"))
        cfg = e.config
        stdin = bool(cfg.get("AttachStdin")) and not detach
        stdout = bool(cfg.get("AttachStdout")) and not detach
        stderr = bool(cfg.get("AttachStderr")) and not detach
        keys = parse_detach_keys(cfg.get("DetachKeys"))
        sup = lv.sup
        e.started = True

        async def launch() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            pid, sr, sw = await sup.open_exec(exec_id, proc, stdin, stdout, stderr, keys,
                                              zygote=self.containers.zygote)
            e.pid, e.running = pid, True
            self.containers._event(c, f"exec_start: {' '.join(cfg['Cmd'])}",
                                   execID=exec_id)
            return sr, sw

        if detach:
            sr, sw = await launch()
            asyncio.get_running_loop().create_task(self._drain(e, sr, sw))
            return None

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The process starts only now, after the 101 head went out: clients read the
            # head through a buffer, and output sent with it could be lost in there.
            try:
                sr, sw = await launch()
            except Exception as err:
                e.running, e.exit_code = False, 126
                writer.write(str(err).encode() + b"\n")
                return
            try:
                await pump(reader, writer, sr, sw)
            finally:
                await self._finish(e)
        return run

    async def _drain(self, e: Exec, sr: asyncio.StreamReader, sw: asyncio.StreamWriter) -> None:
        try:
            while await sr.read(65536):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            sw.close()
            await self._finish(e)

    async def _finish(self, e: Exec) -> None:
        st = await asyncio.to_thread(self._state, e)
        if st is not None and not st.get("running"):
            e.running = False
            e.exit_code = st.get("exit_code")
            c = self.containers.store.get(e.container_id)
            self.containers._event(c, "exec_die", execID=e.id,
                                   exitCode=str(e.exit_code))

    def _state(self, e: Exec) -> dict[str, Any] | None:
        lv = self.containers.live_all.get(e.container_id)
        if lv is not None and lv.sup is not None:
            try:
                return lv.sup.exec_state(e.id)
            except Exception:
                pass
        try:
            c = self.containers.store.get(e.container_id)
            path = os.path.join(self.containers.bundle_dir(c), "execs", f"{e.id}.json")
            with open(path, "rb") as f:
                loaded: dict[str, Any] = json.load(f)
                return loaded
        except (OSError, ValueError, NotFound):
            return None

    async def inspect(self, exec_id: str) -> dict[str, Any]:
        e = self._get(exec_id)
        if e.running:
            st = await asyncio.to_thread(self._state, e)
            if st is not None and not st.get("running"):
                e.running = False
                e.exit_code = st.get("exit_code")
        cfg = e.config
        return {
            "ID": e.id, "Running": e.running, "ExitCode": e.exit_code,
            "ProcessConfig": {"tty": bool(cfg.get("Tty")), "entrypoint": cfg["Cmd"][0],
                              "arguments": cfg["Cmd"][1:], "privileged":
                              bool(cfg.get("Privileged")), "user": cfg.get("User") or ""},
            "OpenStdin": bool(cfg.get("AttachStdin")), "OpenStderr":
            bool(cfg.get("AttachStderr")), "OpenStdout": bool(cfg.get("AttachStdout")),
            "CanRemove": False, "ContainerID": e.container_id,
            "DetachKeys": cfg.get("DetachKeys") or "", "Pid": e.pid,
        }

    async def resize(self, exec_id: str, height: int, width: int) -> None:
        e = self._get(exec_id)
        lv = self.containers.live_all.get(e.container_id)
        if lv is None or lv.sup is None:
            raise Conflict(f"container {e.container_id} is not running")
        sup = lv.sup
        await asyncio.to_thread(sup.resize, height, width, exec_id)
