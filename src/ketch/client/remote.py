"""``RemoteEngineClient``: :class:`ketch.client.engine.EngineClient` over the Engine API.

Each method is one endpoint (two where the API needs a look first: attach and logs
ask whether the container has a TTY, which decides whether its output is
multiplexed). The plumbing — keep-alive, version negotiation, error mapping —
is :class:`ketch.client.http.APIConnection`; the wire is :mod:`ketch.client.transport`.
"""

from __future__ import annotations

import base64
import binascii
import json
import select
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ketch import errors
from ketch.client.engine import Body, ConnectionFailed, Filters, RawStream, Stream
from ketch.client.http import APIConnection, Query, error_for, path_quote
from ketch.client.streams import demux
from ketch.client.transport import Connection, Response, parse_host

if TYPE_CHECKING:
    import ssl

    from ketch.client.engine import EngineClient

__all__ = ["DEFAULT_HOST", "RemoteEngineClient"]

DEFAULT_HOST = "unix:///run/ketch.sock"
_TAR = {"Content-Type": "application/x-tar"}
_UPGRADE = {"Connection": "Upgrade", "Upgrade": "tcp"}
_PATH_STAT = "X-Docker-Container-Path-Stat"


def _filters(filters: Filters | None) -> str | None:
    if not filters:
        return None
    return json.dumps({k: list(v) for k, v in filters.items()})


def _c(container: str) -> str:
    return "/containers/" + path_quote(container)


def _i(image: str) -> str:
    return "/images/" + path_quote(image, slashes=True)


def _path_stat(resp: Response) -> dict[str, Any]:
    raw = resp.header(_PATH_STAT)
    if not raw:
        return {}
    try:
        obj = json.loads(base64.b64decode(raw))
    except (ValueError, binascii.Error):
        return {}
    return obj if isinstance(obj, dict) else {}


def _stream_error(msg: Mapping[str, Any]) -> errors.KetchError | None:
    """The error a progress message reports (``{"error": ..., "errorDetail": ...}``)."""
    detail = msg.get("errorDetail")
    text = msg.get("error") or (detail.get("message") if isinstance(detail, dict) else None)
    if not text:
        return None
    return errors.Internal(str(text))


class _Waiter:
    """A ``POST /containers/{id}/wait`` in flight on a connection of its own."""

    def __init__(self, api: APIConnection, conn: Connection) -> None:
        self._api = api
        self._conn = conn
        self._result: dict[str, Any] | None = None

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        if self._result is not None:
            return self._result
        if self._conn.closed:
            raise ConnectionFailed("the wait was closed")
        if timeout is not None:
            # nothing of the reply has been read yet, so the socket tells whether it came
            ready, _, _ = select.select([self._conn.sock], [], [], timeout)
            if not ready:
                raise TimeoutError(f"container still running after {timeout} s")
        self._conn.sock.settimeout(None)
        try:
            resp = self._conn.read_response("POST")
            body = resp.read_all()
        finally:
            self._conn.close()
        if resp.status >= 300:
            raise error_for(resp.status, body)
        obj = json.loads(body) if body.strip() else {}
        self._result = {"StatusCode": int(obj.get("StatusCode", -1)),
                        "Error": obj.get("Error")}
        return self._result

    def close(self) -> None:
        self._conn.close()


class RemoteEngineClient:
    """An engine at ``url`` (``unix:///run/ketch.sock``, ``tcp://host:2376`` ...).

    ``version`` pins the API version (no negotiation); ``ssl_context`` enables TLS
    on tcp hosts. Nothing connects until the first call. Safe to share between
    threads: each concurrent request gets its own connection.
    """

    def __init__(self, url: str = DEFAULT_HOST, *, version: str | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 timeout: float | None = None) -> None:
        self.url = url
        self.api = APIConnection(parse_host(url, ssl_context=ssl_context, timeout=timeout),
                                 version=version)

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> RemoteEngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def api_version(self) -> str:
        """The API version in use (negotiated on first use)."""
        return self.api.version

    def _ok(self, method: str, path: str, query: Query | None = None,
            json_body: Any = None) -> None:
        self.api.call(method, path, query=query, json_body=json_body)

    def _tty(self, container: str) -> bool:
        return bool((self.container_inspect(container).get("Config") or {}).get("Tty"))

    # -- containers --------------------------------------------------------------------

    def container_create(self, config: Mapping[str, Any], *, name: str | None = None,
                         platform: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call(
            "POST", "/containers/create", query={"name": name, "platform": platform},
            json_body=dict(config))
        return out

    def container_start(self, container: str) -> None:
        self._ok("POST", _c(container) + "/start")

    def container_stop(self, container: str, *, timeout: int | None = None,
                       signal: str | None = None) -> None:
        self._ok("POST", _c(container) + "/stop", {"t": timeout, "signal": signal})

    def container_kill(self, container: str, *, signal: str | None = None) -> None:
        self._ok("POST", _c(container) + "/kill", {"signal": signal})

    def container_restart(self, container: str, *, timeout: int | None = None,
                          signal: str | None = None) -> None:
        self._ok("POST", _c(container) + "/restart", {"t": timeout, "signal": signal})

    def container_remove(self, container: str, *, force: bool = False,
                         volumes: bool = False) -> None:
        self._ok("DELETE", _c(container), {"force": force or None, "v": volumes or None})

    def container_inspect(self, container: str, *, size: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("GET", _c(container) + "/json",
                                            query={"size": size or None})
        return out

    def container_list(self, *, all: bool = False, limit: int | None = None,
                       size: bool = False, filters: Filters | None = None
                       ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.api.call("GET", "/containers/json", query={
            "all": all or None, "limit": limit, "size": size or None,
            "filters": _filters(filters)}) or []
        return out

    def container_logs(self, container: str, *, stdout: bool = True, stderr: bool = True,
                       follow: bool = False, timestamps: bool = False,
                       since: str | None = None, until: str | None = None,
                       tail: str = "all") -> Stream[tuple[int, bytes]]:
        tty = self._tty(container)
        resp = self.api.open("GET", _c(container) + "/logs", query={
            "stdout": stdout, "stderr": stderr, "follow": follow or None,
            "timestamps": timestamps or None, "since": since, "until": until, "tail": tail})
        return self._log_frames(resp, tty)

    def _log_frames(self, resp: Response, tty: bool) -> Stream[tuple[int, bytes]]:
        chunks = self.api.stream(resp)
        try:
            if tty:
                for data in chunks:
                    yield 1, data
            else:
                yield from demux(chunks)
        finally:
            chunks.close()

    def container_wait(self, container: str, *, condition: str = "not-running") -> _Waiter:
        conn = self.api.transport.connect()
        try:
            conn.send("POST", f"/v{self.api.version}{_c(container)}/wait?condition="
                      + path_quote(condition))
        except BaseException:
            conn.close()
            raise
        return _Waiter(self.api, conn)

    def container_attach(self, container: str, *, stdin: bool = False, stdout: bool = True,
                         stderr: bool = True, logs: bool = False, stream: bool = True,
                         detach_keys: str | None = None) -> RawStream:
        tty = self._tty(container)
        resp = self.api.open("POST", _c(container) + "/attach", query={
            "stream": stream, "stdin": stdin, "stdout": stdout, "stderr": stderr,
            "logs": logs or None, "detachKeys": detach_keys}, headers=_UPGRADE,
            dedicated=True)
        return resp.hijacked(multiplexed=not tty)

    def container_resize(self, container: str, height: int, width: int) -> None:
        self._ok("POST", _c(container) + "/resize", {"h": height, "w": width})

    def container_pause(self, container: str) -> None:
        self._ok("POST", _c(container) + "/pause")

    def container_unpause(self, container: str) -> None:
        self._ok("POST", _c(container) + "/unpause")

    def container_rename(self, container: str, new_name: str) -> None:
        self._ok("POST", _c(container) + "/rename", {"name": new_name})

    def container_top(self, container: str, ps_args: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("GET", _c(container) + "/top",
                                            query={"ps_args": ps_args})
        return out

    def container_stats(self, container: str, *, stream: bool = True
                        ) -> Stream[dict[str, Any]]:
        resp = self.api.open("GET", _c(container) + "/stats", query={"stream": stream})
        return self.api.json_lines(resp)

    def container_changes(self, container: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.api.call("GET", _c(container) + "/changes") or []
        return out

    def _archive(self, method: str, container: str, path: str) -> Response:
        try:
            return self.api.open(method, _c(container) + "/archive", query={"path": path})
        except errors.NotFound:
            if method != "HEAD":
                raise
            # a HEAD reply carries no message: say what GET would have said
            raise errors.NotFound(
                f"Could not find the file {path} in container {container}") from None

    def container_archive_stat(self, container: str, path: str) -> dict[str, Any]:
        resp = self._archive("HEAD", container, path)
        self.api.read(resp)
        return _path_stat(resp)

    def container_archive_get(self, container: str, path: str
                              ) -> tuple[dict[str, Any], Stream[bytes]]:
        resp = self._archive("GET", container, path)
        return _path_stat(resp), self.api.stream(resp)

    def container_archive_put(self, container: str, path: str, tar: Body, *,
                              no_overwrite_dir_non_dir: bool = False,
                              copy_uid_gid: bool = False) -> None:
        resp = self.api.open("PUT", _c(container) + "/archive", query={
            "path": path, "noOverwriteDirNonDir": no_overwrite_dir_non_dir or None,
            "copyUIDGID": copy_uid_gid or None}, body=tar, headers=_TAR)
        self.api.read(resp)

    def container_export(self, container: str) -> Stream[bytes]:
        return self.api.stream(self.api.open("GET", _c(container) + "/export"))

    def exec_create(self, container: str, cmd: Sequence[str], *, stdin: bool = False,
                    stdout: bool = True, stderr: bool = True, tty: bool = False,
                    env: Sequence[str] | None = None, user: str | None = None,
                    workdir: str | None = None, privileged: bool = False,
                    detach_keys: str | None = None) -> str:
        body: dict[str, Any] = {"AttachStdin": stdin, "AttachStdout": stdout,
                                "AttachStderr": stderr, "Tty": tty, "Cmd": list(cmd),
                                "Privileged": privileged}
        for key, value in (("Env", list(env) if env else None), ("User", user),
                           ("WorkingDir", workdir), ("DetachKeys", detach_keys)):
            if value is not None:
                body[key] = value
        out = self.api.call("POST", _c(container) + "/exec", json_body=body)
        return str(out["Id"])

    def exec_start(self, exec_id: str, *, detach: bool = False, tty: bool = False,
                   console_size: tuple[int, int] | None = None) -> RawStream | None:
        body: dict[str, Any] = {"Detach": detach, "Tty": tty}
        if console_size is not None:
            body["ConsoleSize"] = list(console_size)
        path = f"/exec/{path_quote(exec_id)}/start"
        if detach:
            self._ok("POST", path, json_body=body)
            return None
        resp = self.api.open("POST", path, json_body=body, headers=_UPGRADE, dedicated=True)
        return resp.hijacked(multiplexed=not tty)

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("GET", f"/exec/{path_quote(exec_id)}/json")
        return out

    def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        self._ok("POST", f"/exec/{path_quote(exec_id)}/resize", {"h": height, "w": width})

    # -- images ------------------------------------------------------------------------

    def image_list(self, *, all: bool = False, digests: bool = False,
                   filters: Filters | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.api.call("GET", "/images/json", query={
            "all": all or None, "digests": digests or None,
            "filters": _filters(filters)}) or []
        return out

    def image_inspect(self, image: str) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("GET", _i(image) + "/json")
        return out

    def image_remove(self, image: str, *, force: bool = False,
                     noprune: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.api.call("DELETE", _i(image), query={
            "force": force or None, "noprune": noprune or None}) or []
        return out

    def image_tag(self, image: str, repo: str, tag: str | None = None) -> None:
        self._ok("POST", _i(image) + "/tag", {"repo": repo, "tag": tag})

    def _progress(self, resp: Response) -> Stream[dict[str, Any]]:
        messages = self.api.json_lines(resp)
        try:
            for msg in messages:
                if not isinstance(msg, dict):
                    continue
                err = _stream_error(msg)
                if err is not None:
                    raise err
                yield msg
        finally:
            messages.close()

    def image_load(self, tar: Body, *, quiet: bool = False) -> Stream[dict[str, Any]]:
        resp = self.api.open("POST", "/images/load", query={"quiet": quiet}, body=tar,
                             headers=_TAR)
        return self._progress(resp)

    def image_save(self, images: Sequence[str]) -> Stream[bytes]:
        resp = self.api.open("GET", "/images/get", query={"names": list(images)})
        return self.api.stream(resp)

    def image_import(self, tar: Body, *, repo: str | None = None, tag: str | None = None,
                     message: str | None = None, changes: Sequence[str] = ()
                     ) -> Stream[dict[str, Any]]:
        resp = self.api.open("POST", "/images/create", query={
            "fromSrc": "-", "repo": repo, "tag": tag, "message": message,
            "changes": list(changes) or None}, body=tar, headers=_TAR)
        return self._progress(resp)

    def image_pull(self, image: str, *, tag: str | None = None, platform: str | None = None,
                   auth: str = "") -> Stream[dict[str, Any]]:
        resp = self.api.open("POST", "/images/create", query={
            "fromImage": image, "tag": tag, "platform": platform},
            headers={"X-Registry-Auth": auth} if auth else None)
        return self._progress(resp)

    def image_push(self, image: str, *, tag: str | None = None,
                   auth: str = "") -> Stream[dict[str, Any]]:
        resp = self.api.open("POST", _i(image) + "/push", query={"tag": tag},
                             headers={"X-Registry-Auth": auth or "e30="})
        return self._progress(resp)

    def registry_login(self, username: str, password: str, server: str = ""
                       ) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("POST", "/auth", json_body={
            "username": username, "password": password, "serveraddress": server})
        return out

    def image_history(self, image: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.api.call("GET", _i(image) + "/history") or []
        return out

    def image_prune(self, *, filters: Filters | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("POST", "/images/prune",
                                            query={"filters": _filters(filters)}) or {}
        return out

    # -- volumes -----------------------------------------------------------------------

    def volume_create(self, name: str | None = None, *, driver: str | None = None,
                      driver_opts: Mapping[str, str] | None = None,
                      labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"Name": name or "", "Driver": driver or "local",
                                "DriverOpts": dict(driver_opts or {}),
                                "Labels": dict(labels or {})}
        out: dict[str, Any] = self.api.call("POST", "/volumes/create", json_body=body)
        return out

    def volume_list(self, *, filters: Filters | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("GET", "/volumes",
                                            query={"filters": _filters(filters)}) or {}
        return out

    def volume_inspect(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("GET", "/volumes/" + path_quote(name))
        return out

    def volume_remove(self, name: str, *, force: bool = False) -> None:
        self._ok("DELETE", "/volumes/" + path_quote(name), {"force": force or None})

    def volume_prune(self, *, filters: Filters | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("POST", "/volumes/prune",
                                            query={"filters": _filters(filters)}) or {}
        return out

    # -- system ------------------------------------------------------------------------

    def ping(self) -> str:
        version, _ = self.api.ping()
        return version

    def version(self) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("GET", "/version")
        return out

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("GET", "/info")
        return out

    def events(self, *, since: str | None = None, until: str | None = None,
               filters: Filters | None = None) -> Stream[dict[str, Any]]:
        resp = self.api.open("GET", "/events", query={
            "since": since, "until": until, "filters": _filters(filters)})
        return self._objects(resp)

    def _objects(self, resp: Response) -> Stream[dict[str, Any]]:
        messages = self.api.json_lines(resp)
        try:
            for msg in messages:
                if isinstance(msg, dict):
                    yield msg
        finally:
            messages.close()

    def df(self) -> dict[str, Any]:
        out: dict[str, Any] = self.api.call("GET", "/system/df") or {}
        return out

    def image_build(self, context: Body, *, tags: Sequence[str] = (),
                    dockerfile: str | None = None,
                    build_args: Mapping[str, str | None] | None = None,
                    target: str | None = None, no_cache: bool = False, pull: bool = False,
                    labels: Mapping[str, str] | None = None, quiet: bool = False,
                    network_mode: str | None = None, platform: str | None = None,
                    ketch_context: str | None = None) -> Stream[dict[str, Any]]:
        """``POST /build`` (classic builder): see :meth:`ketch.client.engine.BuildAPI`."""
        resp = self.api.open("POST", "/build", query={
            "t": list(tags) or None, "dockerfile": dockerfile,
            "buildargs": json.dumps(dict(build_args)) if build_args else None,
            "target": target, "nocache": no_cache or None, "pull": pull or None,
            "labels": json.dumps(dict(labels)) if labels else None, "q": quiet or None,
            "networkmode": network_mode, "platform": platform, "rm": True,
            "ketchcontext": ketch_context}, body=context, headers=_TAR)
        return self._progress(resp)

    def build_context_check(self, key: str, entries: Sequence[Mapping[str, Any]]
                            ) -> list[str] | None:
        """``POST /ketch/build/contexts/{key}``: see :meth:`ketch.client.engine.BuildAPI`."""
        try:
            out = self.api.call("POST", "/ketch/build/contexts/" + path_quote(key),
                                json_body={"entries": list(entries)})
        except errors.NotFound:  # "page not found": an engine without context cache
            return None
        need = out.get("need") if isinstance(out, dict) else None
        if not isinstance(need, list) or not all(isinstance(p, str) for p in need):
            raise errors.Internal(f"build context check: unexpected reply {out!r:.80}")
        return need


if TYPE_CHECKING:
    def _conforms(c: RemoteEngineClient) -> EngineClient:
        return c  # mypy checks RemoteEngineClient against the Protocol here
