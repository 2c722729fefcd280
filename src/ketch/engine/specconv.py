"""specconv: a Docker ``POST /containers/create`` body → an OCI runtime spec.

A pure function of the request, the image config and a few facts the engine
supplies (container id, rootfs path, the resolv.conf/hosts/hostname files it
wrote, the cgroup version). Nothing is created; the only reads are the rootfs's
/etc/passwd and /etc/group (user names) and ``os.stat`` of host devices named in
HostConfig.Devices. The result must pass ``ketch.runtime.validate.validate``.

What the engine still does with the result (:class:`Converted`):

* ``volumes``: named and anonymous volumes (Binds without an absolute source,
  Mounts of type volume, image/Config Volumes no mount covers). The engine resolves
  each to a host directory, appends a bind mount to ``spec["mounts"]`` and calls
  :func:`sort_mounts` again.
* ``init``: HostConfig.Init was true; the engine binds its init in and prepends it
  to ``process.args``.
* Checks that need the host: bind sources exist, CPU count for NanoCpus, cgroup
  controllers available.

Choices where Docker leaves room (documented here, tested in
tests/unit/test_engine_specconv.py):

* Ulimits: none unless HostConfig.Ulimits sets them (the daemon's default-ulimits
  are the engine's to merge in beforehand). -1 means unlimited.
* MemorySwap: -1 → unlimited swap; 0 with Memory > 0 → swap total = 2 x Memory
  (Docker's behaviour when swap limits are supported); > 0 → as given.
* CgroupnsMode "" → private on cgroup v2, host on v1 (Docker ≥ 20.10).
* Privileged: every capability ketch knows, no seccomp, no masked/read-only paths,
  /sys and /sys/fs/cgroup writable, the device cgroup allows everything ("a rwm").
  Host devices are *not* copied into /dev.
* Read-only bind mounts use plain ``ro`` (not recursive ``rro``: ketch-runtime
  does not implement it yet).
* A custom seccomp profile is given as JSON text; Docker-format ``includes`` /
  ``excludes`` on ``caps`` are evaluated, other conditions (arches, minKernel) are
  dropped (the rule applies).

Longer than our ~500-line habit: one flat walk over HostConfig, a few lines per
field, most of them Docker's own checks and wording; the mount part could move to a
module of its own once the engine's volume code needs to share it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ketch.errors import InvalidArgument
from ketch.oci.runtime_spec import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    OCI_VERSION,
    RLIMITS,
)
from ketch.runtime.rootfs import secure_join
from ketch.runtime.seccomp_default import default_profile
from ketch.sys.caps import CAPS, bounding_set

__all__ = ["DEFAULT_CAPABILITIES", "Converted", "oci_resources", "process_user", "sort_mounts",
           "to_oci_spec"]

DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHM_SIZE = 64 * 1024 * 1024
_MIN_MEMORY = 6 * 1024 * 1024
_RLIM_INFINITY = 2**64 - 1
_NANO = 1_000_000_000
_CPU_PERIOD = 100_000
_NSD = ["nosuid", "noexec", "nodev"]
_PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
_VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
# tmpfs options and the default each one cancels
_TMPFS_OPPOSITES = {"exec": "noexec", "suid": "nosuid", "dev": "nodev"}


class Converted(NamedTuple):
    """What :func:`to_oci_spec` returns; see the module docstring for the engine's part."""

    spec: dict[str, Any]
    volumes: list[dict[str, Any]]  # {name (None: anonymous), destination, read_only, options}
    init: bool


def _bad(field: str, detail: str) -> InvalidArgument:
    return InvalidArgument(f"invalid {field}: {detail}")


def _strslice(v: Any, field: str) -> list[str] | None:
    """Docker's StrSlice: null, a string or a list of strings."""
    if v is None:
        return None
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return list(v)
    raise _bad(field, f"must be a string or a list of strings, got {v!r}")


def _int(v: Any, field: str) -> int:
    if v is None:
        return 0
    if type(v) is not int:
        raise _bad(field, f"must be an integer, got {v!r}")
    return v


def to_oci_spec(create: Mapping[str, Any], image_config: Mapping[str, Any], *,
                container_id: str, rootfs: str, hostname: str | None = None,
                cgroup_parent: str = "/ketch", cgroup_v2: bool = True,
                resolv_conf: str | None = None, hosts: str | None = None,
                hostname_file: str | None = None,
                extra_mounts: Sequence[Mapping[str, Any]] = ()) -> Converted:
    """Convert a create body (Config fields at top level + ``HostConfig``).

    ``image_config`` is the OCI image config's ``config`` object. ``rootfs`` is the
    absolute path of the prepared root filesystem (becomes ``root.path``).
    Raises ``InvalidArgument`` naming the offending field.
    """
    hc: Mapping[str, Any] = create.get("HostConfig") or {}
    privileged = bool(hc.get("Privileged"))
    tty = bool(create.get("Tty"))

    namespaces = _namespaces(hc, cgroup_v2)
    uts_host = "uts" not in namespaces
    host_name = hostname or create.get("Hostname") or container_id[:12]
    if uts_host:
        if create.get("Hostname"):
            raise InvalidArgument("Conflicting options: hostname and the UTS mode")
        host_name = hostname or os.uname().nodename
    if not isinstance(host_name, str) or len(host_name.encode()) > 64:
        raise _bad("Hostname", f"{host_name!r} must be a string of at most 64 bytes")

    caps = _capabilities(hc, privileged)
    process: dict[str, Any] = {
        "terminal": tty,
        "user": _user(create, image_config, hc, rootfs),
        "args": _args(create, image_config),
        "env": _env(create, image_config, host_name, tty),
        "cwd": create.get("WorkingDir") or image_config.get("WorkingDir") or "/",
        "capabilities": {"bounding": list(caps), "effective": list(caps),
                         "permitted": list(caps)},
        "noNewPrivileges": False,
    }
    if not process["cwd"].startswith("/"):
        raise _bad("WorkingDir", f"the working directory {process['cwd']!r} is not absolute")
    size = hc.get("ConsoleSize")
    if tty and isinstance(size, list) and len(size) == 2 and all(size):
        process["consoleSize"] = {"height": _int(size[0], "ConsoleSize"),
                                  "width": _int(size[1], "ConsoleSize")}
    if rlimits := _rlimits(hc.get("Ulimits")):
        process["rlimits"] = rlimits
    if (oom := hc.get("OomScoreAdj")) is not None and oom != 0:
        if _int(oom, "OomScoreAdj") < -1000 or oom > 1000:
            raise _bad("OomScoreAdj", f"invalid value {oom}, range for oom score adj is "
                                      "[-1000, 1000]")
        process["oomScoreAdj"] = oom

    linux: dict[str, Any] = {
        "namespaces": [{"type": t} for t in namespaces],
        "cgroupsPath": f"{cgroup_parent.rstrip('/')}/{container_id}",
    }
    seccomp = _security_opts(hc.get("SecurityOpt"), process, caps, privileged)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    if not privileged:
        linux["maskedPaths"] = list(DEFAULT_MASKED_PATHS)
        linux["readonlyPaths"] = list(DEFAULT_READONLY_PATHS)
    devices, rules = _devices(hc, privileged)
    if devices:
        linux["devices"] = devices
    linux["resources"] = _resources(hc) | {"devices": rules}
    if sysctls := hc.get("Sysctls"):
        if not isinstance(sysctls, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in sysctls.items()):
            raise _bad("Sysctls", "must map names to string values")
        for key in sysctls:
            name = key.replace("/", ".")
            if name.startswith("net.") and "network" not in namespaces:
                raise _bad("Sysctls", f"sysctl {key!r} is not allowed in the host "
                                      "network namespace")
            if name.startswith(("kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")) \
                    and "ipc" not in namespaces:
                raise _bad("Sysctls", f"sysctl {key!r} is not allowed in the host IPC "
                                      "namespace")
        linux["sysctl"] = dict(sysctls)

    readonly = bool(hc.get("ReadonlyRootfs"))
    mounts, volumes = _user_mounts(create, hc, image_config)
    defaults = _default_mounts(hc, privileged and not readonly, "ipc" in namespaces)
    files = (("/etc/resolv.conf", resolv_conf), ("/etc/hostname", hostname_file),
             ("/etc/hosts", hosts))
    for dest, src in files:
        if src:
            defaults.append({"destination": dest, "type": "bind", "source": src,
                             "options": ["rbind", "rprivate", "ro" if readonly else "rw"]})
    taken = {m["destination"] for m in mounts} | {v["destination"] for v in volumes}
    taken |= {os.path.normpath(str(m.get("destination", ""))) for m in extra_mounts}
    all_mounts = [m for m in defaults if m["destination"] not in taken] + mounts
    all_mounts += [dict(m) for m in extra_mounts]
    propagations = {o for m in mounts for o in m.get("options", ())}
    if propagations & {"shared", "rshared"}:
        linux["rootfsPropagation"] = "rshared"
    elif propagations & {"slave", "rslave"}:
        linux["rootfsPropagation"] = "rslave"

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": readonly},
        "mounts": sort_mounts(all_mounts),
        "linux": linux,
    }
    if not uts_host:
        spec["hostname"] = host_name
        if domain := create.get("Domainname"):
            spec["domainname"] = domain
    return Converted(spec, volumes, bool(hc.get("Init")))


def sort_mounts(mounts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mounts ordered so a parent directory is mounted before what lies under it.

    Stable by destination depth, as Docker does: /dev before /dev/shm.
    """
    def depth(m: Mapping[str, Any]) -> int:
        return len([p for p in os.path.normpath(str(m["destination"])).split("/") if p])
    return [dict(m) for m in sorted(mounts, key=depth)]


# ---- process ------------------------------------------------------------------------
def _args(create: Mapping[str, Any], image: Mapping[str, Any]) -> list[str]:
    entrypoint = _strslice(create.get("Entrypoint"), "Entrypoint")
    cmd = _strslice(create.get("Cmd"), "Cmd") or []
    if entrypoint is None:  # not given: the image's, and its Cmd unless one is given
        entrypoint = _strslice(image.get("Entrypoint"), "image Entrypoint") or []
        if not cmd:
            cmd = _strslice(image.get("Cmd"), "image Cmd") or []
    elif entrypoint == [""]:  # `--entrypoint ""`: cleared, and the image's Cmd with it
        entrypoint = []
    args = entrypoint + cmd
    if not args or not args[0]:
        raise InvalidArgument("No command specified")
    return args


def _env(create: Mapping[str, Any], image: Mapping[str, Any], host: str,
         tty: bool) -> list[str]:
    user = _strslice(create.get("Env"), "Env") or []
    img = _strslice(image.get("Env"), "image Env") or []
    keys = {e.partition("=")[0] for e in user}
    config = user + [e for e in img if e.partition("=")[0] not in keys]
    env = [DEFAULT_PATH, f"HOSTNAME={host}"] + (["TERM=xterm"] if tty else [])
    for entry in config:
        key, eq, _ = entry.partition("=")
        if not key:
            raise _bad("Env", f"{entry!r} has no variable name")
        if not eq:  # "FOO" without "=" unsets FOO
            env = [e for e in env if e.partition("=")[0] != key]
            continue
        for i, e in enumerate(env):
            if e.partition("=")[0] == key:
                env[i] = entry
                break
        else:
            env.append(entry)
    return env


def _read_db(rootfs: str, name: str) -> list[list[str]]:
    root = os.path.realpath(rootfs)
    try:
        with open(secure_join(root, name), encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 22)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    return [line.split(":") for line in text.splitlines()
            if line and not line.startswith("#")]


def _user(create: Mapping[str, Any], image: Mapping[str, Any], hc: Mapping[str, Any],
          rootfs: str) -> dict[str, Any]:
    spec = create.get("User") or image.get("User") or ""
    if not isinstance(spec, str):
        raise _bad("User", f"must be a string, got {spec!r}")
    name, _, group = spec.partition(":")
    passwd = [p for p in _read_db(rootfs, "/etc/passwd") if len(p) >= 4]
    groups = [g for g in _read_db(rootfs, "/etc/group") if len(g) >= 3]
    uid, gid, username = 0, 0, "root"
    name = name or "0"
    entry = next((p for p in passwd if (p[2] == name if name.isdigit() else p[0] == name)),
                 None)
    if entry is not None:
        try:
            uid, gid, username = int(entry[2]), int(entry[3]), entry[0]
        except ValueError:
            raise _bad("User", f"malformed passwd entry for {name!r}") from None
    elif name.isdigit():
        uid, username = int(name), ""
    else:
        raise InvalidArgument(f"unable to find user {name}: no matching entries in passwd file")
    extra: list[int] = []
    if group:
        gid = _group(group, groups, "User")
    elif username:
        extra = [int(g[2]) for g in groups
                 if len(g) > 3 and g[2].isdigit() and username in g[3].split(",")]
    for g in hc.get("GroupAdd") or []:
        if not isinstance(g, str):
            raise _bad("GroupAdd", f"must be group names or ids, got {g!r}")
        extra.append(_group(g, groups, "GroupAdd"))
    if uid > 2**32 - 1 or gid > 2**32 - 1:
        raise _bad("User", f"{spec!r}: uid and gid must be below 2^32")
    out: dict[str, Any] = {"uid": uid, "gid": gid}
    extra = [g for g in dict.fromkeys(extra) if g != gid]
    if extra:
        out["additionalGids"] = extra
    return out


def _group(name: str, groups: list[list[str]], field: str) -> int:
    if name.isdigit():
        return int(name)
    for g in groups:
        if g[0] == name and g[2].isdigit():
            return int(g[2])
    raise InvalidArgument(f"unable to find group {name}: no matching entries in group file")


def _cap_names(v: Any, field: str) -> list[str]:
    out = []
    for c in _strslice(v, field) or []:
        n = c.upper()
        if n == "ALL":
            out.append(n)
            continue
        n = n if n.startswith("CAP_") else "CAP_" + n
        if n not in CAPS:
            raise _bad(field, f"unknown capability: {n!r}".replace("'", '"'))
        out.append(n)
    return out


def _capabilities(hc: Mapping[str, Any], privileged: bool) -> list[str]:
    add, drop = _cap_names(hc.get("CapAdd"), "CapAdd"), _cap_names(hc.get("CapDrop"), "CapDrop")
    if privileged or "ALL" in add:
        caps = bounding_set()
    elif "ALL" in drop:
        caps = []
    else:
        caps = list(DEFAULT_CAPABILITIES)
    if not privileged:
        caps += [c for c in add if c != "ALL" and c not in caps]
        caps = [c for c in caps if c not in drop or (c in add and "ALL" in drop)]
    return caps


def _rlimits(v: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for u in v or []:
        if not isinstance(u, Mapping) or not isinstance(u.get("Name"), str):
            raise _bad("Ulimits", f"entries must be {{Name, Soft, Hard}}, got {u!r}")
        kind = "RLIMIT_" + u["Name"].upper()
        if kind not in RLIMITS:
            raise _bad("Ulimits", f"invalid ulimit type: {u['Name']}")
        if any(r["type"] == kind for r in out):
            raise _bad("Ulimits", f"duplicate ulimit {u['Name']}")
        soft, hard = (_int(u.get(k), "Ulimits") for k in ("Soft", "Hard"))
        soft, hard = (_RLIM_INFINITY if n == -1 else n for n in (soft, hard))
        if soft < 0 or hard < 0 or soft > hard:
            raise _bad("Ulimits", f"ulimit soft limit must be less than or equal to hard "
                                  f"limit: {soft} > {hard}")
        out.append({"type": kind, "soft": soft, "hard": hard})
    return out


def _security_opts(v: Any, process: dict[str, Any], caps: list[str],
                   privileged: bool) -> dict[str, Any] | None:
    seccomp: dict[str, Any] | None = None if privileged else default_profile(caps)
    for opt in _strslice(v, "SecurityOpt") or []:
        if opt == "no-new-privileges":
            process["noNewPrivileges"] = True
            continue
        key, sep, val = opt.partition("=")
        if not sep:
            key, sep, val = opt.partition(":")
        if not sep:
            raise _bad("SecurityOpt", f"{opt!r}")
        if key == "no-new-privileges":
            if val not in ("true", "false"):
                raise _bad("SecurityOpt", f"invalid no-new-privileges value {val!r}")
            process["noNewPrivileges"] = val == "true"
        elif key == "seccomp":
            if val == "unconfined":
                seccomp = None
            elif not privileged:
                seccomp = _custom_seccomp(val, caps)
        elif key in ("label", "apparmor", "systempaths", "writable-cgroups"):
            continue  # LSMs and the rest: not ketch's yet; accepted like a host without them
        else:
            raise _bad("SecurityOpt", f"{opt!r}")
    return seccomp


def _custom_seccomp(text: str, caps: list[str]) -> dict[str, Any]:
    try:
        prof = json.loads(text)
    except ValueError as e:
        raise _bad("SecurityOpt", f"decoding seccomp profile failed: {e}") from None
    if not isinstance(prof, dict) or "defaultAction" not in prof:
        raise _bad("SecurityOpt", "decoding seccomp profile failed: no defaultAction")
    out = {k: v for k, v in prof.items()
           if k in ("defaultAction", "defaultErrnoRet", "architectures", "flags",
                    "listenerPath", "listenerMetadata")}
    if "archMap" in prof and "architectures" not in prof:
        out["architectures"] = [a for m in prof["archMap"] or []
                                for a in [m["architecture"], *(m.get("subArchitectures") or [])]]
    have = set(caps)
    rules = []
    for r in prof.get("syscalls") or []:
        if not isinstance(r, dict):
            raise _bad("SecurityOpt", f"seccomp profile: bad syscall rule {r!r}")
        inc, exc = r.get("includes") or {}, r.get("excludes") or {}
        if not set(inc.get("caps") or []) <= have or set(exc.get("caps") or []) & have:
            continue
        names = r.get("names") or ([r["name"]] if r.get("name") else [])
        rules.append({k: v for k, v in r.items() if k in ("action", "args", "errnoRet")}
                     | {"names": names})
    out["syscalls"] = rules
    return out


# ---- linux --------------------------------------------------------------------------
def _mode(hc: Mapping[str, Any], field: str, allowed: tuple[str, ...]) -> str:
    mode = hc.get(field) or ""
    if not isinstance(mode, str):
        raise _bad(field, f"must be a string, got {mode!r}")
    if mode.startswith("container:"):
        raise _bad(field, f"{field.removesuffix('Mode').lower()} mode container: "
                          "not supported yet")
    if mode not in allowed:
        raise _bad(field, f"unknown mode {mode!r}")
    return mode


def _namespaces(hc: Mapping[str, Any], cgroup_v2: bool) -> list[str]:
    ns = ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    net = hc.get("NetworkMode") or ""
    if not isinstance(net, str):
        raise _bad("NetworkMode", f"must be a string, got {net!r}")
    # container:<id> and bridge networks keep the namespace; the engine names its path
    if net == "host":
        ns.remove("network")
    if _mode(hc, "PidMode", ("", "host")) == "host":
        ns.remove("pid")
    if _mode(hc, "IpcMode", ("", "private", "shareable", "none", "host")) == "host":
        ns.remove("ipc")
    if _mode(hc, "UTSMode", ("", "host")) == "host":
        ns.remove("uts")
    cg = _mode(hc, "CgroupnsMode", ("", "private", "host")) or (
        "private" if cgroup_v2 else "host")
    if cg == "host":
        ns.remove("cgroup")
    return ns


def _devices(hc: Mapping[str, Any], privileged: bool) -> tuple[list[dict[str, Any]],
                                                                list[dict[str, Any]]]:
    if privileged:
        return [], [{"allow": True, "access": "rwm"}]
    devices: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for d in hc.get("Devices") or []:
        if isinstance(d, str):
            parts = d.split(":")
            if len(parts) > 3 or not parts[0]:
                raise _bad("Devices", f"invalid device specification: {d}")
            host = parts[0]
            inner = parts[1] if len(parts) > 1 and parts[1] else host
            perms = parts[2] if len(parts) > 2 else "rwm"
        elif isinstance(d, Mapping) and isinstance(d.get("PathOnHost"), str):
            host = d["PathOnHost"]
            inner = d.get("PathInContainer") or host
            perms = d.get("CgroupPermissions") or "rwm"
        else:
            raise _bad("Devices", f"invalid device specification: {d!r}")
        if not inner.startswith("/") or not host.startswith("/"):
            raise _bad("Devices", f"{d!r}: device paths must be absolute")
        if not perms or not set(perms) <= {"r", "w", "m"}:
            raise _bad("Devices", f"invalid device cgroup permissions {perms!r}")
        try:
            st = os.stat(host)
        except OSError as e:
            raise _bad("Devices", f"error gathering device information while adding custom "
                                  f"device {host!r}: {e.strerror}") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise _bad("Devices", f"error gathering device information while adding custom "
                                  f"device {host!r}: not a device node")
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        devices.append({"path": inner, "type": kind, "major": major, "minor": minor,
                        "fileMode": stat.S_IMODE(st.st_mode), "uid": 0, "gid": 0})
        rules.append({"allow": True, "type": kind, "major": major, "minor": minor,
                      "access": perms})
    for r in hc.get("DeviceCgroupRules") or []:
        m = re.fullmatch(r"([acb]) (\*|\d+):(\*|\d+) ([rwm]{1,3})", r) \
            if isinstance(r, str) else None
        if m is None:
            raise _bad("DeviceCgroupRules", f"invalid device cgroup rule {r!r}")
        rule: dict[str, Any] = {"allow": True, "type": m[1], "access": m[4]}
        for k, n in (("major", m[2]), ("minor", m[3])):
            if n != "*":
                rule[k] = int(n)
        rules.append(rule)
    return devices, rules


def _resources(hc: Mapping[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    mem: dict[str, Any] = {}
    memory = _int(hc.get("Memory"), "Memory")
    swap = _int(hc.get("MemorySwap"), "MemorySwap")
    if memory < 0:
        raise _bad("Memory", f"must not be negative, got {memory}")
    if memory:
        if memory < _MIN_MEMORY:
            raise _bad("Memory", "Minimum memory limit allowed is 6MB")
        mem["limit"] = memory
    if swap > 0 and not memory:
        raise _bad("MemorySwap", "You should always set the Memory limit when using "
                                 "Memoryswap limit, see usage")
    if swap > 0 and swap < memory:
        raise _bad("MemorySwap", "Minimum memoryswap limit should be larger than memory "
                                 "limit, see usage")
    if swap == -1 or swap > 0:
        mem["swap"] = swap
    elif swap == 0 and memory:
        mem["swap"] = memory * 2
    elif swap < -1:
        raise _bad("MemorySwap", f"must be -1, 0 or a size, got {swap}")
    if reservation := _int(hc.get("MemoryReservation"), "MemoryReservation"):
        if reservation < 0 or (memory and reservation > memory):
            raise _bad("MemoryReservation", "Minimum memory limit can not be less than "
                                            "memory reservation limit, see usage")
        mem["reservation"] = reservation
    swappiness = hc.get("MemorySwappiness")
    if swappiness is not None and swappiness != -1:
        if not 0 <= _int(swappiness, "MemorySwappiness") <= 100:
            raise _bad("MemorySwappiness", f"Invalid value: {swappiness}, valid memory "
                                           "swappiness range is 0-100")
        mem["swappiness"] = swappiness
    if hc.get("OomKillDisable"):
        mem["disableOOMKiller"] = True
    if mem:
        res["memory"] = mem

    cpu: dict[str, Any] = {}
    nano = _int(hc.get("NanoCpus"), "NanoCpus")
    quota, period = _int(hc.get("CpuQuota"), "CpuQuota"), _int(hc.get("CpuPeriod"), "CpuPeriod")
    if nano:
        if period:
            raise InvalidArgument("Conflicting options: Nano CPUs and CPU Period cannot "
                                  "both be set")
        if quota:
            raise InvalidArgument("Conflicting options: Nano CPUs and CPU Quota cannot "
                                  "both be set")
        if nano < 0:
            raise _bad("NanoCpus", "Range of CPUs is from 0.01 upwards")
        period, quota = _CPU_PERIOD, nano * _CPU_PERIOD // _NANO
    if period and not 1000 <= period <= 1_000_000:
        raise _bad("CpuPeriod", "CPU cfs period can not be less than 1ms (i.e. 1000) or "
                                "larger than 1s (i.e. 1000000)")
    if quota and quota < 1000:
        raise _bad("CpuQuota", "CPU cfs quota can not be less than 1ms (i.e. 1000)")
    if quota:
        cpu["quota"] = quota
    if period:
        cpu["period"] = period
    if shares := _int(hc.get("CpuShares"), "CpuShares"):
        if shares < 0:
            raise _bad("CpuShares", f"must not be negative, got {shares}")
        cpu["shares"] = shares
    for field, key in (("CpusetCpus", "cpus"), ("CpusetMems", "mems")):
        if v := hc.get(field):
            if not isinstance(v, str) or not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", v):
                raise _bad(field, f"Invalid value {v!r} for {key}")
            cpu[key] = v
    if cpu:
        res["cpu"] = cpu
    pids = hc.get("PidsLimit")
    if pids is not None and _int(pids, "PidsLimit") > 0:
        res["pids"] = {"limit": pids}
    if weight := _int(hc.get("BlkioWeight"), "BlkioWeight"):
        if not 10 <= weight <= 1000:
            raise _bad("BlkioWeight", "Range of blkio weight is from 10 to 1000")
        res["blockIO"] = {"weight": weight}
    return res


# ---- mounts -------------------------------------------------------------------------
def _default_mounts(hc: Mapping[str, Any], writable_sys: bool,
                    own_ipc: bool) -> list[dict[str, Any]]:
    shm = _int(hc.get("ShmSize"), "ShmSize")
    if shm < 0:
        raise _bad("ShmSize", "SHM size can not be less than 0")
    sys_opt = "rw" if writable_sys else "ro"
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": list(_NSD)},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": [*_NSD, sys_opt]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": [*_NSD, "relatime", sys_opt]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": list(_NSD)},
    ]
    ipc = hc.get("IpcMode") or ""
    if not own_ipc:
        mounts.append({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
                       "options": ["rbind", "rprivate"]})
    elif ipc != "none":
        mounts.append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                       "options": [*_NSD, "mode=1777", f"size={shm or DEFAULT_SHM_SIZE}"]})
    return mounts


def _dest(d: Any, field: str) -> str:
    if not isinstance(d, str) or not d.startswith("/"):
        raise _bad(field, f"invalid mount config: mount path {d!r} must be absolute")
    out = os.path.normpath(d)
    if out == "/":
        raise _bad(field, "invalid specification: destination can't be '/'")
    return out


def _bind(src: str, dest: str, ro: bool, propagation: str, recursive: bool = True
          ) -> dict[str, Any]:
    return {"destination": dest, "type": "bind", "source": src,
            "options": ["rbind" if recursive else "bind", propagation or "rprivate",
                        "ro" if ro else "rw"]}


def _tmpfs_options(user: list[str]) -> list[str]:
    opts = list(_NSD)
    for o in user:
        if o in _TMPFS_OPPOSITES:
            opts.remove(_TMPFS_OPPOSITES[o])
        key = o.partition("=")[0]
        opts = [x for x in opts if x.partition("=")[0] != key]
        opts.append(o)
    return opts


def _user_mounts(create: Mapping[str, Any], hc: Mapping[str, Any], image: Mapping[str, Any]
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Binds, Mounts and Tmpfs as OCI mounts; volumes (named and anonymous) apart.

    User mounts keep their own ro/rw under a read-only rootfs, as in Docker.
    """
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    seen: set[str] = set()

    def claim(dest: str, field: str) -> None:
        if dest in seen:
            raise _bad(field, f"Duplicate mount point: {dest}")
        seen.add(dest)

    for spec in hc.get("Binds") or []:
        if not isinstance(spec, str):
            raise _bad("Binds", f"invalid volume specification: {spec!r}")
        parts = spec.split(":")
        if len(parts) == 1:
            parts = ["", parts[0]]
        if len(parts) > 3 or not parts[1]:
            raise _bad("Binds", f"invalid volume specification: '{spec}'")
        src, dest = parts[0], _dest(parts[1], "Binds")
        modes = parts[2].split(",") if len(parts) == 3 else []
        prop = [m for m in modes if m in _PROPAGATIONS]
        bad = [m for m in modes if m not in (*_PROPAGATIONS, "ro", "rw", "z", "Z", "nocopy",
                                              "consistent", "cached", "delegated")]
        if bad or len(prop) > 1 or ("ro" in modes and "rw" in modes):
            raise _bad("Binds", f"invalid mode: {parts[2]}")
        claim(dest, "Binds")
        ro = "ro" in modes
        if src.startswith("/"):
            mounts.append(_bind(os.path.normpath(src), dest, ro, prop[0] if prop else ""))
        else:
            if src and not _VOLUME_NAME.fullmatch(src):
                raise _bad("Binds", f"{src!r} includes invalid characters for a local volume "
                                    "name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If "
                                    "you intended to pass a host directory, use absolute path")
            volumes.append({"name": src or None, "destination": dest, "read_only": ro,
                            "options": [m for m in modes if m not in ("ro", "rw")]})

    for i, m in enumerate(hc.get("Mounts") or []):
        field = f"Mounts[{i}]"
        if not isinstance(m, Mapping):
            raise _bad(field, f"must be an object, got {m!r}")
        kind = m.get("Type")
        what = f"invalid mount config for type \"{kind}\""
        if not m.get("Target"):
            raise _bad(field, f"{what}: field Target must not be empty")
        dest = _dest(m["Target"], field)
        claim(dest, field)
        ro = bool(m.get("ReadOnly"))
        for opt, ok in (("BindOptions", "bind"), ("VolumeOptions", "volume"),
                        ("TmpfsOptions", "tmpfs")):
            if m.get(opt) and kind != ok:
                raise _bad(field, f"{what}: field {opt} must not be specified")
        if kind == "bind":
            host = m.get("Source")
            if not host:
                raise _bad(field, f"{what}: field Source must not be empty")
            if not isinstance(host, str) or not host.startswith("/"):
                raise _bad(field, f"{what}: invalid mount path: {host!r} mount path must "
                                  "be absolute")
            bo = m.get("BindOptions") or {}
            propagation = bo.get("Propagation") or ""
            if propagation not in ("", *_PROPAGATIONS):
                raise _bad(field, f"{what}: invalid propagation mode {propagation!r}")
            mounts.append(_bind(os.path.normpath(host), dest, ro, propagation,
                                not bo.get("NonRecursive")))
        elif kind == "volume":
            name = m.get("Source") or None
            if name is not None and not (isinstance(name, str)
                                         and _VOLUME_NAME.fullmatch(name)):
                raise _bad(field, f"{what}: invalid volume name {name!r}")
            vo = m.get("VolumeOptions") or {}
            opts = ["nocopy"] if vo.get("NoCopy") else []
            if vo.get("Subpath"):
                opts.append(f"subpath={vo['Subpath']}")
            volumes.append({"name": name, "destination": dest, "read_only": ro,
                            "options": opts})
        elif kind == "tmpfs":
            if m.get("Source"):
                raise _bad(field, f"{what}: field Source must not be specified")
            to = m.get("TmpfsOptions") or {}
            opts = []
            if size := _int(to.get("SizeBytes"), f"{field}.TmpfsOptions.SizeBytes"):
                if size < 0:
                    raise _bad(field, f"{what}: invalid tmpfs size {size}")
                opts.append(f"size={size}")
            if mode := _int(to.get("Mode"), f"{field}.TmpfsOptions.Mode"):
                opts.append(f"mode={mode & 0o7777:o}")
            mounts.append({"destination": dest, "type": "tmpfs", "source": "tmpfs",
                           "options": _tmpfs_options([*opts, "ro" if ro else "rw"])})
        else:
            raise _bad(field, f"mount type unknown: {kind!r}")

    tmpfs = hc.get("Tmpfs") or {}
    if not isinstance(tmpfs, Mapping):
        raise _bad("Tmpfs", "must map paths to option strings")
    for path, options in tmpfs.items():
        dest = _dest(path, "Tmpfs")
        claim(dest, "Tmpfs")
        if not isinstance(options, str):
            raise _bad("Tmpfs", f"options for {path} must be a string")
        user = [o for o in options.split(",") if o]
        mounts.append({"destination": dest, "type": "tmpfs", "source": "tmpfs",
                       "options": _tmpfs_options(user)})

    for field, vols in (("Volumes", create.get("Volumes")), ("image Volumes",
                                                              image.get("Volumes"))):
        for path in vols or {}:
            dest = _dest(path, field)
            if dest not in seen:
                seen.add(dest)
                volumes.append({"name": None, "destination": dest, "read_only": False,
                                "options": []})
    return mounts, volumes


def process_user(user: str, rootfs: str, group_add: Sequence[str] = ()) -> dict[str, Any]:
    """The OCI ``process.user`` for Docker's ``user[:group]`` text, names looked up in
    ``rootfs`` (what ``exec -u`` needs)."""
    return _user({"User": user}, {}, {"GroupAdd": list(group_add)}, rootfs)


def oci_resources(host_config: Mapping[str, Any]) -> dict[str, Any]:
    """OCI ``linux.resources`` for the resource fields of a HostConfig (``docker update``)."""
    return _resources(host_config)
