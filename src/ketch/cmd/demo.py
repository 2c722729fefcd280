"""ketch's main job on its defaults (README's first command).

Start ``ketchd`` on its defaults (``unix:///run/ketch.sock``, ``/var/lib/ketch``) unless
one already answers there, make sure the ``busybox`` image exists (built from Debian's
busybox-static, no network), run a container through the Docker Engine API and print
what it sees. ketchd is left running for the user's own ``docker``/``ketch`` commands.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

# ketchd's defaults; KETCH_DEMO_ROOT puts everything under one directory instead (tests).
_ROOT = os.environ.get("KETCH_DEMO_ROOT")
SOCK = f"{_ROOT}/ketch.sock" if _ROOT else "/run/ketch.sock"
PIDFILE = f"{_ROOT}/ketchd.pid" if _ROOT else "/run/ketchd.pid"
LOG = f"{_ROOT}/ketchd.log" if _ROOT else "/var/log/ketchd.log"

SCRIPT = r"""
echo "pid (inside):   $$"
echo "hostname:       $(hostname)"
echo "uid/gid:        $(id -u)/$(id -g)"
r=$(grep ' / ' /proc/mounts)
echo "root fs:        $(echo $r | cut -d' ' -f3) ($(echo $r | cut -d' ' -f4 | cut -d, -f1))"
grep -E '^Cap(Eff|Bnd)' /proc/self/status | sed 's/^/capabilities:   /'
echo "seccomp:        $(grep '^Seccomp:' /proc/self/status | cut -f2) (2 = filtering)"
echo "processes:      $(ls -d /proc/[0-9]* | wc -l)"
"""


def _with_cap_names(line: str) -> str:
    from ketch.sys.caps import CAPS

    if not line.startswith("capabilities:"):
        return line
    mask = int(line.split()[-1], 16)
    names = [n.removeprefix("CAP_").lower() for n, b in CAPS.items() if mask & (1 << b)]
    return f"{line}  {' '.join(names)}"


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _start_ketchd() -> None:
    ketchd = os.path.join(os.path.dirname(sys.executable), "ketchd")
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    args = [ketchd]
    if _ROOT:
        args += ["-H", f"unix://{SOCK}", "--pidfile", PIDFILE, "--data-root", f"{_ROOT}/data",
                 "--exec-root", f"{_ROOT}/exec"]
    with open(LOG, "ab") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    deadline = time.monotonic() + 20
    while not _alive(SOCK):
        if proc.poll() is not None:
            raise SystemExit(f"ketchd exited with status {proc.returncode}; see {LOG}")
        if time.monotonic() > deadline:
            raise SystemExit(f"ketchd did not open {SOCK} in 20 s; see {LOG}")
        time.sleep(0.02)
    print(f"started ketchd (pid {proc.pid}) on unix://{SOCK}; log: {LOG}")


def _ensure_busybox(client: object) -> None:
    from ketch.client.cli.bootstrap import build_busybox_archive
    from ketch.client.remote import RemoteEngineClient
    from ketch.errors import NotFound

    assert isinstance(client, RemoteEngineClient)
    try:
        client.image_inspect("busybox:latest")
        return
    except NotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="ketch-demo-") as tmp:
        path = build_busybox_archive(tmp, "busybox:latest")
        with open(path, "rb") as f:
            for msg in client.image_load(f):
                if msg.get("stream"):
                    print(str(msg["stream"]).rstrip())


def main() -> int:
    from ketch.client.remote import RemoteEngineClient

    if _alive(SOCK):
        print(f"ketchd is already running on unix://{SOCK}")
    else:
        _start_ketchd()
    client = RemoteEngineClient(f"unix://{SOCK}")
    try:
        _ensure_busybox(client)
        print("$ docker run --rm busybox sh -c '...'   (through ketchd's Docker API)",
              flush=True)
        t0 = time.monotonic()
        cid = client.container_create({"Image": "busybox",
                                       "Cmd": ["/bin/sh", "-c", SCRIPT]})["Id"]
        waiter = client.container_wait(cid, condition="next-exit")
        client.container_start(cid)
        status = waiter.result(timeout=60).get("StatusCode", -1)
        took = (time.monotonic() - t0) * 1000
        for _, data in client.container_logs(cid):
            for line in data.decode(errors="replace").splitlines():
                print(_with_cap_names(line))
        client.container_remove(cid, force=True)
    finally:
        client.close()
    print(f"exit status: {status} (create to exit: {took:.0f} ms)")
    print(f"\nketchd keeps running. Try:\n  export DOCKER_HOST=unix://{SOCK}\n"
          "  docker run --rm -it busybox sh    # or: .venv/bin/ketch run --rm -it busybox sh\n"
          f"Stop it with: kill $(cat {PIDFILE})")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
