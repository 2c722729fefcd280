"""The last steps before the user's program runs: identity, limits, capabilities, exec.

Used by the container's init (after start) and by ``exec``'d processes alike.
Order matters and follows the kernel's rules:

1. rlimits and the OOM score (need privileges we are about to drop)
2. seccomp when noNewPrivileges is off (loading needs CAP_SYS_ADMIN then)
3. drop the bounding set; keep permitted caps across the uid change (KEEPCAPS)
4. supplementary groups, gid, uid; then the exact cap sets and the ambient set
5. noNewPrivileges, umask, working directory
6. (after the start signal) seccomp when noNewPrivileges is on, as late as possible
7. execveat of the sealed trampoline (``ketch.sys.exe``), which execs the program
"""

from __future__ import annotations

import os
import resource
import signal
import stat
from collections.abc import Mapping

from ketch.errors import InvalidArgument
from ketch.oci.runtime_spec import RLIMITS
from ketch.sys import caps as _caps
from ketch.sys import prctl
from ketch.sys.exe import MARKER, sealed_trampoline, supported

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "apply_identity", "exec_user", "lookup", "prepare_env", "set_rlimits", "trampoline",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"



def _mask(names: list[str] | None) -> int:
    m = 0
    for n in names or []:
        m |= 1 << _caps.CAPS[n]
    return m


def set_rlimits(process: Mapping[str, Any]) -> None:
    for r in process.get("rlimits") or []:
        resource.setrlimit(RLIMITS[r["type"]], (r["soft"], r["hard"]))
    adj = process.get("oomScoreAdj")
    if adj is not None:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(adj))


def _home_of(uid: int) -> str | None:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) >= 6 and parts[2] == str(uid):
                    return parts[5]
    except OSError:
        pass
    return None


def prepare_env(process: Mapping[str, Any]) -> dict[str, str]:
    """The program's environment; HOME from the container's /etc/passwd when unset."""
    env: dict[str, str] = {}
    for e in process.get("env") or []:
        k, _, v = e.partition("=")
        env[k] = v
    if "HOME" not in env:
        env["HOME"] = _home_of((process.get("user") or {}).get("uid", 0)) or "/"
    return env


def lookup(arg0: str, env: Mapping[str, str], cwd: str) -> str:
    """Resolve ``arg0`` like execvp does, in the container's filesystem and PATH."""
    if "/" in arg0:
        path = arg0 if arg0.startswith("/") else os.path.join(cwd, arg0)
        candidates = [path]
    else:
        candidates = [os.path.join(d or ".", arg0)
                      for d in env.get("PATH", DEFAULT_PATH).split(":")]
    denied = ""
    for c in candidates:
        try:
            st = os.stat(c)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(c, os.X_OK):
            return c
        denied = denied or ("is a directory: " if stat.S_ISDIR(st.st_mode) else "")
        if "/" in arg0:  # there, but not something to execute (docker run exits 126)
            raise InvalidArgument(f'exec: "{arg0}": {denied}permission denied')
    if "/" in arg0:
        raise InvalidArgument(f'exec: "{arg0}": stat {arg0}: no such file or directory')
    raise InvalidArgument(f'exec: "{arg0}": executable file not found in $PATH')


def apply_identity(process: Mapping[str, Any], *, setgroups_allowed: bool = True) -> None:
    """Steps 3 to 5: capabilities, user and groups, noNewPrivileges, umask, cwd."""
    c = process.get("capabilities") or {}
    bounding = _mask(c.get("bounding"))
    last = _caps.last_cap()
    for cap in range(last + 1):
        if not bounding & (1 << cap):
            prctl.capbset_drop(cap)
    user = process.get("user") or {}
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    prctl.set_keepcaps(True)
    if setgroups_allowed:
        os.setgroups(list(user.get("additionalGids") or []))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    prctl.set_keepcaps(False)
    valid = (1 << (last + 1)) - 1
    _caps.capset(_caps.CapSets(_mask(c.get("effective")) & valid,
                               _mask(c.get("permitted")) & valid,
                               _mask(c.get("inheritable")) & valid))
    for name in c.get("ambient") or []:
        try:
            prctl.cap_ambient_raise(_caps.CAPS[name])
        except OSError:  # not in permitted ∩ inheritable: the kernel refuses, as runc tolerates
            pass
    if process.get("noNewPrivileges"):
        prctl.set_no_new_privs()
    if user.get("umask") is not None:
        os.umask(user["umask"])
    else:
        os.umask(0o022)
    os.chdir(process.get("cwd") or "/")


_RESET = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
          signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD)


def trampoline() -> int | None:
    """The sealed exec trampoline's fd (made before seccomp and privileges are dropped)."""
    return sealed_trampoline() if supported() else None


def exec_user(path: str, args: list[str], env: Mapping[str, str], tramp: int | None,
              preserve_fds: int = 0) -> None:
    """Step 7: replace this process with the user's program; never returns on success."""
    # Python ignores SIGPIPE and SIGXFSZ; ignored dispositions survive execve.
    for s in _RESET:
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    # Whatever fds the caller leaked to us must not reach the container.
    _close_range_cloexec(3 + preserve_fds)
    if tramp is not None:
        os.execve(tramp, [MARKER, path, *args], env)
    os.execve(path, args, env)


def _close_range_cloexec(first: int) -> None:
    from ketch.sys.libc import syscall

    try:
        syscall("close_range", first, 0xFFFFFFFF, 4)  # CLOSE_RANGE_CLOEXEC
    except OSError:
        for fd in _open_fds():
            if fd >= first:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass


def _open_fds() -> list[int]:
    try:
        return [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))
