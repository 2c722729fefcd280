"""bpf(2): loading eBPF programs and attaching them to cgroups.

Only the commands the runtime needs (load, attach, detach, query, get-fd-by-id)
and the instruction encoding. ``union bpf_attr`` is built as a zeroed byte
buffer with each field packed at its offset from <linux/bpf.h>; the kernel
accepts a shorter attr than its own as long as the fields we omit may be zero.
"""

from __future__ import annotations

import ctypes
import enum
import struct

from ketch.sys.libc import MACHINE, check, libc

__all__ = [
    "BPF_F_ALLOW_MULTI",
    "BPF_F_ALLOW_OVERRIDE",
    "BPF_F_REPLACE",
    "AttachType",
    "Cmd",
    "Op",
    "ProgType",
    "insn",
    "prog_attach",
    "prog_detach",
    "prog_get_fd_by_id",
    "prog_load",
    "prog_query",
]

# long syscall(SYS_bpf, int cmd, union bpf_attr *attr, unsigned int size);
_NR_BPF = {"x86_64": 321, "aarch64": 280}
_syscall = libc.syscall
_syscall.restype = ctypes.c_long


class Cmd(enum.IntEnum):
    """The bpf(2) commands used here (enum bpf_cmd)."""

    PROG_LOAD = 5
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_GET_FD_BY_ID = 13
    PROG_QUERY = 16


class ProgType(enum.IntEnum):
    """enum bpf_prog_type (the ones used here)."""

    CGROUP_DEVICE = 15


class AttachType(enum.IntEnum):
    """enum bpf_attach_type (the ones used here)."""

    CGROUP_DEVICE = 6


BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1
BPF_F_REPLACE = 1 << 2


class Op(enum.IntEnum):
    """Opcode bytes (class | size/op | source) for the instructions we emit."""

    LDX_MEM_W = 0x61      # dst = *(u32 *)(src + off)
    ALU64_AND_K = 0x57    # dst &= imm
    ALU64_RSH_K = 0x77    # dst >>= imm
    ALU64_MOV_K = 0xB7    # dst = imm
    ALU64_MOV_X = 0xBF    # dst = src
    JMP_JA = 0x05         # pc += off
    JMP_JEQ_K = 0x15      # if dst == imm: pc += off
    JMP_JNE_K = 0x55      # if dst != imm: pc += off
    JMP_EXIT = 0x95       # return r0


def insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One ``struct bpf_insn`` {u8 code; u8 dst:4, src:4; s16 off; s32 imm} (little endian)."""
    return struct.pack("<BBhi", op, (src << 4) | dst, off, imm)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], desc: str) -> int:
    try:
        number = _NR_BPF[MACHINE]
    except KeyError:
        raise OSError(38, f"syscall bpf unknown on {MACHINE}", desc) from None
    ret = _syscall(ctypes.c_long(number), ctypes.c_int(cmd), attr,
                   ctypes.c_uint(len(attr)))
    return check(ret, desc)


def prog_load(prog_type: int, insns: bytes, license: str = "Apache-2.0", *,
              expected_attach_type: int = 0, name: str = "",
              log_size: int = 65536) -> int:
    """BPF_PROG_LOAD: load ``insns``; returns the program's fd (close-on-exec).

    When the verifier rejects the program, the load is retried with a log and
    the ``OSError`` message carries the verifier's last lines.
    """
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())

    def attempt(log: ctypes.Array[ctypes.c_char] | None) -> int:
        # prog_type u32 @0, insn_cnt u32 @4, insns u64 @8, license u64 @16,
        # log_level u32 @24, log_size u32 @28, log_buf u64 @32, kern_version u32 @40,
        # prog_flags u32 @44, prog_name char[16] @48, prog_ifindex u32 @64,
        # expected_attach_type u32 @68.
        attr = ctypes.create_string_buffer(72)
        struct.pack_into("<IIQQ", attr, 0, prog_type, len(insns) // 8,
                         ctypes.addressof(code), ctypes.addressof(lic))
        if log is not None:
            struct.pack_into("<IIQ", attr, 24, 1, len(log), ctypes.addressof(log))
        struct.pack_into("16s", attr, 48, name.encode()[:15])
        struct.pack_into("<I", attr, 68, expected_attach_type)
        return _bpf(Cmd.PROG_LOAD, attr, f"bpf(BPF_PROG_LOAD, {name or 'prog'})")

    try:
        return attempt(None)
    except OSError as e:
        if e.errno not in (13, 22) or not log_size:  # EACCES/EINVAL: the verifier said no
            raise
        log = ctypes.create_string_buffer(log_size)
        try:
            return attempt(log)
        except OSError as e2:
            text = log.value.decode(errors="replace").strip().splitlines()[-5:]
            raise OSError(e2.errno, f"{e2.strerror}; verifier: {' | '.join(text)}",
                          e2.filename) from None


def prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0,
                replace_fd: int = 0) -> None:
    """BPF_PROG_ATTACH ``prog_fd`` to the cgroup directory ``target_fd``.

    With ``BPF_F_REPLACE`` (and ``BPF_F_ALLOW_MULTI``) the program ``replace_fd``
    is swapped for the new one atomically.
    """
    # target_fd u32 @0, attach_bpf_fd u32 @4, attach_type u32 @8, attach_flags u32 @12,
    # replace_bpf_fd u32 @16.
    attr = ctypes.create_string_buffer(20)
    struct.pack_into("<IIIII", attr, 0, target_fd, prog_fd, attach_type, flags, replace_fd)
    _bpf(Cmd.PROG_ATTACH, attr, f"bpf(BPF_PROG_ATTACH, type={attach_type}, flags={flags})")


def prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    """BPF_PROG_DETACH the program ``prog_fd`` from the cgroup directory ``target_fd``."""
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<IIII", attr, 0, target_fd, prog_fd, attach_type, 0)
    _bpf(Cmd.PROG_DETACH, attr, f"bpf(BPF_PROG_DETACH, type={attach_type})")


def prog_query(target_fd: int, attach_type: int, query_flags: int = 0) -> list[int]:
    """BPF_PROG_QUERY: ids of the programs attached to ``target_fd`` for ``attach_type``.

    Without flags, only the programs attached to that cgroup itself (not the
    ones it inherits).
    """
    cap = 64
    while True:
        ids = (ctypes.c_uint32 * cap)()
        # target_fd u32 @0, attach_type u32 @4, query_flags u32 @8, attach_flags u32 @12,
        # prog_ids u64 @16, prog_cnt u32 @24 (in: room, out: count).
        attr = ctypes.create_string_buffer(32)
        struct.pack_into("<IIIIQI", attr, 0, target_fd, attach_type, query_flags, 0,
                         ctypes.addressof(ids), cap)
        try:
            _bpf(Cmd.PROG_QUERY, attr, f"bpf(BPF_PROG_QUERY, type={attach_type})")
        except OSError as e:
            if e.errno == 28:  # ENOSPC: more programs than room; prog_cnt says how many
                cap = struct.unpack_from("<I", attr, 24)[0] + 8
                continue
            raise
        count = struct.unpack_from("<I", attr, 24)[0]
        return list(ids[:count])


def prog_get_fd_by_id(prog_id: int) -> int:
    """BPF_PROG_GET_FD_BY_ID: an fd for the loaded program ``prog_id``."""
    attr = ctypes.create_string_buffer(12)
    struct.pack_into("<III", attr, 0, prog_id, 0, 0)
    return _bpf(Cmd.PROG_GET_FD_BY_ID, attr, f"bpf(BPF_PROG_GET_FD_BY_ID, {prog_id})")
