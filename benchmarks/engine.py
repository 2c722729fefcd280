"""Engine figures side by side: ketchd vs Debian's dockerd (and podman), same docker CLI.

Usage (root)::

    .venv/bin/python benchmarks/engine.py [--runs 15] [--containers 20]
        [--only ketch|docker|podman]... [--install-anchors] [--[no-]docker-bridge] [--keep]

One run prints, per engine, medians over ``--runs`` (after two warm-ups) of
(1) ``run --rm busybox true``, also with ``--network none``; (2) the total time
of ``--containers`` sequential ``run -d busybox sleep 300``; (3) ``ps`` with
those running; (4) the daemon's idle PSS (dockerd + its containerd, ketchd + its
children); (5) the PSS of each running container's supervisor, i.e. the parent
of its init (containerd-shim-runc-v2, conmon, ketch's supervisor). PSS is the
``Pss:`` of ``/proc/<pid>/smaps_rollup``; MiB = 1024 kB.

A dockerd in the host's network namespace rewrites host networking, so every
engine gets a network namespace made here (``ip netns add
ketchbench-<pid>-<engine>``, ``lo`` up), entered with setns(2) around the fork
that starts it (``ip netns exec`` would also remount /sys and hide the cgroup
mounts). dockerd gets its own data root, exec root, socket, pidfile and config
file, supervises its own containerd, and runs with bridge, iptables and
forwarding off; podman has no daemon, so its CLI runs inside its namespace with
its own storage roots, cgroupfs and runc. Each engine's per-boot state (dockerd's
and ketchd's exec root, podman's run root) is on a tmpfs made for it, as their
defaults (/run/docker, /run/ketch, /run/containers) are on installed systems: on
this disk every state file an engine writes per container would cost it an ext4
inode allocation, a cost no installed engine pays. Only processes started here are
signalled, by PID. The busybox image is made locally
(``ketch.runtime.busybox.make_rootfs``) and loaded by ``import``; nothing is
pulled. A figure that cannot be had prints ``n/a`` and why. No timed assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ketch.runtime.busybox import make_rootfs
from ketch.sys.mount import MNT_DETACH, umount
from ketch.sys.ns import CLONE, setns

DOCKER = os.environ.get("KETCH_DOCKER") or "/usr/local/bin/docker"
ENGINES = ("ketch", "docker", "podman")
WARMUPS = 2
POLICY_RC = "/usr/sbin/policy-rc.d"
ANCHOR_UNITS = ("docker.service", "docker.socket", "containerd.service")
ANCHOR_PROCS = frozenset({"dockerd", "containerd", "containerd-shim", "conmon", "runc"})
ANCHOR_CGROUPS = ("docker", "libpod_parent", "machine.slice")
# host paths the anchors write whatever their roots say (shim sockets, containerd's opt
# plugin, dockerd's plugin dir, CNI's IPAM, podman's caches): removed when a run made them
ANCHOR_LITTER = ("/run/containerd", "/opt/containerd", "/run/docker", "/var/lib/cni",
                 "/run/containers", "/run/libpod", "/var/lib/containers")
SYSTEM_CONTAINERD = "/run/containerd/containerd.sock"
# dockerd flags that keep it off host networking, each passed where the binary knows it
DOCKERD_NET_FLAGS = ("--bridge=none", "--iptables=false", "--ip6tables=false",
                     "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false")


class BenchError(Exception):
    """A figure cannot be had; the message says why (printed as n/a)."""


# ---------------------------------------------------------------- processes

def stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) from /proc/<pid>/stat, None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise BenchError(f"no Pss line for pid {pid}")


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        with contextlib.suppress(OSError):
            p = todo.pop()
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                out += kids
                todo += kids
    return out


def all_pids() -> set[int]:
    return {int(d) for d in os.listdir("/proc") if d.isdigit()}


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """A server this script started: TERM, 10 s, then KILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_if(pid: int, start: int | None, sig: int = signal.SIGKILL) -> None:
    """Signal ``pid`` only while it is the process that started at ``start``."""
    st = stat(pid)
    if start is not None and st is not None and st[1] == start:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def error_line(p: subprocess.CompletedProcess[bytes]) -> str:
    """The last stderr line that says something (not docker's "Run '... --help'" hint)."""
    lines = [ln for ln in (p.stderr or b"").decode(errors="replace").splitlines()
             if ln.strip() and not ln.startswith(("Run '", "See '"))]
    return lines[-1].strip() if lines else f"exit status {p.returncode}"


def ensure_anchors() -> None:
    """Install Debian's docker.io and podman without their services starting on the host.

    policy-rc.d (``exit 101``) blocks the packages' init scripts during the install
    (removed after, if it was ours); under systemd the units are masked too.
    ``--no-install-recommends`` keeps out needrestart (which restarts services),
    apparmor and cgroupfs-mount. An anchor daemon that appears during the install
    was started by it and is stopped by PID; none is expected.
    """
    before = {p for p in all_pids() if comm(p) in ANCHOR_PROCS}
    ours = not os.path.exists(POLICY_RC)
    if ours:
        with open(POLICY_RC, "w") as f:
            f.write("#!/bin/sh\n# ketch benchmarks/engine.py: no service starts\nexit 101\n")
        os.chmod(POLICY_RC, 0o755)
    try:
        if subprocess.run(["pidof", "systemd"], capture_output=True).returncode == 0:
            subprocess.run(["systemctl", "mask", *ANCHOR_UNITS], check=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_SUSPEND": "1"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        "docker.io", "podman"], env=env, check=True)
    finally:
        if ours:
            os.unlink(POLICY_RC)
    started = {p for p in all_pids() if comm(p) in ANCHOR_PROCS} - before
    for pid in started:
        print(f"ensure_anchors: the install started {comm(pid)}[{pid}]; stopping it")
        kill_if(pid, (stat(pid) or (0, None))[1], signal.SIGTERM)
    if not started:
        print("ensure_anchors: installed; no dockerd/containerd running")


class NetNs:
    """A named network namespace made here; setns(2) into it around forks."""

    def __init__(self, name: str) -> None:
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.inode = os.fstat(self.fd).st_ino
        try:
            with self.inside():
                subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        except BaseException:
            self.delete()
            raise

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """This thread (and what it forks meanwhile) in the namespace."""
        setns(self.fd, CLONE.NEWNET)
        try:
            yield
        finally:
            setns(self.home, CLONE.NEWNET)

    def pids(self) -> list[int]:
        """Live processes in the namespace: all ours, nothing else ever entered it."""
        out = []
        for pid in all_pids():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}/ns/net").st_ino == self.inode:
                    out.append(pid)
        return out

    def delete(self) -> None:
        os.close(self.fd)
        os.close(self.home)
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


# ---------------------------------------------------------------- engines

@dataclass
class Engine:
    """One column: a CLI (argv prefix + environment) and, for daemons, the daemon."""

    name: str
    work: Path
    cli: list[str]
    env: dict[str, str]
    netns: NetNs | None = None
    cli_in_netns: bool = False  # podman: the CLI itself makes the containers
    proc: subprocess.Popen[bytes] | None = None
    error: str | None = None
    image: str = "busybox"
    version: str = "?"
    inits: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, start)

    def run(self, *args: str, stdin: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        ctx = self.netns.inside() if self.cli_in_netns and self.netns else contextlib.nullcontext()
        with ctx:
            return subprocess.run([*self.cli, *args], env=self.env, input=stdin,
                                  capture_output=True, timeout=timeout, check=False)

    def ok(self, *args: str, stdin: bytes | None = None) -> str:
        p = self.run(*args, stdin=stdin)
        if p.returncode != 0:
            raise BenchError(f"{args[0]}: {error_line(p)}")
        return p.stdout.decode().strip()

    def timed(self, *args: str) -> float:
        t0 = time.perf_counter()
        p = self.run(*args)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise BenchError(f"{args[0]}: {error_line(p)}")
        return dt


def spawn(eng: Engine, argv: list[str]) -> None:
    """Start the daemon inside the engine's netns; wait until ``version`` answers."""
    assert eng.netns is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "XDG_"))}
    with open(eng.work / "daemon.log", "wb") as log, eng.netns.inside():
        eng.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        if eng.proc.poll() is not None:
            tail = (eng.work / "daemon.log").read_text(errors="replace").strip()
            raise BenchError(f"{argv[0]} exited {eng.proc.returncode}: "
                             + (tail.splitlines() or [""])[-1])
        p = eng.run("version", "--format", "{{.Server.Version}}", timeout=10)
        if p.returncode == 0:
            eng.version = p.stdout.decode().strip()
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{argv[0]} did not answer in 60 s: {error_line(p)}")
        time.sleep(0.05)


def start_docker(eng: Engine, bridge: bool,
                 net_flags: tuple[str, ...] = DOCKERD_NET_FLAGS) -> None:
    """``net_flags``: the networking flags dockerd gets, each where the binary knows it
    (by default all of DOCKERD_NET_FLAGS: no iptables, forwarding, masquerade)."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise BenchError("dockerd not installed (run with --install-anchors)")
    if os.path.exists(SYSTEM_CONTAINERD):  # dockerd would use it, shims outside our netns
        raise BenchError(f"{SYSTEM_CONTAINERD} exists; refusing to share a system containerd")
    helptext = subprocess.run([dockerd, "--help"], capture_output=True, text=True).stdout
    net = [f for f in net_flags if f.split("=")[0] + " " in helptext
           and not (bridge and f == "--bridge=none")]
    w = eng.work
    # the trust key would otherwise go to /etc/docker/key.json
    (w / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(w / "key.json")}))
    spawn(eng, [dockerd, "-H", f"unix://{w / 'd.sock'}", "--data-root", str(w / "data"),
                "--exec-root", str(w / "exec"), "--pidfile", str(w / "dockerd.pid"),
                "--config-file", str(w / "daemon.json"), "--storage-driver", "overlay2",
                "--log-level", "warn", *net])
    assert eng.proc is not None
    if not any(comm(p) == "containerd" for p in descendants(eng.proc.pid)):
        raise BenchError("dockerd runs no containerd of its own")


def start_ketch(eng: Engine) -> None:
    w = eng.work
    spawn(eng, [sys.executable, "-m", "ketch.cmd.ketchd", "-H", f"unix://{w / 'd.sock'}",
                "--data-root", str(w / "data"), "--exec-root", str(w / "exec"),
                "--pidfile", str(w / "ketchd.pid")])


def start_podman(eng: Engine) -> None:
    podman = shutil.which("podman")
    if podman is None:
        raise BenchError("podman not installed (run with --install-anchors)")
    w = eng.work
    (w / "cni").mkdir()
    eng.cli = [podman, "--root", str(w / "root"), "--runroot", str(w / "run"),
               "--tmpdir", str(w / "tmp"), "--network-config-dir", str(w / "cni"),
               "--cgroup-manager", "cgroupfs", "--events-backend", "file",
               "--runtime", "runc", "--storage-driver", "overlay"]
    # podman gives containers nofile and nproc 1048576, which needs CAP_SYS_RESOURCE (some
    # sandboxes withhold it: EPERM), and lowers its own nproc to 32768 first; containers
    # get our limits instead (what dockerd gives), capped where podman cannot go above
    limits = []
    for rname, r, cap in (("nofile", resource.RLIMIT_NOFILE, 1 << 20),
                          ("nproc", resource.RLIMIT_NPROC, 32768)):
        hard = resource.getrlimit(r)[1]
        n = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        limits.append(f'"{rname}={n}:{n}"')
    (w / "containers.conf").write_text(f"[containers]\ndefault_ulimits = [{', '.join(limits)}]\n")
    eng.env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "CONTAINER"))}
    eng.env["CONTAINERS_CONF"] = str(w / "containers.conf")
    eng.cli_in_netns = True
    eng.image = "docker.io/library/busybox:latest"
    eng.version = eng.ok("version", "--format", "{{.Client.Version}}")


def run_dir(path: Path) -> None:
    """``path`` as a fresh tmpfs: an engine's per-boot state, where installed engines
    keep it (the cleanup's ``unmount_under`` takes it away)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0711,size=1g", "ketchbench",
                    str(path)], check=True, capture_output=True)


def compile_ketch() -> None:
    """Byte-compile ketch's modules, as installing a package does: with
    ``PYTHONDONTWRITEBYTECODE`` set (or a read-only tree) every ``ketch`` and ketchd
    run would compile its changed modules again (60 ms for a ``ketch build``)."""
    import compileall

    import ketch

    compileall.compile_dir(os.path.dirname(ketch.__file__), quiet=1)


def setup(name: str, work: Path, tarball: bytes, bridge: bool,
          docker_net_flags: tuple[str, ...] = DOCKERD_NET_FLAGS) -> Engine:
    """Start one engine in its own netns and import busybox; errors land in ``.error``."""
    if name == "ketch":
        compile_ketch()
    w = work / name
    w.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{w / 'd.sock'}", DOCKER_CONFIG=str(w / "docker-config"))
    eng = Engine(name, w, [DOCKER], env)
    try:
        run_dir(w / ("run" if name == "podman" else "exec"))
        eng.netns = NetNs(f"ketchbench-{os.getpid()}-{name}")
        if name == "docker":
            start_docker(eng, bridge, docker_net_flags)
        else:
            (start_ketch if name == "ketch" else start_podman)(eng)
    except Exception as e:  # any failure is this column's n/a, never the script's end
        eng.error = str(e) or type(e).__name__
        return eng
    try:
        eng.ok("import", "-", eng.image if name == "podman" else "busybox:latest",
               stdin=tarball)
    except Exception as e:
        eng.error = f"image import: {e}"
    return eng


# ---------------------------------------------------------------- figures

@dataclass
class Figure:
    values: list[float] = field(default_factory=list)
    error: str | None = None
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values and not self.error else None


Results = dict[str, dict[str, Figure]]


def daemon_pss(eng: Engine) -> Figure:
    """(4): the daemon and every process below it, with no container running."""
    if eng.proc is None:
        return Figure(error=eng.error or f"{eng.name} has no daemon")
    parts = [(f"{eng.name}d", pss_kb(eng.proc.pid)),
             *((comm(p), pss_kb(p)) for p in descendants(eng.proc.pid))]
    return Figure([sum(kb for _, kb in parts) / 1024],
                  note=" + ".join(f"{n} {kb / 1024:.1f}" for n, kb in parts))


def quiesce(window: float = 0.5, idle: float = 0.9, limit: float = 15.0) -> None:
    """Wait until the machine is idle (``idle`` of all CPU time over ``window`` s), at most
    ``limit`` s: removing containers leaves the kernel work (network namespace teardown,
    above all) to kworkers that would otherwise eat into whichever engine goes next."""
    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return vals[3] + vals[4], sum(vals)  # idle + iowait, total

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        i0, t0 = ticks()
        time.sleep(window)
        i1, t1 = ticks()
        if t1 > t0 and (i1 - i0) / (t1 - t0) >= idle:
            return


def time_runs(live: list[Engine], res: Results, runs: int) -> None:
    """(1): both ``run --rm`` variants, engines interleaved round-robin against drift."""
    variants = {"run": ["run", "--rm"], "run_none": ["run", "--rm", "--network", "none"]}
    for i in range(WARMUPS + runs):
        for eng in live:
            for key, argv in variants.items():
                fig = res[key][eng.name]
                if fig.error:
                    continue
                quiesce(window=0.2, limit=3)  # the previous run's teardown is not ours
                try:
                    dt = eng.timed(*argv, eng.image, "true")
                except Exception as e:
                    fig.error = f"run {i}: {e}"
                    continue
                if i >= WARMUPS:
                    fig.values.append(dt * 1000)


def many(eng: Engine, res: Results, n: int) -> list[str]:
    """(2): start ``n`` detached containers, one ``docker run -d`` after another; their ids."""
    start = res["start"][eng.name]
    if start.error:
        return []
    ids: list[str] = []
    try:
        t0 = time.perf_counter()
        for i in range(n):
            p = eng.run("run", "-d", eng.image, "sleep", "300")
            if p.returncode != 0:
                raise BenchError(f"container {i + 1} of {n}: {error_line(p)}")
            ids.append(p.stdout.decode().strip())
        start.values.append(time.perf_counter() - t0)
    except Exception as e:
        start.error = res["ps"][eng.name].error = res["percont"][eng.name].error = str(e)
        return []
    return ids


def ps_interleaved(started: list[tuple[Engine, list[str]]], res: Results, runs: int) -> None:
    """(3): ``docker ps`` with every engine's containers running at once, the engines taking
    turns run by run, so drift in the machine's speed hits each the same."""
    ready: list[Engine] = []
    for eng, ids in started:
        ps = res["ps"][eng.name]
        try:
            pids = [int(x) for x in eng.ok("inspect", "--format", "{{.State.Pid}}",
                                           *ids).split()]
            eng.inits = [(p, (stat(p) or (0, None))[1]) for p in pids]
            running = eng.ok("ps", "-q").split()
            if len(running) != len(ids):
                raise BenchError(f"{len(running)} of {len(ids)} containers running")
            for _ in range(WARMUPS):
                eng.timed("ps")
            ready.append(eng)
        except Exception as e:
            ps.error = str(e)
    for _ in range(runs):
        for eng in ready:
            ps = res["ps"][eng.name]
            if ps.error:
                continue
            try:
                ps.values.append(eng.timed("ps") * 1000)
            except Exception as e:
                ps.error = str(e)


def weigh(eng: Engine, res: Results) -> None:
    """(5): the PSS of each container's supervisor (the parent of its init)."""
    sup = res["percont"][eng.name]
    if sup.error:
        return
    try:
        if not eng.inits or any(p <= 0 for p, _ in eng.inits):
            raise BenchError("inspect gave no container init pids")
        sups = [(stat(p) or (0, 0))[0] for p, _ in eng.inits]
        if eng.proc is not None and any(s in (eng.proc.pid, 0) for s in sups):
            raise BenchError(f"an init's parent is {eng.name}d itself: no supervisor to weigh")
        if len(eng.inits) > 1 and len(set(sups)) == 1:
            raise BenchError(f"every init's parent is {comm(sups[0])}: no per-container process")
        sup.values = [pss_kb(s) / 1024 for s in sups]
        sup.note = f"{comm(sups[0])}, {len(set(sups))} processes"
    except Exception as e:
        sup.error = str(e)


def remove_containers(eng: Engine) -> None:
    with contextlib.suppress(BenchError, OSError, subprocess.SubprocessError):
        ids = eng.ok("ps", "-aq").split()
        if ids:  # podman's rm -f waits 10 s for sleep (pid 1 ignores SIGTERM) unless -t 0
            eng.run("rm", "-f", *(["-t", "0"] if eng.name == "podman" else []), *ids,
                    timeout=300)


# ---------------------------------------------------------------- cleanup

def stop(eng: Engine) -> list[str]:
    """Remove containers, stop the daemon, kill what is left of ours; say what was left."""
    try:
        if eng.proc is not None or eng.error is None:
            remove_containers(eng)
        if eng.proc is not None and eng.proc.poll() is None:
            eng.proc.send_signal(signal.SIGTERM)
            try:
                eng.proc.wait(30)
            except subprocess.TimeoutExpired:
                eng.proc.kill()
                eng.proc.wait()
        for pid, st in eng.inits:
            kill_if(pid, st)
    finally:
        left = []
        if eng.netns is not None:
            deadline = time.monotonic() + 5  # shims and supervisors exit after containers
            while eng.netns.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in eng.netns.pids():
                left.append(f"{eng.name}: killed {comm(pid)}[{pid}]")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            eng.netns.delete()
    return left


def settle(before: set[int], seconds: float = 10) -> list[str]:
    """Wait for anchor processes that appeared during the run to be reaped."""
    deadline = time.monotonic() + seconds
    while True:
        new = [p for p in all_pids() - before if comm(p) in ANCHOR_PROCS]
        if not new or time.monotonic() > deadline:
            return [f"still exiting after {seconds:g} s: {comm(p)}[{p}]" for p in new]
        time.sleep(0.1)


def unmount_under(root: Path) -> list[str]:
    """Lazily unmount whatever is still mounted below ``root``, deepest first."""
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4].encode().decode("unicode_escape") for line in f}
    ours = sorted((p for p in points if p.startswith(f"{root}/")), key=len, reverse=True)
    for p in ours:
        with contextlib.suppress(OSError):
            umount(p, MNT_DETACH)
    return [f"unmounted {p}" for p in ours]


def cgroup_dirs() -> set[str]:
    return {d for c in os.listdir("/sys/fs/cgroup") for n in ANCHOR_CGROUPS
            if os.path.isdir(d := os.path.join("/sys/fs/cgroup", c, n))}


def remove_cgroups(dirs: set[str]) -> list[str]:
    """Kill what is left in the anchors' cgroup trees this run created, then rmdir them.

    Only trees that did not exist before the run are touched, so whatever is in them
    was started by it (a container that a signal caught half-created, say).
    """
    left = []
    for top in dirs:
        for _ in range(50):
            procs = set()
            for d, _, files in os.walk(top):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError), open(f"{d}/cgroup.procs") as f:
                        procs |= {int(p) for p in f.read().split()}
            if not procs:
                break
            for pid in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for d, _, _ in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
            try:
                os.rmdir(d)
            except OSError as e:
                left.append(f"cgroup {d}: {e.strerror}")
    return left


# ---------------------------------------------------------------- report

METRICS = [  # key, label, format, target: ratio to docker's median or absolute MiB
    ("run", "run --rm busybox true (ms)", "{:.0f}", "ratio", 0.25),
    ("run_none", "run --rm --network none (ms)", "{:.0f}", "ratio", 0.25),
    ("start", "start N detached, total (s)", "{:.2f}", "ratio", 0.25),
    ("ps", "ps, N running (ms)", "{:.0f}", "ratio", 1.0),
    ("idle", "daemon idle PSS (MiB)", "{:.1f}", "abs", 40.0),
    ("percont", "per-container PSS (MiB)", "{:.2f}", "abs", 0.4),
]


def cell(fig: Figure, fmt: str, notes: list[str]) -> str:
    if fig.median is None:
        why = fig.error or "no samples"
        if why not in notes:
            notes.append(why)
        return f"n/a [{notes.index(why) + 1}]"
    text = fmt.format(fig.median)
    if len(fig.values) > 2:
        q = statistics.quantiles(fig.values, n=10, method="inclusive")
        text += f" ({fmt.format(q[0])}-{fmt.format(q[8])})"
    return text


def report(res: Results, engines: list[Engine], args: argparse.Namespace) -> None:
    def first(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return f"{argv[0]}: not installed"
        return (out.strip().splitlines() or ["?"])[0]

    cg = ("hybrid v1+v2" if os.path.isdir("/sys/fs/cgroup/unified") else
          "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1")
    print(f"machine: {os.cpu_count()} cpus, kernel {platform.release()}, cgroups {cg}")
    print(f"client: {first([DOCKER, '--version'])} (ketch and docker columns)")
    print("servers: " + "; ".join(f"{e.name} {e.version}" for e in engines))
    print(f"anchors: {first(['containerd', '--version'])}; {first(['runc', '--version'])}; "
          f"{first(['conmon', '--version'])}")
    print(f"runs: {args.runs} timed after {WARMUPS} warm-ups; {args.containers} containers, "
          f"started {args.start_rounds} times")
    names = [e.name for e in engines]
    notes: list[str] = []
    print("\n" + "metric".ljust(31) + "".join(n.ljust(21) for n in names)
          + "ketch/docker  target")
    for key, label, fmt, kind, goal in METRICS:
        row = label.replace(" N ", f" {args.containers} ").ljust(31)
        row += "".join(cell(res[key][n], fmt, notes).ljust(21) for n in names)
        k, d = res[key].get("ketch", Figure()).median, res[key].get("docker", Figure()).median
        r = k / d if k is not None and d else None
        ratio = "-" if r is None else f"{r:.2f}x"
        if kind == "ratio":
            target, met = f"<= {goal:g}x docker", None if r is None else r <= goal
        else:
            target, met = f"<= {goal:g} MiB", None if k is None else k <= goal
        print(row + ratio.ljust(14) + target + ("" if met is None else
                                                " met" if met else " MISSED"))
    print("\ncells: median (p10-p90) over the runs; ratio of the medians")
    if "docker" in names:
        print("docker's default network: " + (
            "its bridge, inside its private netns (--docker-bridge)" if args.docker_bridge
            else "none (dockerd --bridge=none, from --no-docker-bridge)"))
    for i, n in enumerate(notes, 1):
        print(f"[{i}] {n}")
    for key in ("idle", "percont"):
        for name, fig in res[key].items():
            if fig.note and fig.median is not None:
                print(f"{key} {name}: {fig.note}")


# ---------------------------------------------------------------- main

@dataclass
class HostState:
    """What was on the host before a run, so the run's teardown removes only its own."""

    cgroups: set[str]
    pids: set[int]
    litter: list[str]  # anchor install paths that did not exist yet
    netns: set[str]

    @classmethod
    def now(cls) -> HostState:
        return cls(cgroup_dirs(), all_pids(),
                   [p for p in ANCHOR_LITTER if not os.path.lexists(p)],
                   set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set())


def teardown(engines: Iterable[Engine], work: Path, before: HostState, *,
             keep_work: bool = False) -> list[str]:
    """Stop every engine, then remove what the run left: processes, mounts under
    ``work``, cgroups, anchor litter, podman's netns-* namespaces, and ``work`` itself
    (unless ``keep_work``). Returns what had to be cleaned, one line each."""
    left: list[str] = []
    for eng in engines:
        try:
            left += stop(eng)
        except Exception as e:  # keep cleaning the others
            left.append(f"{eng.name}: {type(e).__name__}: {e}")
    left += settle(before.pids) + unmount_under(work)
    left += remove_cgroups(cgroup_dirs() - before.cgroups)
    for p in before.litter:
        shutil.rmtree(p, ignore_errors=True)
    # podman names its containers' namespaces netns-<uuid>; a run cut short leaves one
    now = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    for ns in now - before.netns:
        if ns.startswith("netns-"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            left.append(f"deleted podman's netns {ns}")
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return left


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="timed runs per figure (default 15)")
    ap.add_argument("--containers", type=int, default=20, help="detached containers (default 20)")
    ap.add_argument("--start-rounds", type=int, default=3,
                    help="rounds of starting the detached containers (default 3; median)")
    ap.add_argument("--only", action="append", choices=ENGINES,
                    help="measure only this engine (repeatable)")
    ap.add_argument("--install-anchors", action="store_true",
                    help="apt-get install docker.io and podman first, services kept stopped")
    ap.add_argument("--docker-bridge", action=argparse.BooleanOptionalAction, default=True,
                    help="dockerd keeps its default bridge (as installed dockerds do), inside "
                         "its own netns, iptables and forwarding off; --no-docker-bridge runs "
                         "it with --bridge=none. ketch runs its own default bridge (ketch0, "
                         "with its nft rules) in its private netns likewise")
    ap.add_argument("--keep", action="store_true",
                    help="leave daemons, containers, namespaces and files (debugging)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("engine.py needs root (daemons, namespaces, mounts)", file=sys.stderr)
        return 2
    if args.install_anchors:
        ensure_anchors()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="kb-"))
    engines: list[Engine] = []
    before = HostState.now()
    res: Results = {m[0]: {} for m in METRICS}
    try:
        make_rootfs(str(work / "rootfs"))
        tarball = subprocess.run(["tar", "-C", str(work / "rootfs"), "-c", "."], check=True,
                                 capture_output=True).stdout
        for name in [n for n in ENGINES if not args.only or n in args.only]:
            engines.append(setup(name, work, tarball, args.docker_bridge))
            for m in METRICS:
                res[m[0]][name] = Figure(error=engines[-1].error)
        time.sleep(1)  # let the daemons settle before weighing them idle
        for eng in engines:
            try:
                res["idle"][eng.name] = daemon_pss(eng)
            except Exception as e:
                res["idle"][eng.name] = Figure(error=str(e))
        live = [e for e in engines if e.error is None]
        time_runs(live, res, args.runs)
        # (2) is one total per round: rounds interleave the engines against drift, and the
        # cell is their median; the last round's containers (every engine's at once) serve
        # (3), measured in turns, and (5).
        for r in range(args.start_rounds):
            last = r == args.start_rounds - 1
            started = []
            for eng in live:
                quiesce()
                ids = many(eng, res, args.containers)
                if last and ids:
                    started.append((eng, ids))
                else:
                    remove_containers(eng)
            if last:
                quiesce()
                ps_interleaved(started, res, args.runs)
                for eng, _ids in started:
                    weigh(eng, res)
                    if not args.keep:
                        remove_containers(eng)
        report(res, engines, args)
    finally:
        if args.keep:
            print(f"\n--keep: left as they are (work dir {work}):")
            for k in engines:
                print(f"  {k.name}: " + (f"daemon pid {k.proc.pid}, " if k.proc else "")
                      + (f"netns {k.netns.name}, " if k.netns else "")
                      + " ".join(f"{n}={v}" for n, v in k.env.items()
                                 if n in ("DOCKER_HOST", "DOCKER_CONFIG", "CONTAINERS_CONF"))
                      + (f" {' '.join(k.cli)}" if k.name == "podman" else ""))
        else:
            left = teardown(engines, work, before)
            for line in left:
                print(f"cleanup: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
