"""The features document: valid by schema, and consistent with what validate accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch import __version__
from ketch.errors import KetchError
from ketch.oci.runtime_spec import OCI_VERSION, RECURSIVE_MOUNT_OPTIONS
from ketch.runtime.features import features
from ketch.runtime.specgen import default_spec
from ketch.runtime.validate import validate
from ketch.sys.caps import CAPS
from tests.schemas import runtime_schema as _validator


def test_valid_against_schema() -> None:
    v = _validator("features-schema.json")
    doc = features()
    assert [e.message for e in v.iter_errors(doc)] == []
    # the validator does look into linux (guards against a vacuous pass)
    doc["linux"]["namespaces"].append("bogus")
    doc["linux"]["seccomp"]["archs"].append("SCMP_ARCH_PDP11")
    assert len(list(v.iter_errors(doc))) == 2


def test_content() -> None:
    doc = features()
    assert doc["ociVersionMin"] == "1.0.0"
    assert doc["ociVersionMax"] == OCI_VERSION
    assert doc["hooks"] == ["prestart", "createRuntime", "createContainer", "startContainer",
                            "poststart", "poststop"]
    linux = doc["linux"]
    assert set(linux["namespaces"]) == {"pid", "network", "mount", "ipc", "uts", "user",
                                        "cgroup", "time"}
    assert linux["capabilities"][0] == "CAP_CHOWN"
    assert set(linux["capabilities"]) == set(CAPS)
    assert linux["cgroup"] == {"v1": True, "v2": True, "systemd": False, "systemdUser": False,
                               "rdma": False}
    assert linux["seccomp"]["enabled"] is True
    assert "SCMP_ACT_ERRNO" in linux["seccomp"]["actions"]
    assert "SCMP_CMP_MASKED_EQ" in linux["seccomp"]["operators"]
    assert set(linux["seccomp"]["supportedFlags"]) <= set(linux["seccomp"]["knownFlags"])
    for off in ("apparmor", "selinux", "intelRdt"):
        assert linux[off] == {"enabled": False}
    assert linux["mountExtensions"] == {"idmap": {"enabled": False}}
    assert doc["annotations"] == {"io.ketch.runtime.version": __version__}


def test_mount_options() -> None:
    opts = features()["mountOptions"]
    assert opts == sorted(opts) and len(opts) == len(set(opts))
    for o in ("ro", "rw", "nosuid", "nodev", "noexec", "bind", "rbind", "rprivate", "rslave",
              "strictatime", "nosymfollow"):
        assert o in opts
    # validate refuses these, so the document must not claim them
    assert not set(opts) & set(RECURSIVE_MOUNT_OPTIONS)


@pytest.mark.parametrize("kind", ["advertised", "refused"])
def test_mount_options_agree_with_validate(tmp_path: Path, kind: str) -> None:
    (tmp_path / "rootfs").mkdir()
    opts = features()["mountOptions"] if kind == "advertised" else sorted(RECURSIVE_MOUNT_OPTIONS)
    for opt in opts:
        spec = default_spec()
        spec["mounts"].append({"destination": "/mnt", "type": "bind", "source": "/tmp",
                               "options": [opt]})
        if kind == "advertised":
            validate(spec, str(tmp_path))
        else:
            with pytest.raises(KetchError, match=opt):
                validate(spec, str(tmp_path))


def test_versions_bound_what_validate_accepts(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    doc = features()
    for version in (doc["ociVersionMin"], doc["ociVersionMax"]):
        spec = default_spec()
        spec["ociVersion"] = version
        validate(spec, str(tmp_path))


def test_fresh_each_call() -> None:
    a = features()
    a["linux"]["capabilities"].clear()
    a["hooks"].clear()
    a["linux"]["seccomp"]["actions"].clear()
    b = features()
    assert b["linux"]["capabilities"] and b["hooks"] and b["linux"]["seccomp"]["actions"]
