"""README's first command: the main job starts ketchd and runs a container through it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.compat.conftest import in_netns


def test_main_job_starts_ketchd_and_runs_a_container(tmp_path: Path) -> None:
    env = dict(os.environ, KETCH_DEMO_ROOT=str(tmp_path))
    pidfile = tmp_path / "ketchd.pid"
    try:
        # in a throwaway network namespace: the demo's ketchd makes its bridge there
        demo = in_netns(tmp_path, [sys.executable, "-m", "ketch.cmd.demo"])
        r = subprocess.run(demo, env=env, capture_output=True, text=True, timeout=120,
                           check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "started ketchd" in r.stdout and "Loaded image: busybox:latest" in r.stdout
        assert "uid/gid:        0/0" in r.stdout
        assert "seccomp:        2" in r.stdout and "exit status: 0" in r.stdout
        caps = next(line for line in r.stdout.splitlines() if "CapEff" in line)
        assert "net_raw" in caps and "sys_admin" not in caps  # Docker's default set
        # A second run finds the daemon and the image already there.
        r = subprocess.run(demo, env=env, capture_output=True, text=True, timeout=120,
                           check=False)
        assert r.returncode == 0 and "already running" in r.stdout
        assert "Loaded image" not in r.stdout
    finally:
        if pidfile.exists():
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
