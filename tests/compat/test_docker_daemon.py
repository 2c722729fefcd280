"""ketchd as a daemon: TLS on TCP, side-by-side instances, SIGKILL at any moment, events,
attach with detach keys and terminal size."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.compat.conftest import (
    DOCKER,
    Ketchd,
    in_netns,
    seed_busybox,
    start_ketchd,
    stop_process,
)


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"rc={r.returncode} out={r.stdout!r} err={r.stderr!r}"
    return r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certs(d: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
             "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=d)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "ext-client").write_text("extendedKeyUsage=clientAuth\n")
    for name, ext in (("server", "ext"), ("client", "ext-client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                 f"{name}-key.pem", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", f"{name}.pem", cwd=d)


def test_tcp_requires_tls_with_client_certificates(tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    root = tmp_path / "k"
    root.mkdir()
    port = _free_port()
    with pytest.raises(RuntimeError, match="without TLS"):
        start_ketchd(root, "-H", f"tcp://127.0.0.1:{port}")
    _certs(tmp_path)
    d = start_ketchd(root, "-H", f"tcp://127.0.0.1:{port}",
                     "--tlsverify", "--tlscacert", str(tmp_path / "ca.pem"), "--tlscert",
                     str(tmp_path / "server.pem"), "--tlskey", str(tmp_path / "server-key.pem"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_CONFIG"] = str(root / "cfg")
        base = [DOCKER, "-H", f"tcp://127.0.0.1:{port}", "--tlsverify", "--tlscacert",
                str(tmp_path / "ca.pem")]
        good = subprocess.run(
            in_netns(root, [*base, "--tlscert", str(tmp_path / "client.pem"), "--tlskey",
                            str(tmp_path / "client-key.pem"), "version", "--format",
                            "{{.Server.Version}}"]),
            env=env, capture_output=True, text=True, timeout=30, check=False)
        assert good.returncode == 0 and good.stdout.strip(), good.stderr
        # No client certificate: the TLS handshake is refused.
        bad = subprocess.run(in_netns(root, [*base, "version"]), env=env, capture_output=True,
                             text=True, timeout=30, check=False)
        assert bad.returncode != 0
    finally:
        stop_process(d.proc)


def test_two_daemons_side_by_side(tmp_path_factory: pytest.TempPathFactory) -> None:
    roots = [tmp_path_factory.mktemp(f"side{i}") for i in range(2)]
    ds: list[Ketchd] = []
    try:
        for r in roots:
            seed_busybox(r)
            ds.append(start_ketchd(r))
        ids = [_ok(d.docker("run", "-d", "busybox", "sleep", "30")).strip() for d in ds]
        for d, cid, other in zip(ds, ids, reversed(ids), strict=True):
            listed = _ok(d.docker("ps", "-q", "--no-trunc")).split()
            assert listed == [cid] and other not in listed
        assert _ok(ds[0].docker("exec", ids[0], "echo", "one")) == "one\n"
    finally:
        for d in ds:
            d.docker("rm", "-f", *d.docker("ps", "-aq").stdout.split())
            stop_process(d.proc)


def test_sigkill_at_any_moment_restarts_consistent(tmp_path: Path) -> None:
    root = tmp_path / "k"
    root.mkdir()
    seed_busybox(root)
    rnd = random.Random(1234)
    d = start_ketchd(root)
    try:
        for _ in range(4):
            stop = threading.Event()

            def churn(dd: Ketchd = d, ev: threading.Event = stop) -> None:
                while not ev.is_set():
                    dd.docker("run", "-d", "busybox", "sleep", "5")
                    dd.docker("create", "-v", "/anon", "busybox", "true")

            t = threading.Thread(target=churn)
            t.start()
            time.sleep(rnd.uniform(0.2, 1.2))
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            stop.set()
            t.join()
            d = start_ketchd(root)
            ids = _ok(d.docker("ps", "-aq")).split()
            for cid in ids:
                info = json.loads(_ok(d.docker("inspect", cid)))[0]
                assert info["State"]["Status"] in ("created", "running", "exited")
        _ok(d.docker("rm", "-f", "-v", *_ok(d.docker("ps", "-aq")).split()))
        assert _ok(d.docker("ps", "-aq")) == ""
        _ok(d.docker("run", "--rm", "busybox", "true"))
        # Nothing a cut-short create left behind stays held: every volume can go, and
        # no container snapshot remains.
        _ok(d.docker("volume", "prune", "-f"))
        assert _ok(d.docker("volume", "ls", "-q")) == ""
        snaps = json.loads((root / "data" / "snapshots" / "overlay" / "metadata.json")
                           .read_text()) if (root / "data" / "snapshots" / "overlay" /
                                             "metadata.json").exists() else None
        if snaps is not None:
            assert "container-" not in json.dumps(snaps)
    finally:
        d.docker("rm", "-f", *d.docker("ps", "-aq").stdout.split())
        stop_process(d.proc)
    mounts = Path("/proc/mounts").read_text()
    assert str(root) not in mounts


def _pty_run(d: Ketchd, args: list[str], steps: list[tuple[bytes, bytes]],
             rows: int = 24, cols: int = 80, timeout: float = 15) -> tuple[int, bytes]:
    """The docker CLI on a terminal of rows x cols; for each (wait_for, send) step, wait
    until ``wait_for`` was shown, then type ``send``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=d.url, DOCKER_CONFIG=str(d.root / "docker-config"), TERM="xterm")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen([DOCKER, *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    i = 0
    try:
        while time.monotonic() < deadline:
            if i < len(steps) and steps[i][0] in out:
                os.write(master, steps[i][1])
                i += 1
            r, _, _ = select.select([master], [], [], 0.05)
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return rc, bytes(out)


def test_run_it_gets_the_terminal_size(ketchd_busybox: Ketchd) -> None:
    rc, out = _pty_run(ketchd_busybox, ["run", "--rm", "-it", "busybox", "sh"],
                       [(b"#", b"stty size; exit\r")], rows=33, cols=101)
    assert b"33 101" in out and rc == 0, out


def test_attach_and_detach_with_the_escape_keys(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "-dit", "busybox", "sh")).strip()
    try:
        _rc, out = _pty_run(d, ["attach", cid], [(b"", b"echo attached-$((1+1))\r"),
                                                (b"attached-2", b"\x10\x11")])
        # The CLI ends its stream on the keys and says so (with dockerd too: exit status 1)
        assert b"attached-2" in out and b"read escape sequence" in out, out
        info = json.loads(_ok(d.docker("inspect", cid)))[0]
        assert info["State"]["Running"]  # detaching left it running
        _rc, out = _pty_run(d, ["attach", "--detach-keys", "ctrl-x", cid],
                           [(b"", b"echo again\r"), (b"again", b"\x18")])
        assert b"again" in out and b"read escape sequence" in out
    finally:
        _ok(d.docker("rm", "-f", cid))


def test_events_with_filters_since_and_until(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    since = time.time()
    cid = _ok(d.docker("run", "-d", "--name", "evented", "busybox", "true")).strip()
    _ok(d.docker("wait", cid))
    _ok(d.docker("rm", cid))
    until = time.time() + 0.5
    time.sleep(0.6)
    out = _ok(d.docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
                       "--filter", f"container={cid}", "--format", "{{.Action}}"))
    assert out.split() == ["create", "attach", "start", "die", "destroy"] or \
        out.split() == ["create", "start", "die", "destroy"], out
    only = _ok(d.docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
                        "--filter", "event=die", "--filter", "container=evented",
                        "--format", "{{.Actor.Attributes.exitCode}}"))
    assert only.split() == ["0"]


def test_config_file_and_default_runtime(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("conf")
    bad = root / "bad.json"
    bad.write_text('{"no-such-directive": 1}')
    with pytest.raises(RuntimeError, match="unknown directive 'no-such-directive'"):
        start_ketchd(root, "--config-file", str(bad))
    if not shutil.which("runc"):
        pytest.skip("runc not installed")
    seed_busybox(root)
    conf = root / "daemon.json"
    conf.write_text(json.dumps({"default-runtime": "runc", "live-restore": True,
                                "log-opts": {"max-size": "5m"}}))
    d = start_ketchd(root, "--config-file", str(conf))
    try:
        info = json.loads(_ok(d.docker("info", "--format", "{{json .}}")))
        assert info["DefaultRuntime"] == "runc" and info["LiveRestoreEnabled"] is True
        cid = _ok(d.docker("create", "busybox", "echo", "hi")).strip()
        inspect = json.loads(_ok(d.docker("inspect", cid)))[0]
        assert inspect["HostConfig"]["Runtime"] == "runc"
        assert inspect["HostConfig"]["LogConfig"]["Config"] == {"max-size": "5m"}
        _ok(d.docker("start", "-a", cid))
        assert _ok(d.docker("logs", cid)) == "hi\n"
        _ok(d.docker("rm", cid))
    finally:
        stop_process(d.proc)
