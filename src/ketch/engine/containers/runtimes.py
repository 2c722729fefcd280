"""Which OCI runtime binaries ketchd knows, and what each needs on this host.

``ketch`` (the in-process library) is always there; ``runc`` and ``crun`` when
installed; others added with ``--add-runtime NAME=PATH`` or the config file.

crun 1.8 needs two adjustments, found on the hybrid-cgroup hosts ketch runs on:
it rejects ``ociVersion`` 1.2 and later ("unknown version specified"), so its
bundles say 1.0.2 (the engine's specs use nothing newer); and it refuses to place
a container while the cgroup2 mount of a hybrid host has controllers bound, so it
runs through a wrapper that gives it a private mount namespace without that
mount (the container gets its own mount namespace anyway; state lives under its
``--root``, which every mount namespace sees).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

from ketch.errors import InvalidArgument
from ketch.runtime.state import atomic_write

__all__ = ["adapt_spec", "describe", "known"]

_UNIFIED = "/sys/fs/cgroup/unified"
_OLD_OCI = {"crun": "1.0.2"}


def known(extra: Mapping[str, str]) -> list[str]:
    names = ["ketch", *extra]
    for n in ("runc", "crun"):
        if n not in names and shutil.which(n):
            names.append(n)
    return names


def _hybrid_v2_controllers() -> bool:
    try:
        with open(os.path.join(_UNIFIED, "cgroup.controllers")) as f:
            return bool(f.read().split())
    except OSError:
        return False


def _crun_wrapper(exec_root: str, binary: str) -> str:
    path = os.path.join(exec_root, "runtime", "crun-hybrid")
    script = ("#!/bin/sh\n"
              "# crun refuses hybrid cgroup hosts whose cgroup2 has controllers: hide it\n"
              "exec unshare --mount --propagation private -- /bin/sh -c "
              f"'umount {_UNIFIED} 2>/dev/null; exec \"$0\" \"$@\"' {binary} \"$@\"\n")
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    atomic_write(path, script.encode(), 0o700, sync=False)
    return path


def describe(name: str, extra: Mapping[str, str], exec_root: str) -> dict[str, Any]:
    """The runtime description the supervisor's ``make_runtime`` takes."""
    root = os.path.join(exec_root, "runtime", name)
    if name == "ketch":
        return {"name": "ketch", "root": root}
    path = extra.get(name) or (shutil.which(name) if name in ("runc", "crun") else None)
    if not path:
        raise InvalidArgument(f"unknown or invalid runtime name: {name}")
    if name == "crun" and name not in extra and _hybrid_v2_controllers():
        path = _crun_wrapper(exec_root, path)
    return {"name": name, "path": path, "root": root}


def adapt_spec(name: str, spec: dict[str, Any]) -> None:
    """Adjust an OCI spec for what runtime ``name`` accepts (see the module docstring)."""
    version = _OLD_OCI.get(name)
    if version is not None:
        spec["ociVersion"] = version
