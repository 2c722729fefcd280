"""Registry figures side by side: ``ketch registry`` vs Debian's docker-registry, same skopeo.

Usage::

    .venv/bin/python benchmarks/registry.py [--size-mb 100] [--runs 5] [--json]

One image (a config and one layer of ``--size-mb`` random bytes, gzip-framed without
compression so skopeo neither recompresses nor spends time on it) is made once as an
OCI layout. For each registry — both on 127.0.0.1, on a free port, with a fresh storage
root in a temp dir — and each run: ``skopeo copy oci:… docker://…/bench/rN:t`` (push, a
new repository each run so the layer is uploaded in full, with a fresh skopeo HOME so
no blob-info cache suggests a mount), then ``skopeo copy docker://… dir:…`` (pull into a
fresh directory). Registries are interleaved run by run. Printed: median wall seconds
(p10-p90 when runs ≥ 5) and MB/s, plus what this machine's disk (write + fsync) and
loopback TCP can do with the same bytes. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

DOCKER_REGISTRY = "/usr/bin/docker-registry"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layout(dest: Path, size: int) -> int:
    buf = io.BytesIO()
    payload = os.urandom(size)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("random.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = buf.getvalue()
    layer = gzip.compress(tar_bytes, compresslevel=0, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(tar_bytes)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer), "size": len(layer)}]}).encode()
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (layer, config, manifest):
        (blobs / sha(blob)[7:]).write_bytes(blob)
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "t"}}]}))
    return len(layer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"registry exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"registry did not listen on {port}: {log.read_text()}")


def start_ketch(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    log = work / "ketch.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "ketch.cmd.registry", "serve",
                                 "--addr", "127.0.0.1:0", "--root", str(work / "ketch-store")],
                                stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise SystemExit(f"ketch registry did not start: {log.read_text()}")


def start_distribution(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = work / "distribution.yml"
    cfg.write_text(f"""version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {work / 'distribution-store'}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
""")
    log = work / "distribution.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([DOCKER_REGISTRY, "serve", str(cfg)], stdout=f,
                                stderr=subprocess.STDOUT)
    wait_port(port, proc, log)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def skopeo(work: Path, *args: str) -> float:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    (home / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    (home / "registries.conf").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "CONTAINERS_"))}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(home),
               REGISTRY_AUTH_FILE=str(home / "auth.json"),
               CONTAINERS_REGISTRIES_CONF=str(home / "registries.conf"))
    t0 = time.perf_counter()
    r = subprocess.run(["skopeo", "--policy", str(home / "policy.json"), *args], env=env,
                       capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(home, ignore_errors=True)
    if r.returncode != 0:
        raise SystemExit(f"skopeo {' '.join(args)} failed: {r.stderr}")
    return elapsed


def disk_seconds(work: Path, size: int) -> float:
    data = os.urandom(1 << 20)
    t0 = time.perf_counter()
    with open(work / "disk-probe", "wb") as f:
        for _ in range(size >> 20):
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - t0
    os.unlink(work / "disk-probe")
    return elapsed


def loopback_seconds(size: int) -> float:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    got = 0

    def sink() -> None:
        nonlocal got
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(1 << 20):
                got += len(data)

    t = threading.Thread(target=sink)
    t.start()
    chunk = os.urandom(1 << 20)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        for _ in range(size >> 20):
            c.sendall(chunk)
    t.join()
    elapsed = time.perf_counter() - t0
    srv.close()
    return elapsed


def summary(values: list[float]) -> str:
    med = statistics.median(values)
    if len(values) >= 5:
        q = statistics.quantiles(values, n=10)
        return f"{med:.3f} ({q[0]:.3f}-{q[-1]:.3f})"
    return f"{med:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=int, default=100)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if shutil.which("skopeo") is None:
        raise SystemExit("skopeo is not installed")
    size = args.size_mb << 20
    work = Path(tempfile.mkdtemp(prefix="ketch-regbench-"))
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        layer_size = make_layout(work / "image", size)
        procs["ketch"] = start_ketch(work)
        if os.path.exists(DOCKER_REGISTRY):
            procs["distribution"] = start_distribution(work)
        times: dict[str, dict[str, list[float]]] = {
            name: {"push": [], "pull": []} for name in procs}
        for run in range(args.runs):
            for name, (_, port) in procs.items():
                ref = f"docker://127.0.0.1:{port}/bench/r{run}:t"
                times[name]["push"].append(skopeo(work, "copy", "--dest-tls-verify=false",
                                                  f"oci:{work / 'image'}:t", ref))
                out = work / f"pull-{name}-{run}"
                times[name]["pull"].append(skopeo(work, "copy", "--src-tls-verify=false",
                                                  ref, f"dir:{out}"))
                shutil.rmtree(out, ignore_errors=True)
        base = {"disk write+fsync": disk_seconds(work, size),
                "loopback TCP": loopback_seconds(size)}
    finally:
        for proc, _ in procs.values():
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    mb = layer_size / 1e6
    if args.json:
        print(json.dumps({"layer_bytes": layer_size, "runs": args.runs, "seconds": times,
                          "baseline_seconds": base}, indent=2))
        return
    print(f"layer {mb:.1f} MB, {args.runs} runs, skopeo {subprocess.run(['skopeo', '--version'], capture_output=True, text=True).stdout.split()[-1]}")  # noqa: E501
    print(f"{'op':6} {'registry':13} {'median s (p10-p90)':>24} {'MB/s':>8}")
    for op in ("push", "pull"):
        for name in procs:
            vals = times[name][op]
            print(f"{op:6} {name:13} {summary(vals):>24} {mb / statistics.median(vals):8.0f}")
        if "distribution" in procs:
            ratio = statistics.median(times["distribution"][op]) / \
                statistics.median(times["ketch"][op])
            print(f"{op:6} {'ketch speedup':13} {ratio:>23.2f}x")
    for what, seconds in base.items():
        print(f"{what:20} {seconds:8.3f} s {size / 1e6 / seconds:8.0f} MB/s")


if __name__ == "__main__":
    main()
