"""The OCI runtime-spec as data: version, names, option tables and Linux defaults.

Pure data plus one pure function. Everything here is a fact of the spec or the kernel
ABI; what ketch does with it lives in ``ketch.runtime``. The tables are shared, so
treat them as read-only.

Mount options come in three families, each with its own table:

``MOUNT_OPTIONS``
    mount(2) flags. Each option sets or clears one bit (``ro`` sets MS_RDONLY, ``rw``
    clears it), applied left to right so a later option wins.
``PROPAGATION``
    propagation changes, applied by a separate mount(2) call after the mount exists.
``RECURSIVE_MOUNT_OPTIONS``
    ``rro``, ``rnosuid``…: attributes applied to a whole mount tree, which only
    mount_setattr(2) with AT_RECURSIVE can do. Expressed as (attr_set, attr_clr) in
    MOUNT_ATTR_* bits.

Anything else (``mode=755``, ``size=65536k``, ``newinstance``…) is the filesystem's
own business and is passed through as mount(2)'s ``data`` string.
"""

from __future__ import annotations

from ketch.sys.mount import MS

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEFAULT_DEVICES",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_READONLY_PATHS",
    "HOOK_NAMES",
    "MOUNT_ATTR",
    "MOUNT_OPTIONS",
    "NAMESPACE_TYPES",
    "OCI_VERSION",
    "PROPAGATION",
    "RECURSIVE_MOUNT_OPTIONS",
    "RLIMITS",
    "parse_mount_options",
]

# The schema in shared/specs has FreeBSD configs, linux.memoryPolicy and
# intelRdt.enableMonitoring, which are newer than 1.2.1: it is the 1.3 schema.
OCI_VERSION = "1.3.0"

# linux.namespaces[].type values, in the spec's order.
NAMESPACE_TYPES: tuple[str, ...] = (
    "pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time",
)

# hooks.* keys, in the order they run in a container's life.
HOOK_NAMES: tuple[str, ...] = (
    "prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop",
)

# MS_I_VERSION is not in ketch.sys.mount.MS; <sys/mount.h> gives it as 1 << 23.
_MS_I_VERSION = 1 << 23

# option -> (mount(2) flag bits, True if the option clears those bits)
MOUNT_OPTIONS: dict[str, tuple[int, bool]] = {
    "defaults": (0, False),
    "ro": (MS.RDONLY, False),
    "rw": (MS.RDONLY, True),
    "nosuid": (MS.NOSUID, False),
    "suid": (MS.NOSUID, True),
    "nodev": (MS.NODEV, False),
    "dev": (MS.NODEV, True),
    "noexec": (MS.NOEXEC, False),
    "exec": (MS.NOEXEC, True),
    "sync": (MS.SYNCHRONOUS, False),
    "async": (MS.SYNCHRONOUS, True),
    "dirsync": (MS.DIRSYNC, False),
    "remount": (MS.REMOUNT, False),
    "mand": (MS.MANDLOCK, False),
    "nomand": (MS.MANDLOCK, True),
    "noatime": (MS.NOATIME, False),
    "atime": (MS.NOATIME, True),
    "nodiratime": (MS.NODIRATIME, False),
    "diratime": (MS.NODIRATIME, True),
    "relatime": (MS.RELATIME, False),
    "norelatime": (MS.RELATIME, True),
    "strictatime": (MS.STRICTATIME, False),
    "nostrictatime": (MS.STRICTATIME, True),
    "lazytime": (MS.LAZYTIME, False),
    "nolazytime": (MS.LAZYTIME, True),
    "iversion": (_MS_I_VERSION, False),
    "noiversion": (_MS_I_VERSION, True),
    "nosymfollow": (MS.NOSYMFOLLOW, False),
    "symfollow": (MS.NOSYMFOLLOW, True),
    "silent": (MS.SILENT, False),
    "loud": (MS.SILENT, True),
    "bind": (MS.BIND, False),
    "rbind": (MS.BIND | MS.REC, False),
}
# plain ints: ~ on an IntFlag member keeps only the bits the enum names
MOUNT_OPTIONS = {k: (int(bits), clear) for k, (bits, clear) in MOUNT_OPTIONS.items()}

# option -> propagation flags for the mount(2) call that changes propagation.
PROPAGATION: dict[str, int] = {
    "private": MS.PRIVATE,
    "rprivate": MS.PRIVATE | MS.REC,
    "shared": MS.SHARED,
    "rshared": MS.SHARED | MS.REC,
    "slave": MS.SLAVE,
    "rslave": MS.SLAVE | MS.REC,
    "unbindable": MS.UNBINDABLE,
    "runbindable": MS.UNBINDABLE | MS.REC,
}
PROPAGATION = {k: int(v) for k, v in PROPAGATION.items()}


class MOUNT_ATTR:  # named after the C prefix, like ketch.sys.mount.MS
    """MOUNT_ATTR_* bits of mount_setattr(2), from <linux/mount.h>.

    The access-time bits are not flags but a 3-bit field (``ATIME_MASK``): to change
    it, put the mask in attr_clr and the wanted value (RELATIME is 0) in attr_set.
    """

    RDONLY = 0x00000001
    NOSUID = 0x00000002
    NODEV = 0x00000004
    NOEXEC = 0x00000008
    ATIME_MASK = 0x00000070
    RELATIME = 0x00000000
    NOATIME = 0x00000010
    STRICTATIME = 0x00000020
    NODIRATIME = 0x00000080
    IDMAP = 0x00100000
    NOSYMFOLLOW = 0x00200000


_A = MOUNT_ATTR

# option -> (attr_set, attr_clr) for mount_setattr(2) with AT_RECURSIVE.
# The "negative" access-time options fall back to the kernel default (relatime),
# except rnorelatime, which mount(8) documents as strict updates.
RECURSIVE_MOUNT_OPTIONS: dict[str, tuple[int, int]] = {
    "rro": (_A.RDONLY, 0),
    "rrw": (0, _A.RDONLY),
    "rnosuid": (_A.NOSUID, 0),
    "rsuid": (0, _A.NOSUID),
    "rnodev": (_A.NODEV, 0),
    "rdev": (0, _A.NODEV),
    "rnoexec": (_A.NOEXEC, 0),
    "rexec": (0, _A.NOEXEC),
    "rnodiratime": (_A.NODIRATIME, 0),
    "rdiratime": (0, _A.NODIRATIME),
    "rnoatime": (_A.NOATIME, _A.ATIME_MASK),
    "ratime": (_A.RELATIME, _A.ATIME_MASK),
    "rrelatime": (_A.RELATIME, _A.ATIME_MASK),
    "rnorelatime": (_A.STRICTATIME, _A.ATIME_MASK),
    "rstrictatime": (_A.STRICTATIME, _A.ATIME_MASK),
    "rnostrictatime": (_A.RELATIME, _A.ATIME_MASK),
    "rnosymfollow": (_A.NOSYMFOLLOW, 0),
    "rsymfollow": (0, _A.NOSYMFOLLOW),
}

# process.rlimits[].type -> resource number (the generic Linux numbering of
# <asm-generic/resource.h>; alpha, mips and sparc number a few of them differently).
RLIMITS: dict[str, int] = {
    "RLIMIT_CPU": 0,
    "RLIMIT_FSIZE": 1,
    "RLIMIT_DATA": 2,
    "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6,
    "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14,
    "RLIMIT_RTTIME": 15,
}


def _chr(path: str, major: int, minor: int) -> dict[str, Any]:
    return {"path": path, "type": "c", "major": major, "minor": minor,
            "fileMode": 0o666, "uid": 0, "gid": 0}


# The device nodes every Linux container gets in a fresh /dev (runtime-spec
# config-linux.md "Default Devices"); linux.devices entries with the same path win.
DEFAULT_DEVICES: tuple[dict[str, Any], ...] = (
    _chr("/dev/null", 1, 3),
    _chr("/dev/zero", 1, 5),
    _chr("/dev/full", 1, 7),
    _chr("/dev/random", 1, 8),
    _chr("/dev/urandom", 1, 9),
    _chr("/dev/tty", 5, 0),
)

# What `runc spec` masks and makes read-only: kernel interfaces that leak host
# information or let a container poke the host.
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
)

DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


def parse_mount_options(options: list[str]) -> tuple[int, int, str, dict[str, int]]:
    """Split a mount's ``options`` into what each kernel call needs.

    Returns ``(flags, propagation, data, recursive)``:

    - ``flags``: mount(2) flags, options applied left to right (``ro,rw`` is rw);
    - ``propagation``: flags for the follow-up propagation call, 0 if none; when several
      are given the last wins, as each replaces the previous one in the kernel;
    - ``data``: every option not in a table, comma-joined in order, for the filesystem;
    - ``recursive``: ``{}`` if no recursive option was given, else
      ``{"attr_set": …, "attr_clr": …}`` for mount_setattr(2), later options winning.

    Never raises: deciding which options are acceptable is validation's job.
    """
    flags = 0
    propagation = 0
    data: list[str] = []
    attr_set = attr_clr = 0
    recursive = False
    for opt in options:
        entry = MOUNT_OPTIONS.get(opt)
        if entry is not None:
            bits, clear = entry
            flags = flags & ~bits if clear else flags | bits
            continue
        prop = PROPAGATION.get(opt)
        if prop is not None:
            propagation = prop
            continue
        attr = RECURSIVE_MOUNT_OPTIONS.get(opt)
        if attr is not None:
            s, c = attr
            # a later option overrides an earlier one on the same bits
            attr_set = (attr_set & ~c) | s
            attr_clr = (attr_clr & ~s) | c
            recursive = True
            continue
        data.append(opt)
    rec = {"attr_set": attr_set, "attr_clr": attr_clr} if recursive else {}
    return flags, propagation, ",".join(data), rec
