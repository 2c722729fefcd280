"""``SupervisorClient``: how ketchd talks to one container's supervisor.

Every call opens a connection to ``<state_dir>/sup.sock``, sends one JSON
request line and reads one JSON reply line; ``attach`` then keeps the connection
as the raw stdio stream. Execs run in their own exec supervisor, which
:meth:`SupervisorClient.open_exec` has the zygote start, and whose socket
(``x-<hash>.sock``) carries the exec's stream and its resizes. Errors the
supervisor reports come back as their ``ketch.errors`` class. Once the supervisor
is gone, ``state``, ``wait``, ``await_exit`` and ``read_exit`` answer from
``exit.json``; other calls raise ``Unavailable`` (exited, or a stale socket) or
``NotFound`` (no supervisor ever lived there).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
from typing import TYPE_CHECKING, Any

from ketch.engine.supervisor.protocol import ExecRequest, error_from_wire, exec_socket_path
from ketch.errors import FailedPrecondition, Internal, NotFound, Unavailable

if TYPE_CHECKING:
    from ketch.engine.supervisor.zygote import ZygoteHandle

__all__ = ["SupervisorClient"]

_LIMIT = 1 << 20


class SupervisorClient:
    """A client of the supervisor whose state directory is ``state_dir``."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.socket_path = os.path.join(state_dir, "sup.sock")

    # ---- files ------------------------------------------------------------------------

    def read_exit(self) -> dict[str, Any] | None:
        """The container's ``exit.json`` (``exit_code``, ``finished_at``, ``oom_killed``,
        ``error``), or None while it has not exited."""
        try:
            with open(os.path.join(self.state_dir, "exit.json"), "rb") as f:
                doc: dict[str, Any] = json.loads(f.read())
                return doc
        except FileNotFoundError:
            return None

    def read_exec(self, exec_id: str) -> dict[str, Any] | None:
        """``execs/<exec_id>.json`` (``pid``, ``running``, ``exit_code``), or None."""
        try:
            with open(os.path.join(self.state_dir, "execs", f"{exec_id}.json"), "rb") as f:
                doc: dict[str, Any] = json.loads(f.read())
                return doc
        except FileNotFoundError:
            return None

    def _gone(self, e: OSError) -> Exception:
        if self.read_exit() is not None:
            return Unavailable(f"supervisor at {self.state_dir} is gone: the container exited")
        if isinstance(e, FileNotFoundError):
            return NotFound(f"no supervisor at {self.state_dir}")
        return Unavailable(f"supervisor at {self.state_dir} is not answering: {e.strerror}")

    # ---- blocking calls ------------------------------------------------------------------

    def _call(self, req: dict[str, Any], timeout: float | None = 30.0,
              path: str | None = None) -> dict[str, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            try:
                s.connect(path or self.socket_path)
            except OSError as e:
                if path is not None:
                    raise self._exec_gone(req.get("exec_id", "")) from None
                raise self._gone(e) from None
            try:
                s.sendall(json.dumps(req).encode() + b"\n")
                buf = b""
                while b"\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except TimeoutError:
                raise Unavailable(f"supervisor at {self.state_dir}: no answer to "
                                  f"{req['op']} within {timeout}s") from None
            except OSError as e:
                if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                    raise
                buf = b""
        finally:
            s.close()
        return self._parse(buf, req["op"])

    def _parse(self, line: bytes, op: str) -> dict[str, Any]:
        if not line.endswith(b"\n"):  # the supervisor went away mid-request
            raise self._gone(ConnectionResetError(errno.ECONNRESET, "connection reset"))
        try:
            reply = json.loads(line)
        except ValueError:
            raise Internal(f"supervisor {op}: garbled reply {line[:100]!r}") from None
        if not isinstance(reply, dict):
            raise Internal(f"supervisor {op}: garbled reply {line[:100]!r}")
        if "error" in reply:
            raise error_from_wire(reply)
        return reply

    def start(self) -> None:
        """Start the created container's process."""
        self._call({"op": "start"}, timeout=120.0)

    def resize(self, height: int, width: int, exec_id: str | None = None) -> None:
        """Set the terminal size of the container (or of exec ``exec_id``)."""
        req: dict[str, Any] = {"op": "resize", "height": height, "width": width}
        if exec_id is None:
            self._call(req)
        else:
            req["exec_id"] = exec_id
            self._call(req, path=exec_socket_path(self.state_dir, exec_id))

    def _exec_gone(self, exec_id: str) -> Exception:
        doc = self.read_exec(exec_id)
        if doc is None:
            return NotFound(f"No such exec instance: {exec_id}")
        return FailedPrecondition(f"exec {exec_id} is not running")

    def state(self) -> dict[str, Any]:
        """``{"status": "created"|"running"|"exited", "pid": init, "exit": {...}|None}``."""
        try:
            reply = self._call({"op": "state"})
        except (Unavailable, NotFound):
            exited = self.read_exit()
            if exited is None:
                raise
            return {"status": "exited", "pid": self._init_pid(), "exit": exited}
        reply.pop("ok", None)
        return reply

    def _init_pid(self) -> int:
        try:
            with open(os.path.join(self.state_dir, "init.pid")) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the container exited; its exit record. ``Unavailable`` on timeout."""
        try:
            reply = self._call({"op": "wait"}, timeout=timeout)
        except (Unavailable, NotFound):
            exited = self.read_exit()
            if exited is None:
                raise
            return exited
        doc: dict[str, Any] = reply["exit"]
        return doc

    def exec_state(self, exec_id: str) -> dict[str, Any]:
        """``{"running": bool, "pid": n, "exit_code": n|None}`` from ``execs/<id>.json``
        (its exec supervisor rewrites it before the exec's stream ends); NotFound if
        there is no such exec."""
        doc = self.read_exec(exec_id)
        if doc is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return {"running": bool(doc.get("running")), "pid": doc.get("pid"),
                "exit_code": doc.get("exit_code")}

    def spawn_info(self) -> dict[str, Any]:
        """The container's spawn request as its supervisor recorded it (``spawn.json``)."""
        try:
            with open(os.path.join(self.state_dir, "spawn.json"), "rb") as f:
                doc: dict[str, Any] = json.loads(f.read())
                return doc
        except FileNotFoundError:
            raise self._gone(FileNotFoundError(errno.ENOENT, "no spawn.json")) from None

    # ---- asyncio ------------------------------------------------------------------------

    async def _open(self, req: dict[str, Any], path: str | None = None
                    ) -> tuple[dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.open_unix_connection(path or self.socket_path,
                                                                limit=_LIMIT)
        except OSError as e:
            raise self._gone(e) from None
        try:
            writer.write(json.dumps(req).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
            return self._parse(line, req["op"]), reader, writer
        except BaseException as e:
            writer.close()
            if isinstance(e, (ConnectionResetError, BrokenPipeError)):
                raise self._gone(e) from None
            raise

    async def open_attach(self, stdin: bool, stdout: bool, stderr: bool,
                          detach_keys: list[int]
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Attach to the container's stdio.

        Read output (multiplexed frames, raw for a TTY) from the reader; write stdin
        to the writer. The supervisor closes the stream when the container exited and
        its output was delivered, or when ``detach_keys`` were typed. ``write_eof``
        ends stdin (with ``stdin_once`` the container's stdin closes).
        """
        _reply, reader, writer = await self._open({
            "op": "attach", "stdin": stdin, "stdout": stdout, "stderr": stderr,
            "detach_keys": list(detach_keys)})
        return reader, writer

    async def open_exec(self, exec_id: str, process: dict[str, Any], stdin: bool, stdout: bool,
                        stderr: bool, detach_keys: list[int], *, zygote: ZygoteHandle | None
                        ) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
        """Run ``process`` (an OCI process object) in the container as ``exec_id``,
        under an exec supervisor that ``zygote`` forks.

        Returns its host pid and its stdio stream (framing as for attach); the stream
        closes when the process exited and its output was delivered. Its exit code is
        then in :meth:`exec_state`. FailedPrecondition if the container is not running
        (or there is no zygote), Conflict if ``exec_id`` was used before.
        """
        info = await asyncio.to_thread(self.spawn_info)
        if zygote is None:
            raise FailedPrecondition("this daemon cannot run execs (no supervisor zygote)")
        st = await asyncio.to_thread(self.state)
        if st["status"] != "running":
            raise FailedPrecondition(f"container {info['id']} is not running")
        req = ExecRequest(id=info["id"], state_dir=self.state_dir, runtime=info["runtime"],
                          exec_id=exec_id, process=process, stdin=stdin, stdout=stdout,
                          stderr=stderr)
        res = await zygote.aspawn_exec(req)
        reply, reader, writer = await self._open({
            "op": "attach", "stdin": stdin, "stdout": stdout, "stderr": stderr,
            "detach_keys": list(detach_keys)}, exec_socket_path(self.state_dir, exec_id))
        return int(reply.get("pid", res.pid)), reader, writer

    async def await_exit(self) -> dict[str, Any]:
        """Wait (without blocking the loop) until the container exited; its exit record."""
        try:
            reply, _reader, writer = await self._open({"op": "wait"})
        except (Unavailable, NotFound):
            exited = self.read_exit()
            if exited is None:
                raise
            return exited
        writer.close()
        doc: dict[str, Any] = reply["exit"]
        return doc
