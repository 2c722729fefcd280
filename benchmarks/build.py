"""``docker build`` side by side: ketchd's builder vs dockerd's classic builder and BuildKit.

Usage (root)::

    .venv/bin/python benchmarks/build.py [--size-mb 100] [--stage-mb 20] [--runs 5]
        [--only ketch|docker]... [--keep]

Columns: ketchd through ``ketch build`` (our CLI, which sends only the files that
changed since the daemon's last copy of the context, as BuildKit's client does); ketchd
and dockerd's classic builder through the same docker CLI (``DOCKER_BUILDKIT=0``: the
whole context every time); and dockerd's BuildKit through Debian's docker CLI 20.10
(``/usr/bin/docker``, ``$KETCH_BUILDKIT_CLI``) with ``DOCKER_BUILDKIT=1``: that CLI
still has BuildKit's client built in, where the CLI 28 needs the buildx plugin.

Cases:

``copy cold``     ``FROM busybox`` + ``COPY big /big`` of ``--size-mb`` random bytes,
                  ``--no-cache`` (the issue's target: ketch build <= BuildKit); as for
                  BuildKit, the context is the same as in the build before
``copy cached``   the same build again with its cache warm (target: ketch build <=
                  0.25x docker's classic cached rebuild)
``multi-stage``   two independent stages each writing ``--stage-mb`` in a RUN, a third
                  COPYing both results, ``--no-cache`` (independent stages may overlap)

Every daemon runs in its own network namespace through ``benchmarks/engine.py``'s
machinery (never a dockerd in the host's namespace); builds use ``--network none``.
busybox is imported locally, nothing is pulled. Each cell's first build is a warm-up,
not timed. Medians of ``--runs``, engines taking turns against drift. Only processes
started here are signalled. No timed assertions.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engine as eb  # the sibling script's daemons and namespaces

#: the docker CLI that still speaks BuildKit without buildx (Debian's docker.io, 20.10)
BUILDKIT_CLI = os.environ.get("KETCH_BUILDKIT_CLI") or "/usr/bin/docker"
#: (label, daemon, client): "docker" is the docker CLI's classic builder protocol,
#: "buildkit" Debian's CLI with DOCKER_BUILDKIT=1, "ketch" ketch build
COLUMNS = (("ketch build", "ketch", "ketch"), ("ketch (docker CLI)", "ketch", "docker"),
           ("docker classic", "docker", "docker"), ("docker buildkit", "docker", "buildkit"))


def ketch_cli() -> list[str]:
    """``ketch`` next to this Python (the venv's entry point), else ``-m``."""
    script = os.path.join(os.path.dirname(sys.executable), "ketch")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "ketch.cmd.ketch"]


def contexts(work: Path, size_mb: int, stage_mb: int) -> dict[str, Path]:
    copy = work / "ctx-copy"
    copy.mkdir()
    with open(copy / "big", "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    (copy / "Dockerfile").write_text("FROM busybox\nCOPY big /big\n")
    multi = work / "ctx-multi"
    multi.mkdir()
    n = stage_mb << 20
    (multi / "Dockerfile").write_text(
        "FROM busybox AS a\n"
        f"RUN head -c {n} /dev/urandom > /a\n"
        "FROM busybox AS b\n"
        f"RUN head -c {n} /dev/urandom > /b\n"
        "FROM busybox\n"
        "COPY --from=a /a /a\n"
        "COPY --from=b /b /b\n")
    return {"copy": copy, "multi": multi}


def buildkit_error() -> str | None:
    """Why the BuildKit column cannot run (None: it can)."""
    if not os.access(BUILDKIT_CLI, os.X_OK):
        return f"{BUILDKIT_CLI} not installed (Debian's docker.io has the BuildKit client)"
    p = subprocess.run([BUILDKIT_CLI, "build", "--help"], capture_output=True, text=True,
                       env={**os.environ, "DOCKER_BUILDKIT": "1"}, check=False)
    if "--progress" not in p.stdout:
        return f"{BUILDKIT_CLI} has no built-in BuildKit client (needs buildx)"
    return None


def build(eng: eb.Engine, client: str, ctx: Path, tag: str, *flags: str) -> float:
    cli = {"buildkit": [BUILDKIT_CLI], "ketch": ketch_cli()}.get(client, eng.cli)
    col = dataclasses.replace(eng, cli=cli, env={
        **eng.env, "DOCKER_BUILDKIT": "1" if client == "buildkit" else "0"})
    t0 = time.perf_counter()
    p = col.run("build", "--network", "none", "-q", "-t", tag, *flags, str(ctx), timeout=600)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise eb.BenchError(f"build: {eb.error_line(p)}")
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=100, help="COPY size (default 100 MiB)")
    ap.add_argument("--stage-mb", type=int, default=20,
                    help="bytes each multi-stage RUN writes (default 20 MiB)")
    ap.add_argument("--runs", type=int, default=5, help="timed builds per cell (default 5)")
    ap.add_argument("--only", action="append", choices=("ketch", "docker"),
                    help="measure only this daemon (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("build.py needs root (daemons, namespaces, mounts)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kbuild-"))
    engines: dict[str, eb.Engine] = {}
    before = eb.HostState.now()
    try:
        from ketch.runtime.busybox import make_rootfs

        make_rootfs(str(work / "rootfs"))
        tarball = subprocess.run(["tar", "-C", str(work / "rootfs"), "-c", "."], check=True,
                                 capture_output=True).stdout
        ctxs = contexts(work, args.size_mb, args.stage_mb)
        for name in ("ketch", "docker"):
            if not args.only or name in args.only:
                engines[name] = eb.setup(name, work, tarball, bridge=False)
        cases = ("copy cold", "copy cached", "multi-stage")
        times: dict[tuple[str, str], list[float]] = {}
        errors: dict[tuple[str, str], str] = {}
        cols = [c for c in COLUMNS if c[1] in engines]
        bk_error = buildkit_error()
        for label, name, client in cols:
            why = engines[name].error or (bk_error if client == "buildkit" else None)
            if why:
                for case in cases:
                    errors[(label, case)] = why
        for r in range(args.runs):
            for label, name, client in cols:
                eng = engines[name]
                if eng.error:
                    continue
                for case, ctx, flags in (("copy cold", ctxs["copy"], ("--no-cache",)),
                                         ("copy cached", ctxs["copy"], ()),
                                         ("multi-stage", ctxs["multi"], ("--no-cache",))):
                    if (label, case) in errors:
                        continue
                    try:
                        if r == 0:  # warm up: page cache, layer cache, context copies
                            build(eng, client, ctx, f"bench-{case.split()[0]}", *flags)
                        times.setdefault((label, case), []).append(
                            build(eng, client, ctx, f"bench-{case.split()[0]}", *flags))
                    except Exception as e:
                        errors[(label, case)] = str(e)
        print(f"machine: {os.cpu_count()} cpus, kernel {os.uname().release}")
        print("servers: " + "; ".join(f"{e.name} {e.version}" for e in engines.values()))
        print(f"COPY {args.size_mb} MiB random; stages write {args.stage_mb} MiB each; "
              f"median of {args.runs} builds\n")
        med: dict[tuple[str, str], float] = {}
        print(f"{'':18s}" + "".join(f"{c:>16s}" for c in cases))
        for label, _, _ in cols:
            cells = []
            for case in cases:
                vals = times.get((label, case)) or []
                if (label, case) in errors or not vals:
                    cells.append("n/a")
                    continue
                med[(label, case)] = statistics.median(vals)
                cells.append(f"{med[(label, case)]:.3f} s")
            print(f"{label:18s}" + "".join(f"{c:>16s}" for c in cells))
        for (label, case), why in sorted(errors.items()):
            print(f"n/a {label} / {case}: {why}")
        for label in ("ketch build", "ketch (docker CLI)"):
            cold, bk = med.get((label, "copy cold")), med.get(("docker buildkit", "copy cold"))
            if cold is not None and bk is not None:
                print(f"copy cold: {label} / buildkit {cold / bk:.2f}x (target <= 1x)")
            kc, dc = med.get((label, "copy cached")), med.get(("docker classic", "copy cached"))
            if kc is not None and dc is not None:
                print(f"copy cached: {label} / docker classic {kc / dc:.2f}x "
                      "(target <= 0.25x)")
        return 0
    finally:
        left = eb.teardown(engines.values(), work, before, keep_work=args.keep)
        for line in left:
            print(f"cleanup: {line}")


if __name__ == "__main__":
    sys.exit(main())
