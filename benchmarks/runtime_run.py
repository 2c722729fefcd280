"""Time ``<runtime> run`` of a busybox ``/bin/true`` container: ketch-runtime vs runc vs crun.

Usage::

    .venv/bin/python benchmarks/runtime_run.py [--runs 30] [--warmups 3] [--json]

One rootfs is built in a temp dir; each runtime gets its own bundle (config from
``specgen.default_spec``: no terminal, default namespaces) over that rootfs and its
own ``--root``. Runs are interleaved round-robin so drift on the host hits every
runtime alike. Each figure is the wall time of one ``run --bundle B id-N`` (create,
start, wait, delete) as seen by the caller. A runtime that is missing or fails is
reported with the first line of its error and left out.

crun 1.8 on a hybrid-cgroup host (controllers bound on /sys/fs/cgroup/unified)
refuses to create containers. This script then makes one private mount namespace
without that mount and switches into it (setns) just around crun's runs, outside
the timed span, so crun is timed with no wrapper process in the way. crun 1.8
also rejects ``ociVersion`` >= 1.2, so its config says 1.0.2 when needed.

This is a script that prints figures, never a test with timed assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ketch.runtime.busybox import make_bundle, make_rootfs
from ketch.sys.mount import MNT_DETACH, MS, mount, umount
from ketch.sys.ns import CLONE, setns, unshare

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "ketch": str(REPO / ".venv" / "bin" / "ketch-runtime"),
    "runc": "/usr/sbin/runc",
    "crun": "/usr/bin/crun",
}
UNIFIED = "/sys/fs/cgroup/unified"


@dataclass
class Runtime:
    name: str
    argv: list[str]  # binary and --root
    bundle: str
    mnt_ns: int | None = None  # fd of the mount namespace to run in (None: ours)
    times: list[float] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def error_line(text: str, returncode: int) -> str:
    """The first stderr line (the last one of a Python traceback, which names the error)."""
    lines = text.strip().splitlines()
    if not lines:
        return f"exit status {returncode}"
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def hybrid_controllers() -> list[str]:
    try:
        with open(os.path.join(UNIFIED, "cgroup.controllers")) as f:
            return f.read().split()
    except OSError:
        return []


class MountNamespaces:
    """Ours, plus a private copy without the cgroup2 mount for crun on hybrid hosts."""

    def __init__(self) -> None:
        self.home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self.no_cgroup2: int | None = None

    def without_cgroup2(self) -> int:
        if self.no_cgroup2 is None:
            cwd = os.getcwd()
            unshare(CLONE.NEWNS)
            try:
                # private first, so the umount below stays in the new namespace
                mount(None, "/", None, MS.REC | MS.PRIVATE)
                umount(UNIFIED, MNT_DETACH)
                self.no_cgroup2 = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                setns(self.home, CLONE.NEWNS)
                os.chdir(cwd)  # setns of a mount namespace moves us to its root
        return self.no_cgroup2

    @contextmanager
    def inside(self, fd: int | None) -> Iterator[None]:
        if fd is None:
            yield
            return
        cwd = os.getcwd()
        setns(fd, CLONE.NEWNS)
        try:
            yield
        finally:
            setns(self.home, CLONE.NEWNS)
            os.chdir(cwd)

    def close(self) -> None:
        for fd in (self.home, self.no_cgroup2):
            if fd is not None:
                os.close(fd)


def set_oci_version(bundle: str, version: str) -> None:
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["ociVersion"] = version
    with open(path, "w") as f:
        json.dump(cfg, f)


def run_once(rt: Runtime, cid: str, ns: MountNamespaces) -> tuple[float, str | None]:
    """Wall time of one ``run``; the error line if it failed."""
    argv = [*rt.argv, "run", "--bundle", rt.bundle, cid]
    with ns.inside(rt.mnt_ns):
        t0 = time.perf_counter()
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, timeout=120, check=False)
        elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        return elapsed, error_line(p.stderr, p.returncode)
    return elapsed, None


def prepare(name: str, binary: str, work: str, rootfs: str, ns: MountNamespaces) -> Runtime:
    bundle = make_bundle(os.path.join(work, f"bundle-{name}"), ["/bin/true"], terminal=False,
                         rootfs=rootfs)
    root = os.path.join(work, f"state-{name}")
    rt = Runtime(name, [binary, f"--root={root}"], bundle)
    if not os.access(binary, os.X_OK):
        rt.error = f"not installed at {binary}"
        return rt
    if name == "crun" and hybrid_controllers():
        rt.mnt_ns = ns.without_cgroup2()
        rt.notes.append("run in a private mount namespace without "
                        f"{UNIFIED} (hybrid cgroups: {','.join(hybrid_controllers())} on v2)")
    _, err = run_once(rt, f"{name}-probe", ns)
    if err and "unknown version" in err:
        set_oci_version(bundle, "1.0.2")
        rt.notes.append(f"ociVersion set to 1.0.2 ({err})")
        _, err = run_once(rt, f"{name}-probe2", ns)
    rt.error = err
    return rt


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    if len(ms) < 2:
        return {"median": ms[0], "p10": ms[0], "p90": ms[0]}
    deciles = statistics.quantiles(ms, n=10, method="inclusive")
    return {"median": statistics.median(ms), "p10": deciles[0], "p90": deciles[8]}


def cleanup_containers(rt: Runtime, ns: MountNamespaces) -> None:
    """``run`` deletes its container; this catches the ones a failed run left behind."""
    root = rt.argv[1].split("=", 1)[1]
    if not os.path.isdir(root):
        return
    for cid in os.listdir(root):
        if os.path.isdir(os.path.join(root, cid)):
            with ns.inside(rt.mnt_ns):
                subprocess.run([*rt.argv, "delete", "--force", cid], capture_output=True,
                               timeout=60, check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="timed runs per runtime (default 30)")
    ap.add_argument("--warmups", type=int, default=3, help="untimed runs first (default 3)")
    ap.add_argument("--json", action="store_true", help="print machine-readable results")
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="ketch-bench-")
    ns = MountNamespaces()
    runtimes: list[Runtime] = []
    try:
        rootfs = os.path.join(work, "rootfs")
        make_rootfs(rootfs)
        runtimes = [prepare(n, b, work, rootfs, ns) for n, b in CANDIDATES.items()]
        live = [rt for rt in runtimes if rt.error is None]
        for i in range(args.warmups + args.runs):
            for rt in live:
                if rt.error is not None:
                    continue
                elapsed, err = run_once(rt, f"{rt.name}-{i}", ns)
                if err:
                    rt.error = f"run {i}: {err}"
                elif i >= args.warmups:
                    rt.times.append(elapsed)
        report = build_report(runtimes, args.runs)
        report["ketch-breakdown"] = breakdown(rootfs, work, args.runs)
    finally:
        for rt in runtimes:
            cleanup_containers(rt, ns)
        ns.close()
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_report(report)
    return 0


def breakdown(rootfs: str, work: str, runs: int) -> dict[str, Any]:
    """Where ketch-runtime's time goes: the CLI's start-up floor, and the same run done by
    the library in a warm process (how the engine drives it: imports paid once)."""
    from ketch.runtime.busybox import make_bundle
    from ketch.runtime.container import Runtime as KetchRuntime
    from ketch.sys.prctl import set_child_subreaper

    binary = CANDIDATES["ketch"]
    floor = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([binary, "--version"], stdout=subprocess.DEVNULL, check=True)
        floor.append(time.perf_counter() - t)
    set_child_subreaper()
    bundle = make_bundle(os.path.join(work, "lib-bundle"), ["/bin/true"], rootfs=rootfs)
    lib = KetchRuntime(os.path.join(work, "lib-root"))
    warm = []
    for i in range(runs + 3):
        t = time.perf_counter()
        pid = lib.create(f"lib-{i}", bundle)
        lib.start(f"lib-{i}")
        os.waitpid(pid, 0)
        lib.delete(f"lib-{i}")
        if i >= 3:
            warm.append(time.perf_counter() - t)
    return {"cli --version (interpreter + imports)": summary(floor),
            "library run in a warm process": summary(warm)}


def build_report(runtimes: list[Runtime], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs, "runtimes": {}, "ratios": {}}
    for rt in runtimes:
        entry: dict[str, Any] = {"argv0": rt.argv[0], "notes": rt.notes}
        if rt.error is not None or not rt.times:
            entry["error"] = rt.error or "no samples"
        else:
            entry.update(summary(rt.times))
        out["runtimes"][rt.name] = entry
    ketch = out["runtimes"].get("ketch", {})
    for other in ("runc", "crun"):
        o = out["runtimes"].get(other, {})
        if "median" in ketch and "median" in o:
            out["ratios"][f"ketch/{other}"] = ketch["median"] / o["median"]
    return out


def print_report(report: dict[str, Any]) -> None:
    print(f"run of busybox /bin/true, {report['runs']} runs each, wall ms")
    print(f"{'runtime':8} {'median':>8} {'p10':>8} {'p90':>8}")
    for name, e in report["runtimes"].items():
        if "error" in e:
            print(f"{name:8} skipped: {e['error']}")
            continue
        print(f"{name:8} {e['median']:8.1f} {e['p10']:8.1f} {e['p90']:8.1f}")
        for note in e["notes"]:
            print(f"{'':8} note: {note}")
    for key, ratio in report["ratios"].items():
        print(f"{key}: {ratio:.2f}x (median)")
    for key, e in report.get("ketch-breakdown", {}).items():
        print(f"ketch {key}: median {e['median']:.1f} ms (p10 {e['p10']:.1f}, p90 {e['p90']:.1f})")


if __name__ == "__main__":
    sys.exit(main())
