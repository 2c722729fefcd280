"""The default seccomp profile: Docker's policy, as an OCI ``linux.seccomp`` object.

Policy, in words:

* Everything not listed fails with EPERM.
* The calls ordinary programs need are allowed (:data:`ALLOWED`, grouped by
  subject below), on every ABI of the host's family (x86-64 also runs x86 and
  x32 code, aarch64 also runs arm code), as Docker does.
* A few calls are allowed only with safe arguments: ``personality`` with the
  handful of personas programs really set (no ADDR_NO_RANDOMIZE, no
  READ_IMPLIES_EXEC); ``socket`` for every family but
  AF_VSOCK; ``clone`` without namespace flags, unless the container has
  CAP_SYS_ADMIN; ``clone3`` fails with ENOSYS without CAP_SYS_ADMIN because
  its flags sit in memory a filter cannot read, and ENOSYS makes libc fall
  back to ``clone``, which is checked.
* Calls that a capability would permit anyway are allowed when the container
  has that capability (:data:`BY_CAPABILITY`); without it the kernel would say
  EPERM too, but the filter also shuts out bugs in those paths.

The facts (which calls, which values) follow Docker's profile, plus calls
Linux added since that ketch judges as harmless as their older relatives
(``cachestat``, ``fchmodat2``, ``futex_wait``/``wake``/``requeue``,
``map_shadow_stack``, ``mseal``, ``uretprobe``, the ``*xattrat`` family,
``file_getattr``/``file_setattr``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ketch.sys.syscalls import native_arch

__all__ = ["ALLOWED", "BY_CAPABILITY", "default_profile"]

ALLOWED: dict[str, tuple[str, ...]] = {
    "files and directories": (
        "access", "chdir", "chmod", "chown", "chown32", "close", "close_range",
        "copy_file_range", "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2",
        "fadvise64", "fadvise64_64", "fallocate", "fchdir", "fchmod", "fchmodat",
        "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync",
        "file_getattr", "file_setattr", "flock", "fstat", "fstat64", "fstatat64", "fstatfs",
        "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd", "getdents",
        "getdents64", "lchown", "lchown32", "link", "linkat", "_llseek", "lseek", "lstat",
        "lstat64", "mkdir", "mkdirat", "mknod", "mknodat", "name_to_handle_at", "newfstatat",
        "open", "openat", "openat2", "pread64", "preadv", "preadv2", "pwrite64", "pwritev",
        "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "rename",
        "renameat", "renameat2", "rmdir", "sendfile", "sendfile64", "splice", "stat",
        "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
        "sync_file_range", "syncfs", "tee", "truncate", "truncate64", "umask", "unlink",
        "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vmsplice", "write",
        "writev", "cachestat",
    ),
    "extended attributes": (
        "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "getxattrat",
        "lgetxattr", "listxattr", "listxattrat", "llistxattr", "lremovexattr", "lsetxattr",
        "removexattr", "removexattrat", "setxattr", "setxattrat",
    ),
    "polling, events and async I/O": (
        "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
        "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
        "fanotify_mark", "inotify_add_watch", "inotify_init", "inotify_init1",
        "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents",
        "io_pgetevents_time64", "io_setup", "io_submit", "io_uring_enter",
        "io_uring_register", "io_uring_setup", "ioctl", "_newselect", "pause", "pipe",
        "pipe2", "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64", "select",
        "signalfd", "signalfd4", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
        "timerfd_settime", "timerfd_settime64",
    ),
    "processes and threads": (
        "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "get_robust_list",
        "get_thread_area", "getcpu", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
        "getrlimit", "getrusage", "getsid", "gettid", "ioprio_get", "ioprio_set", "kill",
        "membarrier", "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64",
        "process_mrelease", "process_vm_readv", "process_vm_writev", "ptrace",
        "restart_syscall", "rseq", "sched_get_priority_max", "sched_get_priority_min",
        "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_getscheduler",
        "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
        "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp",
        "set_robust_list", "set_thread_area", "set_tid_address", "setpgid", "setpriority",
        "setrlimit", "setsid", "tgkill", "tkill", "ugetrlimit", "uname", "uretprobe",
        "vfork", "wait4", "waitid", "waitpid", "landlock_add_rule",
        "landlock_create_ruleset", "landlock_restrict_self",
    ),
    "users and groups": (
        "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
        "getgroups32", "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid",
        "getuid32", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid",
        "setgid32", "setgroups", "setgroups32", "setregid", "setregid32", "setresgid",
        "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setuid",
        "setuid32",
    ),
    "memory": (
        "brk", "madvise", "map_shadow_stack", "memfd_create", "memfd_secret", "mincore",
        "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mremap", "mseal",
        "msync", "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free",
        "pkey_mprotect", "remap_file_pages",
    ),
    "signals": (
        "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
        "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
        "rt_tgsigqueueinfo", "sigaltstack", "sigprocmask", "sigreturn",
    ),
    "time and futexes": (
        "adjtimex", "alarm", "clock_adjtime", "clock_adjtime64", "clock_getres",
        "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
        "clock_nanosleep_time64", "futex", "futex_requeue", "futex_time64", "futex_wait",
        "futex_waitv", "futex_wake", "getitimer", "gettimeofday", "nanosleep", "setitimer",
        "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
        "timer_gettime64", "timer_settime", "timer_settime64", "times",
    ),
    "sockets": (
        "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
        "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send",
        "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socketcall",
        "socketpair",
    ),
    "System V and POSIX IPC": (
        "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
        "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink",
        "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
        "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    ),
    "system information": ("getrandom", "sysinfo"),
}
# Calls only some host families get, keyed by the native SCMP_ARCH name.
_ARCH_SPECIFIC: dict[str, tuple[str, ...]] = {
    "SCMP_ARCH_X86_64": ("arch_prctl", "modify_ldt"),
    "SCMP_ARCH_X86": ("modify_ldt",),
    "SCMP_ARCH_AARCH64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                          "breakpoint", "cacheflush", "set_tls"),
    "SCMP_ARCH_ARM": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                      "breakpoint", "cacheflush", "set_tls"),
}
# The ABIs a host family runs, native first.
_FAMILY: dict[str, list[str]] = {
    "SCMP_ARCH_X86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "SCMP_ARCH_X86": ["SCMP_ARCH_X86"],
    "SCMP_ARCH_AARCH64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "SCMP_ARCH_ARM": ["SCMP_ARCH_ARM"],
}

BY_CAPABILITY: dict[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": (
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "listmount", "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree",
        "open_tree_attr", "perf_event_open", "quotactl", "quotactl_fd", "setdomainname",
        "sethostname", "setns", "statmount", "syslog", "umount", "umount2", "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
                       "process_vm_writev", "ptrace"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

# personality(2) personas programs set (linux32, setarch --uname-2.6):
# PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and 0xffffffff, which
# only queries the current persona.
_PER_LINUX = 0x0000
_PER_LINUX32 = 0x0008
_UNAME26 = 0x0020000
_PERSONA_QUERY = 0xFFFFFFFF
_PERSONAS = (_PER_LINUX, _PER_LINUX32, _UNAME26, _UNAME26 | _PER_LINUX32, _PERSONA_QUERY)
_AF_VSOCK = 40
# clone(2) flags that create namespaces.
_CLONE_NEWNS = 0x00020000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_NAMESPACE_FLAGS = (_CLONE_NEWNS | _CLONE_NEWCGROUP | _CLONE_NEWUTS | _CLONE_NEWIPC
                    | _CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWNET)
_ENOSYS = 38


def default_profile(capabilities: Iterable[str], arch: str | None = None) -> dict[str, Any]:
    """A fresh OCI ``linux.seccomp`` object with Docker's default policy.

    ``capabilities`` are the container's capability names (``CAP_SYS_ADMIN``
    or ``SYS_ADMIN``, any case), normally its bounding set; each unlocks the
    calls in :data:`BY_CAPABILITY`. ``arch`` is the host's ABI as an
    ``SCMP_ARCH_*`` name or ``uname -m`` machine (default: this host); it picks
    the listed architectures and the family's own calls. The result is a new
    object each time, free for the caller to change.
    """
    caps = set()
    for c in capabilities:
        c = c.upper()
        caps.add(c if c.startswith("CAP_") else "CAP_" + c)
    native = native_arch(arch)

    allow: list[str] = []
    for names in ALLOWED.values():
        allow.extend(names)
    allow.extend(_ARCH_SPECIFIC.get(native, ()))
    syscalls: list[dict[str, Any]] = [{"names": allow, "action": "SCMP_ACT_ALLOW"}]

    for persona in _PERSONAS:
        syscalls.append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                         "args": [_arg(0, persona, "SCMP_CMP_EQ")]})
    syscalls.append({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                     "args": [_arg(0, _AF_VSOCK, "SCMP_CMP_NE")]})

    for cap, names in BY_CAPABILITY.items():
        if cap in caps:
            syscalls.append({"names": list(names), "action": "SCMP_ACT_ALLOW"})
    if "CAP_SYS_ADMIN" not in caps:
        syscalls.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                         "args": [_arg(0, _NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0)]})
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                         "errnoRet": _ENOSYS})

    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": list(_FAMILY[native]),
        "syscalls": syscalls,
    }


def _arg(index: int, value: int, op: str, value_two: int | None = None) -> dict[str, Any]:
    arg: dict[str, Any] = {"index": index, "value": value, "op": op}
    if value_two is not None:
        arg["valueTwo"] = value_two
    return arg
