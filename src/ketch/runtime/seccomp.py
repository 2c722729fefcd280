"""OCI ``linux.seccomp`` → a classic-BPF program for ``ketch.sys.seccomp.load_filter``.

The program, in execution order::

    ld  arch
    jeq <audit arch of ABI 1>  → block 1     native ABI first: one compare on the hot path
    jeq <audit arch of ABI 2>  → block 2     each other listed ABI (x32 shares x86-64's)
    ret BAD_ARCH_RET                         an ABI the profile does not list
  block:
    ld  nr
    [x32 gate]                               see below
    binary search over syscall-number ranges; each leaf is either
      ret <action>                           ranges of syscalls with one plain action, or
      rule chain for one syscall             argument checks, then its fallback action

Decisions this module makes (the OCI spec leaves them open):

* **Architectures.** The native ABI is always filtered. Each ABI listed in
  ``architectures`` gets the same rules under its own syscall numbers. A
  syscall made through any other ABI gets :data:`BAD_ARCH_RET`
  (``SECCOMP_RET_KILL_PROCESS``): like libseccomp's default, an unlisted ABI is
  killed, never allowed nor merely failed — a profile cannot have meant it.
  ABI names ketch has no table for (MIPS, PPC, s390, RISC-V …) are accepted
  and ignored; they cannot execute on the hosts ketch runs on.
* **x32.** x32 calls arrive as ``AUDIT_ARCH_X86_64`` with bit 30 set in the
  number. Unless ``SCMP_ARCH_X32`` is listed, numbers with that bit are sent to
  BAD_ARCH_RET before any rule is looked at, so an x86-64 allow list can never
  be reached through x32 numbers (-1, which tracers use to skip a call, is let
  through to the default action).
* **Precedence.** For one syscall, its rules *with* ``args`` are tried first, in
  file order, and the first whose conditions all hold decides; if none does,
  the first rule *without* args decides; if there is none, ``defaultAction``.
  So "allow socket" plus "deny socket(AF_VSOCK)" works in either order. The
  conditions of one rule are ANDed, also when they test the same argument.
* **Newer syscalls.** As runc does, when ``defaultAction`` denies (anything but
  ALLOW and LOG), a syscall numbered above every syscall the profile names for
  that ABI fails with ENOSYS instead of ``defaultAction``: the profile's author
  could not have known it, and libc falls back to older calls only on ENOSYS.
* **Arguments.** Values are unsigned 64-bit and compared as two 32-bit halves
  (high first) on 64-bit ABIs. 32-bit ABIs (x86, arm) pass 32-bit registers, so
  only the low 32 bits of the value take part there. For ``SCMP_CMP_MASKED_EQ``,
  ``value`` is the mask and ``valueTwo`` the expected result of
  ``arg & value``.
* **Unknown names** (not a syscall of an ABI) are skipped for that ABI.

Jumps in classic BPF are forward only with 8-bit conditional offsets. The
program is therefore assembled back to front, so every target is already
placed when a jump to it is written, and a conditional jump further than 255
instructions goes through an unconditional ``ja`` (32-bit offset) put right
after it. Programs larger than BPF_MAXINSNS are refused.
"""

from __future__ import annotations

import bisect
import json
import struct
from collections.abc import Mapping
from typing import Any

from ketch.errors import InvalidArgument
from ketch.sys import seccomp as sc
from ketch.sys.syscalls import ARCHES, KNOWN_UNSUPPORTED, X32_SYSCALL_BIT, native_arch, table

__all__ = ["ACTIONS", "ARCHS", "BAD_ARCH_RET", "FLAGS", "OPERATORS", "OPS", "compile_seccomp",
           "supported_flags"]

BAD_ARCH_RET = sc.SECCOMP_RET_KILL_PROCESS
"""Filter result for a syscall made through an ABI the profile does not list."""

# OCI action name -> SECCOMP_RET_* (the errno, if any, is or'ed in later).
ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": sc.SECCOMP_RET_KILL_THREAD,  # libseccomp's SCMP_ACT_KILL is per thread
    "SCMP_ACT_KILL_THREAD": sc.SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": sc.SECCOMP_RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": sc.SECCOMP_RET_TRAP,
    "SCMP_ACT_ERRNO": sc.SECCOMP_RET_ERRNO,
    "SCMP_ACT_TRACE": sc.SECCOMP_RET_TRACE,
    "SCMP_ACT_ALLOW": sc.SECCOMP_RET_ALLOW,
    "SCMP_ACT_LOG": sc.SECCOMP_RET_LOG,
}
# Actions that carry a 16-bit datum: the errno, or the message for the tracer.
_WITH_DATA = frozenset({"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"})
_EPERM = 1
_ENOSYS = 38
_MAX_ERRNO = 4095  # the kernel clamps larger values to this

FLAGS: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": sc.SECCOMP_FILTER_FLAG_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": sc.SECCOMP_FILTER_FLAG_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": sc.SECCOMP_FILTER_FLAG_SPEC_ALLOW,
}

OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
             "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")
OPS = frozenset(OPERATORS)

# Architectures a profile can have filtered (others are accepted and ignored).
ARCHS = tuple(ARCHES)

_U64 = 1 << 64
_U32_MASK = 0xFFFFFFFF

# Opcodes used (BPF_LD|BPF_W|BPF_ABS etc.).
_LD = sc.BPF_LD | sc.BPF_W | sc.BPF_ABS
_AND = sc.BPF_ALU | sc.BPF_AND | sc.BPF_K
_JA = sc.BPF_JMP | sc.BPF_JA
_JEQ = sc.BPF_JMP | sc.BPF_JEQ | sc.BPF_K
_JGT = sc.BPF_JMP | sc.BPF_JGT | sc.BPF_K
_JGE = sc.BPF_JMP | sc.BPF_JGE | sc.BPF_K
_RET = sc.BPF_RET | sc.BPF_K

# A condition: (arg index, op, value, valueTwo). A rule: (conditions, ret).
_Cond = tuple[int, str, int, int]
_Rule = tuple[tuple[_Cond, ...], int]
# What a range of syscall numbers leads to: a plain return value, or the rule
# chain of one syscall with its fallback return value.
_Outcome = int | tuple[tuple[_Rule, ...], int]


_CACHE: dict[tuple[str, str | None], tuple[bytes, int]] = {}
_CACHE_MAX = 8


def compile_seccomp(cfg: Mapping[str, Any], arch: str | None = None) -> tuple[bytes, int]:
    """Compile an OCI ``linux.seccomp`` object to ``(program, filter flags)``.

    Results are cached by the object's canonical JSON (a few entries): the engine's
    fork server compiles Docker's default profile once and every container forked
    from it reuses the program. See :func:`_compile` for the contract.
    """
    try:
        key = (json.dumps(cfg, sort_keys=True, separators=(",", ":")), arch)
    except (TypeError, ValueError):
        return _compile(cfg, arch)
    hit = _CACHE.get(key)
    if hit is None:
        hit = _compile(cfg, arch)
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = hit
    return hit


def _compile(cfg: Mapping[str, Any], arch: str | None = None) -> tuple[bytes, int]:
    """Compile an OCI ``linux.seccomp`` object to ``(program, filter flags)``.

    ``program`` is packed ``struct sock_filter`` instructions ready for
    :func:`ketch.sys.seccomp.load_filter`; ``flags`` are its
    ``SECCOMP_FILTER_FLAG_*`` bits. ``arch`` is the native ABI as an
    ``SCMP_ARCH_*`` name or a ``uname -m`` machine (default: this host).
    The module docstring states the semantics chosen where the spec is silent.
    Raises :class:`InvalidArgument`, naming the field, for a malformed object,
    an unknown action, op, flag or architecture, ``SCMP_ACT_NOTIFY`` (not
    supported), or a program over the kernel's instruction limit.
    """
    p = "linux.seccomp"
    if not isinstance(cfg, Mapping):
        raise InvalidArgument(f"{p}: must be an object, not {_tname(cfg)}")
    if "defaultAction" not in cfg:
        raise InvalidArgument(f"{p}.defaultAction: required")
    default_name = cfg["defaultAction"]
    default_ret = _ret(default_name, cfg.get("defaultErrnoRet"),
                       f"{p}.defaultAction", f"{p}.defaultErrnoRet")
    flags = _flags(cfg.get("flags"), f"{p}.flags")
    if cfg.get("listenerPath"):
        raise InvalidArgument(f"{p}.listenerPath: seccomp user notification is not supported")

    native = native_arch(arch)
    arches = [native]
    listed = cfg.get("architectures")
    if listed is not None:
        if not isinstance(listed, list):
            raise InvalidArgument(f"{p}.architectures: must be a list, not {_tname(listed)}")
        for i, a in enumerate(listed):
            if not isinstance(a, str):
                raise InvalidArgument(f"{p}.architectures[{i}]: must be a string, "
                                      f"not {_tname(a)}")
            if a in ARCHES:
                if a not in arches:
                    arches.append(a)
            elif a not in KNOWN_UNSUPPORTED:
                raise InvalidArgument(f"{p}.architectures[{i}]: unknown architecture {_q(a)}")

    rules = _rules(cfg.get("syscalls"), f"{p}.syscalls")
    enosys = (default_ret & sc.SECCOMP_RET_ACTION_FULL) not in (sc.SECCOMP_RET_ALLOW,
                                                                 sc.SECCOMP_RET_LOG)

    # ABIs sharing an audit arch (x86-64 and x32) share one block.
    blocks: dict[int, list[str]] = {}
    for a in arches:
        blocks.setdefault(ARCHES[a].audit, []).append(a)

    asm = _Asm()
    starts: list[int] = []
    for members in reversed(blocks.values()):
        _emit_block(asm, members, rules, default_ret, enosys)
        starts.append(asm.here())
    # Dispatch on the arch; the first block (native) ends up first in the program.
    asm.ret(BAD_ARCH_RET)
    for audit, target in zip(reversed(blocks), starts, strict=True):
        asm.jump(_JEQ, audit, target, asm.here())
    asm.ld(sc.SECCOMP_DATA_ARCH)
    if len(asm.ins) > sc.BPF_MAXINSNS:
        raise InvalidArgument(f"{p}: profile compiles to {len(asm.ins)} BPF instructions, "
                              f"over the kernel's limit of {sc.BPF_MAXINSNS}")
    return asm.program(), flags


def supported_flags() -> list[str]:
    """The names in :data:`FLAGS` that the running kernel accepts (for ``features``)."""
    return [name for name, bit in FLAGS.items() if sc.filter_flag_supported(bit)]


# --- parsing ----------------------------------------------------------------


def _tname(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _q(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _uint(v: object, path: str, limit: int) -> int:
    # bool is an int subclass; True is not a number in JSON.
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidArgument(f"{path}: must be an integer, not {_tname(v)}")
    if not 0 <= v < limit:
        raise InvalidArgument(f"{path}: {v} is out of range 0..{limit - 1}")
    return v


def _ret(action: object, errno_ret: object, path: str, errno_path: str) -> int:
    """SECCOMP_RET_* value for an OCI action name and optional errnoRet."""
    if not isinstance(action, str):
        raise InvalidArgument(f"{path}: must be a string, not {_tname(action)}")
    ret = ACTIONS.get(action)
    if ret is None:
        if action == "SCMP_ACT_NOTIFY":
            raise InvalidArgument(f"{path}: SCMP_ACT_NOTIFY is not supported")
        raise InvalidArgument(f"{path}: unknown action {_q(action)}")
    if action in _WITH_DATA:
        data = _EPERM if errno_ret is None else _uint(errno_ret, errno_path, _MAX_ERRNO + 1)
        return ret | data
    if errno_ret is not None:
        raise InvalidArgument(f"{errno_path}: only SCMP_ACT_ERRNO and SCMP_ACT_TRACE "
                              f"take an errno, not {action}")
    return ret


def _flags(v: object, path: str) -> int:
    if v is None:
        return 0
    if not isinstance(v, list):
        raise InvalidArgument(f"{path}: must be a list, not {_tname(v)}")
    out = 0
    for i, f in enumerate(v):
        if not isinstance(f, str):
            raise InvalidArgument(f"{path}[{i}]: must be a string, not {_tname(f)}")
        bit = FLAGS.get(f)
        if bit is None:
            raise InvalidArgument(f"{path}[{i}]: unknown or unsupported flag {_q(f)}")
        out |= bit
    return out


def _rules(v: object, path: str) -> list[tuple[list[str], _Rule]]:
    """Validated ``syscalls`` entries as (names, (conditions, ret)) in file order."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise InvalidArgument(f"{path}: must be a list, not {_tname(v)}")
    out: list[tuple[list[str], _Rule]] = []
    for i, entry in enumerate(v):
        ep = f"{path}[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidArgument(f"{ep}: must be an object, not {_tname(entry)}")
        names = entry.get("names")
        if not isinstance(names, list) or not names:
            raise InvalidArgument(f"{ep}.names: must be a non-empty list of syscall names")
        # Checked in C first; the loop only runs to name the bad entry.
        if "" in names or set(map(type, names)) != {str}:
            for j, name in enumerate(names):
                if not isinstance(name, str) or not name:
                    raise InvalidArgument(f"{ep}.names[{j}]: must be a non-empty string, "
                                          f"not {name!r}")
        if "action" not in entry:
            raise InvalidArgument(f"{ep}.action: required")
        ret = _ret(entry["action"], entry.get("errnoRet"), f"{ep}.action", f"{ep}.errnoRet")
        out.append((names, (_conds(entry.get("args"), f"{ep}.args"), ret)))
    return out


def _conds(v: object, path: str) -> tuple[_Cond, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise InvalidArgument(f"{path}: must be a list, not {_tname(v)}")
    out: list[_Cond] = []
    for k, arg in enumerate(v):
        ap = f"{path}[{k}]"
        if not isinstance(arg, Mapping):
            raise InvalidArgument(f"{ap}: must be an object, not {_tname(arg)}")
        if "index" not in arg:
            raise InvalidArgument(f"{ap}.index: required")
        index = _uint(arg["index"], f"{ap}.index", 6)
        if "value" not in arg:
            raise InvalidArgument(f"{ap}.value: required")
        value = _uint(arg["value"], f"{ap}.value", _U64)
        two = arg.get("valueTwo")
        value_two = 0 if two is None else _uint(two, f"{ap}.valueTwo", _U64)
        op = arg.get("op")
        if not isinstance(op, str):
            raise InvalidArgument(f"{ap}.op: must be a string, not {_tname(op)}")
        if op not in OPS:
            raise InvalidArgument(f"{ap}.op: unknown operator {_q(op)}")
        out.append((index, op, value, value_two))
    return tuple(out)


# --- code generation --------------------------------------------------------


class _Asm:
    """A program built back to front.

    ``ins`` holds instructions in reverse order: ``ins[i]`` ends up at
    ``len(ins) - 1 - i``. A jump target is named by its index in ``ins``, so a
    target is always known (already emitted) when a jump to it is written.
    """

    __slots__ = ("ins",)

    def __init__(self) -> None:
        self.ins: list[tuple[int, int, int, int]] = []

    def here(self) -> int:
        """Target for "the code emitted so far starts here"."""
        return len(self.ins) - 1

    def ret(self, k: int) -> None:
        self.ins.append((_RET, 0, 0, k))

    def ld(self, offset: int) -> None:
        self.ins.append((_LD, 0, 0, offset))

    def alu_and(self, k: int) -> None:
        self.ins.append((_AND, 0, 0, k))

    def jump(self, code: int, k: int, t: int, f: int) -> None:
        """Conditional jump to ``t`` when true, ``f`` when false."""
        ins = self.ins
        j = len(ins)
        ot = j - t - 1
        of = j - f - 1
        if ot <= 255 and of <= 255:
            ins.append((code, ot, of, k))
        # Too far for an 8-bit offset: hop through a ja (32-bit offset) placed
        # right after the jump, which pushes the near target one further away.
        elif ot > 255 and of < 255:
            ins.append((_JA, 0, 0, ot))
            ins.append((code, 0, of + 1, k))
        elif of > 255 and ot < 255:
            ins.append((_JA, 0, 0, of))
            ins.append((code, ot + 1, 0, k))
        else:
            ins.append((_JA, 0, 0, of))
            ins.append((_JA, 0, 0, ot + 1))
            ins.append((code, 0, 1, k))

    def program(self) -> bytes:
        pack = struct.Struct("=HBBI").pack
        return b"".join([pack(*i) for i in reversed(self.ins)])


def _emit_block(asm: _Asm, members: list[str], rules: list[tuple[list[str], _Rule]],
                default_ret: int, enosys: bool) -> None:
    """Code for one audit arch: load nr, gate x32, search the syscall ranges."""
    bits = ARCHES[members[0]].bits
    plain: dict[int, int] = {}  # nr -> ret of its first rule without args
    chains: dict[int, list[_Rule]] = {}  # nr -> its rules with args, in file order
    tables = [table(m) for m in members]
    # Rules without args, last to first, so the first rule for a number is the
    # one left standing. Set and dict operations keep the ~350 names of a
    # typical profile out of Python-level loops.
    for names, (conds, ret) in reversed(rules):
        if not conds:
            for tbl in tables:
                plain.update(dict.fromkeys(map(tbl.__getitem__, tbl.keys() & names), ret))
    for names, rule in rules:
        if rule[0]:
            for tbl in tables:
                for nr in map(tbl.__getitem__, tbl.keys() & names):
                    chain = chains.setdefault(nr, [])
                    if rule not in chain:
                        chain.append(rule)

    # Ranges of numbers and what each leads to, merging neighbours that agree.
    # Unnamed numbers get the default, or ENOSYS above the highest named one
    # of their half (below / above the x32 bit).
    nosys = sc.SECCOMP_RET_ERRNO | _ENOSYS if enosys else default_ret
    named = sorted(plain.keys() | chains.keys())
    split = bisect.bisect_left(named, X32_SYSCALL_BIT)
    starts: list[int] = [0]
    outs: list[_Outcome] = [default_ret]
    for lo_nr, part, end in ((0, named[:split], X32_SYSCALL_BIT),
                             (X32_SYSCALL_BIT, named[split:], 1 << 32)):
        if lo_nr and outs[-1] != default_ret:
            starts.append(lo_nr)
            outs.append(default_ret)
        pos = lo_nr
        for nr in part:
            if nr > pos and outs[-1] != default_ret:
                starts.append(pos)
                outs.append(default_ret)
            fallback = plain.get(nr, default_ret)
            rest = chains.get(nr)
            if rest:
                # Trailing rules that lead where the fallback leads change nothing.
                while rest and rest[-1][1] == fallback:
                    rest.pop()
            out: _Outcome = (tuple(rest), fallback) if rest else fallback
            if outs[-1] != out:
                starts.append(nr)
                outs.append(out)
            pos = nr + 1
        if part and pos < end and outs[-1] != nosys:
            starts.append(pos)
            outs.append(nosys)

    _emit_tree(asm, starts, outs, 0, len(starts), bits)

    kinds = {m for m in members if m in ("SCMP_ARCH_X86_64", "SCMP_ARCH_X32")}
    if kinds == {"SCMP_ARCH_X86_64"}:
        # x32 numbers (bit 30 set) are another ABI; -1 means "skip" to tracers.
        tree = asm.here()
        asm.ret(BAD_ARCH_RET)
        asm.jump(_JEQ, _U32_MASK, tree, asm.here())
        asm.jump(_JGE, X32_SYSCALL_BIT, asm.here(), tree)
    elif kinds == {"SCMP_ARCH_X32"}:
        tree = asm.here()
        asm.ret(BAD_ARCH_RET)
        asm.jump(_JGE, X32_SYSCALL_BIT, tree, asm.here())
    asm.ld(sc.SECCOMP_DATA_NR)


def _emit_tree(asm: _Asm, starts: list[int], outs: list[_Outcome], lo: int, hi: int,
               bits: int) -> None:
    """Binary search over ranges lo..hi-1 (ranges[i] = starts[i] .. starts[i+1]-1)."""
    if hi - lo == 1:
        out = outs[lo]
        if isinstance(out, int):
            asm.ret(out)
        else:
            _emit_chain(asm, out[0], out[1], bits)
        return
    mid = (lo + hi) // 2
    _emit_tree(asm, starts, outs, mid, hi, bits)
    right = asm.here()
    _emit_tree(asm, starts, outs, lo, mid, bits)
    asm.jump(_JGE, starts[mid], right, asm.here())


def _emit_chain(asm: _Asm, chain: tuple[_Rule, ...], fallback: int, bits: int) -> None:
    """Rules of one syscall: the first whose conditions all hold returns its action."""
    asm.ret(fallback)
    for conds, ret in reversed(chain):
        fail = asm.here()
        asm.ret(ret)
        for cond in reversed(conds):
            _emit_cond(asm, cond, fail, bits)


def _emit_cond(asm: _Asm, cond: _Cond, fail: int, bits: int) -> None:
    """Fall through when the condition holds, jump to ``fail`` when not."""
    index, op, value, two = cond
    ok = asm.here()
    lo_off = sc.arg_lo(index)
    if op == "SCMP_CMP_MASKED_EQ":
        mask, want = value, two
    else:
        mask, want = _U32_MASK | _U32_MASK << 32, value
    vlo, mlo = want & _U32_MASK, mask & _U32_MASK
    # Low word (the whole comparison on 32-bit ABIs, which pass 32-bit registers).
    if op == "SCMP_CMP_EQ" or op == "SCMP_CMP_MASKED_EQ":
        asm.jump(_JEQ, vlo, ok, fail)
    elif op == "SCMP_CMP_NE":
        asm.jump(_JEQ, vlo, fail, ok)
    elif op == "SCMP_CMP_GT":
        asm.jump(_JGT, vlo, ok, fail)
    elif op == "SCMP_CMP_GE":
        asm.jump(_JGE, vlo, ok, fail)
    elif op == "SCMP_CMP_LT":
        asm.jump(_JGE, vlo, fail, ok)
    else:  # SCMP_CMP_LE
        asm.jump(_JGT, vlo, fail, ok)
    if op == "SCMP_CMP_MASKED_EQ":
        asm.alu_and(mlo)
    asm.ld(lo_off)
    if bits == 32:
        return
    # High word, tested first: it decides unless the high words are equal.
    low = asm.here()
    vhi, mhi = want >> 32, mask >> 32
    if op == "SCMP_CMP_EQ" or op == "SCMP_CMP_MASKED_EQ":
        asm.jump(_JEQ, vhi, low, fail)
    elif op == "SCMP_CMP_NE":
        asm.jump(_JEQ, vhi, low, ok)
    elif op == "SCMP_CMP_GT" or op == "SCMP_CMP_GE":
        asm.jump(_JEQ, vhi, low, fail)
        asm.jump(_JGT, vhi, ok, asm.here())
    else:  # LT, LE: above → fail, equal → low word decides, below → holds
        asm.jump(_JEQ, vhi, low, ok)
        asm.jump(_JGT, vhi, fail, asm.here())
    if op == "SCMP_CMP_MASKED_EQ":
        asm.alu_and(mhi)
    asm.ld(sc.arg_hi(index))
