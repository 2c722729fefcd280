"""Registry figures side by side: ``ketch registry`` vs Debian's docker-registry, same clients.

Usage::

    .venv/bin/python benchmarks/registry.py [--size-mb 100] [--runs 5] [--no-raw]
                                            [--no-floor] [--json]

One image (a config and one layer of ``--size-mb`` random bytes, gzip-framed without
compression so skopeo neither recompresses nor spends time on it) is made once as an
OCI layout. For each registry — both on 127.0.0.1, on a free port, with a fresh storage
root in a temp dir — and each run, interleaved run by run:

* skopeo: ``skopeo copy oci:… docker://…/bench/rN:t`` (push, a new repository each
  run) then ``skopeo copy docker://… dir:…`` (pull into a fresh directory). Each skopeo
  gets a fresh HOME and, when run as root, a private mount namespace with an empty
  ``/var/lib/containers`` — root's skopeo keeps its blob-info cache there, and a
  remembered blob turns every push after the first into a cross-repository mount;
* raw HTTP with curl (unless ``--no-raw``), the server without skopeo's own costs:
  POST + one chunked PATCH of the layer + PUT ``?digest=`` (what skopeo and docker do),
  then a GET of the blob to /dev/null.

Printed: median wall seconds (p10-p90 when runs ≥ 5) and MB/s; the client floor —
skopeo pushing to a registry that answers every request and discards the bytes
(unless ``--no-floor``), the best any registry can do with that client; and what this
machine's disk (write + fsync) and loopback TCP can do with the same bytes. Nothing is
asserted. On a shared machine the figures are noisy: compare runs, not digits.
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
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import typing
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine import stop_process  # the sibling script's

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


def _private_containers_dir() -> list[str]:
    """The command prefix that runs skopeo with an empty /var/lib/containers (root only)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return []  # rootless skopeo keeps its cache under $HOME, fresh for every run
    os.makedirs("/var/lib/containers", exist_ok=True)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs tmpfs /var/lib/containers && exec "$@"', "sh"]


def skopeo(work: Path, *args: str) -> float:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    (home / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    (home / "registries.conf").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "CONTAINERS_"))}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(home),
               REGISTRY_AUTH_FILE=str(home / "auth.json"),
               CONTAINERS_REGISTRIES_CONF=str(home / "registries.conf"))
    cmd = [*_private_containers_dir(), "skopeo", "--policy", str(home / "policy.json"), *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(home, ignore_errors=True)
    if r.returncode != 0:
        raise SystemExit(f"skopeo {' '.join(args)} failed: {r.stderr}")
    return elapsed


def _curl(*args: str) -> str:
    r = subprocess.run(["curl", "-sS", "--fail", "-H", "Expect:", *args],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"curl {' '.join(args)} failed: {r.stderr}")
    return r.stdout


def raw_push(port: int, repo: str, layer: Path, digest: str) -> float:
    """POST, one chunked PATCH of the whole layer, PUT ?digest=: wall seconds."""
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    head = _curl("-X", "POST", "-D", "-", "-o", "/dev/null", f"{base}/v2/{repo}/blobs/uploads/")
    loc = re.search(r"(?im)^location:\s*(\S+)", head)
    if loc is None:
        raise SystemExit(f"no Location in {head!r}")
    url = loc.group(1) if loc.group(1).startswith("http") else base + loc.group(1)
    head = _curl("-X", "PATCH", "-T", str(layer), "-H", "Transfer-Encoding: chunked",
                 "-H", "Content-Type: application/octet-stream", "-D", "-", "-o", "/dev/null",
                 url)
    loc = re.search(r"(?im)^location:\s*(\S+)", head)
    url = (loc.group(1) if loc.group(1).startswith("http") else base + loc.group(1)) \
        if loc else url
    _curl("-X", "PUT", "-o", "/dev/null",
          f"{url}{'&' if '?' in url else '?'}digest={digest}")
    return time.perf_counter() - t0


def raw_pull(port: int, repo: str, digest: str) -> float:
    t0 = time.perf_counter()
    _curl("-o", "/dev/null", f"http://127.0.0.1:{port}/v2/{repo}/blobs/{digest}")
    return time.perf_counter() - t0


class DiscardRegistry:
    """Answers a push the way a registry would and throws the bytes away: what skopeo
    costs by itself (one thread per connection, blocking reads into one buffer)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        f = typing.cast(io.BufferedReader, conn.makefile("rb", buffering=1 << 16))
        with conn, f:
            if f.peek(1)[:1] == b"\x16":  # a TLS hello: answer in plain HTTP, close
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\nConnection: close\r\n\r\n")
                return
            sink = memoryview(bytearray(1 << 20))
            while line := f.readline():
                method, target = line.decode("latin-1").split(" ")[:2]
                headers: dict[str, str] = {}
                while (h := f.readline()) not in (b"\r\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                if headers.get("transfer-encoding") == "chunked":
                    while size := int(f.readline().split(b";")[0], 16):
                        while size:
                            size -= f.readinto(sink[:min(size, len(sink))])
                        f.readline()
                    f.readline()
                else:
                    size = int(headers.get("content-length", "0"))
                    while size:
                        size -= f.readinto(sink[:min(size, len(sink))])
                conn.sendall(self._answer(method, target).encode())

    @staticmethod
    def _answer(method: str, target: str) -> str:
        m = re.match(r"/v2/(.+?)/(?:blobs|manifests)/", target)
        name = m.group(1) if m else "x"
        if method == "GET" and target.rstrip("/") == "/v2":
            return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        if method == "POST":
            return (f"HTTP/1.1 202 Accepted\r\nLocation: /v2/{name}/blobs/uploads/"
                    f"{uuid.uuid4().hex}\r\nRange: 0-0\r\nContent-Length: 0\r\n\r\n")
        if method == "PATCH":
            return (f"HTTP/1.1 202 Accepted\r\nLocation: {target}\r\nRange: 0-0\r\n"
                    "Content-Length: 0\r\n\r\n")
        if method == "PUT":
            d = re.search(r"digest=([^&]+)", target)
            digest = d.group(1).replace("%3A", ":") if d else "sha256:" + "0" * 64
            return (f"HTTP/1.1 201 Created\r\nLocation: /v2/{name}/blobs/{digest}\r\n"
                    f"Docker-Content-Digest: {digest}\r\nContent-Length: 0\r\n\r\n")
        return "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"  # HEAD: push it


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
    p.add_argument("--no-raw", action="store_true", help="skip the curl figures")
    p.add_argument("--no-floor", action="store_true", help="skip skopeo's discard floor")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if shutil.which("skopeo") is None:
        raise SystemExit("skopeo is not installed")
    raw = not args.no_raw and shutil.which("curl") is not None
    size = args.size_mb << 20
    work = Path(tempfile.mkdtemp(prefix="ketch-regbench-"))
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    ops = ["push", "pull", *(["raw push", "raw pull"] if raw else [])]
    floor: list[float] = []
    try:
        layer_size = make_layout(work / "image", size)
        index = json.loads((work / "image" / "index.json").read_text())
        manifest = json.loads((work / "image" / "blobs" / "sha256" /
                               index["manifests"][0]["digest"][7:]).read_bytes())
        layer_digest = manifest["layers"][0]["digest"]
        layer_file = work / "image" / "blobs" / "sha256" / layer_digest[7:]
        procs["ketch"] = start_ketch(work)
        if os.path.exists(DOCKER_REGISTRY):
            procs["distribution"] = start_distribution(work)
        times: dict[str, dict[str, list[float]]] = {
            name: {op: [] for op in ops} for name in procs}
        for run in range(args.runs):
            for name, (_, port) in procs.items():
                ref = f"docker://127.0.0.1:{port}/bench/r{run}:t"
                times[name]["push"].append(skopeo(work, "copy", "--dest-tls-verify=false",
                                                  f"oci:{work / 'image'}:t", ref))
                out = work / f"pull-{name}-{run}"
                times[name]["pull"].append(skopeo(work, "copy", "--src-tls-verify=false",
                                                  ref, f"dir:{out}"))
                shutil.rmtree(out, ignore_errors=True)
                if raw:
                    repo = f"raw/r{run}"
                    times[name]["raw push"].append(raw_push(port, repo, layer_file,
                                                            layer_digest))
                    times[name]["raw pull"].append(raw_pull(port, repo, layer_digest))
        if not args.no_floor:
            discard = DiscardRegistry()
            try:
                for run in range(args.runs):
                    floor.append(skopeo(work, "copy", "--dest-tls-verify=false",
                                        f"oci:{work / 'image'}:t",
                                        f"docker://127.0.0.1:{discard.port}/floor/r{run}:t"))
            finally:
                discard.close()
        base = {"disk write+fsync": disk_seconds(work, size),
                "loopback TCP": loopback_seconds(size)}
    finally:
        for proc, _ in procs.values():
            stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)
    mb = layer_size / 1e6
    if args.json:
        print(json.dumps({"layer_bytes": layer_size, "runs": args.runs, "seconds": times,
                          "skopeo_push_floor_seconds": floor,
                          "baseline_seconds": base}, indent=2))
        return
    version = subprocess.run(["skopeo", "--version"], capture_output=True,
                             text=True).stdout.split()[-1]
    print(f"layer {mb:.1f} MB, {args.runs} runs, skopeo {version}")
    print(f"{'op':9} {'registry':13} {'median s (p10-p90)':>24} {'MB/s':>8}")
    for op in ops:
        for name in procs:
            vals = times[name][op]
            print(f"{op:9} {name:13} {summary(vals):>24} {mb / statistics.median(vals):8.0f}")
        if "distribution" in procs:
            ratio = statistics.median(times["distribution"][op]) / \
                statistics.median(times["ketch"][op])
            print(f"{op:9} {'ketch speedup':13} {ratio:>23.2f}x")
    if floor:
        print(f"{'push':9} {'client floor':13} {summary(floor):>24} "
              f"{mb / statistics.median(floor):8.0f}   (skopeo to a discarding server)")
    for what, seconds in base.items():
        print(f"{what:23} {seconds:8.3f} s {size / 1e6 / seconds:8.0f} MB/s")


if __name__ == "__main__":
    main()
