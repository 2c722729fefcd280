"""``docker pull`` side by side: ketchd vs dockerd (and podman), one registry image.

Usage (root)::

    .venv/bin/python benchmarks/pull.py [--size-mb 100] [--runs 5]
        [--only ketch|docker|podman]... [--keep]

The image: an OCI layout made here with one layer holding ``--size-mb`` of random
bytes (incompressible), gzip'd as a real image's layers are (level 6, Go's default),
with its config and manifest. Every engine runs in its own network namespace
(``benchmarks/engine.py``'s machinery: never a dockerd in the host's namespace), and
each namespace gets its own Debian docker-registry (Distribution 2.8, temp root,
127.0.0.1:<port>) into which skopeo copies the same layout, so every engine pulls the
same bytes over its own loopback. dockerd treats 127.0.0.0/8 as an insecure registry
by default (plain HTTP), ketchd likewise; podman is told ``--tls-verify=false``.

Then, after one untimed warm-up pull each, ``--runs`` times, the engines taking
turns against drift: remove the image (its layers go with it), ``sync``, wait for
the machine to be idle, time ``docker pull`` (the same docker CLI for ketchd and
dockerd; podman's own CLI). A pull that reports ``Already
exists`` for the layer did not download it and spoils the figure: it is refused.
Printed: median seconds and MB/s (compressed layer bytes / time) per engine, the
ketch/docker ratio against the target (<= 0.5x), and floors no pull can beat: a
``curl`` of the blob from the registry over loopback, ``gunzip`` of it, and a copy of
the uncompressed layer on this disk. Only processes started here are signalled, by
PID. No timed assertions.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engine as eb  # the sibling script's daemons and namespaces

REGISTRY = "/usr/bin/docker-registry"
REPO = "bench/big"
TARGET = 0.5


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layout(root: Path, size_mb: int) -> tuple[int, Path]:
    """An OCI image layout (tag ``big``): one gzip'd layer of random bytes.

    Returns (compressed layer size, path of the uncompressed tar) for the floors.
    """
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tar_path = root.parent / "layer.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("big.bin")
        ti.size = size_mb << 20
        ti.mtime = int(time.time())
        tf.addfile(ti, io.BytesIO(os.urandom(ti.size)))
    raw = tar_path.read_bytes()
    layer = gzip.compress(raw, compresslevel=6, mtime=0)

    def put(data: bytes) -> str:
        d = sha(data)
        (blobs / d.split(":")[1]).write_bytes(data)
        return d

    cfg = json.dumps({
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine,
                                                                    os.uname().machine),
        "os": "linux", "config": {"Cmd": ["/big.bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(raw)]},
        "history": [{"created_by": "benchmarks/pull.py"}]}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(cfg), "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": put(layer), "size": len(layer)}]}).encode()
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "big"}}]}))
    return len(layer), tar_path


def start_engine(name: str, work: Path) -> eb.Engine:
    """One engine in its own netns (``eb.setup`` without its busybox import)."""
    w = work / name
    w.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{w / 'd.sock'}", DOCKER_CONFIG=str(w / "docker-config"))
    eng = eb.Engine(name, w, [eb.DOCKER], env)
    try:
        eng.netns = eb.NetNs(f"ketchbench-{os.getpid()}-{name}")
        if name == "docker":
            eb.start_docker(eng, bridge=False)
        elif name == "ketch":
            eb.start_ketch(eng)
        else:
            eb.start_podman(eng)
    except Exception as e:
        eng.error = str(e) or type(e).__name__
    return eng


def in_netns(eng: eb.Engine, argv: list[str], timeout: float = 300
             ) -> subprocess.CompletedProcess[bytes]:
    assert eng.netns is not None
    with eng.netns.inside():
        return subprocess.run(argv, capture_output=True, timeout=timeout, check=False)


def start_registry(eng: eb.Engine) -> tuple[subprocess.Popen[bytes], int]:
    assert eng.netns is not None
    port = random.randint(20000, 60000)
    root = eng.work / "registry"
    root.mkdir()
    (root / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    with open(root / "log", "wb") as log, eng.netns.inside():
        proc = subprocess.Popen([REGISTRY, "serve", str(root / "config.yml")], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    probe = (f"import socket,time\nfor _ in range(400):\n  try:\n"
             f"    socket.create_connection(('127.0.0.1',{port}),0.2).close(); break\n"
             f"  except OSError: time.sleep(0.025)\nelse: raise SystemExit(1)")
    if in_netns(eng, [sys.executable, "-c", probe]).returncode != 0:
        eb.stop_process(proc)
        raise eb.BenchError(f"docker-registry did not start: {(root / 'log').read_text()}")
    return proc, port


def pull_once(eng: eb.Engine, name: str) -> float:
    eng.run("rmi", name)
    if eng.run("image", "inspect", name).returncode == 0:
        raise eb.BenchError("the image survived rmi")
    os.sync()  # the last pull's dirty pages are not this one's to write
    eb.quiesce(window=0.3, limit=5)
    extra = ["--tls-verify=false"] if eng.name == "podman" else []
    t0 = time.perf_counter()
    p = eng.run("pull", *extra, name, timeout=600)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise eb.BenchError(f"pull: {eb.error_line(p)}")
    if b"Already exists" in p.stdout:
        raise eb.BenchError("pull found the layer already there (rmi kept it)")
    return dt


def floors(eng: eb.Engine, port: int, digest: str, tar_path: Path, work: Path
           ) -> dict[str, float]:
    """Seconds for what bounds a pull: loopback read, gunzip, disk copy."""
    out: dict[str, float] = {}
    url = f"http://127.0.0.1:{port}/v2/{REPO}/blobs/{digest}"
    t0 = time.perf_counter()
    p = in_netns(eng, ["curl", "-sf", "-o", "/dev/null", url])
    if p.returncode == 0:
        out["curl of the blob over loopback"] = time.perf_counter() - t0
    blob = work / "layout" / "blobs" / "sha256" / digest.split(":")[1]
    with open(blob, "rb") as f:  # warm the page cache as the registry's copy is
        while f.read(1 << 20):
            pass
    t0 = time.perf_counter()
    with open(blob, "rb") as f:
        d = zlib.decompressobj(31)
        while chunk := f.read(1 << 20):
            d.decompress(chunk)
    out["gunzip of the blob (zlib)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shutil.copyfile(tar_path, work / "copy.tar")
    os.sync()
    out["copy of the tar + sync (disk)"] = time.perf_counter() - t0
    (work / "copy.tar").unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=100, help="layer size (default 100)")
    ap.add_argument("--runs", type=int, default=5, help="timed pulls per engine (default 5)")
    ap.add_argument("--only", action="append", choices=eb.ENGINES,
                    help="measure only this engine (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("pull.py needs root (daemons, namespaces, mounts)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="kbp-"))
    engines: list[eb.Engine] = []
    registries: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    before = eb.HostState.now()
    try:
        layer_size, tar_path = make_layout(work / "layout", args.size_mb)
        index = json.loads((work / "layout" / "index.json").read_text())
        mdigest = index["manifests"][0]["digest"]
        manifest = json.loads((work / "layout/blobs/sha256" / mdigest.split(":")[1])
                              .read_bytes())
        layer_digest = manifest["layers"][0]["digest"]
        times: dict[str, list[float]] = {}
        errors: dict[str, str] = {}
        for name in [n for n in eb.ENGINES if not args.only or n in args.only]:
            eng = start_engine(name, work)
            engines.append(eng)
            try:
                if eng.error:
                    raise eb.BenchError(eng.error)
                registries[name] = start_registry(eng)
                port = registries[name][1]
                p = in_netns(eng, ["skopeo", "copy", "--insecure-policy", "-q",
                                   "--dest-tls-verify=false", f"oci:{work / 'layout'}:big",
                                   f"docker://127.0.0.1:{port}/{REPO}:latest"])
                if p.returncode != 0:
                    raise eb.BenchError(f"skopeo copy: {eb.error_line(p)}")
                times[name] = []
            except Exception as e:
                errors[name] = str(e)
        live = [e for e in engines if e.name in times]
        warm = {e.name: False for e in live}
        for _ in range(1 + args.runs):  # one warm-up pull each: first-use costs aside
            for eng in live:
                if eng.name in errors:
                    continue
                ref = f"127.0.0.1:{registries[eng.name][1]}/{REPO}:latest"
                try:
                    dt = pull_once(eng, ref)
                    if warm[eng.name]:
                        times[eng.name].append(dt)
                    warm[eng.name] = True
                except Exception as e:
                    errors[eng.name] = str(e)
        mb = layer_size / 1e6
        print(f"machine: {os.cpu_count()} cpus, kernel {os.uname().release}")
        print("servers: " + "; ".join(f"{e.name} {e.version}" for e in engines))
        print(f"image: one layer, {args.size_mb} MiB random, gzip'd to {mb:.1f} MB; "
              f"median of {args.runs} pulls\n")
        med: dict[str, float] = {}
        for eng in engines:
            vals = times.get(eng.name) or []
            if eng.name in errors or not vals:
                print(f"{eng.name:8s} n/a: {errors.get(eng.name, 'no samples')}")
                continue
            med[eng.name] = statistics.median(vals)
            print(f"{eng.name:8s} pull median {med[eng.name]:.3f} s  "
                  f"({mb / med[eng.name]:.0f} MB/s)  all: "
                  + ", ".join(f"{x:.3f}" for x in vals))
        if "ketch" in med and "docker" in med:
            r = med["ketch"] / med["docker"]
            print(f"ketch/docker {r:.2f}x  target <= {TARGET:g}x "
                  + ("met" if r <= TARGET else "MISSED"))
        if live:
            eng = live[0]
            for what, s in floors(eng, registries[eng.name][1], layer_digest, tar_path,
                                  work).items():
                print(f"floor    {what:32s} {s:.3f} s  ({mb / s:.0f} MB/s)")
        return 0
    finally:
        for proc, _port in registries.values():
            eb.stop_process(proc)
        if args.keep:
            print(f"--keep: daemons and namespaces stopped, work dir kept: {work}")
        left = eb.teardown(engines, work, before, keep_work=args.keep)
        for line in left:
            print(f"cleanup: {line}")


if __name__ == "__main__":
    sys.exit(main())
