"""The device-rule compiler, checked by running its eBPF output in a tiny interpreter.

The interpreter knows exactly the instructions the compiler may emit and fails
on anything else; the reference model states the documented semantics
directly (per access bit, the last matching rule decides; default allow).
"""

from __future__ import annotations

import random
import struct

import pytest

from ketch.runtime.cgroups.convert import DeviceRule
from ketch.runtime.cgroups.devices_bpf import compile_rules

ACC = {"m": 1, "r": 2, "w": 4}
TYPE = {"b": 1, "c": 2}
MASK = (1 << 64) - 1


def run(prog: bytes, dev_type: str, major: int, minor: int, access: str) -> int:
    bits = sum(ACC[c] for c in access)
    ctx = [(bits << 16) | TYPE[dev_type], major, minor]
    regs = [0] * 11
    insns = [struct.unpack_from("<BBhi", prog, i) for i in range(0, len(prog), 8)]
    pc = 0
    for _ in range(10000):
        op, r, off, imm = insns[pc]
        dst, src = r & 0xF, r >> 4
        k = imm & MASK  # imm is sign-extended to 64 bits
        pc += 1
        if op == 0x61:
            assert src == 1 and off in (0, 4, 8)
            regs[dst] = ctx[off // 4]
        elif op == 0xBF:
            regs[dst] = regs[src]
        elif op == 0xB7:
            regs[dst] = k
        elif op == 0x57:
            regs[dst] &= k
        elif op == 0x77:
            regs[dst] >>= imm
        elif op == 0x05:
            pc += off
        elif op == 0x15:
            pc += off if regs[dst] == k else 0
        elif op == 0x55:
            pc += off if regs[dst] != k else 0
        elif op == 0x95:
            assert regs[0] in (0, 1)
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
        assert 0 <= pc < len(insns), "jump out of the program"
    raise AssertionError("no exit")


def reference(rules: list[DeviceRule], dev_type: str, major: int, minor: int,
              access: str) -> int:
    for bit in access:
        verdict = True
        for allow, kind, ma, mi, acc in rules:
            if kind != "a" and (kind != dev_type or ma not in (-1, major)
                                or mi not in (-1, minor)):
                continue
            if bit in acc:
                verdict = allow
        if not verdict:
            return 0
    return 1


RUNC_LIKE: list[DeviceRule] = [
    (False, "a", -1, -1, "rwm"),
    (True, "c", -1, -1, "m"),
    (True, "b", -1, -1, "m"),
    (True, "c", 1, 3, "rwm"),
    (True, "c", 1, 5, "rwm"),
    (True, "c", 136, -1, "rwm"),
    (True, "c", 5, 2, "rw"),
]


@pytest.mark.parametrize(("dev", "access", "want"), [
    (("c", 1, 3), "rw", 1),       # /dev/null
    (("c", 1, 7), "r", 0),        # /dev/full: not listed
    (("c", 1, 7), "m", 1),        # mknod of any char device
    (("b", 8, 0), "m", 1),
    (("b", 8, 0), "r", 0),
    (("c", 136, 4), "rw", 1),     # a pty
    (("c", 5, 2), "rw", 1),
    (("c", 5, 2), "m", 1),        # "c *:* m" covers it
    (("c", 5, 2), "rwm", 1),
    (("c", 10, 200), "rw", 0),
])
def test_runc_like_policy(dev: tuple[str, int, int], access: str, want: int) -> None:
    prog = compile_rules(RUNC_LIKE)
    assert run(prog, *dev, access) == want == reference(RUNC_LIKE, *dev, access)


def test_last_matching_rule_wins() -> None:
    rules: list[DeviceRule] = [(True, "c", 1, 3, "rwm"), (False, "c", 1, -1, "w")]
    prog = compile_rules(rules)
    assert run(prog, "c", 1, 3, "r") == 1
    assert run(prog, "c", 1, 3, "w") == 0
    assert run(prog, "c", 1, 3, "rw") == 0      # one denied bit denies the request
    assert run(prog, "c", 2, 3, "rw") == 1      # default allow


def test_no_code_after_a_final_rule() -> None:
    # Everything before a trailing "deny all" is dead; the verifier would reject it.
    prog = compile_rules([(True, "c", 1, 3, "rwm"), (False, "a", -1, -1, "rwm")])
    assert len(prog) == 8 * (6 + 2)
    assert run(prog, "c", 1, 3, "r") == 0


def test_matches_the_reference_on_random_rules() -> None:
    rnd = random.Random(1234)
    for _ in range(400):
        rules: list[DeviceRule] = []
        for _ in range(rnd.randint(0, 6)):
            kind = rnd.choice("abcc")
            acc = "".join(c for c in "rwm" if rnd.random() < 0.6) or "r"
            rules.append((rnd.random() < 0.5, kind, rnd.choice([-1, 1, 2]),
                          rnd.choice([-1, 3, 5]), acc))
        prog = compile_rules(rules)
        for _ in range(12):
            dev = (rnd.choice("bc"), rnd.choice([1, 2, 7]), rnd.choice([3, 5, 9]))
            access = "".join(c for c in "rwm" if rnd.random() < 0.5) or "w"
            assert run(prog, *dev, access) == reference(rules, *dev, access), (rules, dev)
