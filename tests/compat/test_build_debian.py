"""A Debian image built by ``docker build`` against ketchd, installing a package from the
mirror through a proxy, then run: the issue's proof that real images build here.

The compat ketchd lives in a throwaway network namespace with no way out, and no test
may touch the host's own namespace. So the build reaches Debian's mirror through two
small helpers this file starts and stops:

    RUN container ──TCP──▶ Relay (ketchd's netns, on the default bridge's gateway
                           address) ──UNIX socket──▶ MirrorProxy (host netns; an HTTP
                           forward proxy that connects to the mirror's host only)

A UNIX socket path works across network namespaces, so nothing but these two sockets
joins the namespaces. The build gets ``--build-arg http_proxy=http://<gateway>:<port>``:
a predefined proxy ARG, which must reach RUN's environment but not the image's config,
history or cache key, as in docker.

Skipped, saying why, without mmdebstrap (the base image is made by ``ketch image
bootstrap debian:bookworm-slim``) or when the mirror does not answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ketch.errors import Unavailable
from ketch.image.bootstrap_debian import default_mirror, fetch_release
from ketch.sys.ns import CLONE, setns
from tests.compat.conftest import DOCKER, Ketchd, host_netns, in_netns, start_ketchd, stop_process
from tests.compat.test_ketch_cli import ketch_cli, ok

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/mmdebstrap"),
                                reason="needs mmdebstrap (apt-get install mmdebstrap)")

_HEAD_LIMIT = 64 << 10
_PACKAGE = "hello"


# -- the two helpers ---------------------------------------------------------------------


class _Pumps:
    """Accepts connections on ``listener`` and relays each to what ``connect`` opens.

    Every socket and thread is tracked; :meth:`close` shuts them all down and joins
    the threads, so nothing outlives the test, whatever happened.
    """

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self._mu = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._spawn(self._accept_loop)

    def opened(self, client: socket.socket) -> socket.socket | None:
        """The upstream for a new client (None: refused; the client was answered)."""
        raise NotImplementedError

    def _spawn(self, fn: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        with self._mu:
            if self._closed:
                return
            self._threads.append(t)
        t.start()

    def _track(self, s: socket.socket) -> bool:
        with self._mu:
            if self._closed:
                return False
            self._socks.add(s)
            return True

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed: the helper is stopping
                return
            if not self._track(client):
                client.close()
                return
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            upstream = self.opened(client)
            if upstream is None or not self._track(upstream):
                return
            back = threading.Thread(target=_copy, args=(upstream, client), daemon=True)
            back.start()
            _copy(client, upstream)
            back.join()
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    s.close()
                    with self._mu:
                        self._socks.discard(s)

    def close(self) -> None:
        with self._mu:
            self._closed = True
            socks, threads = list(self._socks), list(self._threads)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads), "a proxy thread did not stop"


def _copy(src: socket.socket, dst: socket.socket) -> None:
    """Bytes from ``src`` to ``dst`` until ``src`` ends; then end ``dst``'s sending side."""
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class MirrorProxy(_Pumps):
    """Host side: an HTTP forward proxy on a UNIX socket, for ``allowed`` (host, port)s.

    Reads a request head, takes the absolute-URI of its request line
    (``GET http://deb.debian.org/debian/... HTTP/1.1``), connects to that host and
    port if allowed (else answers 403), forwards the head unchanged (origin servers
    accept the absolute form) and relays both ways; further requests on the connection
    go to the same host. ``requests`` keeps the first request line of each connection.
    """

    def __init__(self, path: str, allowed: set[tuple[str, int]]) -> None:
        self.allowed = allowed
        self.requests: list[str] = []
        self.refused: list[str] = []
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        super().__init__(listener)

    def opened(self, client: socket.socket) -> socket.socket | None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(4096)
            if not data or len(head) > _HEAD_LIMIT:
                return None
            head += data
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        url = urlsplit(parts[1]) if len(parts) == 3 else None
        target = (url.hostname or "", url.port or 80) if url is not None else ("", 0)
        if url is None or url.scheme != "http" or target not in self.allowed:
            self.refused.append(line)
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")
            return None
        self.requests.append(line)
        upstream = socket.create_connection(target, timeout=60)
        upstream.settimeout(None)
        upstream.sendall(head)
        return upstream


class Relay(_Pumps):
    """Inside a network namespace: TCP on ``address`` → the UNIX socket ``to``.

    The listening socket is made by a short-lived thread that joins the namespace
    (setns affects that thread only), so this process stays in its own namespace.
    """

    def __init__(self, netns: str, address: str, to: str) -> None:
        self.to = to
        made: list[socket.socket | BaseException] = []

        def listen_inside() -> None:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(target, CLONE.NEWNET)
                try:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.bind((address, 0))
                    s.listen(16)
                    made.append(s)
                finally:
                    setns(home, CLONE.NEWNET)
            except BaseException as e:
                made.append(e)
            finally:
                os.close(target)
                os.close(home)

        t = threading.Thread(target=listen_inside)
        t.start()
        t.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        self.port = made[0].getsockname()[1]
        super().__init__(made[0])

    def opened(self, client: socket.socket) -> socket.socket | None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.to)
        except OSError:
            s.close()
            raise
        return s


# -- the test -------------------------------------------------------------------------------


def docker(d: Ketchd, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The docker CLI against ``d`` (classic builder), with a timeout fit for apt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=d.url, DOCKER_CONFIG=str(d.root / "docker-config"),
               DOCKER_BUILDKIT="0")
    return subprocess.run(in_netns(d.root, [DOCKER, *args]), env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def mirror() -> str:
    url = default_mirror()
    try:
        fetch_release(url, "bookworm")
    except Unavailable as e:
        pytest.skip(f"Debian mirror unreachable: {e}")
    return url


@pytest.fixture(scope="module")
def kd(tmp_path_factory: pytest.TempPathFactory, mirror: str) -> Iterator[Ketchd]:
    """A private ketchd holding debian:bookworm-slim, bootstrapped from the mirror."""
    import shutil

    root = tmp_path_factory.mktemp("ketchd-debian")
    d = start_ketchd(root)
    try:
        r = ok(ketch_cli(d, "image", "bootstrap", "debian:bookworm-slim", timeout=600))
        assert "Loaded image: debian:bookworm-slim" in r
        yield d
    finally:
        ids = docker(d, "ps", "-aq").stdout.split()
        if ids:
            docker(d, "rm", "-f", *ids)
        stop_process(d.proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def proxy_url(kd: Ketchd, mirror: str, tmp_path: Path) -> Iterator[tuple[str, MirrorProxy]]:
    """``http://<gateway>:<port>`` reaching the mirror from the ketchd's containers."""
    r = docker(kd, "network", "inspect", "bridge")
    assert r.returncode == 0, r.stderr
    gateway = json.loads(r.stdout)[0]["IPAM"]["Config"][0]["Gateway"]
    host = urlsplit(mirror)
    sock = str(tmp_path / "proxy.sock")
    proxy = MirrorProxy(sock, {(host.hostname or "", host.port or 80)})
    try:
        relay = Relay(host_netns(kd.root), gateway, sock)
        try:
            yield f"http://{gateway}:{relay.port}", proxy
        finally:
            relay.close()
    finally:
        proxy.close()


def test_debian_image_installs_a_package_from_the_mirror_and_runs_it(
        kd: Ketchd, proxy_url: tuple[str, MirrorProxy], tmp_path: Path) -> None:
    url, proxy = proxy_url
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM debian:bookworm-slim\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends "
        f"{_PACKAGE} && rm -rf /var/lib/apt/lists/*\n"
        f'CMD ["{_PACKAGE}"]\n')
    r = docker(kd, "build", "--build-arg", f"http_proxy={url}", "-t", "hello:deb", str(ctx),
               timeout=900)
    assert r.returncode == 0, f"out={r.stdout}\nerr={r.stderr}"
    assert f"Setting up {_PACKAGE}" in r.stdout
    assert "Successfully tagged hello:deb" in r.stdout
    assert proxy.requests, "apt did not go through the proxy"
    assert not proxy.refused, proxy.refused

    run = docker(kd, "run", "--rm", "--network", "none", "hello:deb")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "Hello, world!\n"

    # the proxy reached RUN, but the image keeps no trace of it
    cfg = json.loads(ok(docker(kd, "image", "inspect", "hello:deb")))[0]["Config"]
    assert not any(e.lower().startswith("http_proxy=") for e in cfg.get("Env") or [])
    hist = ok(docker(kd, "history", "--no-trunc", "--format", "{{.CreatedBy}}", "hello:deb"))
    assert "apt-get install" in hist
    assert "http_proxy" not in hist and url not in hist

    # a different proxy is no reason to run apt again (docker: proxy ARGs are not cached)
    again = docker(kd, "build", "--build-arg", "http_proxy=http://192.0.2.1:9", "-t",
                   "hello:deb", str(ctx), timeout=120)
    assert again.returncode == 0, f"out={again.stdout}\nerr={again.stderr}"
    assert again.stdout.count("Using cache") == 2
