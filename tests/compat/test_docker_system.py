"""docker CLI (and docker-py, if installed) against a private ketchd: ping, version, info."""

from __future__ import annotations

import http.client
import json
import os
import platform
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ketch
from ketch.api.version import CURRENT, MINIMUM
from tests.compat.conftest import Ketchd, start_ketchd, stop_process


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self._path)
        self.sock = s


def _get(d: Ketchd, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = _UnixHTTPConnection(str(d.sock))
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_ping_over_the_wire(ketchd: Ketchd) -> None:
    for method in ("GET", "HEAD"):
        status, headers, body = _get(ketchd, method, "/_ping")
        assert status == 200
        assert body == (b"OK" if method == "GET" else b"")
        assert headers["Api-Version"] == CURRENT and headers["Ostype"] == "linux"


def test_docker_version(ketchd: Ketchd) -> None:
    r = ketchd.docker("version")
    assert r.returncode == 0, r.stderr
    assert "Client:" in r.stdout and "Server: ketch Engine" in r.stdout
    assert f"Version:          {ketch.__version__}" in r.stdout
    assert f"API version:      {CURRENT} (minimum version {MINIMUM})" in r.stdout


def test_docker_version_format_api_version(ketchd: Ketchd) -> None:
    r = ketchd.docker("version", "--format", "{{.Server.APIVersion}}", host_flag=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == CURRENT


def test_docker_version_json(ketchd: Ketchd) -> None:
    r = ketchd.docker("version", "--format", "{{json .Server}}")
    assert r.returncode == 0, r.stderr
    server = json.loads(r.stdout)
    assert server["Os"] == "linux" and server["KernelVersion"] == platform.release()
    assert server["Components"][0]["Name"] == "Engine"


def test_docker_info(ketchd: Ketchd) -> None:
    r = ketchd.docker("info")
    assert r.returncode == 0, r.stderr
    assert f"Server Version: {ketch.__version__}" in r.stdout
    assert f"Kernel Version: {platform.release()}" in r.stdout
    assert "Cgroup Version: " in r.stdout
    assert "Storage Driver: overlayfs" in r.stdout
    assert "Default Runtime: ketch" in r.stdout
    r = ketchd.docker("info", "--format", "{{json .}}")
    info = json.loads(r.stdout)
    assert info["CgroupVersion"] in ("1", "2")
    assert info["DockerRootDir"] == str(ketchd.root / "data")
    assert info["Swarm"]["LocalNodeState"] == "inactive"
    assert info["NCPU"] == os.cpu_count()


def test_too_new_client_gets_clear_error(ketchd: Ketchd) -> None:
    r = ketchd.docker("version", env={"DOCKER_API_VERSION": "9.99"})
    assert r.returncode != 0
    assert ("Error response from daemon: client version 9.99 is too new. "
            f"Maximum supported API version is {CURRENT}") in r.stderr


def test_unknown_endpoint_is_page_not_found(ketchd: Ketchd) -> None:
    status, _, body = _get(ketchd, "GET", "/v1.47/no/such/thing")
    assert status == 404 and json.loads(body) == {"message": "page not found"}


@pytest.mark.skipif(os.geteuid() != 0, reason="socket ownership needs root")
def test_socket_is_root_owned_0660(ketchd: Ketchd) -> None:
    st = os.stat(ketchd.sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_uid == 0


def test_pidfile_names_the_daemon(ketchd: Ketchd) -> None:
    assert int(ketchd.pidfile.read_text()) == ketchd.proc.pid


def test_sigterm_removes_socket_and_pidfile(tmp_path: Path) -> None:
    d = start_ketchd(tmp_path)
    assert d.sock.exists() and d.pidfile.exists()
    assert stop_process(d.proc) == 0
    assert not d.sock.exists() and not d.pidfile.exists()


def test_tcp_host_without_tls_is_refused(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "ketch.cmd.ketchd", "-H", "tcp://0.0.0.0:2375",
                        "--data-root", str(tmp_path / "d"), "--exec-root", str(tmp_path / "e"),
                        "--pidfile", str(tmp_path / "p")],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 1
    assert "refusing to listen on 'tcp://0.0.0.0:2375' without TLS" in r.stderr
    assert not (tmp_path / "p").exists()


def _docker_py() -> Any:
    try:
        import docker  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        pytest.skip("docker-py is not installed in the venv (pip install docker)")
    return docker


def test_docker_py_version_and_ping(ketchd: Ketchd) -> None:
    docker = _docker_py()
    client = docker.DockerClient(base_url=ketchd.url)
    try:
        assert client.ping() is True
        v = client.version()
        assert v["ApiVersion"] == CURRENT and v["Version"] == ketch.__version__
        assert client.info()["ServerVersion"] == ketch.__version__
    finally:
        client.close()
