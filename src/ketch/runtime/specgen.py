"""The starter config.json that ``ketch-runtime spec`` writes.

Same shape and defaults as ``runc spec``, so bundles and habits carry over: a shell
as root with a minimal capability set, a read-only rootfs, the usual pseudo
filesystems, every namespace except user (and, rootless, network), all devices
denied in the cgroup, and the kernel interfaces masked that leak the host.
"""

from __future__ import annotations

import os
from typing import Any

from ketch.oci.runtime_spec import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, OCI_VERSION

__all__ = ["DEFAULT_ENV", "default_spec"]

DEFAULT_ENV: tuple[str, ...] = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "TERM=xterm",
)

_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
_NOSUID_NOEXEC_NODEV = ["nosuid", "noexec", "nodev"]


def default_spec(*, rootless: bool = False, args: list[str] | None = None,
                 root_path: str = "rootfs", terminal: bool = True) -> dict[str, Any]:
    """A fresh config dict (the caller may mutate it) that passes ``validate``.

    ``args`` defaults to ``["sh"]``; ``root_path`` is the rootfs relative to the
    bundle. ``rootless``: for an unprivileged user — a user namespace mapping the
    calling uid/gid to root, no network namespace (it could not be set up), the
    host's /sys bound read-only instead of a new sysfs, no devpts ``gid=5`` (group 5
    is not mapped), no cgroup mount and no cgroup resources.
    """
    devpts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if not rootless:
        devpts.append("gid=5")
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": devpts},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": [*_NOSUID_NOEXEC_NODEV, "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": list(_NOSUID_NOEXEC_NODEV)},
    ]
    if rootless:
        # a new sysfs needs a network namespace we own; bind the host's instead
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                       "options": ["rbind", *_NOSUID_NOEXEC_NODEV, "ro"]})
    else:
        mounts += [
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": [*_NOSUID_NOEXEC_NODEV, "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": [*_NOSUID_NOEXEC_NODEV, "relatime", "ro"]},
        ]

    namespaces = ["pid", "ipc", "uts", "mount", "cgroup"]
    if not rootless:
        namespaces.insert(1, "network")
    linux: dict[str, Any] = {}
    if rootless:
        namespaces.append("user")
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.getuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getgid(), "size": 1}]
    else:
        linux["resources"] = {"devices": [{"allow": False, "access": "rwm"}]}
    linux["namespaces"] = [{"type": t} for t in namespaces]
    linux["maskedPaths"] = list(DEFAULT_MASKED_PATHS)
    linux["readonlyPaths"] = list(DEFAULT_READONLY_PATHS)

    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": list(args) if args is not None else ["sh"],
            "env": list(DEFAULT_ENV),
            "cwd": "/",
            "capabilities": {"bounding": list(_CAPS), "effective": list(_CAPS),
                             "permitted": list(_CAPS)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": root_path, "readonly": True},
        "hostname": "ketch",
        "mounts": mounts,
        "linux": linux,
    }
