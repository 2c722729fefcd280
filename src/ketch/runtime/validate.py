"""Check a bundle's config.json before any syscall is made.

``load_config`` reads the file; ``validate`` walks the parsed dict and raises on the
first problem with a single line of the form ``<field path>: <what is wrong>``, e.g.
``linux.namespaces[2].type: unknown namespace type "foo"``, so the user can find the
field without reading our code. Paths use the JSON names, ``[i]`` for array items and
``["key"]`` for keys of free-form maps (sysctl, annotations, unified).

What is checked is what the runtime-spec requires plus what the kernel would reject
later with a vaguer error (a hostname without a UTS namespace, a non-namespaced
sysctl, soft > hard rlimits). Properties we do not know are ignored, as the spec
requires. Optional fields may be absent or ``null``.

Errors: ``InvalidArgument`` for a malformed config; ``NotImplementedYet`` for a valid
request ketch-runtime does not carry out (recursive mount options, idmapped mounts,
linux.netDevices) rather than silently ignoring it.

Longer than our ~500-line habit on purpose: it is one flat walk over the schema, a
few lines per field, sharing the small checkers at the top; split by section, each
piece would need those checkers too and the order of checks would be harder to see.
"""

from __future__ import annotations

import json
import os

from ketch.errors import InvalidArgument, NotImplementedYet
from ketch.oci.runtime_spec import (
    HOOK_NAMES,
    NAMESPACE_TYPES,
    OCI_VERSION,
    PROPAGATION,
    RECURSIVE_MOUNT_OPTIONS,
    RLIMITS,
)
from ketch.sys.caps import CAPS

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["load_config", "validate", "validate_process"]

_U16 = 2**16 - 1
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_I32 = (-(2**31), 2**31 - 1)
_I64 = (-(2**63), 2**63 - 1)

_CAP_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
_HOST_NAME_MAX = 64
_IOPRIO_CLASSES = ("IOPRIO_CLASS_RT", "IOPRIO_CLASS_BE", "IOPRIO_CLASS_IDLE")
_SCHED_POLICIES = ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_ISO",
                   "SCHED_IDLE", "SCHED_DEADLINE")
_SCHED_FLAGS = ("SCHED_FLAG_RESET_ON_FORK", "SCHED_FLAG_RECLAIM", "SCHED_FLAG_DL_OVERRUN",
                "SCHED_FLAG_KEEP_POLICY", "SCHED_FLAG_KEEP_PARAMS",
                "SCHED_FLAG_UTIL_CLAMP_MIN", "SCHED_FLAG_UTIL_CLAMP_MAX")
_NS_NAMES = {"network": "network", "ipc": "IPC", "uts": "UTS", "time": "time",
             "user": "user"}
# sysctl prefixes the IPC namespace covers (System V IPC and POSIX message queues)
_IPC_SYSCTLS = ("kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")


# ---- reading ----------------------------------------------------------------------


def load_config(bundle: str) -> dict[str, Any]:
    """Read and parse ``<bundle>/config.json``.

    Raises ``InvalidArgument`` starting with ``config.json:`` when the file cannot be
    opened, is not JSON (the message gives line and column), or is not a JSON object.
    Nothing else about the content is checked here; see :func:`validate`.
    """
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
        raise InvalidArgument(f"config.json: open {path}: {reason}") from None
    try:
        config = json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidArgument(f"config.json: {path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"config.json: invalid JSON at line {e.lineno}, column {e.colno}: "
                              f"{e.msg}") from None
    if type(config) is not dict:
        raise InvalidArgument(f"config.json: must hold a JSON object, got {_show(config)}")
    return config


# ---- small checkers: each returns the value with its type narrowed, or raises -------


def _fail(path: str, msg: str) -> NoReturn:
    raise InvalidArgument(f"{path}: {msg}")


def _show(v: Any) -> str:
    """A value as the user wrote it: scalars in JSON, containers by kind."""
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "an array"
    s = json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _obj(v: Any, path: str) -> dict[str, Any]:
    if type(v) is not dict:
        _fail(path, f"must be an object, got {_show(v)}")
    return v


def _arr(v: Any, path: str) -> list[Any]:
    if type(v) is not list:
        _fail(path, f"must be an array, got {_show(v)}")
    return v


def _str(v: Any, path: str) -> str:
    if type(v) is not str:
        _fail(path, f"must be a string, got {_show(v)}")
    return v


def _bool(v: Any, path: str) -> bool:
    if type(v) is not bool:
        _fail(path, f"must be true or false, got {_show(v)}")
    return v


def _int(v: Any, path: str, lo: int, hi: int) -> int:
    # type() rather than isinstance(): JSON true/false must not pass as 1/0
    if type(v) is not int:
        _fail(path, f"must be an integer, got {_show(v)}")
    if v < lo or v > hi:
        if lo == 0 and v < 0:
            _fail(path, f"must not be negative, got {v}")
        _fail(path, f"must be between {lo} and {hi}, got {v}")
    return v


def _strs(v: Any, path: str) -> list[str]:
    items = _arr(v, path)
    for i, s in enumerate(items):
        if type(s) is not str:
            _fail(f"{path}[{i}]", f"must be a string, got {_show(s)}")
    return items


def _abs(v: Any, path: str) -> str:
    s = _str(v, path)
    if not s.startswith("/"):
        _fail(path, f"must be an absolute path, got {_show(s)}")
    return s


def _abs_list(v: Any, path: str) -> None:
    for i, s in enumerate(_arr(v, path)):
        _abs(s, f"{path}[{i}]")


def _no_nul(s: str, path: str) -> None:
    if "\0" in s:
        _fail(path, "must not contain a NUL byte")


def _id_list(v: Any, path: str) -> None:
    for i, n in enumerate(_arr(v, path)):
        _int(n, f"{path}[{i}]", 0, _U32)


def _opt(d: dict[str, Any], key: str) -> Any:
    """``d[key]``, with an explicit JSON null read as absent."""
    return d.get(key)


def _need(d: dict[str, Any], key: str, path: str) -> Any:
    """``d[key]``, which must be present (and not null); ``path`` is d's own path."""
    v = d.get(key)
    if v is None:
        _fail(f"{path}.{key}" if path else key, "missing")
    return v


def _ranges(s: str, path: str, what: str) -> None:
    """A kernel list like ``0-2,4`` (cpuset.cpus, cpuset.mems); spaces tolerated."""
    for part in s.split(","):
        lo, sep, hi = part.strip().partition("-")
        lo, hi = lo.strip(), hi.strip()
        ok = lo.isascii() and lo.isdigit() and (
            not sep or (hi.isascii() and hi.isdigit() and int(lo) <= int(hi)))
        if not ok:
            _fail(path, f"invalid {what} list {_show(s)} (want e.g. \"0-2,4\")")


# ---- process ----------------------------------------------------------------------


def validate_process(process: Any, path: str = "process") -> None:
    """Check a process object: ``config.process``, or the process.json of an exec.

    ``path`` is the prefix used in messages. Raises ``InvalidArgument`` naming the
    first bad field; returns ``None`` when the process can be started as given.
    """
    p = _obj(process, path)
    args = _strs(_need(p, "args", path), f"{path}.args")
    if not args:
        _fail(f"{path}.args", "must not be empty: it names the program to run")
    if not args[0]:
        _fail(f"{path}.args[0]", "must not be empty: it names the program to run")
    for i, a in enumerate(args):
        _no_nul(a, f"{path}.args[{i}]")
    cwd = _abs(_need(p, "cwd", path), f"{path}.cwd")
    _no_nul(cwd, f"{path}.cwd")
    if (env := _opt(p, "env")) is not None:
        for i, kv in enumerate(_strs(env, f"{path}.env")):
            key, eq, _ = kv.partition("=")
            if not eq or not key:
                _fail(f"{path}.env[{i}]", f"must be KEY=VALUE, got {_show(kv)}")
            _no_nul(kv, f"{path}.env[{i}]")
    if (v := _opt(p, "terminal")) is not None:
        _bool(v, f"{path}.terminal")
    if (v := _opt(p, "consoleSize")) is not None:
        cs = _obj(v, f"{path}.consoleSize")
        for k in ("height", "width"):
            _int(_need(cs, k, f"{path}.consoleSize"), f"{path}.consoleSize.{k}", 0, _U16)
    if (v := _opt(p, "user")) is not None:
        _user(_obj(v, f"{path}.user"), f"{path}.user")
    if (v := _opt(p, "capabilities")) is not None:
        caps = _obj(v, f"{path}.capabilities")
        for name in _CAP_SETS:
            if (s := _opt(caps, name)) is not None:
                where = f"{path}.capabilities.{name}"
                for i, cap in enumerate(_strs(s, where)):
                    if cap not in CAPS:
                        _fail(f"{where}[{i}]", f"unknown capability {_show(cap)}")
    if (v := _opt(p, "rlimits")) is not None:
        _rlimits(v, f"{path}.rlimits")
    if (v := _opt(p, "oomScoreAdj")) is not None:
        _int(v, f"{path}.oomScoreAdj", -1000, 1000)
    if (v := _opt(p, "noNewPrivileges")) is not None:
        _bool(v, f"{path}.noNewPrivileges")
    for k in ("apparmorProfile", "selinuxLabel", "commandLine"):
        if (v := _opt(p, k)) is not None:
            _str(v, f"{path}.{k}")
    if (v := _opt(p, "ioPriority")) is not None:
        io = _obj(v, f"{path}.ioPriority")
        cls = _str(_need(io, "class", f"{path}.ioPriority"), f"{path}.ioPriority.class")
        if cls not in _IOPRIO_CLASSES:
            _fail(f"{path}.ioPriority.class", f"unknown I/O priority class {_show(cls)}")
        if (prio := _opt(io, "priority")) is not None:
            _int(prio, f"{path}.ioPriority.priority", 0, 7)  # the kernel's 8 levels
    if (v := _opt(p, "scheduler")) is not None:
        _scheduler(_obj(v, f"{path}.scheduler"), f"{path}.scheduler")
    if (v := _opt(p, "execCPUAffinity")) is not None:
        aff = _obj(v, f"{path}.execCPUAffinity")
        for k in ("initial", "final"):
            if (s := _opt(aff, k)) is not None and _str(s, f"{path}.execCPUAffinity.{k}"):
                _ranges(s, f"{path}.execCPUAffinity.{k}", "CPU")


def _user(u: dict[str, Any], path: str) -> None:
    for k in ("uid", "gid", "umask"):
        if (v := _opt(u, k)) is not None:
            _int(v, f"{path}.{k}", 0, _U32)
    if (v := _opt(u, "additionalGids")) is not None:
        _id_list(v, f"{path}.additionalGids")
    if (v := _opt(u, "username")) is not None:
        _str(v, f"{path}.username")


def _rlimits(v: Any, path: str) -> None:
    seen: set[str] = set()
    for i, rl in enumerate(_arr(v, path)):
        where = f"{path}[{i}]"
        r = _obj(rl, where)
        kind = _str(_need(r, "type", where), f"{where}.type")
        if kind not in RLIMITS:
            _fail(f"{where}.type", f"unknown rlimit {_show(kind)}")
        if kind in seen:
            _fail(f"{where}.type", f"duplicate rlimit {_show(kind)}")
        seen.add(kind)
        soft = _int(_need(r, "soft", where), f"{where}.soft", 0, _U64)
        hard = _int(_need(r, "hard", where), f"{where}.hard", 0, _U64)
        if soft > hard:
            _fail(where, f"soft limit {soft} is above hard limit {hard} for {kind}")


def _scheduler(s: dict[str, Any], path: str) -> None:
    policy = _str(_need(s, "policy", path), f"{path}.policy")
    if policy not in _SCHED_POLICIES:
        _fail(f"{path}.policy", f"unknown scheduling policy {_show(policy)}")
    if (v := _opt(s, "nice")) is not None:
        _int(v, f"{path}.nice", -20, 19)
    if (v := _opt(s, "priority")) is not None:
        _int(v, f"{path}.priority", *_I32)
    if (v := _opt(s, "flags")) is not None:
        for i, flag in enumerate(_strs(v, f"{path}.flags")):
            if flag not in _SCHED_FLAGS:
                _fail(f"{path}.flags[{i}]", f"unknown scheduler flag {_show(flag)}")
    for k in ("runtime", "deadline", "period"):
        if (v := _opt(s, k)) is not None:
            _int(v, f"{path}.{k}", 0, _U64)


# ---- the whole config ---------------------------------------------------------------


def validate(config: dict[str, Any], bundle: str, *, need_process: bool = True,
             check_rootfs: bool = True) -> tuple[bytes, int] | None:
    """Check ``config`` (a parsed config.json) for the bundle directory ``bundle``.

    ``need_process``: a missing ``process`` is an error (``create``/``run`` need one;
    ``update`` re-validates a stored config and does not). ``check_rootfs``: the
    rootfs ``root.path`` (relative to ``bundle`` unless absolute) must be an existing
    directory; turn off when the bundle may be gone (``update``).

    Reads nothing but the rootfs's stat and, when ``linux.seccomp`` is set, compiles
    the filter (``ketch.runtime.seccomp``) so a bad profile fails here; that
    compiled filter ``(program, flags)`` is returned (None without a profile) so
    the caller need not compile it again. Raises
    ``InvalidArgument`` (or ``NotImplementedYet``) with one line naming the field.
    """
    c = _obj(config, "config.json")
    _oci_version(_need(c, "ociVersion", ""))
    _root(_obj(_need(c, "root", ""), "root"), bundle, check_rootfs)
    process = _opt(c, "process")
    if process is not None:
        validate_process(process)
    elif need_process:
        _fail("process", "missing: create and run need a process to start")
    linux_v = _opt(c, "linux")
    linux = _obj(linux_v, "linux") if linux_v is not None else {}
    ns = _namespaces(_opt(linux, "namespaces"))
    for k in ("hostname", "domainname"):
        if (v := _opt(c, k)) is not None and _str(v, k):
            if len(v.encode()) > _HOST_NAME_MAX:
                _fail(k, f"must be at most {_HOST_NAME_MAX} bytes, got {len(v.encode())}")
            _need_ns(ns, "uts", k)
    if (v := _opt(c, "mounts")) is not None:
        for i, m in enumerate(_arr(v, "mounts")):
            _mount(m, f"mounts[{i}]")
    if (v := _opt(c, "hooks")) is not None:
        _hooks(_obj(v, "hooks"))
    if (v := _opt(c, "annotations")) is not None:
        _str_map(v, "annotations")
    if linux_v is not None:
        return _linux(linux, ns)
    return None


def _oci_version(v: Any) -> None:
    s = _str(v, "ociVersion")
    major = s.split(".", 1)[0]
    if not (major.isascii() and major.isdigit()):
        _fail("ociVersion", f"{_show(s)} is not a version number")
    if major != "1":
        _fail("ociVersion", f"unsupported version {_show(s)}: ketch-runtime implements "
                            f"1.x up to {OCI_VERSION}")


def _root(root: dict[str, Any], bundle: str, check_rootfs: bool) -> None:
    path = _str(_need(root, "path", "root"), "root.path")
    if not path:
        _fail("root.path", "must not be empty")
    if (v := _opt(root, "readonly")) is not None:
        _bool(v, "root.readonly")
    if not check_rootfs:
        return
    rootfs = os.path.normpath(os.path.join(bundle, path))
    if not os.path.isdir(rootfs):
        what = "is not a directory" if os.path.lexists(rootfs) else "does not exist"
        _fail("root.path", f"rootfs {rootfs} {what}")


def _namespaces(v: Any) -> dict[str, str | None]:
    """linux.namespaces as {type: path or None (a new one)}."""
    out: dict[str, str | None] = {}
    if v is None:
        return out
    for i, entry in enumerate(_arr(v, "linux.namespaces")):
        where = f"linux.namespaces[{i}]"
        e = _obj(entry, where)
        kind = _str(_need(e, "type", where), f"{where}.type")
        if kind not in NAMESPACE_TYPES:
            _fail(f"{where}.type", f"unknown namespace type {_show(kind)}")
        if kind in out:
            _fail(f"{where}.type", f"duplicate namespace {_show(kind)}")
        path = _opt(e, "path")
        # an empty path is the same as none: create a new namespace
        out[kind] = _abs(path, f"{where}.path") if path else None
    return out


def _need_ns(ns: dict[str, str | None], kind: str, path: str) -> None:
    if kind not in ns:
        _fail(path, f"needs its own {_NS_NAMES[kind]} namespace "
                    f"(add {{\"type\": \"{kind}\"}} to linux.namespaces)")


def _mount(entry: Any, path: str) -> None:
    m = _obj(entry, path)
    dest = _str(_need(m, "destination", path), f"{path}.destination")
    if not dest:
        _fail(f"{path}.destination", "must not be empty")
    # a relative destination is taken as relative to / (runc accepts it too)
    fstype = _opt(m, "type")
    if fstype is not None:
        _str(fstype, f"{path}.type")
    source = _opt(m, "source")
    if source is not None:
        _str(source, f"{path}.source")
    options = _strs(_opt(m, "options") or [], f"{path}.options")
    for j, opt in enumerate(options):
        if opt in RECURSIVE_MOUNT_OPTIONS:
            raise NotImplementedYet(f"{path}.options[{j}]: recursive mount option "
                                    f"{_show(opt)} is not supported by ketch-runtime")
        if opt in ("idmap", "ridmap"):
            raise NotImplementedYet(f"{path}.options[{j}]: idmapped mounts are not "
                                    "supported by ketch-runtime")
    for k in ("uidMappings", "gidMappings"):
        if _opt(m, k):
            raise NotImplementedYet(f"{path}.{k}: idmapped mounts are not supported by "
                                    "ketch-runtime")
    if (fstype == "bind" or "bind" in options or "rbind" in options) and not source:
        _fail(f"{path}.source", "required for a bind mount")


def _hooks(hooks: dict[str, Any]) -> None:
    for name in HOOK_NAMES:
        if (v := _opt(hooks, name)) is None:
            continue
        for i, entry in enumerate(_arr(v, f"hooks.{name}")):
            where = f"hooks.{name}[{i}]"
            h = _obj(entry, where)
            _abs(_need(h, "path", where), f"{where}.path")
            for k in ("args", "env"):
                if (a := _opt(h, k)) is not None:
                    _strs(a, f"{where}.{k}")
            if (t := _opt(h, "timeout")) is not None and (type(t) is not int or t < 1):
                _fail(f"{where}.timeout", f"must be a positive number of seconds, got {_show(t)}")


def _str_map(v: Any, path: str) -> dict[str, Any]:
    d = _obj(v, path)
    for key, val in d.items():
        if not key:
            _fail(path, "keys must not be empty")
        if type(val) is not str:
            _fail(f"{path}[{_show(key)}]", f"must be a string, got {_show(val)}")
    return d


# ---- linux ------------------------------------------------------------------------


def _linux(lx: dict[str, Any], ns: dict[str, str | None]) -> tuple[bytes, int] | None:
    _id_mappings(lx, ns)
    compiled = None
    if (v := _opt(lx, "devices")) is not None:
        for i, d in enumerate(_arr(v, "linux.devices")):
            _device(d, f"linux.devices[{i}]")
    if (v := _opt(lx, "cgroupsPath")) is not None:
        _str(v, "linux.cgroupsPath")
    if (v := _opt(lx, "resources")) is not None:
        _resources(_obj(v, "linux.resources"), "linux.resources")
    if (v := _opt(lx, "sysctl")) is not None:
        _sysctl(_str_map(v, "linux.sysctl"), ns)
    if (v := _opt(lx, "seccomp")) is not None and _obj(v, "linux.seccomp"):
        compiled = _seccomp(v)
    if (v := _opt(lx, "rootfsPropagation")) is not None:
        prop = _str(v, "linux.rootfsPropagation")
        if prop not in PROPAGATION:
            _fail("linux.rootfsPropagation", f"unknown propagation {_show(prop)} "
                                             f"(want one of {', '.join(PROPAGATION)})")
    for k in ("maskedPaths", "readonlyPaths"):
        if (v := _opt(lx, k)) is not None:
            _abs_list(v, f"linux.{k}")
    if (v := _opt(lx, "mountLabel")) is not None:
        _str(v, "linux.mountLabel")
    if (v := _opt(lx, "personality")) is not None:
        pers = _obj(v, "linux.personality")
        if (dom := _opt(pers, "domain")) is not None and dom not in ("LINUX", "LINUX32"):
            _fail("linux.personality.domain", f"must be \"LINUX\" or \"LINUX32\", got {_show(dom)}")
        if (flags := _opt(pers, "flags")) is not None:
            _strs(flags, "linux.personality.flags")
    if (v := _opt(lx, "timeOffsets")) is not None:
        _time_offsets(_obj(v, "linux.timeOffsets"), ns)
    if _opt(lx, "netDevices"):
        raise NotImplementedYet("linux.netDevices: moving network devices into the "
                                "container is not supported by ketch-runtime")
    # intelRdt, memoryPolicy and anything newer: not ours to check, ignored
    return compiled


def _id_mappings(lx: dict[str, Any], ns: dict[str, str | None]) -> None:
    new_userns = "user" in ns and ns["user"] is None
    for k in ("uidMappings", "gidMappings"):
        where = f"linux.{k}"
        v = _opt(lx, k)
        if v is not None:
            for i, entry in enumerate(_arr(v, where)):
                e = _obj(entry, f"{where}[{i}]")
                for f in ("containerID", "hostID", "size"):
                    _int(_need(e, f, f"{where}[{i}]"), f"{where}[{i}].{f}", 0, _U32)
                if e["size"] == 0:
                    _fail(f"{where}[{i}].size", "must be at least 1")
        if new_userns and not v:
            _fail(where, "required when creating a new user namespace")
        if v and "user" not in ns:
            _fail(where, "only meaningful with a user namespace "
                         "(add {\"type\": \"user\"} to linux.namespaces)")


def _device(entry: Any, path: str) -> None:
    d = _obj(entry, path)
    kind = _str(_need(d, "type", path), f"{path}.type")
    if kind not in ("c", "b", "u", "p"):
        _fail(f"{path}.type", f"must be one of c, b, u, p, got {_show(kind)}")
    _abs(_need(d, "path", path), f"{path}.path")
    for k in ("major", "minor"):
        v = _opt(d, k)
        if v is None and kind != "p":
            _fail(f"{path}.{k}", f"required for a device of type {_show(kind)}")
        if v is not None:
            _int(v, f"{path}.{k}", 0, _U32)
    if (v := _opt(d, "fileMode")) is not None:
        _int(v, f"{path}.fileMode", 0, 0o7777)
    for k in ("uid", "gid"):
        if (v := _opt(d, k)) is not None:
            _int(v, f"{path}.{k}", 0, _U32)


def _sysctl(sysctl: dict[str, Any], ns: dict[str, str | None]) -> None:
    for key in sysctl:
        where = f"linux.sysctl[{_show(key)}]"
        name = key.replace("/", ".")  # net/ipv4/ip_forward is accepted as a spelling
        if name.startswith("net."):
            _need_ns(ns, "network", where)
        elif name.startswith(_IPC_SYSCTLS):
            _need_ns(ns, "ipc", where)
        elif name in ("kernel.hostname", "kernel.domainname"):
            _need_ns(ns, "uts", where)
        else:
            _fail(where, "not namespaced: a container cannot set it without changing the host")


def _seccomp(cfg: dict[str, Any]) -> tuple[bytes, int]:
    # Imported here: the compiler is only needed when a profile is given.
    from ketch.runtime.seccomp import compile_seccomp

    return compile_seccomp(cfg)


def _time_offsets(offsets: dict[str, Any], ns: dict[str, str | None]) -> None:
    if not offsets:
        return
    if "time" not in ns:
        _need_ns(ns, "time", "linux.timeOffsets")
    if ns["time"] is not None:
        _fail("linux.timeOffsets", "cannot be set when joining an existing time namespace")
    for clock in ("boottime", "monotonic"):
        if (v := _opt(offsets, clock)) is None:
            continue
        where = f"linux.timeOffsets.{clock}"
        o = _obj(v, where)
        if (s := _opt(o, "secs")) is not None:
            _int(s, f"{where}.secs", *_I64)
        if (n := _opt(o, "nanosecs")) is not None:
            _int(n, f"{where}.nanosecs", 0, 999_999_999)


# ---- linux.resources ------------------------------------------------------------------


def _resources(r: dict[str, Any], path: str) -> None:
    if (v := _opt(r, "devices")) is not None:
        for i, rule in enumerate(_arr(v, f"{path}.devices")):
            _device_rule(rule, f"{path}.devices[{i}]")
    if (v := _opt(r, "memory")) is not None:
        _memory(_obj(v, f"{path}.memory"), f"{path}.memory")
    if (v := _opt(r, "cpu")) is not None:
        _cpu(_obj(v, f"{path}.cpu"), f"{path}.cpu")
    if (v := _opt(r, "pids")) is not None:
        pids = _obj(v, f"{path}.pids")
        if (n := _opt(pids, "limit")) is not None:
            _int(n, f"{path}.pids.limit", *_I64)  # 0 or -1: no limit
    if (v := _opt(r, "blockIO")) is not None:
        _block_io(_obj(v, f"{path}.blockIO"), f"{path}.blockIO")
    if (v := _opt(r, "hugepageLimits")) is not None:
        for i, entry in enumerate(_arr(v, f"{path}.hugepageLimits")):
            where = f"{path}.hugepageLimits[{i}]"
            h = _obj(entry, where)
            size = _str(_need(h, "pageSize", where), f"{where}.pageSize")
            num, unit = size[:-2], size[-2:]
            if unit not in ("KB", "MB", "GB") or not (num.isascii() and num.isdigit()) \
                    or num.startswith("0"):
                _fail(f"{where}.pageSize", f"must look like \"2MB\" or \"1GB\", got {_show(size)}")
            _int(_need(h, "limit", where), f"{where}.limit", 0, _U64)
    if (v := _opt(r, "network")) is not None:
        net = _obj(v, f"{path}.network")
        if (n := _opt(net, "classID")) is not None:
            _int(n, f"{path}.network.classID", 0, _U32)
        if (prios := _opt(net, "priorities")) is not None:
            for i, entry in enumerate(_arr(prios, f"{path}.network.priorities")):
                where = f"{path}.network.priorities[{i}]"
                e = _obj(entry, where)
                _str(_need(e, "name", where), f"{where}.name")
                _int(_need(e, "priority", where), f"{where}.priority", 0, _U32)
    if (v := _opt(r, "unified")) is not None:
        for key in _str_map(v, f"{path}.unified"):
            if "/" in key or key in (".", ".."):
                _fail(f"{path}.unified[{_show(key)}]", "must name a file of the cgroup, not a path")
    if (v := _opt(r, "rdma")) is not None:
        for dev, limits in _obj(v, f"{path}.rdma").items():
            where = f"{path}.rdma[{_show(dev)}]"
            lim = _obj(limits, where)
            for k in ("hcaHandles", "hcaObjects"):
                if (n := _opt(lim, k)) is not None:
                    _int(n, f"{where}.{k}", 0, _U32)


def _device_rule(entry: Any, path: str) -> None:
    d = _obj(entry, path)
    _bool(_need(d, "allow", path), f"{path}.allow")
    if (v := _opt(d, "type")) is not None and _str(v, f"{path}.type") not in ("a", "b", "c"):
        _fail(f"{path}.type", f"must be \"a\", \"b\" or \"c\", got {_show(v)}")
    for k in ("major", "minor"):
        if (v := _opt(d, k)) is not None:
            _int(v, f"{path}.{k}", -1, _U32)  # -1, like null, means any
    if (v := _opt(d, "access")) is not None:
        access = _str(v, f"{path}.access")
        if not access or not set(access) <= {"r", "w", "m"}:
            _fail(f"{path}.access", f"must be a combination of r, w and m, got {_show(access)}")


def _memory(m: dict[str, Any], path: str) -> None:
    for k in ("limit", "reservation", "swap", "kernel", "kernelTCP"):
        if (v := _opt(m, k)) is not None:
            _int(v, f"{path}.{k}", -1, _I64[1])  # -1: unlimited
    if (v := _opt(m, "swappiness")) is not None:
        _int(v, f"{path}.swappiness", -1, 100)  # -1: leave the kernel's value
    for k in ("disableOOMKiller", "useHierarchy", "checkBeforeUpdate"):
        if (v := _opt(m, k)) is not None:
            _bool(v, f"{path}.{k}")
    limit, swap = m.get("limit") or 0, m.get("swap") or 0
    if limit > 0 and swap > 0 and swap < limit:
        # swap is the memory+swap total, so it cannot be below the memory limit
        _fail(f"{path}.swap", f"memory+swap limit {swap} is below the memory limit {limit}")


def _cpu(c: dict[str, Any], path: str) -> None:
    for k in ("shares", "period", "burst", "realtimePeriod"):
        if (v := _opt(c, k)) is not None:
            _int(v, f"{path}.{k}", 0, _U64)
    for k in ("quota", "realtimeRuntime", "idle"):
        if (v := _opt(c, k)) is not None:
            _int(v, f"{path}.{k}", *_I64)
    for k, what in (("cpus", "CPU"), ("mems", "memory node")):
        if (v := _opt(c, k)) is not None and _str(v, f"{path}.{k}"):
            _ranges(v, f"{path}.{k}", what)


def _block_io(b: dict[str, Any], path: str) -> None:
    for k in ("weight", "leafWeight"):
        if (v := _opt(b, k)) is not None:
            _weight(v, f"{path}.{k}")
    if (v := _opt(b, "weightDevice")) is not None:
        for i, entry in enumerate(_arr(v, f"{path}.weightDevice")):
            where = f"{path}.weightDevice[{i}]"
            e = _block_dev(entry, where)
            for k in ("weight", "leafWeight"):
                if (w := _opt(e, k)) is not None:
                    _weight(w, f"{where}.{k}")
    for k in ("throttleReadBpsDevice", "throttleWriteBpsDevice", "throttleReadIOPSDevice",
              "throttleWriteIOPSDevice"):
        if (v := _opt(b, k)) is not None:
            for i, entry in enumerate(_arr(v, f"{path}.{k}")):
                e = _block_dev(entry, f"{path}.{k}[{i}]")
                if (rate := _opt(e, "rate")) is not None:
                    _int(rate, f"{path}.{k}[{i}].rate", 0, _U64)


def _weight(v: Any, path: str) -> None:
    # 0 means "not set" (Docker sends it); otherwise the blkio range
    if _int(v, path, 0, _U16) and not 10 <= v <= 1000:
        _fail(path, f"must be between 10 and 1000, got {v}")


def _block_dev(entry: Any, path: str) -> dict[str, Any]:
    e = _obj(entry, path)
    for k in ("major", "minor"):
        _int(_need(e, k, path), f"{path}.{k}", 0, _U32)
    return e
