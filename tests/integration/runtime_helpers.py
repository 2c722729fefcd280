"""Helpers for driving the real ``ketch-runtime`` binary in integration tests."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BINARY = str(REPO / ".venv" / "bin" / "ketch-runtime")


class Ctl:
    """``ketch-runtime --root <tmp>``; remembers ids so the fixture can delete them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids: set[str] = set()

    def __call__(self, *args: str, check: bool = True, timeout: float = 30,
                 input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        if len(args) > 1 and args[0] in ("create", "run"):
            self.ids.add(args[-1])
        # Files, not pipes: a created container inherits the runtime's stdio and keeps it
        # open, so waiting for EOF on a pipe would wait for the container (as with runc).
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            rc = subprocess.run([BINARY, "--root", str(self.root), *args], stdout=out,
                                stderr=err, timeout=timeout, input=input,
                                stdin=None if input else subprocess.DEVNULL,
                                check=False).returncode
            out.seek(0)
            err.seek(0)
            p = subprocess.CompletedProcess(args, rc, out.read().decode(errors="replace"),
                                            err.read().decode(errors="replace"))
        if check and p.returncode != 0:
            raise AssertionError(f"ketch-runtime {' '.join(args)} -> {p.returncode}: "
                                 f"{p.stderr.strip()}")
        return p

    def state(self, cid: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self("state", cid).stdout)
        return out

    def wait_status(self, cid: str, status: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(cid)["status"] == status:
                return
            time.sleep(0.02)
        raise AssertionError(f"{cid} never reached {status}: {self.state(cid)}")

    def cleanup(self) -> None:
        for cid in self.ids:
            subprocess.run([BINARY, "--root", str(self.root), "delete", "--force", cid],
                           capture_output=True, check=False, timeout=30)


def edit_config(bundle: str | Path, **changes: Any) -> dict[str, Any]:
    """Load bundle/config.json, apply top-level or dotted-key changes, save it back."""
    path = Path(bundle) / "config.json"
    cfg: dict[str, Any] = json.loads(path.read_text())
    for key, value in changes.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path.write_text(json.dumps(cfg))
    return cfg


def mounts_of_host() -> str:
    return Path("/proc/self/mountinfo").read_text()


def cgroup_dirs(name: str) -> list[str]:
    """Every cgroup directory on the host whose path ends in ``name``."""
    out = []
    for base, dirs, _files in os.walk("/sys/fs/cgroup"):
        for d in dirs:
            if d == name:
                out.append(os.path.join(base, d))
    return out
