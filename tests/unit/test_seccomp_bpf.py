"""compile_seccomp: programs checked by running them in a small classic-BPF interpreter.

The interpreter (:func:`run`) implements the instructions the kernel accepts in
seccomp filters that the compiler uses, and checks what the kernel's loader
checks: size, forward in-range jumps, aligned in-bounds loads, a final return.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from ketch.errors import InvalidArgument
from ketch.runtime.seccomp import BAD_ARCH_RET, OPS, _Asm, compile_seccomp
from ketch.sys import seccomp as sc
from ketch.sys.syscalls import X32_SYSCALL_BIT, table

X86_64 = sc.AUDIT_ARCH_X86_64
I386 = sc.AUDIT_ARCH_I386
AARCH64 = sc.AUDIT_ARCH_AARCH64
ARM = sc.AUDIT_ARCH_ARM
ALLOW = sc.SECCOMP_RET_ALLOW
ERRNO = sc.SECCOMP_RET_ERRNO
U64 = (1 << 64) - 1

NR64 = table("SCMP_ARCH_X86_64")
NR32 = table("SCMP_ARCH_X86")
NRX32 = table("SCMP_ARCH_X32")


def run(prog: bytes, nr: int, arch: int = X86_64, args: Sequence[int] = (),
        ip: int = 0) -> int:
    """Run a seccomp program on one seccomp_data; return the filter's result."""
    assert len(prog) % 8 == 0
    insns = list(struct.iter_unpack("=HBBI", prog))
    n = len(insns)
    assert 0 < n <= sc.BPF_MAXINSNS
    assert insns[-1][0] == 0x06, "program must end with ret"
    full = list(args) + [0] * (6 - len(args))
    data = struct.pack("=IIQ6Q", nr & 0xFFFFFFFF, arch, ip, *full)
    a = 0
    pc = 0
    for _ in range(n + 1):  # forward-only jumps: at most n steps
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # ld [k]
            assert k % 4 == 0 and k + 4 <= len(data), f"bad load offset {k}"
            (a,) = struct.unpack_from("=I", data, k)
            assert isinstance(a, int)
            pc += 1
        elif code == 0x54:  # and #k
            a &= k
            pc += 1
        elif code == 0x05:  # ja
            pc += 1 + k
        elif code in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset
            if code == 0x15:
                hit = a == k
            elif code == 0x25:
                hit = a > k
            elif code == 0x35:
                hit = a >= k
            else:
                hit = bool(a & k)
            pc += 1 + (jt if hit else jf)
        elif code == 0x06:  # ret #k
            return int(k)
        else:
            raise AssertionError(f"unexpected opcode {code:#x} at {pc}")
        assert pc < n, "jump out of the program"
    raise AssertionError("program did not return")


def check_static(prog: bytes) -> None:
    """What the kernel's loader checks, for every instruction (not just executed ones)."""
    insns = list(struct.iter_unpack("=HBBI", prog))
    n = len(insns)
    assert insns[-1][0] == 0x06
    for pc, (code, jt, jf, k) in enumerate(insns):
        if code == 0x05:
            assert pc + 1 + k < n
        elif code in (0x15, 0x25, 0x35, 0x45):
            assert pc + 1 + jt < n and pc + 1 + jf < n
        elif code == 0x20:
            assert k % 4 == 0 and k < 64
        else:
            assert code in (0x06, 0x54), hex(code)


def profile(*rules: dict[str, Any], default: str = "SCMP_ACT_ALLOW",
            **extra: Any) -> dict[str, Any]:
    return {"defaultAction": default, "syscalls": list(rules), **extra}


def compiled(cfg: dict[str, Any], arch: str = "SCMP_ARCH_X86_64") -> bytes:
    prog, _ = compile_seccomp(cfg, arch)
    check_static(prog)
    return prog


# --- actions ----------------------------------------------------------------


@pytest.mark.parametrize(("action", "errno_ret", "expected"), [
    ("SCMP_ACT_KILL", None, sc.SECCOMP_RET_KILL_THREAD),
    ("SCMP_ACT_KILL_THREAD", None, sc.SECCOMP_RET_KILL_THREAD),
    ("SCMP_ACT_KILL_PROCESS", None, sc.SECCOMP_RET_KILL_PROCESS),
    ("SCMP_ACT_TRAP", None, sc.SECCOMP_RET_TRAP),
    ("SCMP_ACT_ERRNO", None, ERRNO | 1),
    ("SCMP_ACT_ERRNO", 38, ERRNO | 38),
    ("SCMP_ACT_ERRNO", 0, ERRNO | 0),
    ("SCMP_ACT_TRACE", None, sc.SECCOMP_RET_TRACE | 1),
    ("SCMP_ACT_TRACE", 7, sc.SECCOMP_RET_TRACE | 7),
    ("SCMP_ACT_LOG", None, sc.SECCOMP_RET_LOG),
    ("SCMP_ACT_ALLOW", None, ALLOW),
])
def test_action_encoding(action: str, errno_ret: int | None, expected: int) -> None:
    rule: dict[str, Any] = {"names": ["mkdir"], "action": action}
    if errno_ret is not None:
        rule["errnoRet"] = errno_ret
    prog = compiled(profile(rule, default="SCMP_ACT_LOG"))
    assert run(prog, NR64["mkdir"]) == expected
    assert run(prog, NR64["rmdir"]) == sc.SECCOMP_RET_LOG


def test_default_action_and_errno() -> None:
    prog = compiled({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
                     "syscalls": [{"names": ["read", "write", "exit_group"],
                                   "action": "SCMP_ACT_ALLOW"}]})
    assert run(prog, NR64["read"]) == ALLOW
    assert run(prog, NR64["write"]) == ALLOW
    assert run(prog, NR64["open"]) == ERRNO | 13
    assert run(prog, NR64["close"]) == ERRNO | 13


def test_empty_profile_applies_default_everywhere() -> None:
    prog = compiled({"defaultAction": "SCMP_ACT_ERRNO"})
    for nr in (0, 1, 500, X32_SYSCALL_BIT - 1, 0xFFFFFFFF):
        assert run(prog, nr) == ERRNO | 1


def test_flags() -> None:
    cfg = profile(flags=["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                         "SECCOMP_FILTER_FLAG_TSYNC"])
    _, flags = compile_seccomp(cfg, "x86_64")
    assert flags == (sc.SECCOMP_FILTER_FLAG_LOG | sc.SECCOMP_FILTER_FLAG_SPEC_ALLOW
                     | sc.SECCOMP_FILTER_FLAG_TSYNC)
    assert compile_seccomp(profile(), "x86_64")[1] == 0


# --- argument comparisons ---------------------------------------------------

VALUES = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0x1_0000_0000,
          0x1_0000_0001, 0x1_FFFF_FFFF, 0x2_0000_0000, 0x8000_0000_0000_0000,
          0xFFFF_FFFF_0000_0000, U64 - 1, U64]

PY_OPS: dict[str, Callable[[int, int], bool]] = {
    "SCMP_CMP_EQ": lambda a, v: a == v,
    "SCMP_CMP_NE": lambda a, v: a != v,
    "SCMP_CMP_LT": lambda a, v: a < v,
    "SCMP_CMP_LE": lambda a, v: a <= v,
    "SCMP_CMP_GT": lambda a, v: a > v,
    "SCMP_CMP_GE": lambda a, v: a >= v,
}


@pytest.mark.parametrize("op", sorted(PY_OPS))
@pytest.mark.parametrize("value", [0, 5, 0xFFFFFFFF, 0x1_0000_0000, 0x1_0000_0005, U64])
def test_ops_compare_all_64_bits(op: str, value: int) -> None:
    prog = compiled(profile({"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": 9,
                             "args": [{"index": 1, "value": value, "op": op}]}))
    for arg in sorted({*VALUES, value, (value + 1) & U64, (value - 1) & U64}):
        want = ERRNO | 9 if PY_OPS[op](arg, value) else ALLOW
        assert run(prog, NR64["lseek"], args=[3, arg]) == want, (op, hex(value), hex(arg))


@pytest.mark.parametrize(("mask", "want"), [
    (0xFF, 0x12),
    (0x7E020000, 0),
    (0xFFFF_0000_0000_0000, 0x1234_0000_0000_0000),
    (0x0000_00FF_0000_FF00, 0x0000_0012_0000_3400),
    (U64, 0xDEAD_BEEF_CAFE_F00D),
])
def test_masked_eq(mask: int, want: int) -> None:
    prog = compiled(profile({"names": ["ioctl"], "action": "SCMP_ACT_ERRNO",
                             "args": [{"index": 2, "value": mask, "valueTwo": want,
                                       "op": "SCMP_CMP_MASKED_EQ"}]}))
    samples = [*VALUES, want, want | ~mask & U64, want ^ 1, want ^ (1 << 40),
               0xDEAD_BEEF_CAFE_F00D, 0x1234_5678_0000_0012]
    for arg in samples:
        expected = ERRNO | 1 if arg & mask == want else ALLOW
        assert run(prog, NR64["ioctl"], args=[0, 0, arg]) == expected, hex(arg)


def test_masked_eq_without_value_two_means_zero() -> None:
    prog = compiled(profile({"names": ["clone"], "action": "SCMP_ACT_ERRNO",
                             "args": [{"index": 0, "value": 0x10000000,
                                       "op": "SCMP_CMP_MASKED_EQ"}]}))
    assert run(prog, NR64["clone"], args=[0x11]) == ERRNO | 1
    assert run(prog, NR64["clone"], args=[0x10000011]) == ALLOW


@pytest.mark.parametrize("index", range(6))
def test_each_argument_index_reads_its_own_slot(index: int) -> None:
    prog = compiled(profile({"names": ["mmap"], "action": "SCMP_ACT_ERRNO",
                             "args": [{"index": index, "value": 0x1_0000_0007,
                                       "op": "SCMP_CMP_EQ"}]}))
    args = [0x7] * 6  # right low word everywhere, so only the high word decides
    assert run(prog, NR64["mmap"], args=args) == ALLOW
    args[index] = 0x1_0000_0007
    assert run(prog, NR64["mmap"], args=args) == ERRNO | 1


def test_args_of_one_rule_are_anded() -> None:
    prog = compiled(profile({"names": ["mmap"], "action": "SCMP_ACT_ERRNO",
                             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                                      {"index": 2, "value": 4, "op": "SCMP_CMP_GE"},
                                      {"index": 2, "value": 8, "op": "SCMP_CMP_LT"}]}))
    assert run(prog, NR64["mmap"], args=[1, 0, 4]) == ERRNO | 1
    assert run(prog, NR64["mmap"], args=[1, 0, 7]) == ERRNO | 1
    assert run(prog, NR64["mmap"], args=[1, 0, 8]) == ALLOW
    assert run(prog, NR64["mmap"], args=[1, 0, 3]) == ALLOW
    assert run(prog, NR64["mmap"], args=[2, 0, 5]) == ALLOW


def test_32_bit_abi_compares_low_word_only() -> None:
    cfg = profile({"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                   "args": [{"index": 0, "value": 0x1_0000_0008, "op": "SCMP_CMP_EQ"}]},
                  architectures=["SCMP_ARCH_X86"])
    prog = compiled(cfg)
    # i386 registers are 32 bits: the high word of the value plays no part.
    assert run(prog, NR32["personality"], I386, args=[8]) == ERRNO | 1
    assert run(prog, NR32["personality"], I386, args=[9]) == ALLOW
    # On x86-64 the full 64 bits count.
    assert run(prog, NR64["personality"], X86_64, args=[8]) == ALLOW
    assert run(prog, NR64["personality"], X86_64, args=[0x1_0000_0008]) == ERRNO | 1


# --- precedence -------------------------------------------------------------


def test_conditional_rules_before_plain_ones_in_either_order() -> None:
    deny_vsock: dict[str, Any] = {
        "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
        "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]}
    allow: dict[str, Any] = {"names": ["socket"], "action": "SCMP_ACT_ALLOW"}
    for rules in ([allow, deny_vsock], [deny_vsock, allow]):
        prog = compiled(profile(*rules, default="SCMP_ACT_ERRNO"))
        assert run(prog, NR64["socket"], args=[40]) == ERRNO | 97
        assert run(prog, NR64["socket"], args=[2]) == ALLOW


def test_first_matching_conditional_rule_wins() -> None:
    prog = compiled(profile(
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11,
         "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
         "args": [{"index": 1, "value": 5, "op": "SCMP_CMP_GE"}]},
    ))
    assert run(prog, NR64["kill"], args=[1, 9]) == ERRNO | 11
    assert run(prog, NR64["kill"], args=[1, 6]) == ERRNO | 22
    assert run(prog, NR64["kill"], args=[1, 4]) == ALLOW


def test_first_plain_rule_wins() -> None:
    prog = compiled(profile({"names": ["chdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2},
                            {"names": ["chdir", "fchdir"], "action": "SCMP_ACT_ERRNO",
                             "errnoRet": 3}))
    assert run(prog, NR64["chdir"]) == ERRNO | 2
    assert run(prog, NR64["fchdir"]) == ERRNO | 3


def test_rule_that_equals_the_fallback_still_shadows_later_rules() -> None:
    # First rule returns what the default returns; it must still stop the second.
    prog = compiled(profile(
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 1, "value": 5, "op": "SCMP_CMP_LT"}]},
        default="SCMP_ACT_ERRNO"))
    assert run(prog, NR64["kill"], args=[0, 1]) == ERRNO | 1
    assert run(prog, NR64["kill"], args=[0, 2]) == ALLOW
    assert run(prog, NR64["kill"], args=[0, 6]) == ERRNO | 1


def test_unknown_names_are_skipped() -> None:
    prog = compiled(profile({"names": ["no_such_call", "mkdir", "arm_fadvise64_64"],
                             "action": "SCMP_ACT_ERRNO"}))
    assert run(prog, NR64["mkdir"]) == ERRNO | 1
    assert run(prog, NR64["rmdir"]) == ALLOW


# --- architectures ----------------------------------------------------------


def test_unlisted_arch_is_killed() -> None:
    prog = compiled(profile({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}))
    assert run(prog, NR64["mkdir"], X86_64) == ERRNO | 1
    assert run(prog, NR64["getpid"], X86_64) == ALLOW
    for arch in (I386, AARCH64, ARM, 0):
        assert run(prog, 39, arch) == BAD_ARCH_RET == sc.SECCOMP_RET_KILL_PROCESS


def test_listed_arch_uses_its_own_numbers() -> None:
    prog = compiled(profile({"names": ["mkdir", "socket"], "action": "SCMP_ACT_ERRNO"},
                            architectures=["SCMP_ARCH_X86", "SCMP_ARCH_PPC64LE"]))
    assert NR32["mkdir"] != NR64["mkdir"]
    assert run(prog, NR32["mkdir"], I386) == ERRNO | 1
    assert run(prog, NR32["socket"], I386) == ERRNO | 1
    assert run(prog, NR64["mkdir"], I386) == ALLOW  # 83 is something else on i386
    assert run(prog, NR64["mkdir"], X86_64) == ERRNO | 1
    assert run(prog, 0, AARCH64) == BAD_ARCH_RET


def test_aarch64_and_arm() -> None:
    a64 = table("SCMP_ARCH_AARCH64")
    arm = table("SCMP_ARCH_ARM")
    prog = compiled(profile({"names": ["mkdirat", "set_tls"], "action": "SCMP_ACT_ERRNO"},
                            architectures=["SCMP_ARCH_ARM"]), arch="aarch64")
    assert run(prog, a64["mkdirat"], AARCH64) == ERRNO | 1
    assert run(prog, a64["mkdirat"] + 1, AARCH64) == ALLOW
    assert run(prog, arm["mkdirat"], ARM) == ERRNO | 1
    assert run(prog, arm["set_tls"], ARM) == ERRNO | 1
    assert run(prog, 0, X86_64) == BAD_ARCH_RET


def test_x32_numbers_cannot_bypass_x86_64_rules() -> None:
    prog = compiled(profile({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}))
    # x32 mkdir: same audit arch, number with bit 30 set.
    assert run(prog, X32_SYSCALL_BIT | NR64["mkdir"], X86_64) == BAD_ARCH_RET
    assert run(prog, X32_SYSCALL_BIT | NR64["getpid"], X86_64) == BAD_ARCH_RET
    assert run(prog, X32_SYSCALL_BIT + 512, X86_64) == BAD_ARCH_RET
    # -1 is "no syscall" (ptrace skip): not an x32 call.
    assert run(prog, 0xFFFFFFFF, X86_64) == ALLOW


def test_listed_x32_gets_the_rules_with_x32_numbers() -> None:
    prog = compiled(profile({"names": ["mkdir", "rt_sigaction"], "action": "SCMP_ACT_ERRNO"},
                            architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]))
    assert run(prog, NRX32["mkdir"], X86_64) == ERRNO | 1
    assert NRX32["rt_sigaction"] == X32_SYSCALL_BIT + 512
    assert run(prog, NRX32["rt_sigaction"], X86_64) == ERRNO | 1
    assert run(prog, NR64["rt_sigaction"], X86_64) == ERRNO | 1
    assert run(prog, NRX32["getpid"], X86_64) == ALLOW


def test_x32_numbers_deny_by_default_when_listed() -> None:
    prog = compiled({"defaultAction": "SCMP_ACT_ERRNO",
                     "architectures": ["SCMP_ARCH_X32"],
                     "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]})
    assert run(prog, NR64["getpid"], X86_64) == ALLOW
    assert run(prog, NRX32["getpid"], X86_64) == ALLOW
    assert run(prog, NRX32["read"], X86_64) == ERRNO | 1


# --- newer syscalls ---------------------------------------------------------


def test_calls_newer_than_the_profile_get_enosys_when_denying() -> None:
    prog = compiled({"defaultAction": "SCMP_ACT_ERRNO",
                     "syscalls": [{"names": ["read", "openat", "clone3"],
                                   "action": "SCMP_ACT_ALLOW"}]})
    assert run(prog, NR64["clone3"]) == ALLOW
    assert run(prog, NR64["mkdir"]) == ERRNO | 1  # below the newest named call
    assert run(prog, NR64["clone3"] + 1) == ERRNO | 38
    assert run(prog, NR64["fchmodat2"]) == ERRNO | 38
    assert run(prog, 0xFFFFFFFF) == ERRNO | 1  # -1 is no syscall at all: the default


def test_no_enosys_when_default_allows() -> None:
    prog = compiled(profile({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}))
    assert run(prog, NR64["fchmodat2"]) == ALLOW


# --- size and long jumps ----------------------------------------------------


def test_many_alternating_actions_stay_correct_and_small() -> None:
    names = sorted(NR64, key=NR64.__getitem__)
    actions = ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_TRAP", "SCMP_ACT_LOG"]
    rules = [{"names": [n], "action": actions[i % 4]} for i, n in enumerate(names)]
    cfg = {"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": rules,
           "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}
    prog = compiled(cfg)
    assert len(prog) // 8 < sc.BPF_MAXINSNS
    want = {"SCMP_ACT_ALLOW": ALLOW, "SCMP_ACT_ERRNO": ERRNO | 1,
            "SCMP_ACT_TRAP": sc.SECCOMP_RET_TRAP, "SCMP_ACT_LOG": sc.SECCOMP_RET_LOG}
    by_name = {n: want[actions[i % 4]] for i, n in enumerate(names)}
    # x86_64 numbers decide for duplicates (a name's first rule wins per ABI).
    for name, nr in NR64.items():
        assert run(prog, nr, X86_64) == by_name[name], name
    for name, nr in NR32.items():
        if name in by_name:
            assert run(prog, nr, I386) == by_name[name], name
    for name, nr in NRX32.items():
        if name in by_name:
            assert run(prog, nr, X86_64) == by_name[name], name


def test_long_conditional_chain_uses_far_jumps() -> None:
    # 120 conditions in one rule (each ~4 instructions): the "fail" jump of the
    # first is far more than 255 instructions away.
    conds = [{"index": i % 6, "value": 1000 + i, "op": "SCMP_CMP_NE"} for i in range(120)]
    prog = compiled(profile(
        {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5, "args": conds},
        {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 6,
         "args": [{"index": 0, "value": 1000, "op": "SCMP_CMP_EQ"}]}))
    assert len(prog) // 8 > 300
    assert any(c == 0x05 for c, *_ in struct.iter_unpack("=HBBI", prog))
    assert run(prog, NR64["ioctl"], args=[1, 2, 3, 4, 5, 6]) == ERRNO | 5
    assert run(prog, NR64["ioctl"], args=[1000, 2, 3, 4, 5, 6]) == ERRNO | 6
    assert run(prog, NR64["ioctl"], args=[1, 1001, 3, 4, 5, 6]) == ALLOW
    assert run(prog, NR64["ioctl"], args=[1, 2, 3, 4, 5, 1119]) == ALLOW
    assert run(prog, NR64["read"]) == ALLOW


def test_far_jumps_in_the_search_tree() -> None:
    # Many syscalls with bulky rule chains: the tree's jumps over the left
    # half go far past 255 instructions.
    names = [n for n in sorted(NR64, key=NR64.__getitem__) if NR64[n] < 300][::3]
    rules = [{"names": [n], "action": "SCMP_ACT_ERRNO", "errnoRet": NR64[n] % 4000 + 1,
              "args": [{"index": 0, "value": NR64[n], "op": "SCMP_CMP_EQ"}]} for n in names]
    prog = compiled(profile(*rules))
    assert len(prog) // 8 > 600
    for n in names:
        nr = NR64[n]
        assert run(prog, nr, args=[nr]) == ERRNO | (nr % 4000 + 1), n
        assert run(prog, nr, args=[nr + 1]) == ALLOW, n
        assert run(prog, nr, args=[nr | 1 << 32]) == ALLOW, n


def test_program_over_the_kernel_limit_is_refused() -> None:
    conds = [{"index": 0, "value": i, "op": "SCMP_CMP_NE"} for i in range(1100)]
    with pytest.raises(InvalidArgument, match=r"linux.seccomp: .* over the kernel's limit"):
        compile_seccomp(profile({"names": ["ioctl"], "action": "SCMP_ACT_ERRNO",
                                 "args": conds}), "x86_64")


# --- errors -----------------------------------------------------------------


def _bad_rule(**fields: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": ["read"], "action": "SCMP_ACT_ERRNO"}
    rule.update(fields)
    return profile({"names": ["write"], "action": "SCMP_ACT_ALLOW"}, rule)


@pytest.mark.parametrize(("cfg", "message"), [
    ([], "linux.seccomp: must be an object, not list"),
    ({}, "linux.seccomp.defaultAction: required"),
    ({"defaultAction": 3}, "linux.seccomp.defaultAction: must be a string, not int"),
    ({"defaultAction": "SCMP_ACT_FOO"},
     'linux.seccomp.defaultAction: unknown action "SCMP_ACT_FOO"'),
    ({"defaultAction": "SCMP_ACT_NOTIFY"},
     "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY is not supported"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1},
     "linux.seccomp.defaultErrnoRet: -1 is out of range 0..4095"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1},
     "linux.seccomp.defaultErrnoRet: only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]},
     'linux.seccomp.flags[0]: unknown or unsupported flag "SECCOMP_FILTER_FLAG_NEW_LISTENER"'),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": "x"}, "linux.seccomp.flags: must be a list"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_Z80"]},
     'linux.seccomp.architectures[1]: unknown architecture "SCMP_ARCH_Z80"'),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [None]},
     "linux.seccomp.architectures[0]: must be a string, not null"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"},
     "linux.seccomp.listenerPath: seccomp user notification is not supported"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}, "linux.seccomp.syscalls: must be a list"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO"}, 5]},
     "linux.seccomp.syscalls[1]: must be an object, not int"),
    (_bad_rule(action="SCMP_ACT_FOO"),
     'linux.seccomp.syscalls[1].action: unknown action "SCMP_ACT_FOO"'),
    (_bad_rule(action="SCMP_ACT_NOTIFY"),
     "linux.seccomp.syscalls[1].action: SCMP_ACT_NOTIFY is not supported"),
    (_bad_rule(action=None), "linux.seccomp.syscalls[1].action: must be a string, not null"),
    (profile({"names": ["read"]}), "linux.seccomp.syscalls[0].action: required"),
    (_bad_rule(names=[]), "linux.seccomp.syscalls[1].names: must be a non-empty list"),
    (_bad_rule(names="read"), "linux.seccomp.syscalls[1].names: must be a non-empty list"),
    (_bad_rule(names=["read", ""]),
     "linux.seccomp.syscalls[1].names[1]: must be a non-empty string"),
    (_bad_rule(names=["read", 7]),
     "linux.seccomp.syscalls[1].names[1]: must be a non-empty string"),
    (_bad_rule(errnoRet=True), "linux.seccomp.syscalls[1].errnoRet: must be an integer, not bool"),
    (_bad_rule(errnoRet=70000), "linux.seccomp.syscalls[1].errnoRet: 70000 is out of range"),
    (_bad_rule(action="SCMP_ACT_KILL", errnoRet=1), "linux.seccomp.syscalls[1].errnoRet: only"),
    (_bad_rule(args={}), "linux.seccomp.syscalls[1].args: must be a list"),
    (_bad_rule(args=[1]), "linux.seccomp.syscalls[1].args[0]: must be an object"),
    (_bad_rule(args=[{"value": 1, "op": "SCMP_CMP_EQ"}]),
     "linux.seccomp.syscalls[1].args[0].index: required"),
    (_bad_rule(args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]),
     "linux.seccomp.syscalls[1].args[0].index: 6 is out of range 0..5"),
    (_bad_rule(args=[{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                     {"index": 1, "op": "SCMP_CMP_EQ"}]),
     "linux.seccomp.syscalls[1].args[1].value: required"),
    (_bad_rule(args=[{"index": 0, "value": 1 << 64, "op": "SCMP_CMP_EQ"}]),
     "linux.seccomp.syscalls[1].args[0].value: 18446744073709551616 is out of range"),
    (_bad_rule(args=[{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]),
     "linux.seccomp.syscalls[1].args[0].value: -1 is out of range"),
    (_bad_rule(args=[{"index": 0, "value": 1, "valueTwo": "x", "op": "SCMP_CMP_MASKED_EQ"}]),
     "linux.seccomp.syscalls[1].args[0].valueTwo: must be an integer, not str"),
    (_bad_rule(args=[{"index": 0, "value": 1, "op": "SCMP_CMP_FOO"}]),
     'linux.seccomp.syscalls[1].args[0].op: unknown operator "SCMP_CMP_FOO"'),
    (_bad_rule(args=[{"index": 0, "value": 1}]),
     "linux.seccomp.syscalls[1].args[0].op: must be a string, not null"),
])
def test_errors_name_the_field(cfg: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        compile_seccomp(cfg, "x86_64")
    assert str(err.value).startswith(message), str(err.value)


def test_unknown_native_arch() -> None:
    with pytest.raises(InvalidArgument, match="no syscall table for architecture 'sparc64'"):
        compile_seccomp(profile(), "sparc64")


def test_arch_spellings() -> None:
    cfg = profile({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"})
    assert compile_seccomp(cfg, "x86_64") == compile_seccomp(cfg, "SCMP_ARCH_X86_64")
    assert compile_seccomp(cfg, "arm64") == compile_seccomp(cfg, "aarch64")
    assert compile_seccomp(cfg, "armv7l") == compile_seccomp(cfg, "SCMP_ARCH_ARM")


@pytest.mark.parametrize(("t_dist", "f_dist"), [
    (0, 1), (255, 0), (0, 255), (256, 0), (0, 256), (299, 254), (254, 299), (299, 255),
    (255, 299), (299, 298), (298, 299), (256, 256),
])
def test_jump_relaxation(t_dist: int, f_dist: int) -> None:
    # 300 distinct returns, then one jump whose targets sit t_dist / f_dist
    # instructions past it (before any trampoline is added).
    asm = _Asm()
    for i in range(300):
        asm.ret(1000 + i)
    t, f = 299 - t_dist, 299 - f_dist
    asm.jump(0x15, 7, t, f)  # jeq #7
    asm.ld(sc.SECCOMP_DATA_NR)
    prog = asm.program()
    check_static(prog)
    assert run(prog, 7) == 1000 + t
    assert run(prog, 8) == 1000 + f


def _holds(op: str, arg: int, value: int, two: int) -> bool:
    if op == "SCMP_CMP_MASKED_EQ":
        return arg & value == two
    return PY_OPS[op](arg, value)


@pytest.mark.parametrize("seed", range(8))
def test_random_rules_match_a_python_model(seed: int) -> None:
    # Seeded random rule sets (some with long condition lists, so failing
    # conditions jump far) checked against a direct evaluation in Python.
    import random

    rnd = random.Random(seed)
    interesting = [0, 1, 7, 0xFFFFFFFF, 0x1_0000_0000, 0x1_0000_0007, U64, 1 << 63]

    def value() -> int:
        return rnd.choice(interesting) if rnd.random() < 0.6 else rnd.getrandbits(64)

    ops = sorted(OPS)
    names = ["ioctl", "mmap", "kill", "socket"]
    rules: list[dict[str, Any]] = []
    for _ in range(rnd.randint(1, 8)):
        n = rnd.choice([1, 2, 3, 60, 90])
        conds: list[dict[str, Any]] = [
            {"index": rnd.randrange(6), "value": value(), "valueTwo": value(),
             "op": rnd.choice(ops)} for _ in range(n)]
        for c in conds:
            if c["op"] == "SCMP_CMP_MASKED_EQ":
                c["valueTwo"] &= c["value"]
        rules.append({"names": [rnd.choice(names)], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": len(rules) + 2, "args": conds})
    if rnd.random() < 0.5:
        rules.append({"names": [rnd.choice(names)], "action": "SCMP_ACT_TRAP"})
    prog = compiled(profile(*rules))

    def model(name: str, args: list[int]) -> int:
        for r in rules:
            if r["names"] == [name] and "args" in r and all(
                    _holds(c["op"], args[c["index"]], c["value"], c["valueTwo"])
                    for c in r["args"]):
                return int(ERRNO | r["errnoRet"])
        for r in rules:
            if r["names"] == [name] and "args" not in r:
                return sc.SECCOMP_RET_TRAP
        return ALLOW

    for _ in range(300):
        name = rnd.choice(names)
        # Mostly arguments that satisfy one condition of some rule, so the
        # deep parts of chains are reached too.
        args = [value() for _ in range(6)]
        pick = rnd.choice(rules)
        for c in pick.get("args", []):
            if rnd.random() < 0.9:
                v = c["value"] if c["op"] != "SCMP_CMP_MASKED_EQ" else c["valueTwo"]
                adj = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": -1, "SCMP_CMP_GT": 1}.get(c["op"], 0)
                args[c["index"]] = (v + adj) & U64
        assert run(prog, NR64[name], args=args) == model(name, args), (seed, name, args)
