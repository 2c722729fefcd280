"""The default config of ``ketch-runtime spec``: runc's shape, valid by schema and by us."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator

from ketch.oci.runtime_spec import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, OCI_VERSION
from ketch.runtime.specgen import default_spec
from ketch.runtime.validate import validate
from tests.schemas import runtime_schema as _validator


@pytest.fixture(scope="module")
def schema() -> Draft4Validator:
    return _validator("config-schema.json")


def _errors(v: Draft4Validator, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


@pytest.fixture
def bundle(tmp_path: Path) -> str:
    (tmp_path / "rootfs").mkdir()
    return str(tmp_path)


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_spec_is_valid(schema: Draft4Validator, bundle: str, rootless: bool) -> None:
    spec = default_spec(rootless=rootless)
    assert _errors(schema, spec) == []
    # and survives a JSON round trip, as `spec` writes it to a file
    validate(json.loads(json.dumps(spec)), bundle)


def test_schema_validator_does_catch_errors(schema: Draft4Validator) -> None:
    # guards the test above against a validator that resolves nothing and passes all
    spec = default_spec()
    spec["linux"]["namespaces"].append({"type": "bogus"})
    spec["process"]["rlimits"][0]["soft"] = -1
    errors = _errors(schema, spec)
    assert len(errors) == 2, errors


def test_runc_defaults() -> None:
    spec = default_spec()
    assert spec["ociVersion"] == OCI_VERSION
    proc = spec["process"]
    assert proc["terminal"] is True
    assert proc["user"] == {"uid": 0, "gid": 0}
    assert proc["args"] == ["sh"]
    assert proc["env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           "TERM=xterm"]
    assert proc["cwd"] == "/"
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert proc["capabilities"] == {"bounding": caps, "effective": caps, "permitted": caps}
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert proc["noNewPrivileges"] is True
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert spec["hostname"] == "ketch"
    mounts = {m["destination"]: (m["type"], m["source"], m.get("options"))
              for m in spec["mounts"]}
    assert list(mounts) == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
                            "/sys/fs/cgroup"]
    assert mounts["/proc"] == ("proc", "proc", None)
    assert mounts["/dev"] == ("tmpfs", "tmpfs",
                              ["nosuid", "strictatime", "mode=755", "size=65536k"])
    assert mounts["/dev/pts"] == ("devpts", "devpts", ["nosuid", "noexec", "newinstance",
                                                       "ptmxmode=0666", "mode=0620", "gid=5"])
    assert mounts["/dev/shm"] == ("tmpfs", "shm",
                                  ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])
    assert mounts["/dev/mqueue"] == ("mqueue", "mqueue", ["nosuid", "noexec", "nodev"])
    assert mounts["/sys"] == ("sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"])
    assert mounts["/sys/fs/cgroup"] == ("cgroup", "cgroup",
                                        ["nosuid", "noexec", "nodev", "relatime", "ro"])
    linux = spec["linux"]
    assert linux["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert [n["type"] for n in linux["namespaces"]] == ["pid", "network", "ipc", "uts",
                                                        "mount", "cgroup"]
    assert all(set(n) == {"type"} for n in linux["namespaces"])
    assert linux["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert "/proc/kcore" in linux["maskedPaths"] and "/sys/firmware" in linux["maskedPaths"]
    assert linux["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)
    assert "/proc/sys" in linux["readonlyPaths"]
    assert "uidMappings" not in linux and "gidMappings" not in linux


def test_rootless_variant() -> None:
    spec = default_spec(rootless=True)
    linux = spec["linux"]
    types = [n["type"] for n in linux["namespaces"]]
    assert "user" in types and "network" not in types
    assert set(types) == {"pid", "ipc", "uts", "mount", "cgroup", "user"}
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": os.getuid(), "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 0, "hostID": os.getgid(), "size": 1}]
    assert "resources" not in linux
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert "/sys/fs/cgroup" not in mounts
    assert mounts["/sys"] == {"destination": "/sys", "type": "none", "source": "/sys",
                              "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
    assert not any(o.startswith("gid=") for o in mounts["/dev/pts"]["options"])
    # the rest is the same as the privileged spec
    assert spec["process"] == default_spec()["process"]
    assert linux["maskedPaths"] == list(DEFAULT_MASKED_PATHS)


def test_arguments() -> None:
    spec = default_spec(args=["/bin/echo", "hi"], root_path="/abs/rootfs", terminal=False)
    assert spec["process"]["args"] == ["/bin/echo", "hi"]
    assert spec["root"]["path"] == "/abs/rootfs"
    assert spec["process"]["terminal"] is False


def test_each_call_returns_a_fresh_dict() -> None:
    args = ["x"]
    a = default_spec(args=args)
    a["process"]["args"].append("y")
    a["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    a["mounts"][2]["options"].append("uid=1")
    a["linux"]["maskedPaths"].clear()
    a["process"]["env"].clear()
    b = default_spec(args=["x"])
    assert args == ["x"]
    assert b["process"]["args"] == ["x"]
    assert "CAP_SYS_ADMIN" not in b["process"]["capabilities"]["bounding"]
    assert "CAP_SYS_ADMIN" not in b["process"]["capabilities"]["effective"]
    assert "uid=1" not in b["mounts"][2]["options"]
    assert b["mounts"][3]["options"] == ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
    assert b["linux"]["maskedPaths"] and b["process"]["env"]
