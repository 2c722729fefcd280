"""``docker run`` flags as a user checks them from inside the container."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.compat.conftest import DOCKER, Ketchd


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"rc={r.returncode} out={r.stdout!r} err={r.stderr!r}"
    return r.stdout


def _run(d: Ketchd, *args: str) -> str:
    return _ok(d.docker("run", "--rm", *args))


def test_identity_env_workdir_entrypoint_hostname(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    out = _run(d, "-u", "nobody", "-e", "X=1", "--env", "Y=two words", "-w", "/tmp",
               "--hostname", "boat", "--entrypoint", "sh", "busybox", "-c",
               'echo "$(id -u):$(id -g) $X $Y $(pwd) $(hostname)"')
    assert out == "65534:65534 1 two words /tmp boat\n"


def test_binds_tmpfs_mounts_and_read_only_rootfs(ketchd_busybox: Ketchd, tmp_path: Path
                                                 ) -> None:
    d = ketchd_busybox
    (tmp_path / "host.txt").write_text("from host\n")
    out = _run(d, "--read-only", "-v", f"{tmp_path}:/h:ro", "--tmpfs", "/scratch:size=1m",
               "--mount", f"type=bind,src={tmp_path},dst=/rw", "busybox", "sh", "-c",
               "cat /h/host.txt; touch /h/x 2>/dev/null || echo ro-bind; "
               "touch /etc/x 2>/dev/null || echo ro-root; echo t > /scratch/f && "
               "grep ' /scratch ' /proc/mounts | cut -d' ' -f3; echo w > /rw/written")
    assert out.splitlines() == ["from host", "ro-bind", "ro-root", "tmpfs"]
    assert (tmp_path / "written").read_text() == "w\n"


def test_capabilities_privileged_and_security_opts(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    def capeff(*flags: str) -> int:
        out = _run(d, *flags, "busybox", "grep", "CapEff", "/proc/self/status")
        return int(out.split()[1], 16)
    default = capeff()
    assert default == 0xa80425fb  # Docker's 14 default capabilities
    assert capeff("--cap-drop", "NET_RAW") == default & ~(1 << 13)
    assert capeff("--cap-add", "SYS_ADMIN") == default | (1 << 21)
    assert capeff("--privileged") & (1 << 21)
    nnp = _run(d, "--security-opt", "no-new-privileges", "busybox", "grep", "NoNewPrivs",
               "/proc/self/status")
    assert nnp.split()[1] == "1"
    seccomp = _run(d, "busybox", "grep", "Seccomp:", "/proc/self/status").split()[1]
    unconfined = _run(d, "--security-opt", "seccomp=unconfined", "busybox", "grep",
                      "Seccomp:", "/proc/self/status").split()[1]
    assert (seccomp, unconfined) == ("2", "0")


def test_resources_ulimits_and_init(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    out = _run(d, "--pids-limit", "50", "--ulimit", "nofile=1024:2048", "--init", "busybox",
               "sh", "-c", "ulimit -n; ulimit -Hn; cat /proc/1/cmdline | tr '\\0' ' '")
    lines = out.splitlines()
    assert lines[:2] == ["1024", "2048"]
    assert "init" in lines[2]  # tini is PID 1, the command its child
    cid = _ok(d.docker("create", "--memory", "64m", "--cpus", "0.5", "busybox", "true")).strip()
    hc = json.loads(_ok(d.docker("inspect", cid)))[0]["HostConfig"]
    assert hc["Memory"] == 64 << 20 and hc["NanoCpus"] == 500_000_000
    _ok(d.docker("rm", cid))


def test_network_modes_none_and_host(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    none = _run(d, "--network", "none", "busybox", "ls", "/sys/class/net")
    assert none.split() == ["lo"]
    host = _run(d, "--network", "host", "busybox", "ls", "/sys/class/net")
    assert len(host.split()) >= 1 and "lo" in host.split()


def test_labels_stop_signal_and_log_options(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "-d", "-l", "a=b", "--stop-signal", "USR1",
                       "--log-opt", "max-size=1k", "--log-opt", "max-file=2", "busybox", "sh",
                       "-c", "trap 'echo usr1; exit 3' USR1; i=0; while [ $i -lt 200 ]; do "
                       "echo line-$i-padding-padding-padding; i=$((i+1)); done; "
                       "while true; do sleep 0.1; done")).strip()
    try:
        info = json.loads(_ok(d.docker("inspect", cid)))[0]
        assert info["Config"]["Labels"]["a"] == "b"
        assert info["HostConfig"]["LogConfig"] == {"Type": "json-file",
                                                   "Config": {"max-size": "1k",
                                                              "max-file": "2"}}
        _ok(d.docker("stop", cid))
        info = json.loads(_ok(d.docker("inspect", cid)))[0]
        assert info["State"]["ExitCode"] == 3
        logs = _ok(d.docker("logs", cid))
        assert "line-0-" not in logs  # rotated away: at most 2 files of 1 KiB are kept
        assert logs.endswith("usr1\n") and len(logs) < 2100
    finally:
        _ok(d.docker("rm", "-f", cid))


def test_info_df_and_prune(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("create", "busybox", "true")).strip()
    info = json.loads(_ok(d.docker("info", "--format", "{{json .}}")))
    assert info["Containers"] >= 1 and info["Images"] >= 1
    assert info["ContainersStopped"] >= 1 and "ketch" in info["Runtimes"]
    df = _ok(d.docker("system", "df"))
    assert df.splitlines()[0].split()[0] == "TYPE" and "Images" in df and "Containers" in df
    kept = _ok(d.docker("container", "prune", "-f", "--filter", "until=1h"))
    assert cid not in kept  # created after the bound: not pruned
    out = _ok(d.docker("container", "prune", "-f"))
    assert cid in out
    r = d.docker("container", "inspect", cid)
    assert r.returncode != 0


def test_stdin_is_piped_to_the_container(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=d.url, DOCKER_CONFIG=str(d.root / "docker-config"))
    r = subprocess.run([DOCKER, "run", "-i", "--rm", "busybox", "sh", "-c",
                        "tr a-z A-Z; echo done"], input="hello stdin\n", env=env,
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0 and r.stdout == "HELLO STDIN\ndone\n", r.stderr


def test_custom_seccomp_profile_and_privileged_exec(ketchd_busybox: Ketchd, tmp_path: Path
                                                    ) -> None:
    d = ketchd_busybox
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    (tmp_path / "p.json").write_text(json.dumps(profile))
    r = d.docker("run", "--rm", "--security-opt", f"seccomp={tmp_path / 'p.json'}", "busybox",
                 "mkdir", "/x")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    cid = _ok(d.docker("run", "-d", "busybox", "sleep", "30")).strip()
    try:
        plain = _ok(d.docker("exec", cid, "grep", "CapEff", "/proc/self/status")).split()[1]
        priv = _ok(d.docker("exec", "--privileged", cid, "grep", "CapEff",
                            "/proc/self/status")).split()[1]
        assert int(priv, 16) & (1 << 21) and not int(plain, 16) & (1 << 21)  # SYS_ADMIN
    finally:
        _ok(d.docker("rm", "-f", cid))


def test_logs_since_until_and_ps_filters(ketchd_busybox: Ketchd) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "-d", "--name", "chatty", "busybox", "sh", "-c",
                       "echo early; sleep 1.2; echo late; sleep 30")).strip()
    try:
        time.sleep(2)
        all_lines = _ok(d.docker("logs", "-t", cid)).splitlines()
        assert [line.split(" ", 1)[1] for line in all_lines] == ["early", "late"]
        late_ts = all_lines[1].split(" ", 1)[0]
        assert _ok(d.docker("logs", "--since", late_ts, cid)) == "late\n"
        assert _ok(d.docker("logs", "--until", late_ts, cid)).startswith("early\n")
        assert _ok(d.docker("ps", "-q", "--no-trunc", "--filter", "name=chatt")).strip() == cid
        assert _ok(d.docker("ps", "-q", "--filter", "status=exited", "--filter",
                            "name=chatty")) == ""
        assert cid.startswith(_ok(d.docker("ps", "-q", "--filter", "ancestor=busybox",
                                           "--filter", "id=" + cid[:8])).strip())
    finally:
        _ok(d.docker("rm", "-f", cid))
    done = _ok(d.docker("run", "-d", "busybox", "sh", "-c", "exit 3")).strip()
    _ok(d.docker("wait", done))
    assert _ok(d.docker("ps", "-aq", "--no-trunc", "--filter", "exited=3")).split() == [done]
    out = _ok(d.docker("system", "prune", "-f"))
    assert done in out


def test_container_and_exec_processes_start_with_default_signal_dispositions(
        ketchd_busybox: Ketchd) -> None:
    """The daemon's helpers ignore SIGTERM/SIGHUP/SIGPIPE; nothing of that may leak in."""
    d = ketchd_busybox
    out = _run(d, "busybox", "grep", "-E", "SigIgn|SigBlk", "/proc/self/status")
    assert out.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]
    cid = _ok(d.docker("run", "-d", "busybox", "sleep", "30")).strip()
    try:
        out = _ok(d.docker("exec", cid, "grep", "-E", "SigIgn|SigBlk", "/proc/self/status"))
        assert out.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]
    finally:
        _ok(d.docker("rm", "-f", cid))
