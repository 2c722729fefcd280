"""Bad input: one clear line on stderr, exit 1, and nothing left behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.runtime_helpers import Ctl, cgroup_dirs, edit_config, mounts_of_host


def _assert_clean(ctl: Ctl, cid: str, before: str) -> None:
    assert not (ctl.root / cid).exists()
    assert cgroup_dirs(cid) == []
    assert mounts_of_host() == before


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(("breakage", "expect"), [
    ("missing-config", "config.json"),
    ("malformed-config", "config.json"),
    ("unknown-namespace", 'unknown namespace type "bogus"'),
    ("missing-rootfs", "does not exist"),
    ("missing-program", "executable file not found"),
])
def test_bad_bundle(ctl: Ctl, make_bundle: Callable[..., str], cid: str, breakage: str,
                    expect: str) -> None:
    b = make_bundle(["/bin/true"])
    cfg_path = Path(b) / "config.json"
    if breakage == "missing-config":
        cfg_path.unlink()
    elif breakage == "malformed-config":
        cfg_path.write_text('{"ociVersion": "1.2.0", "process": ')
    elif breakage == "unknown-namespace":
        cfg = json.loads(cfg_path.read_text())
        cfg["linux"]["namespaces"].append({"type": "bogus"})
        cfg_path.write_text(json.dumps(cfg))
    elif breakage == "missing-rootfs":
        edit_config(b, root={"path": "no-such-rootfs"})
    elif breakage == "missing-program":
        edit_config(b, process__args=["not-a-program"])
    before = mounts_of_host()
    p = ctl("create", "--bundle", b, cid, check=False)
    assert p.returncode == 1
    assert expect in _one_line(p.stderr)
    _assert_clean(ctl, cid, before)


def test_id_in_use(ctl: Ctl, make_bundle: Callable[..., str], cid: str) -> None:
    b = make_bundle(["/bin/sleep", "100"])
    ctl("create", "--bundle", b, cid)
    p = ctl("create", "--bundle", b, cid, check=False)
    assert p.returncode == 1
    assert f"container with given ID already exists: {cid}" in _one_line(p.stderr)
    assert ctl.state(cid)["status"] == "created"  # the first one is untouched


@pytest.mark.parametrize("verb", ["kill", "state", "delete", "start", "pause", "ps"])
def test_unknown_container(ctl: Ctl, verb: str) -> None:
    p = ctl(verb, "no-such-container", check=False)
    assert p.returncode == 1
    assert "container no-such-container does not exist" in _one_line(p.stderr)


def test_invalid_id(ctl: Ctl, make_bundle: Callable[..., str]) -> None:
    b = make_bundle(["/bin/true"])
    p = ctl("create", "--bundle", b, "../escape", check=False)
    assert p.returncode == 1 and "invalid container id" in _one_line(p.stderr)
    assert not (ctl.root.parent / "escape").exists()


def test_log_json_records_error(ctl: Ctl, tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    p = ctl("--log", str(log), "--log-format", "json", "kill", "nope", check=False)
    # global flags after --root are accepted by runc too
    assert p.returncode == 1
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec["level"] == "error" and "does not exist" in rec["msg"]
