"""The OCIRuntime conformance suite against runc, crun and ketch-runtime via CliRuntime, and
against ketch's runtime library in-process (``ketch-lib``: what the engine will use).

crun 1.8 on a hybrid-cgroup host needs two adjustments, found by probing rather
than assumed (the skip message says what failed if they are not enough):

* it refuses to place a container in any cgroup while cgroup2 (mounted at
  /sys/fs/cgroup/unified) has a controller bound, even with
  ``--cgroup-manager=disabled`` ("cgroups in hybrid mode not supported, drop all
  controllers from cgroupv2"); it is run through a wrapper that gives it a
  private mount namespace without that mount, so it sees a plain v1 host;
* it rejects ``ociVersion`` 1.2 and later ("unknown version specified"), so its
  bundles say 1.0.2 (the configs use nothing newer).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.errors import KetchError
from ketch.runtime.busybox import make_bundle
from ketch.runtime.cli_runtime import CliRuntime
from ketch.runtime.container import Runtime
from ketch.runtime.oci_runtime import OCIRuntime
from tests.conformance.oci_runtime_suite import BundleFactory, OCIRuntimeSuite, edit_config

REPO = Path(__file__).resolve().parents[2]
KETCH = REPO / ".venv" / "bin" / "ketch-runtime"
RUNC = "/usr/sbin/runc"
CRUN = "/usr/bin/crun"
UNIFIED = Path("/sys/fs/cgroup/unified")


@dataclass(frozen=True)
class Flavour:
    """How to run one implementation on this host."""

    name: str
    binary: str
    global_args: tuple[str, ...] = ()
    oci_version: str | None = None  # overrides config.json's ociVersion when set


def hybrid_cgroup2_controllers() -> list[str]:
    """Controllers bound to the cgroup2 hierarchy of a hybrid host (empty elsewhere)."""
    try:
        return (UNIFIED / "cgroup.controllers").read_text().split()
    except OSError:
        return []


def write_private_mount_wrapper(path: Path, binary: str) -> str:
    """A script running ``binary`` in a private mount namespace without the cgroup2 mount."""
    path.write_text(
        "#!/bin/sh\n"
        "# crun refuses hybrid cgroup hosts whose cgroup2 has controllers; hide that mount\n"
        "exec unshare --mount --propagation private -- /bin/sh -c "
        f"'umount {UNIFIED} 2>/dev/null; exec \"$0\" \"$@\"' {binary} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def probe(flavour: Flavour, work: Path) -> str | None:
    """Run /bin/true in a busybox container; None on success, else the first error line."""
    bundle = make_bundle(str(work / f"probe-{uuid.uuid4().hex[:6]}"), ["/bin/true"])
    if flavour.oci_version:
        edit_config(bundle, lambda c: c.update(ociVersion=flavour.oci_version))
    cid = f"probe-{uuid.uuid4().hex[:8]}"
    base = [flavour.binary, *flavour.global_args, f"--root={work / 'probe-state'}"]
    try:
        p = subprocess.run([*base, "run", "--bundle", bundle, cid], capture_output=True,
                           text=True, timeout=60, check=False)
    finally:
        subprocess.run([*base, "delete", "--force", cid], capture_output=True, timeout=60,
                       check=False)
    if p.returncode == 0:
        return None
    lines = (p.stderr or p.stdout).strip().splitlines()
    return lines[0] if lines else f"exit status {p.returncode}"


@pytest.fixture(scope="session")
def crun_flavour(tmp_path_factory: pytest.TempPathFactory) -> Flavour:
    if not os.access(CRUN, os.X_OK):
        pytest.skip(f"crun not installed at {CRUN}")
    work = tmp_path_factory.mktemp("crun-probe")
    flavour = Flavour("crun", CRUN)
    notes = []
    controllers = hybrid_cgroup2_controllers()
    if controllers:
        notes.append(f"hybrid cgroups with {','.join(controllers)} on cgroup2")
        flavour = Flavour("crun", write_private_mount_wrapper(work / "crun-wrapper", CRUN))
    error = probe(flavour, work)
    if error and "unknown version" in error:
        notes.append(f"ociVersion rejected ({error})")
        flavour = Flavour("crun", flavour.binary, oci_version="1.0.2")
        error = probe(flavour, work)
    if error:
        pytest.skip(f"crun cannot run a container on this host: {error}"
                    + (f" (tried workarounds for: {'; '.join(notes)})" if notes else ""))
    return flavour


@pytest.fixture(params=["runc", "crun", "ketch", "ketch-lib"])
def flavour(request: pytest.FixtureRequest) -> Flavour:
    name: str = request.param
    if name == "runc":
        if not os.access(RUNC, os.X_OK):
            pytest.skip(f"runc not installed at {RUNC}")
        return Flavour("runc", RUNC)
    if name == "crun":
        crun: Flavour = request.getfixturevalue("crun_flavour")
        return crun
    if name == "ketch-lib":
        return Flavour("ketch-lib", "")
    if not os.access(KETCH, os.X_OK):
        pytest.skip(f"ketch-runtime not installed at {KETCH} (pip install -e .)")
    return Flavour("ketch", str(KETCH))


@pytest.fixture
def runtime(flavour: Flavour, tmp_path: Path) -> Iterator[OCIRuntime]:
    """The runtime with a private --root; every container under it is force-deleted after."""
    root = tmp_path / "state"
    rt: OCIRuntime
    if flavour.name == "ketch-lib":
        rt = Runtime(str(root))
    else:
        rt = CliRuntime(flavour.binary, str(root), name=flavour.name,
                        global_args=flavour.global_args)
    try:
        yield rt
    finally:
        ids: set[str] = set()
        try:
            ids.update(c["id"] for c in rt.list())
        except KetchError:
            pass
        # runc, crun and ketch-runtime all keep one directory per container under --root;
        # listing it too catches containers a broken ``list`` would miss
        if root.is_dir():
            ids.update(e.name for e in root.iterdir() if e.is_dir())
        for cid in sorted(ids):
            try:
                rt.delete(cid, force=True)
            except KetchError:
                pass


@pytest.fixture
def bundle_factory(flavour: Flavour, tmp_path: Path) -> BundleFactory:
    def factory(args: list[str]) -> str:
        bundle = make_bundle(str(tmp_path / f"bundle-{uuid.uuid4().hex[:8]}"), args)
        if flavour.oci_version:
            edit_config(bundle, lambda c: c.update(ociVersion=flavour.oci_version))
        return bundle

    return factory


class TestOCIRuntimeConformance(OCIRuntimeSuite):
    """Runs every suite test once per flavour (runc, crun, ketch)."""
