"""The ``ketch`` CLI against a private ketchd: what a user types and sees.

Verbs whose endpoints the daemon does not serve (yet) are skipped at run time by a
probe of the daemon (:func:`require`): a route that answers ``404 page not found``
is not there. Images come from ``ketch image bootstrap busybox`` (no registry).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ketch
from ketch import errors
from ketch.api.version import CURRENT
from ketch.client import RemoteEngineClient
from tests.compat.conftest import Ketchd

BUSYBOX = "/bin/busybox"


def ketch_cli(d: Ketchd, *args: str, input: str | None = None, host_flag: bool = False,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "KETCH_HOST")}
    argv = [sys.executable, "-m", "ketch.cmd.ketch"]
    if host_flag:
        argv += ["-H", d.url]
    else:
        env["KETCH_HOST"] = d.url
    return subprocess.run([*argv, *args], env=env, input=input, capture_output=True,
                          text=True, timeout=timeout, check=False)


def require(d: Ketchd, method: str, path: str) -> None:
    """Skip unless the daemon routes ``method path`` (anything but 404 "page not found")."""
    with RemoteEngineClient(d.url) as c:
        try:
            resp = c.api.open(method, path)
            resp.conn.close()  # the head is enough (and /events would never end)
        except errors.NotFound as e:
            if str(e) == "page not found":
                pytest.skip(f"ketchd does not serve {method} {path} yet")
        except errors.KetchError:
            pass


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def busybox(ketchd: Ketchd) -> str:
    """``busybox:latest`` in the private ketchd, loaded by ``ketch image bootstrap``."""
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed")
    require(ketchd, "GET", "/images/json")
    require(ketchd, "POST", "/images/load")
    r = ketch_cli(ketchd, "image", "bootstrap", "busybox")
    ok(r)
    assert "Loaded image: busybox:latest" in r.stdout
    return "busybox:latest"


def _containers(d: Ketchd) -> None:
    require(d, "GET", "/containers/json")
    require(d, "POST", "/containers/create")


# -- system ----------------------------------------------------------------------------


def test_version(ketchd: Ketchd) -> None:
    out = ok(ketch_cli(ketchd, "version"))
    assert out.startswith("Client:\n Version:           " + ketch.__version__)
    assert "\nServer: ketch Engine" in out
    assert f"  API version:      {CURRENT} (minimum version" in out
    assert ok(ketch_cli(ketchd, "version", "--format", "{{.Server.Version}}")) == \
        ketch.__version__ + "\n"
    assert ok(ketch_cli(ketchd, "-H", ketchd.url, "version", "-f",
                        "{{.Client.ApiVersion}}")).strip() == CURRENT


def test_info(ketchd: Ketchd) -> None:
    with RemoteEngineClient(ketchd.url) as c:
        info = c.info()
    out = ok(ketch_cli(ketchd, "info", host_flag=True))
    assert f" Server Version: {info['ServerVersion']}\n" in out
    assert f" Docker Root Dir: {ketchd.root / 'data'}\n" in out
    assert f" Name: {info['Name']}\n" in out
    assert ok(ketch_cli(ketchd, "info", "--format", "{{.ID}} {{json .NCPU}}")) == \
        f"{info['ID']} {info['NCPU']}\n"
    assert ok(ketch_cli(ketchd, "system", "info", "-f", "{{.OSType}}")) == "linux\n"


def test_unreachable_daemon(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "ketch.cmd.ketch", "-H",
                        f"unix://{tmp_path}/nothing.sock", "ps"],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 1
    assert r.stderr.startswith(f"Cannot connect to the ketch daemon at unix://{tmp_path}")


# -- images ------------------------------------------------------------------------------


def test_bootstrap_and_images(ketchd: Ketchd, busybox: str) -> None:
    rows = ok(ketch_cli(ketchd, "images", "--format", "json")).splitlines()
    mine = [json.loads(r) for r in rows]
    bb = next(r for r in mine if (r["Repository"], r["Tag"]) == ("busybox", "latest"))
    assert len(bb["ID"]) == 12
    table = ok(ketch_cli(ketchd, "images")).splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert any(line.startswith("busybox ") and bb["ID"] in line for line in table[1:])
    ok(ketch_cli(ketchd, "image", "bootstrap", "busybox", "--tag", "kbb:v1"))
    ids = ok(ketch_cli(ketchd, "image", "ls", "-q", "kbb")).split()
    assert ids == [bb["ID"]]  # the bootstrap is reproducible: same image ID


def test_tag_inspect_history_rmi(ketchd: Ketchd, busybox: str) -> None:
    ok(ketch_cli(ketchd, "tag", busybox, "mine/box:1"))
    inspected = json.loads(ok(ketch_cli(ketchd, "image", "inspect", "mine/box:1")))
    assert "mine/box:1" in inspected[0]["RepoTags"]
    assert ok(ketch_cli(ketchd, "inspect", "-f", "{{.Id}}", "mine/box:1")).strip() == \
        inspected[0]["Id"]
    history = ok(ketch_cli(ketchd, "history", "--format", "{{.CreatedBy}}", busybox))
    assert "ketch image bootstrap busybox" in history
    r = ketch_cli(ketchd, "rmi", "mine/box:1", "no/such:image")
    assert r.returncode == 1
    assert "Untagged: mine/box:1" in r.stdout
    assert "Error response from daemon: No such image: no/such:image" in r.stderr


def test_save_load_roundtrip(ketchd: Ketchd, busybox: str, tmp_path: Path) -> None:
    require(ketchd, "GET", "/images/get")
    tar = tmp_path / "bb.tar"
    ok(ketch_cli(ketchd, "save", "-o", str(tar), busybox))
    assert tar.stat().st_size > 100_000
    ok(ketch_cli(ketchd, "tag", busybox, "reloaded:1"))
    ok(ketch_cli(ketchd, "rmi", "reloaded:1"))
    assert "Loaded image" in ok(ketch_cli(ketchd, "load", "-i", str(tar)))


# -- containers --------------------------------------------------------------------------


def test_run_output_and_exit_code(ketchd: Ketchd, busybox: str) -> None:
    _containers(ketchd)
    r = ketch_cli(ketchd, "run", "--rm", busybox, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout) == (3, "out\n"), r.stderr
    assert "err\n" in r.stderr
    r = ketch_cli(ketchd, "run", "-i", "--rm", busybox, "tr", "a-z", "A-Z", input="hello\n")
    assert (r.returncode, r.stdout) == (0, "HELLO\n"), r.stderr


def test_run_errors(ketchd: Ketchd, busybox: str) -> None:
    _containers(ketchd)
    r = ketch_cli(ketchd, "run", "--rm", "no-such-image:9")
    assert r.returncode == 125
    assert "Unable to find image 'no-such-image:9' locally" in r.stderr
    r = ketch_cli(ketchd, "run", "--rm", busybox, "/no/such/program")
    assert r.returncode == 127, r.stderr
    r = ketch_cli(ketchd, "run", "--memory", "lots", busybox)
    assert r.returncode == 125 and "invalid size" in r.stderr


def test_detached_container_lifecycle(ketchd: Ketchd, busybox: str) -> None:
    _containers(ketchd)
    cid = ok(ketch_cli(ketchd, "run", "-d", "--name", "cli-web", "-l", "tier=web", busybox,
                       "sh", "-c", "echo started; exec sleep 300")).strip()
    try:
        assert len(cid) == 64
        ps = ok(ketch_cli(ketchd, "ps", "--format", "json"))
        rows = [json.loads(x) for x in ps.splitlines()]
        row = next(r for r in rows if r["Names"] == "cli-web")
        assert row["ID"] == cid[:12] and row["State"] == "running"
        assert row["Labels"] == "tier=web"
        assert ok(ketch_cli(ketchd, "ps", "-q", "--filter", "name=cli-web")) == cid[:12] + "\n"
        assert ok(ketch_cli(ketchd, "inspect", "-f", "{{.State.Running}}", "cli-web")) == \
            "true\n"
        deadline = time.monotonic() + 10
        while "started" not in ketch_cli(ketchd, "logs", "cli-web").stdout:
            assert time.monotonic() < deadline, "no log output"
            time.sleep(0.1)
        require(ketchd, "POST", f"/containers/{cid}/exec")
        r = ketch_cli(ketchd, "exec", "-e", "X=1", "cli-web", "sh", "-c", "echo $X; exit 4")
        assert (r.returncode, r.stdout) == (4, "1\n"), r.stderr
        r = ketch_cli(ketchd, "exec", "-i", "cli-web", "cat", input="through exec\n")
        assert r.stdout == "through exec\n"
        assert ok(ketch_cli(ketchd, "stop", "-t", "1", "cli-web")) == "cli-web\n"
        assert ok(ketch_cli(ketchd, "ps", "-a", "--filter", "name=cli-web", "--format",
                            "{{.State}}")) == "exited\n"
        assert ok(ketch_cli(ketchd, "wait", "cli-web")).strip() in ("137", "143")
    finally:
        r = ketch_cli(ketchd, "rm", "-f", "cli-web")
    assert r.stdout == "cli-web\n"
    r = ketch_cli(ketchd, "rm", "cli-web")
    assert r.returncode == 1 and "No such container: cli-web" in r.stderr


def _pty_run(d: Ketchd, *args: str, send: bytes) -> tuple[int, bytes, list[object], list[object]]:
    """Run the CLI on a fresh pty; type ``send`` once the shell prompt is there."""
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST",)}
    env["KETCH_HOST"] = d.url
    proc = subprocess.Popen([sys.executable, "-m", "ketch.cmd.ketch", *args], stdin=slave,
                            stdout=slave, stderr=slave, env=env, start_new_session=True)
    out = b""
    try:
        deadline = time.monotonic() + 30
        sent = False
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                out += os.read(master, 4096)
            if not sent and b"# " in out:
                os.write(master, send)
                sent = True
        status = proc.wait(10)
        after = termios.tcgetattr(slave)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    return status, out, before, after


def test_run_interactive_tty(ketchd: Ketchd, busybox: str) -> None:
    _containers(ketchd)
    status, out, before, after = _pty_run(ketchd, "run", "-it", "--rm", busybox, "sh",
                                          send=b"echo $((6*7)); tty; exit 7\r")
    assert status == 7, out
    assert b"42\r\n" in out and b"/dev/pts/" in out
    assert after == before  # the terminal is out of raw mode again


def test_volumes(ketchd: Ketchd) -> None:
    require(ketchd, "GET", "/volumes")
    assert ok(ketch_cli(ketchd, "volume", "create", "--label", "k=v", "cli-vol")) == \
        "cli-vol\n"
    assert "cli-vol" in ok(ketch_cli(ketchd, "volume", "ls", "-q")).split()
    table = ok(ketch_cli(ketchd, "volume", "ls")).splitlines()
    assert table[0] == "DRIVER    VOLUME NAME"
    assert "local     cli-vol" in table
    assert ok(ketch_cli(ketchd, "volume", "inspect", "-f", "{{.Driver}} {{.Labels}}",
                        "cli-vol")) == "local map[k:v]\n"
    assert ok(ketch_cli(ketchd, "volume", "rm", "cli-vol")) == "cli-vol\n"
    r = ketch_cli(ketchd, "volume", "inspect", "cli-vol")
    assert r.returncode == 1 and "no such volume" in r.stderr.lower()


def test_events_since_until(ketchd: Ketchd, busybox: str) -> None:
    require(ketchd, "GET", "/events")
    ok(ketch_cli(ketchd, "tag", busybox, "evented:1"))
    out = ok(ketch_cli(ketchd, "events", "--since", "5m", "--until", "0s", "--filter",
                       "type=image", "--format", "{{.Type}} {{.Action}}"))
    assert "image tag" in out.splitlines()


@pytest.fixture
def sleeper(ketchd: Ketchd, busybox: str) -> Iterator[str]:
    _containers(ketchd)
    ok(ketch_cli(ketchd, "run", "-d", "--name", "cli-cp", busybox, "sleep", "300"))
    try:
        yield "cli-cp"
    finally:
        ketch_cli(ketchd, "rm", "-f", "cli-cp")


def test_cp_both_directions(ketchd: Ketchd, sleeper: str, tmp_path: Path) -> None:
    require(ketchd, "GET", f"/containers/{sleeper}/archive?path=/")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("payload\n")
    ok(ketch_cli(ketchd, "cp", str(src), f"{sleeper}:/tmp/copied"))
    r = ketch_cli(ketchd, "exec", sleeper, "cat", "/tmp/copied/sub/f.txt")
    assert r.stdout == "payload\n", r.stderr
    back = tmp_path / "back"
    ok(ketch_cli(ketchd, "cp", f"{sleeper}:/tmp/copied", str(back)))
    assert (back / "sub" / "f.txt").read_text() == "payload\n"
    ok(ketch_cli(ketchd, "cp", f"{sleeper}:/etc/passwd", str(tmp_path)))
    assert (tmp_path / "passwd").read_text().startswith("root:")
