"""ketch-runtime lifecycle, driven through the real CLI like containerd drives runc."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.runtime_helpers import Ctl, cgroup_dirs, edit_config, mounts_of_host
from tests.schemas import runtime_schema


def test_run_is_pid1_with_config_hostname_and_exit_status(ctl: Ctl, make_bundle: Callable[..., str],
                                                          cid: str) -> None:
    b = make_bundle(["/bin/sh", "-c", "echo pid=$$; hostname; exit 7"])
    edit_config(b, hostname="box-under-test")
    p = ctl("run", "--bundle", b, cid, check=False)
    assert p.returncode == 7, p.stderr
    assert p.stdout.split() == ["pid=1", "box-under-test"]
    # run (without --keep) deletes the container afterwards
    assert ctl("state", cid, check=False).returncode != 0


def test_create_start_kill_delete_states(ctl: Ctl, make_bundle: Callable[..., str], cid: str,
                                         tmp_path: Path) -> None:
    b = make_bundle(["/bin/sleep", "1000"])
    before = mounts_of_host()
    ctl("create", "--bundle", b, "--pid-file", str(tmp_path / "pid"), cid)
    st = ctl.state(cid)
    errors = [e.message for e in runtime_schema("state-schema.json").iter_errors(st)]
    assert errors == []
    assert st["status"] == "created"
    assert st["pid"] == int((tmp_path / "pid").read_text())
    assert os.path.exists(f"/proc/{st['pid']}")
    assert st["bundle"] == b
    ctl("start", cid)
    assert ctl.state(cid)["status"] == "running"
    # the program really replaced the init
    assert Path(f"/proc/{st['pid']}/cmdline").read_bytes().split(b"\0")[0] == b"/bin/sleep"
    second = ctl("start", cid, check=False)
    assert second.returncode == 1 and "already running" in second.stderr
    ctl("kill", cid, "KILL")
    ctl.wait_status(cid, "stopped")
    assert ctl.state(cid)["pid"] == 0
    ctl("delete", cid)
    gone = ctl("state", cid, check=False)
    assert gone.returncode == 1 and "does not exist" in gone.stderr
    assert cgroup_dirs(cid) == []
    assert mounts_of_host() == before
    assert not (ctl.root / cid).exists()


def test_delete_running_needs_force(ctl: Ctl, make_bundle: Callable[..., str], cid: str) -> None:
    b = make_bundle(["/bin/sleep", "1000"])
    ctl("run", "-d", "--bundle", b, cid)
    p = ctl("delete", cid, check=False)
    assert p.returncode == 1 and "not stopped" in p.stderr
    ctl("delete", "--force", cid)
    assert ctl("state", cid, check=False).returncode == 1
    assert cgroup_dirs(cid) == []


def test_exec_ps_pause_resume_list_events(ctl: Ctl, make_bundle: Callable[..., str],
                                          cid: str) -> None:
    b = make_bundle(["/bin/sleep", "1000"])
    ctl("run", "-d", "--bundle", b, cid)
    init = ctl.state(cid)["pid"]
    out = ctl("exec", cid, "/bin/sh", "-c", "echo $$; cat /proc/1/cmdline | tr '\\0' ' '")
    pid_inside, cmdline = out.stdout.splitlines()
    assert int(pid_inside) > 1 and cmdline.strip() == "/bin/sleep 1000"
    assert ctl("exec", cid, "/bin/sh", "-c", "exit 3", check=False).returncode == 3
    missing = ctl("exec", cid, "nope-not-here", check=False)
    assert missing.returncode == 1 and "executable file not found" in missing.stderr
    pids = json.loads(ctl("ps", "--format", "json", cid).stdout)
    assert init in pids
    ctl("pause", cid)
    assert ctl.state(cid)["status"] == "paused"
    assert ctl("exec", cid, "/bin/true", check=False).returncode == 1
    ctl("resume", cid)
    assert ctl.state(cid)["status"] == "running"
    listed = json.loads(ctl("list", "--format", "json").stdout)
    assert [s["id"] for s in listed] == [cid]
    assert ctl("list", "-q").stdout.split() == [cid]
    ev = json.loads(ctl("events", "--stats", cid).stdout)
    assert ev["type"] == "stats" and ev["id"] == cid
    assert ev["data"]["memory"]["usage"]["usage"] > 0
    assert ev["data"]["pids"]["current"] >= 1


def test_exec_detached_with_pid_file(ctl: Ctl, make_bundle: Callable[..., str], cid: str,
                                     tmp_path: Path) -> None:
    b = make_bundle(["/bin/sleep", "1000"])
    ctl("run", "-d", "--bundle", b, cid)
    pf = tmp_path / "exec.pid"
    ctl("exec", "-d", "--pid-file", str(pf), cid, "/bin/sleep", "500")
    pid = int(pf.read_text())
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/bin/sleep\x00500")
    assert pid in json.loads(ctl("ps", "--format", "json", cid).stdout)


def test_update_memory_limit_reaches_cgroup(ctl: Ctl, make_bundle: Callable[..., str],
                                            cid: str) -> None:
    b = make_bundle(["/bin/sleep", "1000"])
    edit_config(b, linux__resources={"memory": {"limit": 128 << 20}, "pids": {"limit": 50}})
    ctl("run", "-d", "--bundle", b, cid)
    inside = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
    if not Path("/sys/fs/cgroup/memory").is_dir():
        inside = "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max"
    assert ctl("exec", cid, "/bin/sh", "-c", inside).stdout.split() == [str(128 << 20), "50"]
    ctl("update", "--memory", "64m", "--pids-limit", "20", cid)
    assert ctl("exec", cid, "/bin/sh", "-c", inside).stdout.split() == [str(64 << 20), "20"]


def test_process_identity_caps_rlimits_nnp(ctl: Ctl, make_bundle: Callable[..., str],
                                           cid: str) -> None:
    b = make_bundle(["/bin/sh", "-c",
                     "id -u; id -g; id -G; ulimit -n; grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs)'"
                     " /proc/self/status; umask; pwd"])
    edit_config(b, process__user={"uid": 1000, "gid": 1001, "additionalGids": [5, 7],
                                  "umask": 0o027},
                process__cwd="/tmp",
                process__rlimits=[{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024}],
                process__capabilities={"bounding": ["CAP_KILL", "CAP_CHOWN"],
                                       "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
                                       "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]},
                process__noNewPrivileges=True)
    lines = ctl("run", "--bundle", b, cid).stdout.splitlines()
    assert lines[0:2] == ["1000", "1001"]
    assert sorted(lines[2].split()) == ["1001", "5", "7"]
    assert lines[3] == "512"
    fields = dict(line.split(":\t") for line in lines[4:8])
    assert fields["CapBnd"] == f"{(1 << 5) | (1 << 0):016x}"
    # a non-root user keeps only ambient capabilities across exec
    assert fields["CapEff"] == fields["CapAmb"] == f"{1 << 5:016x}"
    assert fields["NoNewPrivs"] == "1"
    assert lines[8:] == ["0027", "/tmp"]


def test_default_caps_readonly_root_and_masks(ctl: Ctl, make_bundle: Callable[..., str],
                                              cid: str) -> None:
    script = ("grep CapEff /proc/self/status; touch /rootfile 2>&1; "
              "{ echo x > /proc/sys/kernel/domainname; } 2>&1; "
              "wc -c < /proc/keys; ls /sys/firmware | wc -l; echo done")
    b = make_bundle(["/bin/sh", "-c", script])
    edit_config(b, root__readonly=True)
    out = ctl("run", "--bundle", b, cid).stdout.splitlines()
    want = (1 << 29) | (1 << 5) | (1 << 10)  # AUDIT_WRITE, KILL, NET_BIND_SERVICE
    assert out[0].split()[-1] == f"{want:016x}"
    assert "Read-only file system" in out[1]
    assert "Read-only file system" in out[2]
    assert out[3:6] == ["0", "0", "done"]


def test_join_network_namespace_by_path_and_sysctl(ctl: Ctl, make_bundle: Callable[..., str],
                                                   cid: str, netns: str) -> None:
    b = make_bundle(["/bin/sh", "-c",
                     "readlink /proc/self/ns/net; cat /proc/sys/net/ipv4/ip_forward"])
    cfg = json.loads(Path(b, "config.json").read_text())
    nss = [n for n in cfg["linux"]["namespaces"] if n["type"] != "network"]
    nss.append({"type": "network", "path": netns})
    edit_config(b, linux__namespaces=nss, linux__sysctl={"net.ipv4.ip_forward": "1"})
    out = ctl("run", "--bundle", b, cid).stdout.split()
    assert out[0] == f"net:[{os.stat(netns).st_ino}]"
    assert out[1] == "1"


def test_user_namespace_maps_root(ctl: Ctl, cid: str) -> None:
    import shutil
    import tempfile

    from ketch.runtime.busybox import make_bundle

    # the container's root (host uid 100000) must be able to reach its rootfs, as with runc
    top = tempfile.mkdtemp(prefix="ketch-userns-")
    os.chmod(top, 0o755)
    try:
        _run_in_userns(ctl, cid, make_bundle(os.path.join(top, "b"), [
            "/bin/sh", "-c", "id -u; cat /proc/self/uid_map; ls /proc/1 >/dev/null; echo ok"]))
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _run_in_userns(ctl: Ctl, cid: str, b: str) -> None:
    cfg = json.loads(Path(b, "config.json").read_text())
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    Path(b, "config.json").write_text(json.dumps(cfg))
    out = ctl("run", "--bundle", b, cid).stdout.split()
    assert out[0] == "0"
    assert out[1:4] == ["0", "100000", "65536"]
    assert out[-1] == "ok"


def test_hooks_receive_state(ctl: Ctl, make_bundle: Callable[..., str], cid: str,
                             tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\n{{ echo \"$1\"; cat; echo; }} >> {log}\n")
    hook.chmod(0o755)
    b = make_bundle(["/bin/true"])
    edit_config(b, hooks={k: [{"path": str(hook), "args": ["hook.sh", k]}]
                          for k in ("prestart", "createRuntime", "poststart", "poststop")})
    ctl("run", "--bundle", b, cid)
    lines = log.read_text().splitlines()
    kinds = lines[0::2]
    assert kinds == ["prestart", "createRuntime", "poststart", "poststop"]
    states = [json.loads(s) for s in lines[1::2]]
    assert all(s["id"] == cid and s["bundle"] == b for s in states)
    assert states[0]["pid"] > 0


def test_failing_hook_fails_create_and_cleans_up(ctl: Ctl, make_bundle: Callable[..., str],
                                                 cid: str) -> None:
    b = make_bundle(["/bin/true"])
    edit_config(b, hooks={"createRuntime": [{"path": "/bin/false"}]})
    p = ctl("create", "--bundle", b, cid, check=False)
    assert p.returncode == 1 and "/bin/false" in p.stderr
    assert not (ctl.root / cid).exists()
    assert cgroup_dirs(cid) == []


@pytest.mark.parametrize("variant", ["socket"])
def test_terminal_over_console_socket(ctl: Ctl, make_bundle: Callable[..., str], cid: str,
                                      tmp_path: Path, variant: str) -> None:
    import socket

    from ketch.runtime.console import recv_fd

    b = make_bundle(["/bin/sh", "-c", "tty; stty size"], terminal=True)
    edit_config(b, process__consoleSize={"height": 33, "width": 111})
    path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    try:
        ctl("create", "--bundle", b, "--console-socket", path, cid)
        conn, _ = srv.accept()
        master = recv_fd(conn)
        conn.close()
        ctl("start", cid)
        data = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        os.close(master)
        text = data.decode().split()
        assert text[0].startswith("/dev/pts/")
        assert text[1:3] == ["33", "111"]
    finally:
        srv.close()


def test_no_pivot_moves_the_rootfs(ctl: Ctl, make_bundle: Callable[..., str], cid: str) -> None:
    b = make_bundle(["/bin/sh", "-c", "echo pid=$$; ls /bin/busybox"])
    out = ctl("run", "--no-pivot", "--bundle", b, cid).stdout.split()
    assert out == ["pid=1", "/bin/busybox"]


def test_time_namespace_offsets(ctl: Ctl, make_bundle: Callable[..., str], cid: str) -> None:
    b = make_bundle(["/bin/cat", "/proc/uptime"])
    cfg = json.loads(Path(b, "config.json").read_text())
    cfg["linux"]["namespaces"].append({"type": "time"})
    cfg["linux"]["timeOffsets"] = {"boottime": {"secs": 86400 * 365, "nanosecs": 0}}
    Path(b, "config.json").write_text(json.dumps(cfg))
    host = float(Path("/proc/uptime").read_text().split()[0])
    inside = float(ctl("run", "--bundle", b, cid).stdout.split()[0])
    assert 86400 * 365 <= inside - host < 86400 * 365 + 60


def test_personality_oom_score_and_seccomp(ctl: Ctl, make_bundle: Callable[..., str],
                                           cid: str) -> None:
    b = make_bundle(["/bin/sh", "-c", "uname -m; cat /proc/self/oom_score_adj; "
                     "mkdir /tmp/d 2>&1; echo rc=$?; touch /tmp/f && echo touched"])
    edit_config(b, linux__personality={"domain": "LINUX32"}, process__oomScoreAdj=123,
                linux__seccomp={"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                     "args": [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]}]})
    out = ctl("run", "--bundle", b, cid).stdout.splitlines()
    assert out[0] in ("i686", "i386")
    assert out[1] == "123"
    # the filter matched busybox's mkdir (mode 0777) and returned ENOSYS ...
    assert "Function not implemented" in out[2] and out[3] == "rc=1"
    # ... and nothing else
    assert out[4] == "touched"


def test_container_hooks_run_in_the_container(ctl: Ctl, make_bundle: Callable[..., str],
                                              cid: str, tmp_path: Path) -> None:
    log = tmp_path / "create-container.log"
    b = make_bundle(["/bin/sh", "-c", "readlink /proc/self/ns/mnt; cat /tmp/started"])
    rootfs = Path(b) / "rootfs"
    create_hook = tmp_path / "cc.sh"
    create_hook.write_text(f"#!/bin/sh\nreadlink /proc/self/ns/mnt > {log}\n")
    create_hook.chmod(0o755)
    (rootfs / "start-hook").write_text("#!/bin/sh\necho started-in-container > /tmp/started\n")
    (rootfs / "start-hook").chmod(0o755)
    edit_config(b, hooks={"createContainer": [{"path": str(create_hook)}],
                          "startContainer": [{"path": "/start-hook"}]})
    out = ctl("run", "--bundle", b, cid).stdout.split()
    host_mnt = os.readlink("/proc/self/ns/mnt")
    assert log.read_text().strip() == out[0] != host_mnt
    assert out[1] == "started-in-container"


def test_hook_timeout_fails_create(ctl: Ctl, make_bundle: Callable[..., str], cid: str) -> None:
    b = make_bundle(["/bin/true"])
    edit_config(b, hooks={"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"],
                                        "timeout": 1}]})
    p = ctl("create", "--bundle", b, cid, check=False)
    assert p.returncode == 1 and "timed out after 1s" in p.stderr
    assert not (ctl.root / cid).exists()
    assert cgroup_dirs(cid) == []


@pytest.mark.skipif(not Path("/sys/fs/cgroup/unified/cgroup.controllers").exists(),
                    reason="hybrid cgroups only")
def test_hybrid_host_hugetlb_limit_lands_on_cgroup2(ctl: Ctl, make_bundle: Callable[..., str],
                                                   cid: str) -> None:
    """hugetlb exists only on the cgroup2 side of this hybrid host: a limit must still work
    (crun refuses such hosts), and the container joins cgroup2 for it."""
    if "hugetlb" not in Path("/sys/fs/cgroup/unified/cgroup.controllers").read_text().split():
        pytest.skip("hugetlb is not on cgroup2 here")
    kb = min(int(n.split("-")[1].removesuffix("kB"))  # hugepages-2048kB -> 2048
             for n in os.listdir("/sys/kernel/mm/hugepages"))
    page = f"{kb // 1024}MB" if kb >= 1024 else f"{kb}KB"
    b = make_bundle(["/bin/sleep", "100"])
    edit_config(b, linux__resources={"hugepageLimits": [{"pageSize": page,
                                                          "limit": 4 * kb * 1024}]})
    ctl("run", "-d", "--bundle", b, cid)
    pid = ctl.state(cid)["pid"]
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    v2 = [line for line in lines if line.startswith("0::")]
    assert v2 and v2[0].endswith(f"/ketch/{cid}")
    limit = Path(f"/sys/fs/cgroup/unified/ketch/{cid}/hugetlb.{page}.max").read_text()
    assert int(limit) == 4 * kb * 1024


def test_kill_all_and_force_delete_of_paused(ctl: Ctl, make_bundle: Callable[..., str],
                                             cid: str) -> None:
    b = make_bundle(["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    ctl("run", "-d", "--bundle", b, cid)
    import time

    deadline = time.monotonic() + 5
    while len(json.loads(ctl("ps", "--format", "json", cid).stdout)) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pids = json.loads(ctl("ps", "--format", "json", cid).stdout)
    ctl("kill", "--all", cid, "KILL")
    ctl.wait_status(cid, "stopped")
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{p}/stat").exists() and " Z " not in Path(f"/proc/{p}/stat")
              .read_text() for p in pids):
        assert time.monotonic() < deadline, "a process survived kill --all"
        time.sleep(0.02)
    ctl("delete", cid)
    second = cid + "-p"
    ctl("run", "-d", "--bundle", b, second)
    ctl("pause", second)
    ctl("delete", "--force", second)
    assert ctl("state", second, check=False).returncode == 1
    assert cgroup_dirs(second) == []


def test_events_stream_stats_and_oom(ctl: Ctl, make_bundle: Callable[..., str],
                                     cid: str) -> None:
    # dd's 128 MiB buffer is filled by read(): far over the 32 MiB limit
    b = make_bundle(["/bin/sh", "-c", "sleep 0.5; dd if=/dev/zero of=/dev/null bs=128M count=1 "
                     "2>/dev/null; sleep 0.5"])
    edit_config(b, linux__resources={"memory": {"limit": 32 << 20}})
    ctl("run", "-d", "--bundle", b, cid)
    out = ctl("events", "--interval", "0.1s", cid, timeout=30).stdout
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [e["type"] for e in events]
    assert "stats" in kinds and "oom" in kinds, kinds
    assert all(e["id"] == cid for e in events)
    # the stream ended by itself when the container stopped
    assert ctl.state(cid)["status"] == "stopped"


def test_in_process_create_forks_pid1_directly_and_restores_our_pid_namespace(
        make_bundle: Callable[..., str], cid: str, tmp_path: Path) -> None:
    """The common case forks I straight from the caller (no intermediate): I is our
    child and pid 1 of its namespace, and our own later children are in our namespace
    (pid_for_children is ours again)."""
    import signal

    from ketch.runtime.container import Runtime

    rt = Runtime(str(tmp_path / "rt"))
    b = make_bundle(["/bin/sleep", "100"])
    init = rt.create(cid, b)
    try:
        assert os.readlink("/proc/self/ns/pid_for_children") == os.readlink("/proc/self/ns/pid")
        assert os.readlink(f"/proc/{init}/ns/pid") != os.readlink("/proc/self/ns/pid")
        with open(f"/proc/{init}/status") as f:
            nspid = next(ln for ln in f if ln.startswith("NSpid:")).split()[1:]
        assert nspid == [str(init), "1"]
        with open(f"/proc/{init}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    finally:
        rt.kill(cid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(init, 0)
        rt.delete(cid, force=True)
