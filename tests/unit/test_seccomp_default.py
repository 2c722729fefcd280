"""The default profile, compiled and run in the test BPF interpreter."""

from __future__ import annotations

import pytest

from ketch.runtime.seccomp import BAD_ARCH_RET, compile_seccomp
from ketch.runtime.seccomp_default import ALLOWED, BY_CAPABILITY, default_profile
from ketch.sys import seccomp as sc
from ketch.sys.syscalls import table
from tests.unit.test_seccomp_bpf import check_static, run

# Docker's default capability set.
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
               "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
               "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]

X86_64 = sc.AUDIT_ARCH_X86_64
ALLOW = sc.SECCOMP_RET_ALLOW
EPERM = sc.SECCOMP_RET_ERRNO | 1
ENOSYS = sc.SECCOMP_RET_ERRNO | 38
NR = table("SCMP_ARCH_X86_64")
NR32 = table("SCMP_ARCH_X86")
NRX32 = table("SCMP_ARCH_X32")

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
SIGCHLD = 17
# What glibc passes for pthread_create and fork.
THREAD_FLAGS = 0x3D0F00
FORK_FLAGS = 0x01200000 | SIGCHLD


def prog_for(caps: list[str], arch: str = "x86_64") -> bytes:
    prog, flags = compile_seccomp(default_profile(caps, arch), arch)
    assert flags == 0
    check_static(prog)
    return prog


@pytest.fixture(scope="module")
def docker() -> bytes:
    return prog_for(DOCKER_CAPS)


@pytest.fixture(scope="module")
def admin() -> bytes:
    return prog_for([*DOCKER_CAPS, "CAP_SYS_ADMIN"])


def test_shape() -> None:
    p = default_profile(DOCKER_CAPS, "x86_64")
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    assert p["defaultErrnoRet"] == 1
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert default_profile([], "aarch64")["architectures"] == ["SCMP_ARCH_AARCH64",
                                                                "SCMP_ARCH_ARM"]
    # A fresh object each time.
    p["syscalls"][0]["names"].append("reboot")
    assert "reboot" not in default_profile(DOCKER_CAPS, "x86_64")["syscalls"][0]["names"]


def test_allow_list_has_no_duplicates_and_known_names() -> None:
    names = [n for group in ALLOWED.values() for n in group]
    assert len(names) == len(set(names))
    assert len(names) > 300
    everywhere = set()
    for arch in ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64",
                 "SCMP_ARCH_ARM"):
        everywhere |= set(table(arch))
    everywhere |= {"epoll_ctl_old", "epoll_wait_old"}  # x86-64 only, and in the tables
    unknown = sorted(n for n in names if n not in everywhere)
    # Names no table of ours has are fine in a profile, but should be rare.
    assert unknown == [], unknown


def test_ordinary_calls_allowed(docker: bytes) -> None:
    for name in ("read", "write", "openat", "close", "mmap", "futex", "exit_group",
                 "execve", "rt_sigaction", "getpid", "wait4", "epoll_wait", "statx",
                 "arch_prctl", "fchmodat2", "io_uring_setup", "chroot"):
        assert run(docker, NR[name]) == ALLOW, name


def test_denied_calls(docker: bytes) -> None:
    for name in ("mount", "umount2", "unshare", "setns", "reboot", "init_module",
                 "kexec_load", "bpf", "perf_event_open", "swapon", "acct", "settimeofday",
                 "open_by_handle_at", "keyctl", "add_key", "userfaultfd", "pivot_root",
                 "iopl", "vhangup", "syslog", "kcmp", "fsopen"):
        assert run(docker, NR[name]) == EPERM, name


def test_mount_needs_cap_sys_admin(docker: bytes, admin: bytes) -> None:
    assert run(docker, NR["mount"]) == EPERM
    assert run(admin, NR["mount"]) == ALLOW
    assert run(admin, NR["unshare"], args=[CLONE_NEWUSER]) == ALLOW
    assert run(admin, NR["setns"]) == ALLOW


def test_clone_namespace_flags(docker: bytes, admin: bytes) -> None:
    assert run(docker, NR["clone"], args=[FORK_FLAGS]) == ALLOW
    assert run(docker, NR["clone"], args=[THREAD_FLAGS]) == ALLOW
    for ns in (CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS):
        assert run(docker, NR["clone"], args=[FORK_FLAGS | ns]) == EPERM
        assert run(admin, NR["clone"], args=[FORK_FLAGS | ns]) == ALLOW
    # High bits of the 64-bit flags word do not sneak past the mask.
    assert run(docker, NR["clone"], args=[1 << 40 | SIGCHLD]) == ALLOW
    # The same rule holds for 32-bit and x32 callers.
    assert run(docker, NR32["clone"], sc.AUDIT_ARCH_I386, args=[CLONE_NEWUSER]) == EPERM
    assert run(docker, NR32["clone"], sc.AUDIT_ARCH_I386, args=[SIGCHLD]) == ALLOW
    assert run(docker, NRX32["clone"], X86_64, args=[CLONE_NEWUSER]) == EPERM
    assert run(docker, NRX32["clone"], X86_64, args=[SIGCHLD]) == ALLOW


def test_clone3_fails_with_enosys_unless_admin(docker: bytes, admin: bytes) -> None:
    assert run(docker, NR["clone3"]) == ENOSYS
    assert run(admin, NR["clone3"]) == ALLOW


def test_personality(docker: bytes) -> None:
    for persona in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert run(docker, NR["personality"], args=[persona]) == ALLOW, hex(persona)
    for persona in (0x0040000, 0x0400000, 1, 0x1_0000_0000):  # ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC
        assert run(docker, NR["personality"], args=[persona]) == EPERM, hex(persona)


def test_socket_families(docker: bytes) -> None:
    for family in (1, 2, 10, 16, 17):  # unix, inet, inet6, netlink, packet
        assert run(docker, NR["socket"], args=[family]) == ALLOW
    assert run(docker, NR["socket"], args=[40]) == EPERM  # AF_VSOCK


@pytest.mark.parametrize("cap", sorted(BY_CAPABILITY))
def test_each_capability_unlocks_its_calls(cap: str, docker: bytes) -> None:
    prog = prog_for([*DOCKER_CAPS, cap])
    for name in BY_CAPABILITY[cap]:
        if name not in NR:
            continue
        assert run(prog, NR[name]) == ALLOW, (cap, name)


def test_capability_spellings() -> None:
    assert default_profile(["sys_admin"], "x86_64") == default_profile(["CAP_SYS_ADMIN"],
                                                                       "x86_64")


def test_newer_calls_get_enosys(docker: bytes) -> None:
    assert run(docker, NR["file_setattr"] + 1) == ENOSYS
    assert run(docker, 1000) == ENOSYS


def test_other_arches_killed(docker: bytes) -> None:
    assert run(docker, 0, sc.AUDIT_ARCH_AARCH64) == BAD_ARCH_RET


def test_aarch64_profile() -> None:
    prog = prog_for(DOCKER_CAPS, "aarch64")
    a64 = table("SCMP_ARCH_AARCH64")
    arm = table("SCMP_ARCH_ARM")
    assert run(prog, a64["openat"], sc.AUDIT_ARCH_AARCH64) == ALLOW
    assert run(prog, a64["mount"], sc.AUDIT_ARCH_AARCH64) == EPERM
    assert run(prog, arm["set_tls"], sc.AUDIT_ARCH_ARM) == ALLOW
    assert run(prog, arm["clone"], sc.AUDIT_ARCH_ARM, args=[CLONE_NEWUSER]) == EPERM
    assert run(prog, NR["read"], X86_64) == BAD_ARCH_RET
