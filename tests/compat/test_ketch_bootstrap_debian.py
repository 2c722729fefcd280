"""``ketch image bootstrap debian:…`` end to end: built from the host's Debian mirror by
the ketch CLI, loaded into a private ketchd, run with the stock docker CLI.

Skipped, saying so, without mmdebstrap or when the mirror does not answer (it is the one
network this test needs: the package registry every Debian machine uses).
"""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest

from ketch.errors import Unavailable
from ketch.image.bootstrap_debian import default_mirror, fetch_release
from tests.compat.conftest import Ketchd
from tests.compat.test_ketch_cli import ketch_cli, ok

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/mmdebstrap"),
                                reason="needs mmdebstrap (apt-get install mmdebstrap)")


def test_bootstrapped_debian_runs_under_the_docker_cli(ketchd: Ketchd) -> None:
    mirror = default_mirror()
    try:
        release = fetch_release(mirror, "bookworm")
    except Unavailable as e:
        pytest.skip(f"Debian mirror unreachable: {e}")
    r = ok(ketch_cli(ketchd, "image", "bootstrap", "debian:bookworm-slim", timeout=600))
    assert "Loaded image: debian:bookworm-slim" in r

    inspect = json.loads(ok(ketchd.docker("image", "inspect", "debian:bookworm-slim")))[0]
    assert inspect["Config"]["Cmd"] == ["bash"]
    assert inspect["Os"] == "linux" and len(inspect["RootFS"]["Layers"]) == 1

    out = ok(ketchd.docker("run", "--rm", "--network", "none", "debian:bookworm-slim", "bash",
                           "-c", "cat /etc/debian_version; apt-get --version | head -n1; "
                           "dpkg-query -W -f='${Status}\\n' apt; "
                           "grep -h '^deb\\|^URIs' /etc/apt/sources.list "
                           "/etc/apt/sources.list.d/* 2>/dev/null; id -u"))
    lines = out.splitlines()
    assert lines[0].startswith("12."), out  # bookworm is Debian 12
    assert lines[1].startswith("apt "), out
    assert "install ok installed" in lines[2], out
    assert any(mirror.rstrip("/") in line for line in lines[3:-1]), out
    assert lines[-1] == "0"
    # reproducible: the image's date is the Release file's, not the time of the build
    created = datetime.fromisoformat(inspect["Created"].replace("Z", "+00:00"))
    assert int(created.timestamp()) == release.date
