"""nftables through libnftables (Debian's ``libnftables1``), loaded with ctypes.

libnftables is the library behind the ``nft`` command: it takes the same command text (or its
JSON form, libnftables-json(5)), turns a whole buffer into one netlink batch and commits it as one
kernel transaction — either every command in the buffer takes effect or none does.

Lifecycle of one call (``Nft.run``/``Nft.run_json``)::

    nft_ctx_new  ->  output flags (JSON or text)  ->  buffer output and errors
                 ->  nft_run_cmd_from_buffer  ->  read both buffers  ->  nft_ctx_free

A fresh context is made for every call. nft_ctx_new opens the context's netlink socket, and a
socket stays in the network namespace it was opened in; a context made per call therefore always
speaks to the network namespace of the *calling thread* (a thread that ``setns``'d elsewhere gets
that namespace), and no cache inside libnftables goes stale between calls. A context costs about
50 µs, far below the netlink round trips of a command.

Errors: the library reports them as text. One that names a kernel errno ("Could not process rule:
File exists") becomes ``OSError(errno, <nft's text>, "nft_run_cmd_from_buffer(...)")``; any other
(a syntax error, an unknown keyword) becomes ``InvalidArgument`` with nft's text. A host without
the library gets ``FailedPrecondition``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import errno
import json
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

from ketch.errors import FailedPrecondition, InvalidArgument

__all__ = ["NFT_CTX_OUTPUT", "Nft", "load_library", "unload_library"]

_SONAME = "libnftables.so.1"
NETLINK_NETFILTER = 12


class NFT_CTX_OUTPUT(enum.IntFlag):
    """Output flags from <nftables/libnftables.h> (``nft_ctx_output_set_flags``)."""

    REVERSEDNS = 1 << 0
    SERVICE = 1 << 1
    STATELESS = 1 << 2
    HANDLE = 1 << 3
    JSON = 1 << 4
    ECHO = 1 << 5
    GUID = 1 << 6
    NUMERIC_PROTO = 1 << 7
    NUMERIC_PRIO = 1 << 8
    NUMERIC_SYMBOL = 1 << 9
    NUMERIC_TIME = 1 << 10
    TERSE = 1 << 11


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()
# libnftables keeps a little process-wide state (symbol tables, the GMP allocator hooks); one
# call at a time keeps it out of trouble. Calls are short, so the lock costs nothing.
_call_lock = threading.Lock()


def load_library(name: str | None = None) -> ctypes.CDLL:
    """The libnftables handle, loaded once with its prototypes declared.

    Raises ``FailedPrecondition`` when the library is not installed."""
    global _lib
    with _lib_lock:
        if _lib is not None and name is None:
            return _lib
        candidates = [name] if name else [_SONAME, ctypes.util.find_library("nftables")]
        lib: ctypes.CDLL | None = None
        for cand in candidates:
            if not cand:
                continue
            try:
                lib = ctypes.CDLL(cand, use_errno=True)
                break
            except OSError:
                continue
        if lib is None:
            raise FailedPrecondition("libnftables not found: install Debian's libnftables1")
        _declare(lib)
        if name is None:
            _lib = lib
        return lib


def unload_library() -> bool:
    """Unmap the shared libnftables (and what it pulled in: libnftnl, libgmp, libjansson,
    libxtables) until the next call loads it again, about 4 ms later. An idle daemon calls
    this: the mapped library is 1.5 MiB it does not use between bursts of rules. Waits for a
    running call. Returns whether the library was loaded. ``Nft`` objects made with an
    explicit ``library`` keep theirs."""
    global _lib
    with _call_lock, _lib_lock:
        lib, _lib = _lib, None
        if lib is None:
            return False
        import _ctypes

        # Nothing else holds the handle: calls fetch it under _call_lock, held here.
        _ctypes.dlclose(lib._handle)
        return True


def _declare(lib: ctypes.CDLL) -> None:
    vp, cp, ui = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint
    # struct nft_ctx *nft_ctx_new(uint32_t flags);
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_new.restype = vp
    # void nft_ctx_free(struct nft_ctx *ctx);
    lib.nft_ctx_free.argtypes = [vp]
    lib.nft_ctx_free.restype = None
    # void nft_ctx_output_set_flags(struct nft_ctx *ctx, unsigned int flags);
    lib.nft_ctx_output_set_flags.argtypes = [vp, ui]
    lib.nft_ctx_output_set_flags.restype = None
    # void nft_ctx_set_dry_run(struct nft_ctx *ctx, bool dry);
    lib.nft_ctx_set_dry_run.argtypes = [vp, ctypes.c_bool]
    lib.nft_ctx_set_dry_run.restype = None
    # int nft_ctx_buffer_output(struct nft_ctx *ctx);  int nft_ctx_buffer_error(...);
    for fn in (lib.nft_ctx_buffer_output, lib.nft_ctx_buffer_error):
        fn.argtypes = [vp]
        fn.restype = ctypes.c_int
    # const char *nft_ctx_get_output_buffer(struct nft_ctx *ctx);  (and ..._error_buffer)
    for fn in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
        fn.argtypes = [vp]
        fn.restype = cp
    # int nft_run_cmd_from_buffer(struct nft_ctx *nft, const char *buf);
    lib.nft_run_cmd_from_buffer.argtypes = [vp, cp]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int


# "File exists" -> EEXIST, for reading errnos back out of nft's messages
_BY_STRERROR: dict[str, int] = {}
for _code in sorted(errno.errorcode, reverse=True):
    _BY_STRERROR[os.strerror(_code)] = _code


def _errno_of(text: str) -> int | None:
    """The errno an nft error message reports, if it reports one."""
    for line in text.splitlines():
        # "Error: ...", or with a location first in JSON mode ("internal:0:0-0: Error: ...")
        at = line.find("Error: ")
        if at < 0:
            continue
        msg = line[at + len("Error: "):]
        for prefix in ("Could not process rule: ", ""):
            if msg.startswith(prefix):
                rest = msg[len(prefix):]
                best = max((s for s in _BY_STRERROR if rest.startswith(s)), key=len, default=None)
                if best is not None:
                    return _BY_STRERROR[best]
        return None
    return None


def _call_desc(cmd: str) -> str:
    lines = cmd.strip().splitlines() or [""]
    first = lines[0]
    if len(first) > 80 or len(lines) > 1:
        first = first[:77] + "..."
    return f"nft_run_cmd_from_buffer({first!r})"


def _netlink_probe() -> None:
    # libnftables exit()s the whole process when it cannot open its netlink socket; find out
    # first, with an exception instead.
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as e:
        raise OSError(e.errno, e.strerror,
                      "socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER)") from None
    s.close()


class Nft:
    """Runs nft commands in the calling thread's network namespace, one transaction per call.

    ``run`` takes nft's command language (what ``nft -f`` reads) and returns nft's text output;
    ``run_json`` takes a libnftables-json document (``{"nftables": [...]}``) and returns the
    parsed JSON output (``{}`` when a command prints nothing). Either way all commands of one
    call commit together or not at all. The object holds no kernel resources and may be shared
    between threads; each call works in its caller's namespace (see the module docstring).
    """

    def __init__(self, library: str | None = None) -> None:
        # The shared library is looked up per call (``unload_library`` may have unmapped
        # it since); a named one is this object's own.
        self._lib = load_library(library) if library is not None else None
        if library is None:
            load_library()  # FailedPrecondition now, not at the first call

    def run(self, cmd: str, *, dry_run: bool = False) -> str:
        """Run ``cmd`` (nft syntax, several commands separated by newlines or ``;``).

        ``dry_run`` evaluates and checks everything against the kernel without committing."""
        return self._run(cmd, 0, dry_run)

    def run_json(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Run a libnftables-json document; return nft's JSON output parsed (or ``{}``)."""
        out = self._run(json.dumps(obj), NFT_CTX_OUTPUT.JSON, dry_run)
        if not out.strip():
            return {}
        parsed = json.loads(out)
        if not isinstance(parsed, dict):
            raise InvalidArgument(f"nft printed JSON that is not an object: {out[:200]!r}")
        return parsed

    def _run(self, cmd: str, flags: int, dry_run: bool) -> str:
        _netlink_probe()
        with _call_lock:
            lib = self._lib if self._lib is not None else load_library()
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM), "nft_ctx_new(0)")
            try:
                lib.nft_ctx_output_set_flags(ctx, flags)
                if dry_run:
                    lib.nft_ctx_set_dry_run(ctx, True)
                if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
                    raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM),
                                  "nft_ctx_buffer_output(ctx)")
                rc = lib.nft_run_cmd_from_buffer(ctx, cmd.encode())
                out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
                err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            finally:
                lib.nft_ctx_free(ctx)
        if rc != 0:
            text = err.strip() or "nft failed without a message"
            code = _errno_of(text)
            if code is None:
                raise InvalidArgument(f"nft: {text}")
            raise OSError(code, text, _call_desc(cmd))
        return out
