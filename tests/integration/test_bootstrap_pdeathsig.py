"""A killed ``ketch image bootstrap`` takes mmdebstrap with it: mmdebstrap is started
with PR_SET_PDEATHSIG=SIGTERM, so it gets SIGTERM (and removes its chroot mounts) even
when the process that started it dies of SIGKILL. A stand-in for mmdebstrap records
the SIGTERM it gets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


def test_mmdebstrap_gets_sigterm_when_its_parent_is_killed(tmp_path: Path) -> None:
    started, termed = tmp_path / "started", tmp_path / "termed"
    fake = tmp_path / "mmdebstrap"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        sleep 60 &
        trap 'kill $!; echo term > {termed}; exit 1' TERM
        echo $$ $! > {started}
        wait
        """))
    fake.chmod(0o755)
    driver = textwrap.dedent(f"""\
        from ketch.image.bootstrap_debian import _run_mmdebstrap
        _run_mmdebstrap([{str(fake)!r}], {{"PATH": "/usr/bin:/bin"}},
                        {str(tmp_path / "layer.tar")!r}, 0, None)
        """)
    p = subprocess.Popen([sys.executable, "-c", driver])
    try:
        deadline = time.monotonic() + 30
        while not started.exists() or not started.read_text().strip():
            assert p.poll() is None, "the driver exited early"
            assert time.monotonic() < deadline, "the stand-in never started"
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 10
        while not termed.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert termed.read_text() == "term\n"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if started.exists() and not termed.exists():  # the stand-in and its sleep linger
            for pid in started.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
