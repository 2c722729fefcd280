"""Compiled seccomp filters loaded into the real kernel.

Each test forks a child that sets no_new_privs, loads a filter and reports
what it saw through a pipe, then leaves with ``os._exit``; a filter can never
be removed, so only the child carries it. The parent kills a child that does
not finish in time.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest

from ketch.errors import InvalidArgument
from ketch.runtime.seccomp import compile_seccomp
from ketch.runtime.seccomp_default import default_profile
from ketch.sys import seccomp as sc
from ketch.sys.prctl import set_no_new_privs
from ketch.sys.syscalls import X32_SYSCALL_BIT, native_arch, table

pytestmark = pytest.mark.skipif(native_arch() != "SCMP_ARCH_X86_64",
                                reason="numbers below are x86-64's")

DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
               "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
               "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
NR = table("SCMP_ARCH_X86_64")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def raw_syscall(nr: int, *args: int) -> tuple[int, int]:
    """(return value, errno) of syscall(nr, args...)."""
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    return ret, ctypes.get_errno()


def in_child(prog: bytes, flags: int, body: Callable[[], Any],
             timeout: float = 30.0) -> tuple[int, Any]:
    """Fork; the child loads (prog, flags) and runs body(). Returns (wait status, result).

    The result is body()'s return value (JSON), or {"error": ...} when it raised.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(r)
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGSYS would dump core
            set_no_new_privs()
            sc.load_filter(prog, flags)
            out = body()
            os.write(w, json.dumps(out).encode())
        except BaseException as e:  # report anything, then leave
            code = 1
            try:
                os.write(w, json.dumps({"error": repr(e)}).encode())
            except BaseException:
                pass
        finally:
            os._exit(code)
    os.close(w)
    reaped = False
    try:
        chunks = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise AssertionError("seccomp test child timed out")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        reaped = True
    finally:
        os.close(r)
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    data = b"".join(chunks)
    return status, json.loads(data) if data else None


def errno_of(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno or -1
    return 0


def test_denied_syscall_returns_configured_errno() -> None:
    prog, flags = compile_seccomp({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 38}],
    })
    with tempfile.TemporaryDirectory(prefix="ketch-seccomp-") as tmp:
        target = os.path.join(tmp, "d")

        def body() -> Any:
            return {"mkdir": errno_of(lambda: os.mkdir(target)),
                    "rmdir": errno_of(lambda: os.rmdir(target)),
                    "exists": os.path.exists(target)}

        status, out = in_child(prog, flags, body)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
        assert out == {"mkdir": errno.ENOSYS, "rmdir": errno.ENOENT, "exists": False}
        os.mkdir(target)  # the parent is not filtered


def test_argument_conditions_on_64_bit_values() -> None:
    prog, flags = compile_seccomp({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
             "args": [{"index": 1, "value": 1 << 32, "op": "SCMP_CMP_GE"}]},
            {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EOPNOTSUPP,
             "args": [{"index": 2, "value": os.SEEK_END, "op": "SCMP_CMP_EQ"}]},
            {"names": ["fchmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS,
             "args": [{"index": 1, "value": 0o7000, "op": "SCMP_CMP_MASKED_EQ",
                       "valueTwo": 0o4000}]},
        ],
    })
    with tempfile.TemporaryFile(prefix="ketch-seccomp-") as f:
        fd = f.fileno()

        def body() -> Any:
            return {
                "small": os.lseek(fd, 5, os.SEEK_SET),
                "below": os.lseek(fd, 0xFFFF_FFFF, os.SEEK_SET),
                "high": errno_of(lambda: os.lseek(fd, (1 << 32) + 5, os.SEEK_SET)),
                "end": errno_of(lambda: os.lseek(fd, 0, os.SEEK_END)),
                "chmod": errno_of(lambda: os.fchmod(fd, 0o644)),
                "setuid_bit": errno_of(lambda: os.fchmod(fd, 0o4755)),
                "setgid_bit": errno_of(lambda: os.fchmod(fd, 0o2755)),
            }

        status, out = in_child(prog, flags, body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    assert out == {"small": 5, "below": 0xFFFF_FFFF, "high": errno.EACCES,
                   "end": errno.EOPNOTSUPP, "chmod": 0, "setuid_bit": errno.EROFS,
                   "setgid_bit": 0}


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP"])
def test_kill_and_trap_end_the_child_with_sigsys(action: str) -> None:
    prog, flags = compile_seccomp({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": action}],
    })
    status, out = in_child(prog, flags, lambda: {"ppid": os.getppid()})
    assert os.WIFSIGNALED(status), (status, out)
    assert os.WTERMSIG(status) == signal.SIGSYS
    assert out is None


def test_x32_numbers_are_killed() -> None:
    # The allow-everything-but-getpid profile must not let x32's getpid through.
    prog, flags = compile_seccomp({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}],
    })
    status, out = in_child(prog, flags, lambda: raw_syscall(X32_SYSCALL_BIT | NR["getpid"]))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS, (status, out)


def test_default_profile_runs_ordinary_python() -> None:
    t0 = time.perf_counter()
    prog, flags = compile_seccomp(default_profile(DOCKER_CAPS))
    compile_ms = (time.perf_counter() - t0) * 1e3
    with tempfile.TemporaryDirectory(prefix="ketch-seccomp-") as tmp:

        def body() -> Any:
            import socket
            import threading

            path = os.path.join(tmp, "sub", "f.txt")
            os.makedirs(os.path.dirname(path))
            with open(path, "w") as f:
                f.write("hello")
            with open(path) as f:
                text = f.read()
            os.rename(path, path + ".2")
            os.chmod(path + ".2", 0o600)
            listing = sorted(os.listdir(os.path.dirname(path)))
            time.sleep(0.01)
            # Threads: glibc tries clone3 (ENOSYS here) and falls back to clone.
            seen: list[int] = []
            th = threading.Thread(target=lambda: seen.append(threading.get_ident()))
            th.start()
            th.join()
            pid = os.fork()
            if pid == 0:
                os._exit(7)
            _, st = os.waitpid(pid, 0)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.close()
            vsock = errno_of(lambda: socket.socket(40, socket.SOCK_STREAM))
            # Namespaces need CAP_SYS_ADMIN in the default profile.
            unshare = raw_syscall(NR["unshare"], 0x10000000)  # CLONE_NEWUSER
            clone_ns = raw_syscall(NR["clone"], 0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)
            if clone_ns[0] == 0:  # only if the filter failed: leave at once
                os._exit(0)
            mount = raw_syscall(NR["mount"], 0, 0, 0, 0, 0)
            return {"text": text, "listing": listing, "thread": len(seen),
                    "fork": os.WEXITSTATUS(st), "vsock": vsock, "unshare": list(unshare),
                    "clone_ns": list(clone_ns), "mount": list(mount),
                    "clone3": list(raw_syscall(NR["clone3"], 0, 0))}

        status, out = in_child(prog, flags, body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    assert out["text"] == "hello"
    assert out["listing"] == ["f.txt.2"]
    assert out["thread"] == 1
    assert out["fork"] == 7
    assert out["vsock"] == errno.EPERM
    assert out["unshare"] == [-1, errno.EPERM]
    assert out["clone_ns"] == [-1, errno.EPERM]
    assert out["mount"] == [-1, errno.EPERM]
    assert out["clone3"] == [-1, errno.ENOSYS]
    print(f"default profile: {len(prog) // 8} instructions, compiled in {compile_ms:.2f} ms")


def test_default_profile_with_sys_admin_allows_namespaces() -> None:
    prog, flags = compile_seccomp(default_profile([*DOCKER_CAPS, "CAP_SYS_ADMIN"]))
    # A new user namespace only affects the child itself.
    status, out = in_child(prog, flags, lambda: raw_syscall(NR["unshare"], 0x10000000))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    assert out == [0, 0]


def test_filter_flags_are_accepted() -> None:
    prog, flags = compile_seccomp({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                  "SECCOMP_FILTER_FLAG_TSYNC"],
        "syscalls": [{"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 3}],
    })
    assert flags == 7
    status, out = in_child(prog, flags, lambda: errno_of(lambda: os.rmdir("/nonexistent-x")))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    assert out == errno.ESRCH


def test_log_action_lets_the_call_run() -> None:
    prog, flags = compile_seccomp({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_LOG"}],
    })
    parent = os.getpid()
    status, out = in_child(prog, flags, os.getppid)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert out == parent


def test_kernel_rejects_a_broken_program() -> None:
    jump_out = sc.sock_filter(0x05, 0, 0, 10) + sc.sock_filter(0x06, 0, 0, sc.SECCOMP_RET_ALLOW)
    status, out = in_child(sc.sock_filter(0x06, 0, 0, sc.SECCOMP_RET_ALLOW), 0,
                           lambda: errno_of(lambda: sc.load_filter(jump_out)))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    assert out == errno.EINVAL


def test_load_filter_checks_the_program_size() -> None:
    with pytest.raises(InvalidArgument):
        sc.load_filter(b"")
    with pytest.raises(InvalidArgument):
        sc.load_filter(b"\x06\x00\x00\x00")
    with pytest.raises(InvalidArgument):
        sc.load_filter(sc.sock_filter(0x06, 0, 0, 0) * (sc.BPF_MAXINSNS + 1))


def test_actions_available() -> None:
    for action in (sc.SECCOMP_RET_KILL_PROCESS, sc.SECCOMP_RET_KILL_THREAD,
                   sc.SECCOMP_RET_TRAP, sc.SECCOMP_RET_ERRNO, sc.SECCOMP_RET_TRACE,
                   sc.SECCOMP_RET_LOG, sc.SECCOMP_RET_ALLOW):
        assert sc.action_available(action), hex(action)
    assert not sc.action_available(0x7FFE0000)


def test_load_time_of_the_default_profile() -> None:
    prog, flags = compile_seccomp(default_profile(DOCKER_CAPS))

    def body() -> Any:
        t0 = time.perf_counter()
        sc.load_filter(prog, flags)  # a second, stacked copy: timed on its own
        return (time.perf_counter() - t0) * 1e3

    status, out = in_child(prog, flags, body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    print(f"kernel load of {len(prog) // 8} instructions: {out:.3f} ms")


def _seccomp_mode() -> str:
    with open("/proc/self/status") as f:
        return f.read().split("Seccomp:")[1].split()[0]


def test_supported_flags_probe_installs_nothing() -> None:
    from ketch.runtime.seccomp import FLAGS, supported_flags

    before = _seccomp_mode()  # 0 on a bare host, 2 inside a filtered container
    assert supported_flags() == list(FLAGS)
    assert sc.filter_flag_supported(1 << 20) is False
    assert _seccomp_mode() == before  # the probes left no filter behind


def test_container_runs_under_the_default_profile(
        ctl: Any, make_bundle: Callable[..., str], cid: str) -> None:
    script = ("mkdir /made; echo mkdir=$?; unshare -U true; echo unshare=$?; "
              "ls /bin >/dev/null && echo ls=ok")
    bundle = make_bundle(["sh", "-c", script])
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    prof = default_profile(cfg["process"]["capabilities"]["bounding"])
    prof["syscalls"].insert(0, {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                                "errnoRet": errno.ENOSYS})
    cfg["linux"]["seccomp"] = prof
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = ctl("run", "-b", bundle, cid, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["mkdir=1", "unshare=1", "ls=ok"], (p.stdout, p.stderr)
    assert "Function not implemented" in p.stderr
    assert "Operation not permitted" in p.stderr
