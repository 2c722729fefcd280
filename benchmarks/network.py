"""Network figures side by side: ketchd vs Debian's dockerd, same docker CLI, same iperf3.

Usage (root)::

    .venv/bin/python benchmarks/network.py [--seconds 5] [--runs 3] [--install-anchors]

Per engine, each daemon in its own network namespace with its default bridge and its
packet filter (dockerd's iptables rules, ketchd's nft table), as installed daemons run:
(1) TCP throughput container -> host (iperf3 client in a container, server on the
engine's "host" at the bridge's gateway address); (2) container -> container over the
bridge; (3) the median of ``run --rm --network none`` and of ``run --rm`` (default
bridge), taken in pairs back to back so drift cancels, whose difference is what
networking adds to a container's start. Throughput
is the receiver's figure of iperf3's JSON report, median over ``--runs``. The image
holds busybox and Debian's iperf3 with the libraries ``ldd`` names, made here and
loaded by ``import``; nothing is pulled. No timed assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engine as eb  # the sibling script's daemons and namespaces

IMAGE = "netbench:latest"


def ensure_iperf3(install: bool) -> str:
    path = shutil.which("iperf3")
    if path is None and install:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "iperf3"], check=True, env=dict(os.environ,
                                                        DEBIAN_FRONTEND="noninteractive"))
        path = shutil.which("iperf3")
    if path is None:
        raise SystemExit("iperf3 is not installed (run with --install-anchors)")
    return path


def image_tar(iperf3: str, work: Path) -> bytes:
    """busybox's rootfs plus iperf3 and the shared objects it loads, at their host paths."""
    from ketch.runtime.busybox import make_rootfs

    root = work / "netbench-rootfs"
    make_rootfs(str(root))
    files = [iperf3]
    out = subprocess.run(["ldd", iperf3], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            files.append(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(root), arcname=".")
        for f in files:
            real = os.path.realpath(f)
            info = tar.gettarinfo(real, arcname=f.lstrip("/"))
            with open(real, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def gbits(report: str) -> float:
    doc = json.loads(report)
    return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9


def gateway(eng: eb.Engine) -> str:
    """The default bridge's address: the default route of a container on it."""
    out = eng.ok("run", "--rm", IMAGE, "ip", "route")
    for line in out.splitlines():
        if line.startswith("default via "):
            return line.split()[2]
    raise eb.BenchError(f"no default route in a container: {out!r}")


def to_host(eng: eb.Engine, iperf3: str, seconds: int) -> float:
    assert eng.netns is not None
    with eng.netns.inside():
        server = subprocess.Popen([iperf3, "-s", "-1", "-p", "5299"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = eng.ok("run", "--rm", IMAGE, "iperf3", "-c", gateway(eng), "-p", "5299",
                     "-t", str(seconds), "-J")
        return gbits(out)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(5)
        if server.poll() is None:
            server.kill()
            server.wait()


def between(eng: eb.Engine, seconds: int) -> float:
    cid = eng.ok("run", "-d", IMAGE, "iperf3", "-s", "-p", "5299")
    try:
        ip = json.loads(eng.ok("inspect", cid))[0]["NetworkSettings"]["Networks"]["bridge"][
            "IPAddress"]
        time.sleep(0.3)
        out = eng.ok("run", "--rm", IMAGE, "iperf3", "-c", ip, "-p", "5299", "-t",
                     str(seconds), "-J")
        return gbits(out)
    finally:
        eng.run("rm", "-f", cid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="iperf3 -t per run (default 5)")
    ap.add_argument("--runs", type=int, default=3, help="throughput runs (default 3)")
    ap.add_argument("--starts", type=int, default=15, help="timed run --rm (default 15)")
    ap.add_argument("--install-anchors", action="store_true",
                    help="apt-get install docker.io and iperf3 first")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    if args.install_anchors:
        eb.ensure_anchors()
    iperf3 = ensure_iperf3(args.install_anchors)
    work = Path(tempfile.mkdtemp(prefix="ketch-netbench-"))
    engines: list[eb.Engine] = []
    rows: dict[str, dict[str, str]] = {}
    try:
        from ketch.runtime.busybox import make_rootfs

        make_rootfs(str(work / "rootfs"))
        busybox = subprocess.run(["tar", "-C", str(work / "rootfs"), "-c", "."], check=True,
                                 capture_output=True).stdout
        image = image_tar(iperf3, work)
        for name in ("ketch", "docker"):
            # dockerd as installed: iptables (NAT, conntrack) on, in its private
            # namespace, as ketchd has its nft table in its own; no userland proxy (no
            # ports are published)
            eng = eb.setup(name, work, busybox, True, ("--userland-proxy=false",))
            engines.append(eng)
            if eng.error is None:
                try:
                    eng.ok("import", "-", IMAGE, stdin=image)
                except Exception as e:
                    eng.error = f"image import: {e}"
        live = []
        for eng in engines:
            if eng.error is not None:
                rows.setdefault(eng.name, {})["error"] = eng.error
            else:
                live.append(eng)
        # every figure's runs take turns between the engines, against drift
        values: dict[tuple[str, str], list[float]] = {}
        failed: dict[tuple[str, str], str] = {}

        def sample(eng: eb.Engine, key: str) -> None:
            if (eng.name, key) in failed:
                return
            try:
                if key == "to_host":
                    v = to_host(eng, iperf3, args.seconds)
                elif key == "between":
                    v = between(eng, args.seconds)
                else:
                    extra = ["--network", "none"] if key == "run_none" else []
                    v = eng.timed("run", "--rm", *extra, eng.image, "true") * 1000
                values.setdefault((eng.name, key), []).append(v)
            except Exception as e:
                failed[(eng.name, key)] = f"n/a ({e})"

        for key in ("to_host", "between"):
            for _ in range(args.runs):
                for eng in live:
                    eb.quiesce()
                    sample(eng, key)
        for eng in live:
            for _ in range(eb.WARMUPS):
                for key in ("run_none", "run_bridge"):
                    eng.run("run", "--rm", *(["--network", "none"] if key == "run_none"
                                              else []), eng.image, "true")
        # the two starts of a pair run back to back, so drift between them is small:
        # their difference is what networking adds
        for _ in range(args.starts):
            for eng in live:
                for key in ("run_none", "run_bridge"):
                    eb.quiesce(window=0.2, limit=3)
                    sample(eng, key)
        for eng in live:
            row = rows.setdefault(eng.name, {})
            for key in ("to_host", "between", "run_none", "run_bridge"):
                vals = values.get((eng.name, key))
                fmt = "{:.0f}" if key.startswith("run") else "{:.2f}"
                row[key] = failed.get((eng.name, key)) or (
                    fmt.format(statistics.median(vals)) if vals else "n/a")
        print(f"machine: {os.cpu_count()} cpus, kernel {os.uname().release}")
        print(f"iperf3 -t {args.seconds}, median of {args.runs}; run --rm median of "
              f"{args.starts}\n")
        print(f"{'metric':34s} {'ketch':>12s} {'docker':>12s}  ketch/docker")
        for key, label in (("to_host", "container -> host (Gbit/s)"),
                           ("between", "container -> container (Gbit/s)"),
                           ("run_none", "run --rm --network none (ms)"),
                           ("run_bridge", "run --rm, bridge (ms)")):
            k = rows.get("ketch", {}).get(key, rows.get("ketch", {}).get("error", "n/a"))
            d = rows.get("docker", {}).get(key, rows.get("docker", {}).get("error", "n/a"))
            ratio = ""
            with contextlib.suppress(ValueError, ZeroDivisionError):
                ratio = f"{float(k) / float(d):.2f}x"
            print(f"{label:34s} {k:>12s} {d:>12s}  {ratio}")
        for eng in engines:
            r = rows.get(eng.name, {})
            with contextlib.suppress(ValueError, KeyError):
                added = float(r["run_bridge"]) - float(r["run_none"])
                none, bridge = values[(eng.name, "run_none")], values[(eng.name, "run_bridge")]
                paired = ""
                if len(none) == len(bridge):  # pairs taken back to back (see above)
                    diffs = [b - n for n, b in zip(none, bridge, strict=True)]
                    paired = (" (median of the pairs' differences: "
                              f"{statistics.median(diffs):.0f} ms)")
                print(f"{eng.name}: networking adds {added:.0f} ms to run --rm{paired}")
    finally:
        for eng in engines:
            for line in eb.stop(eng):
                print(f"cleanup: {line}")
        eb.unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
