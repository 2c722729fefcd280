"""Containers through ketchd, driven by the real docker CLI (client only) and docker-py."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.compat.conftest import DOCKER, Ketchd, seed_busybox, start_ketchd, stop_process


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"rc={r.returncode} out={r.stdout!r} err={r.stderr!r}"
    return r.stdout


def _until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _inspect(d: Ketchd, ref: str) -> dict:  # type: ignore[type-arg]
    return json.loads(_ok(d.docker("inspect", ref)))[0]  # type: ignore[no-any-return]


def _pty_docker(d: Ketchd, args: list[str], send: bytes, timeout: float = 15) -> tuple[int, bytes]:
    """Run the docker CLI on a pseudo-terminal, type ``send``, collect what it shows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=d.url, DOCKER_CONFIG=str(d.root / "docker-config"), TERM="xterm")
    master, slave = pty.openpty()
    proc = subprocess.Popen([DOCKER, *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    out = bytearray()
    sent = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and (b"#" in out or time.monotonic() > deadline - timeout + 1.5):
                os.write(master, send)
                sent = True
            if proc.poll() is not None and not r:
                break
        rc = proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return rc, bytes(out)


# ---- run ----------------------------------------------------------------------------


def test_run_rm_prints_output_and_returns_exit_code(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    r = d.docker("run", "--rm", "busybox", "echo", "hello from ketch")
    assert _ok(r) == "hello from ketch\n"
    r = d.docker("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert r.returncode == 3
    assert r.stdout == "out\n" and r.stderr == "err\n"
    assert _ok(d.docker("ps", "-aq")) == ""  # --rm removed it


def test_run_missing_command_is_127_and_leaves_container_created(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    r = d.docker("run", "--name", "nocmd", "busybox", "/no/such/thing")
    assert r.returncode == 127, r.stderr
    assert "no such file or directory" in r.stderr.lower() or "not found" in r.stderr.lower()
    _ok(d.docker("rm", "-f", "nocmd"))


def test_run_not_executable_is_126(ketchd_busybox: Ketchd) -> None:
    r = ketchd_busybox.docker("run", "--rm", "busybox", "/etc/passwd")
    assert r.returncode == 126 and "permission denied" in r.stderr
    r = ketchd_busybox.docker("run", "--rm", "busybox", "no-such-command")
    assert r.returncode == 127 and "executable file not found in $PATH" in r.stderr
    assert _ok(ketchd_busybox.docker("ps", "-aq")) == ""  # --rm held after a failed start


def test_run_it_with_a_tty(ketchd_busybox: Ketchd) -> None:
    rc, out = _pty_docker(ketchd_busybox, ["run", "--rm", "-it", "busybox", "sh"],
                          b"echo tty-$((6*7)); [ -t 0 ] && echo is-a-tty; exit 4\r")
    assert b"tty-42" in out and b"is-a-tty" in out, out
    assert rc == 4


def test_run_d_then_logs_follow_ends_with_the_container(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "-d", "busybox", "sh", "-c",
                       "for i in 1 2 3; do echo line$i; sleep 0.3; done")).strip()
    assert len(cid) == 64
    r = d.docker("logs", "-f", cid)
    assert _ok(r) == "line1\nline2\nline3\n"
    assert _ok(d.docker("wait", cid)).strip() == "0"
    r = d.docker("logs", "--tail", "1", "-t", cid)
    assert _ok(r).rstrip().endswith(" line3") and r.stdout[:4].isdigit()
    _ok(d.docker("rm", cid))


def test_ps_inspect_and_names(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    _ok(d.docker("run", "-d", "--name", "sleeper", "-l", "role=test", "busybox", "sleep", "30"))
    try:
        ps = _ok(d.docker("ps", "--format", "{{.Names}} {{.Image}} {{.Status}}"))
        assert "sleeper busybox Up" in ps
        assert _ok(d.docker("ps", "-q", "--filter", "label=role=test")).strip()
        assert _ok(d.docker("ps", "-q", "--filter", "label=role=other")) == ""
        info = _inspect(d, "sleeper")
        assert info["State"]["Running"] and info["State"]["Pid"] > 0
        assert info["Config"]["Cmd"] == ["sleep", "30"] and info["Name"] == "/sleeper"
        r = d.docker("run", "-d", "--name", "sleeper", "busybox", "true")
        assert r.returncode != 0 and "is already in use" in r.stderr
        _ok(d.docker("rename", "sleeper", "sleeper2"))
        assert _inspect(d, "sleeper2")["Name"] == "/sleeper2"
        r = d.docker("rm", "sleeper2")
        assert r.returncode != 0 and "stop the container before removing" in r.stderr
    finally:
        _ok(d.docker("rm", "-f", "sleeper2"))
    r = d.docker("container", "inspect", "sleeper2")
    assert r.returncode == 1 and "No such container: sleeper2" in r.stderr


def test_stop_and_kill_signals_reach_pid_1(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    script = ('trap "echo got-TERM; exit 7" TERM; trap "echo got-USR1" USR1; '
              'echo ready; while true; do sleep 0.1; done')
    cid = _ok(d.docker("run", "-d", "busybox", "sh", "-c", script)).strip()
    assert _until(lambda: "ready" in d.docker("logs", cid).stdout)
    _ok(d.docker("kill", "-s", "USR1", cid))
    assert _until(lambda: "got-USR1" in d.docker("logs", cid).stdout)
    t0 = time.monotonic()
    _ok(d.docker("stop", cid))
    assert time.monotonic() - t0 < 5  # the trap ran; no 10 s timeout then SIGKILL
    info = _inspect(d, cid)
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 7
    assert "got-TERM" in d.docker("logs", cid).stdout
    # A process that ignores SIGTERM is killed after the timeout.
    cid2 = _ok(d.docker("run", "-d", "busybox", "sh", "-c",
                        "trap '' TERM; echo up; while true; do sleep 0.1; done")).strip()
    assert _until(lambda: "up" in d.docker("logs", cid2).stdout)
    _ok(d.docker("stop", "-t", "1", cid2))
    assert _inspect(d, cid2)["State"]["ExitCode"] == 137
    _ok(d.docker("rm", cid, cid2))


def test_exec_non_tty_and_tty(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "-d", "-e", "A=1", "busybox", "sleep", "30")).strip()
    try:
        assert _ok(d.docker("exec", cid, "sh", "-c", "echo $A$B", )) == "1\n"
        assert _ok(d.docker("exec", "-e", "B=2", "-w", "/tmp", cid, "sh", "-c",
                            "echo $A$B $(pwd)")) == "12 /tmp\n"
        assert _ok(d.docker("exec", "-u", "nobody", cid, "id", "-u")).strip() == "65534"
        r = d.docker("exec", cid, "sh", "-c", "exit 5")
        assert r.returncode == 5
        r = d.docker("exec", "-i", cid, "cat")
        rc, out = _pty_docker(d, ["exec", "-it", cid, "sh"], b"echo in-$((2+3)); exit 6\r")
        assert b"in-5" in out and rc == 6, out
    finally:
        _ok(d.docker("rm", "-f", cid))


def test_restart_policy_on_failure_counts_and_stops(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "-d", "--restart", "on-failure:2", "busybox", "sh", "-c",
                       "echo run; exit 1")).strip()
    assert _until(lambda: _inspect(d, cid)["RestartCount"] == 2
                  and _inspect(d, cid)["State"]["Status"] == "exited", 15)
    time.sleep(1)
    info = _inspect(d, cid)
    assert info["RestartCount"] == 2 and info["State"]["ExitCode"] == 1
    assert d.docker("logs", cid).stdout == "run\nrun\nrun\n"
    _ok(d.docker("rm", cid))


def test_restart_always_restarts_but_not_after_a_manual_stop(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "-d", "--restart", "always", "busybox", "sh", "-c",
                       "sleep 0.3; exit 0")).strip()
    assert _until(lambda: _inspect(d, cid)["RestartCount"] >= 2, 15)
    _ok(d.docker("stop", "-t", "1", cid))
    count = _inspect(d, cid)["RestartCount"]
    time.sleep(1.5)
    info = _inspect(d, cid)
    assert info["State"]["Status"] == "exited" and info["RestartCount"] == count
    _ok(d.docker("rm", cid))


def test_healthcheck_status_and_events(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    good = _ok(d.docker("run", "-d", "--health-cmd", "test -e /tmp", "--health-interval",
                        "300ms", "busybox", "sleep", "30")).strip()
    bad = _ok(d.docker("run", "-d", "--health-cmd", "exit 1", "--health-interval", "300ms",
                       "--health-retries", "2", "busybox", "sleep", "30")).strip()
    try:
        assert _until(lambda: _inspect(d, good)["State"]["Health"]["Status"] == "healthy")
        assert _until(lambda: _inspect(d, bad)["State"]["Health"]["Status"] == "unhealthy")
        log = _inspect(d, bad)["State"]["Health"]["Log"]
        assert log and log[-1]["ExitCode"] == 1
        assert "(healthy)" in _ok(d.docker("ps", "--filter", f"id={good}"))
        assert _ok(d.docker("ps", "-q", "--no-trunc", "--filter", "health=unhealthy")
                   ).split() == [bad]
        time.sleep(1.1)  # the CLI sends --until in whole seconds: let this one close
        events = _ok(d.docker("events", "--since", "60s", "--until", "0s", "--filter",
                              "event=health_status", "--format",
                              "{{.Actor.ID}} {{.Action}}")).splitlines()
        assert f"{good} health_status: healthy" in events
        assert f"{bad} health_status: unhealthy" in events
    finally:
        _ok(d.docker("rm", "-f", good, bad))


def test_health_on_failure_label_restarts_an_unhealthy_container(ketchd_busybox: Ketchd
                                                                  ) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "-d", "-l", "ketch.health.on-failure=restart",
                       "--stop-timeout", "1", "--health-cmd", "exit 1",
                       "--health-interval", "300ms", "--health-retries", "1", "busybox",
                       "sleep", "30")).strip()
    try:
        first = _inspect(d, cid)["State"]["StartedAt"]
        assert _until(lambda: _inspect(d, cid)["State"]["StartedAt"] != first, 10)
        assert _inspect(d, cid)["State"]["Running"]
    finally:
        _ok(d.docker("rm", "-f", cid))


def test_named_volume_survives_container_removal(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    _ok(d.docker("run", "--rm", "-v", "keep:/data", "busybox", "sh", "-c",
                 "echo kept > /data/f"))
    assert _ok(d.docker("run", "--rm", "-v", "keep:/data", "busybox", "cat", "/data/f")) \
        == "kept\n"
    r = d.docker("run", "-d", "-v", "keep:/data", "busybox", "sleep", "30")
    cid = _ok(r).strip()
    r = d.docker("volume", "rm", "keep")
    assert r.returncode != 0 and "in use" in r.stderr
    _ok(d.docker("rm", "-f", cid))
    _ok(d.docker("volume", "rm", "keep"))


def test_anonymous_volume_removed_with_rm_v(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("create", "-v", "/anon", "busybox", "true")).strip()
    mounts = _inspect(d, cid)["Mounts"]
    assert len(mounts) == 1 and mounts[0]["Type"] == "volume"
    name = mounts[0]["Name"]
    assert name in _ok(d.docker("volume", "ls", "-q"))
    _ok(d.docker("rm", "-v", cid))
    assert name not in _ok(d.docker("volume", "ls", "-q"))


def test_pause_unpause_and_update(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "-d", "busybox", "sleep", "30")).strip()
    try:
        _ok(d.docker("pause", cid))
        assert _inspect(d, cid)["State"]["Paused"]
        r = d.docker("exec", cid, "true")
        assert r.returncode != 0 and "paused" in r.stderr
        _ok(d.docker("unpause", cid))
        assert not _inspect(d, cid)["State"]["Paused"]
        _ok(d.docker("update", "--memory", "64m", "--memory-swap", "128m", cid))
        assert _inspect(d, cid)["HostConfig"]["Memory"] == 64 * 1024 * 1024
    finally:
        _ok(d.docker("rm", "-f", cid))


def test_errors_use_dockers_wording(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    r = d.docker("start", "nope")
    assert r.returncode != 0 and "No such container: nope" in r.stderr
    r = d.docker("run", "--rm", "no-such-image-here")
    assert r.returncode != 0 and "no-such-image-here" in r.stderr
    r = d.docker("run", "--rm", "--restart", "always", "busybox", "true")
    assert r.returncode != 0
    r = d.docker("run", "--rm", "--runtime", "nosuch", "busybox", "true")
    assert r.returncode != 0 and "unknown or invalid runtime name: nosuch" in r.stderr


def test_bad_create_bodies_are_400_and_create_nothing(ketchd_busybox: Ketchd) -> None:
    import docker

    d = ketchd_busybox
    api = docker.APIClient(base_url=d.url)
    before = _ok(d.docker("ps", "-aq"))
    for body, phrase in ((b"{not json", b"invalid JSON"),
                         (b'{"Image": "busybox", "Bogus": 1}', b"Bogus"),
                         (b'{"Image": "busybox", "Tty": "yes"}', b"Tty"),
                         (b'{"Image": "busybox", "HostConfig": {"Memory": "lots"}}', b"Memory")):
        resp = api.post(api._url("/containers/create"), data=body,
                        headers={"Content-Type": "application/json"})
        assert resp.status_code == 400, (body, resp.text)
        assert phrase in resp.content and "message" in resp.json()
    assert _ok(d.docker("ps", "-aq")) == before
    api.close()


def test_docker_py_run_logs_exec_wait_remove(ketchd_busybox: Ketchd) -> None:
    import docker

    client = docker.DockerClient(base_url=ketchd_busybox.url)
    try:
        out = client.containers.run("busybox", ["echo", "py"], remove=True)
        assert out == b"py\n"
        c = client.containers.run("busybox", ["sleep", "30"], detach=True, name="pyc")
        assert c.status in ("created", "running")
        c.reload()
        assert c.status == "running"
        code, output = c.exec_run(["sh", "-c", "echo exec; exit 2"])
        assert (code, output) == (2, b"exec\n")
        assert "pyc" in [x.name for x in client.containers.list()]
        c.kill()
        assert c.wait(timeout=10)["StatusCode"] == 137
        c.remove()
        with pytest.raises(docker.errors.NotFound):
            client.containers.get("pyc")
    finally:
        client.close()


def test_daemon_restart_keeps_a_running_container_with_live_restore(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("ketchd-restart")
    seed_busybox(root)
    d = start_ketchd(root, "--live-restore")
    cid = ""
    try:
        cid = _ok(d.docker("run", "-d", "busybox", "sh", "-c",
                           "i=0; while [ $i -lt 40 ]; do echo tick$i; i=$((i+1)); sleep 0.1; "
                           "done; exit 9")).strip()
        assert _until(lambda: "tick2" in d.docker("logs", cid).stdout)
        pid = _inspect(d, cid)["State"]["Pid"]
        d.proc.send_signal(signal.SIGKILL)  # no chance to clean up
        d.proc.wait()
        assert os.path.exists(f"/proc/{pid}")  # the container did not notice
        d = start_ketchd(root, "--live-restore")
        info = _inspect(d, cid)
        assert info["State"]["Running"] and info["State"]["Pid"] == pid
        assert _ok(d.docker("wait", cid)).strip() == "9"
        assert "tick39" in d.docker("logs", cid).stdout  # logs continued while we were away
        assert _inspect(d, cid)["State"]["ExitCode"] == 9
    finally:
        if cid:
            d.docker("rm", "-f", cid)
        stop_process(d.proc)
        shutil.rmtree(root, ignore_errors=True)


def test_unless_stopped_stays_stopped_after_a_manual_stop_across_restarts(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("ketchd-unless")
    seed_busybox(root)
    d = start_ketchd(root)
    try:
        kept = _ok(d.docker("run", "-d", "--restart", "unless-stopped", "--stop-timeout", "1",
                            "busybox", "sleep", "60")).strip()
        stopped = _ok(d.docker("run", "-d", "--restart", "unless-stopped", "--stop-timeout",
                               "1", "busybox", "sleep", "60")).strip()
        _ok(d.docker("stop", stopped))
        stop_process(d.proc)
        d = start_ketchd(root)
        assert _until(lambda: _inspect(d, kept)["State"]["Running"])
        time.sleep(0.5)
        assert _inspect(d, stopped)["State"]["Status"] == "exited"
    finally:
        if d.proc.poll() is None:
            d.docker("rm", "-f", *d.docker("ps", "-aq").stdout.split())
        stop_process(d.proc)
        shutil.rmtree(root, ignore_errors=True)


def test_daemon_stop_without_live_restore_stops_containers(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("ketchd-stop")
    seed_busybox(root)
    d = start_ketchd(root)
    cid = ""
    try:
        cid = _ok(d.docker("run", "-d", "--restart", "always", "--stop-timeout", "1",
                           "busybox", "sleep", "60")).strip()
        pid = _inspect(d, cid)["State"]["Pid"]
        stop_process(d.proc)
        assert not os.path.exists(f"/proc/{pid}")
        d = start_ketchd(root)
        # restart policy "always" brings it back with the daemon
        assert _until(lambda: _inspect(d, cid)["State"]["Running"])
    finally:
        if d.proc.poll() is None and cid:
            d.docker("rm", "-f", cid)
        stop_process(d.proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_runtime_runc_and_crun_selectable(ketchd_busybox: Ketchd, runtime: str) -> None:
    if not shutil.which(runtime):
        pytest.skip(f"{runtime} not installed")
    d = ketchd_busybox
    r = d.docker("run", "--rm", "--runtime", runtime, "busybox", "echo", f"via-{runtime}")
    assert _ok(r) == f"via-{runtime}\n"
    cid = _ok(d.docker("run", "-d", "--runtime", runtime, "busybox", "sleep", "30")).strip()
    try:
        assert _ok(d.docker("exec", cid, "echo", "exec")) == "exec\n"
        _ok(d.docker("kill", cid))
        assert _ok(d.docker("wait", cid)).strip() == "137"
    finally:
        _ok(d.docker("rm", "-f", cid))
    r = d.docker("run", "--rm", "--runtime", "nosuch", "busybox", "true")
    assert r.returncode != 0 and "unknown or invalid runtime name: nosuch" in r.stderr


def test_top_and_stats(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "-d", "--memory", "32m", "busybox", "sleep", "31")).strip()
    try:
        top = _ok(d.docker("top", cid))
        assert "PID" in top.splitlines()[0] and "sleep 31" in top
        line = _ok(d.docker("stats", "--no-stream", "--format",
                            "{{.Name}} {{.MemUsage}} {{.PIDs}}", cid)).strip()
        name, usage, _, limit, pids = line.split()
        assert name == _inspect(d, cid)["Name"].lstrip("/")
        assert limit == "32MiB" and int(pids) >= 1 and not usage.startswith("0B")
    finally:
        _ok(d.docker("rm", "-f", cid))


def _supervisor_of(cid: str) -> bool:
    """Whether a supervisor process for container ``cid`` is alive (its comm names it; a
    zombie waiting for init to reap it holds nothing and does not count)."""
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and Path(f"/proc/{pid}/comm").read_text().strip() == \
                    f"ksup-{cid[:10]}":
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    return True
        except OSError:
            continue
    return False


def test_created_containers_behave_like_dockers(tmp_path_factory: pytest.TempPathFactory,
                                                tmp_path: Path) -> None:
    """ketchd creates the container speculatively right after `create` (`docker run` starts
    it a moment later); none of that may show: update before start applies, cp before start
    lands, a create never started holds no process after a few seconds, nor after the daemon
    stops."""
    root = tmp_path_factory.mktemp("ketchd-created")
    seed_busybox(root)
    d = start_ketchd(root)
    try:
        c1 = _ok(d.docker("create", "busybox", "cat",
                          "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/added")).strip()
        _ok(d.docker("update", "--memory", "64m", "--memory-swap", "64m", c1))
        (tmp_path / "added").write_text("copied before start\n")
        _ok(d.docker("cp", str(tmp_path / "added"), f"{c1}:/added"))
        assert _ok(d.docker("start", "-a", c1)) == f"{64 << 20}\ncopied before start\n"
        c2 = _ok(d.docker("create", "busybox", "echo", "late")).strip()
        assert _until(lambda: _supervisor_of(c2), 5)  # made speculatively ...
        assert _until(lambda: not _supervisor_of(c2), 10)  # ... and undone, unused
        assert _ok(d.docker("start", "-a", c2)) == "late\n"
        c3 = _ok(d.docker("create", "busybox", "true")).strip()
        assert _until(lambda: _supervisor_of(c3), 5)
    finally:
        stop_process(d.proc)
    assert not _supervisor_of(c3)
    assert str(root) not in Path("/proc/mounts").read_text()
    shutil.rmtree(root, ignore_errors=True)
