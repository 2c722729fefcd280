"""The runtime-spec "features" document: what ``ketch-runtime features`` prints.

A high-level engine reads it to learn what this runtime accepts before writing a
config. It must not over-promise: every entry listed is one that ``validate`` lets
through and the runtime carries out. Recursive mount options (``rro``…) and
idmapped mounts are refused by ``validate``, so they are not listed.
"""

from __future__ import annotations

from typing import Any

from ketch import __version__
from ketch.oci.runtime_spec import (
    HOOK_NAMES,
    MOUNT_OPTIONS,
    NAMESPACE_TYPES,
    OCI_VERSION,
    PROPAGATION,
)
from ketch.sys.caps import CAPS

__all__ = ["features"]

# Used until ketch.runtime.seccomp says otherwise (see _seccomp_features).
_SECCOMP_ACTIONS = [
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG",
]
_SECCOMP_OPERATORS = [
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
]
_SECCOMP_ARCHS = [
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
]
_SECCOMP_FLAGS = [
    "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
]


def features() -> dict[str, Any]:
    """A fresh dict valid against the runtime-spec features schema.

    ``ociVersionMin``/``Max`` bound the config versions ``validate`` accepts;
    ``mountOptions`` are the mount(2) flag and propagation options that
    ``parse_mount_options`` understands (any other option is passed to the
    filesystem as data); ``linux.capabilities`` are all names ketch knows.
    """
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOK_NAMES),
        "mountOptions": sorted({*MOUNT_OPTIONS, *PROPAGATION}),
        "linux": {
            "namespaces": list(NAMESPACE_TYPES),
            "capabilities": sorted(CAPS, key=CAPS.__getitem__),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False,
                       "rdma": False},
            "seccomp": _seccomp_features(),
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
            "netDevices": {"enabled": False},
        },
        "annotations": {"io.ketch.runtime.version": __version__},
    }


def _seccomp_features() -> dict[str, Any]:
    """linux.seccomp, from the filter compiler when it publishes its tables.

    ``ketch.runtime.seccomp`` may define ``ACTIONS``, ``OPERATORS``, ``ARCHS`` and
    ``FLAGS`` (iterables of spec names) and ``supported_flags()`` (the flags this
    kernel accepts); each one missing falls back to the lists above. Without a way
    to ask the kernel, ``supportedFlags`` is empty rather than a guess.
    """
    import importlib

    try:
        mod: Any = importlib.import_module("ketch.runtime.seccomp")
    except ModuleNotFoundError as e:
        if e.name != "ketch.runtime.seccomp":
            raise  # the module is there but broken: say so, do not hide it
        mod = None
    flags = list(getattr(mod, "FLAGS", _SECCOMP_FLAGS))
    probe = getattr(mod, "supported_flags", None)
    return {
        "enabled": True,
        "actions": list(getattr(mod, "ACTIONS", _SECCOMP_ACTIONS)),
        "operators": list(getattr(mod, "OPERATORS", _SECCOMP_OPERATORS)),
        "archs": list(getattr(mod, "ARCHS", _SECCOMP_ARCHS)),
        "knownFlags": flags,
        "supportedFlags": list(probe()) if callable(probe) else [],
    }
