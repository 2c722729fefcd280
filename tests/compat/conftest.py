"""A private ketchd for compat tests: its own socket, data root and pidfile in a temp dir.

Only the process started here is ever signalled. No real dockerd is involved;
the docker CLI runs as a client only, with a throwaway config directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ketch.client.cli.build import Sent
    from ketch.client.remote import RemoteEngineClient

# The docker CLI, client only: $KETCH_DOCKER, else the first `docker` on PATH.
DOCKER = os.environ.get("KETCH_DOCKER") or shutil.which("docker") or "/usr/bin/docker"


@dataclass
class Ketchd:
    proc: subprocess.Popen[bytes]
    root: Path
    sock: Path
    pidfile: Path
    ready_seconds: float

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def docker(self, *args: str, env: dict[str, str] | None = None,
               host_flag: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this ketchd (DOCKER_HOST, or -H if host_flag)."""
        if not os.path.exists(DOCKER):
            pytest.skip(f"{DOCKER} not installed")
        e = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        e["DOCKER_CONFIG"] = str(self.root / "docker-config")
        if host_flag:
            args = ("-H", self.url, *args)
        else:
            e["DOCKER_HOST"] = self.url
        e.update(env or {})
        # in the daemon's network namespace, where its TCP listener and ports are
        return subprocess.run(in_netns(self.root, [DOCKER, *args]), env=e,
                              capture_output=True, text=True, timeout=30, check=False)


# Network namespaces made for private ketchds (one per data root: a "host"), removed at
# the end of the session. A ketchd never runs in the machine's own network namespace:
# its bridges, veths and nft table stay in the throwaway one.
_NETNS: dict[Path, str] = {}
_NETNS_DIR = Path("/run/ketch-compat-netns")


def host_netns(root: Path) -> str:
    """The throwaway network namespace that plays the host for ketchds on ``root`` (kept
    outside ``root``, so tests that look for leftovers under it see only ketchd's)."""
    from ketch.sys import netns

    path = _NETNS.get(root)
    if path is None or not netns.is_netns(path):
        _NETNS_DIR.mkdir(mode=0o700, exist_ok=True)
        path = str(_NETNS_DIR / f"{os.getpid()}-{len(_NETNS)}")
        netns.create(path)
        _NETNS[root] = path
    return path


def _host_network_view() -> tuple[list[str], str, str]:
    """The machine's own links, nft tables and ip_forward: what no test may change."""
    links = sorted(p.name for p in Path("/sys/class/net").iterdir()) \
        if Path("/sys/class/net").is_dir() else []
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                            check=False).stdout if shutil.which("nft") else ""
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    return links, tables, forward


@pytest.fixture(scope="session", autouse=True)
def _remove_netns() -> Iterator[None]:
    before = _host_network_view()
    yield
    from ketch.sys import netns

    for path in _NETNS.values():
        netns.delete(path)
    assert _host_network_view() == before, "a test changed the host's own network namespace"


def in_netns(root: Path, argv: list[str]) -> list[str]:
    """``argv`` run inside ``root``'s host namespace (nsenter execs: same pid)."""
    return ["nsenter", f"--net={host_netns(root)}", "--", *argv]


def start_ketchd(root: Path, *extra: str) -> Ketchd:
    sock, pidfile = root / "ketch.sock", root / "ketchd.pid"
    log = open(root / "ketchd.log", "wb")  # noqa: SIM115 - lives as long as the process
    started = time.monotonic()
    proc = subprocess.Popen(
        in_netns(root, [sys.executable, "-m", "ketch.cmd.ketchd", "-H", f"unix://{sock}",
                        "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
                        "--pidfile", str(pidfile), *extra]),
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = started + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ketchd exited {proc.returncode}: "
                               f"{(root / 'ketchd.log').read_text()}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
            break
        except OSError:
            if time.monotonic() > deadline:
                stop_process(proc)
                raise RuntimeError("ketchd did not open its socket in 15 s") from None
            time.sleep(0.005)
    return Ketchd(proc, root, sock, pidfile, time.monotonic() - started)


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """TERM, 10 s, then KILL (a ketchd, a registry: any server a test started); its exit
    status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def seed_busybox(root: Path) -> None:
    """Put the bootstrap busybox image (busybox:latest) into a data root before ketchd starts."""
    from ketch.content.local import LocalContentStore
    from ketch.image.bootstrap import bootstrap_busybox
    from ketch.image.store import ImageStore

    content = LocalContentStore(root / "data" / "content")
    bootstrap_busybox(ImageStore(str(root / "data" / "images"), content), content)


def write_files(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Write ``{relative path: text or bytes}`` under ``root`` (parents made); ``root``."""
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            p.write_text(data)
        else:
            p.write_bytes(data)
    return root


def ketch_build(d: Ketchd, ctx: Path, *, client: RemoteEngineClient | None = None,
                **options: Any) -> tuple[Sent, str]:
    """``start_build`` as ``ketch build`` calls it, read to the end; (what was sent, the
    build output), asserting the build succeeded."""
    from ketch.client.cli.build import start_build
    from ketch.client.remote import RemoteEngineClient

    own = client is None
    c = client or RemoteEngineClient(d.url)
    try:
        sent = start_build(c, str(ctx), None, **options)
        text = "".join(str(m.get("stream", "")) for m in sent.messages)
    finally:
        if own:
            c.close()
    assert "Successfully built" in text, text
    return sent, text


@pytest.fixture(scope="module")
def ketchd_busybox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ketchd]:
    """A private ketchd whose image store already holds busybox:latest."""
    root = tmp_path_factory.mktemp("ketchd")
    seed_busybox(root)
    d = start_ketchd(root)
    try:
        yield d
    finally:
        d.docker("rm", "-f", *d.docker("ps", "-aq").stdout.split())
        stop_process(d.proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def ketchd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ketchd]:
    root = tmp_path_factory.mktemp("ketchd")
    d = start_ketchd(root)
    try:
        yield d
    finally:
        stop_process(d.proc)
        shutil.rmtree(root, ignore_errors=True)
