"""ketch's main job on its defaults (README's first command).

For now: build a busybox bundle from Debian's busybox-static (no network) and run
a container from it with ``ketch-runtime``, printing what the container sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

SCRIPT = r"""
echo "pid (inside):   $$"
echo "hostname:       $(hostname)"
echo "uid/gid:        $(id -u)/$(id -g)"
r=$(grep ' / ' /proc/mounts)
echo "root fs:        $(echo $r | cut -d' ' -f3) ($(echo $r | cut -d' ' -f4 | cut -d, -f1))"
grep -E '^Cap(Eff|Bnd)' /proc/self/status | sed 's/^/capabilities:   /'
echo "processes:      $(ls -d /proc/[0-9]* | wc -l)"
"""


def _with_cap_names(line: str) -> str:
    from ketch.sys.caps import CAPS

    if not line.startswith("capabilities:"):
        return line
    mask = int(line.split()[-1], 16)
    names = [n.removeprefix("CAP_").lower() for n, b in CAPS.items() if mask & (1 << b)]
    return f"{line}  {' '.join(names)}"


def main() -> int:
    from ketch.runtime.busybox import make_bundle

    runtime = os.path.join(os.path.dirname(sys.executable), "ketch-runtime")
    work = tempfile.mkdtemp(prefix="ketch-demo-")
    try:
        bundle = make_bundle(os.path.join(work, "bundle"), ["/bin/sh", "-c", SCRIPT],
                             readonly=True)
        cid = f"ketch-demo-{os.getpid()}"
        print(f"bundle: {bundle} (busybox-static)\n$ ketch-runtime run {cid}", flush=True)
        proc = subprocess.run([runtime, "--root", os.path.join(work, "state"), "run",
                               "--bundle", bundle, cid], stdout=subprocess.PIPE, check=False)
        for line in proc.stdout.decode(errors="replace").splitlines():
            print(_with_cap_names(line))
        print(f"exit status: {proc.returncode}")
        return proc.returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
