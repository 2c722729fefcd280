"""The cgroup v2 device controller: OCI device rules compiled to an eBPF program.

cgroup2 has no devices.allow/deny files; the kernel instead runs every
``BPF_PROG_TYPE_CGROUP_DEVICE`` program attached (``BPF_CGROUP_DEVICE``) to the
cgroup and its ancestors on each open/mknod of a device node, and allows the
access only if all of them return 1. The context is
``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor;}`` where
``access_type`` is ``(access bits << 16) | device type``.

Semantics of the rules (the same as a fresh v1 devices cgroup written in order):

* The cgroup starts out allowing everything; each rule then overrides the ones
  before it for the devices and access bits it names, so the **last matching
  rule wins**, bit by bit: "deny all; allow c 1:3 rw" allows read+write of
  /dev/null and nothing else.
* ``type "a"`` matches every device (block and char) whatever its major/minor;
  a major or minor of -1 matches any number.
* A request for several access bits (open O_RDWR asks for r and w) is allowed
  only if every bit is.

The generated program walks the rules from last to first keeping the bits not
yet decided: a matching deny rule that covers an undecided bit returns 0, a
matching allow rule marks its bits decided, and once none are left it returns 1.
Bits no rule decided fall to the default (allow).

Lifecycle: :func:`install` replaces whatever device programs are attached to
the cgroup directory itself (found with BPF_PROG_QUERY, so a later ``update``
from another process replaces the program too) with the new one. The kernel
keeps an attached program alive after our fd closes, and drops it when the
cgroup is removed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ketch.runtime.cgroups.convert import DeviceRule
from ketch.sys.bpf import (
    BPF_F_ALLOW_MULTI,
    BPF_F_REPLACE,
    AttachType,
    Op,
    ProgType,
    insn,
    prog_attach,
    prog_detach,
    prog_get_fd_by_id,
    prog_load,
    prog_query,
)

__all__ = ["attached", "compile_rules", "install"]

_ACCESS = {"m": 1, "r": 2, "w": 4}     # BPF_DEVCG_ACC_MKNOD / READ / WRITE
_TYPE = {"b": 1, "c": 2}               # BPF_DEVCG_DEV_BLOCK / CHAR
_ALL = 7

# Registers: r1 ctx, r2 undecided access bits, r3 device type, r4 major, r5 minor.
_PROLOGUE = (
    insn(Op.LDX_MEM_W, 2, 1, 0),       # r2 = ctx->access_type
    insn(Op.ALU64_MOV_X, 3, 2),        # r3 = r2
    insn(Op.ALU64_AND_K, 3, imm=0xFFFF),  # r3 = type
    insn(Op.ALU64_RSH_K, 2, imm=16),   # r2 = access bits
    insn(Op.LDX_MEM_W, 4, 1, 4),       # r4 = ctx->major
    insn(Op.LDX_MEM_W, 5, 1, 8),       # r5 = ctx->minor
)

_SKIP = -1  # placeholder offset: jump to the end of the rule's block


def _block(rule: DeviceRule) -> tuple[list[bytes], bool]:
    """Instructions for one rule, and whether the block always returns."""
    allow, kind, major, minor, access = rule
    bits = 0
    for c in access:
        bits |= _ACCESS[c]
    code: list[tuple[int, int, int, int, int]] = []   # (op, dst, src, off, imm)
    if kind != "a":
        code.append((Op.JMP_JNE_K, 3, 0, _SKIP, _TYPE[kind]))
        if major >= 0:
            code.append((Op.JMP_JNE_K, 4, 0, _SKIP, major))
        if minor >= 0:
            code.append((Op.JMP_JNE_K, 5, 0, _SKIP, minor))
    conditional = bool(code)
    if bits == _ALL:
        # Covers every undecided bit (there is at least one): the verdict is final.
        code += [(Op.ALU64_MOV_K, 0, 0, 0, int(allow)), (Op.JMP_EXIT, 0, 0, 0, 0)]
    elif allow:
        code += [
            (Op.ALU64_AND_K, 2, 0, 0, ~bits),            # these bits are decided: allowed
            (Op.JMP_JNE_K, 2, 0, _SKIP, 0),              # others still undecided
            (Op.ALU64_MOV_K, 0, 0, 0, 1),
            (Op.JMP_EXIT, 0, 0, 0, 0),
        ]
        conditional = True
    else:
        code += [
            (Op.ALU64_MOV_X, 0, 2, 0, 0),
            (Op.ALU64_AND_K, 0, 0, 0, bits),             # an undecided bit this rule denies?
            (Op.JMP_JEQ_K, 0, 0, _SKIP, 0),
            (Op.ALU64_MOV_K, 0, 0, 0, 0),
            (Op.JMP_EXIT, 0, 0, 0, 0),
        ]
        conditional = True
    out = []
    for i, (op, dst, src, off, imm) in enumerate(code):
        if off == _SKIP:
            off = len(code) - i - 1
        out.append(insn(op, dst, src, off, imm))
    return out, not conditional


def compile_rules(rules: Sequence[DeviceRule], *, default_allow: bool = True) -> bytes:
    """The eBPF program (raw ``struct bpf_insn`` array) enforcing ``rules``."""
    prog = list(_PROLOGUE)
    for rule in reversed(rules):
        block, final = _block(rule)
        prog += block
        if final:
            # Nothing after an unconditional return is reachable, and the
            # verifier rejects unreachable instructions.
            return b"".join(prog)
    prog += [insn(Op.ALU64_MOV_K, 0, imm=int(default_allow)), insn(Op.JMP_EXIT)]
    return b"".join(prog)


def _open_dir(cgroup_dir: str) -> int:
    return os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def attached(cgroup_dir: str) -> list[int]:
    """Ids of the device programs attached to ``cgroup_dir`` itself."""
    fd = _open_dir(cgroup_dir)
    try:
        return prog_query(fd, AttachType.CGROUP_DEVICE)
    finally:
        os.close(fd)


def install(cgroup_dir: str, rules: Sequence[DeviceRule]) -> None:
    """Make ``rules`` the device policy of the cgroup2 directory ``cgroup_dir``.

    An empty list removes our program (everything allowed, as on v1). The new
    program replaces the old one atomically when there was exactly one;
    otherwise it is attached before the old ones are detached, so the policy
    is never looser than either while it changes.
    """
    dfd = _open_dir(cgroup_dir)
    try:
        old = prog_query(dfd, AttachType.CGROUP_DEVICE)
        old_fds = [prog_get_fd_by_id(i) for i in old]
        try:
            if rules:
                prog = prog_load(ProgType.CGROUP_DEVICE, compile_rules(rules),
                                 expected_attach_type=AttachType.CGROUP_DEVICE,
                                 name="ketch_devices")
                try:
                    if len(old_fds) == 1:
                        prog_attach(dfd, prog, AttachType.CGROUP_DEVICE,
                                    BPF_F_ALLOW_MULTI | BPF_F_REPLACE, old_fds[0])
                        old_fds_to_detach: list[int] = []
                    else:
                        prog_attach(dfd, prog, AttachType.CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
                        old_fds_to_detach = old_fds
                finally:
                    os.close(prog)
            else:
                old_fds_to_detach = old_fds
            for fd in old_fds_to_detach:
                prog_detach(dfd, fd, AttachType.CGROUP_DEVICE)
        finally:
            for fd in old_fds:
                os.close(fd)
    finally:
        os.close(dfd)
