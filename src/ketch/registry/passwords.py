"""Password hashes (bcrypt ``$2y$``/``$2b$``/``$2a$``, and whatever else the system
supports) checked with the system's libcrypt, through ctypes; and htpasswd files.

libxcrypt (Debian's ``libcrypt.so.1``) implements bcrypt, so the registry verifies
Apache ``htpasswd -B`` files without a Python dependency. The calls used, from
``<crypt.h>``::

    char *crypt_rn(const char *phrase, const char *setting, void *data, int size);
    char *crypt_gensalt_rn(const char *prefix, unsigned long count,
                           const char *rbytes, int nrbytes, char *output, int output_size);
    int crypt_checksalt(const char *setting);

``crypt_rn`` is reentrant (its scratch space, a ``struct crypt_data``, is ours), so
checks run in worker threads in parallel. A library without bcrypt (an old glibc
``libcrypt``) is refused when the htpasswd file is loaded, with a message saying so.

``Htpasswd`` is one file of ``user:hash`` lines, re-read when its mtime changes;
``verify`` keeps successful checks for a few minutes (keyed by a keyed hash of user,
password and stored hash) because registry clients send Basic credentials on every
request and bcrypt is deliberately slow.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass

from ketch.errors import FailedPrecondition, InvalidArgument

__all__ = ["BCRYPT_PREFIXES", "Htpasswd", "bcrypt_supported", "check_password",
           "hash_password"]

log = logging.getLogger(__name__)

BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
_CRYPT_DATA_SIZE = 32768  # sizeof(struct crypt_data) in libxcrypt
_CRYPT_SALT_OK = 0
_CACHE_SECONDS = 300.0
_CACHE_MAX = 4096

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def _libcrypt() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is None:
            name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
            try:
                lib = ctypes.CDLL(name, use_errno=True)
            except OSError as e:
                raise FailedPrecondition(
                    f"cannot load libcrypt ({name}): {e}; install libcrypt1 "
                    "(libxcrypt) for htpasswd authentication") from None
            if not hasattr(lib, "crypt_rn") or not hasattr(lib, "crypt_gensalt_rn"):
                raise FailedPrecondition(f"{name} is not libxcrypt (no crypt_rn); bcrypt "
                                         "password hashes cannot be checked")
            lib.crypt_rn.restype = ctypes.c_char_p
            lib.crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                                     ctypes.c_int]
            lib.crypt_gensalt_rn.restype = ctypes.c_char_p
            lib.crypt_gensalt_rn.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                             ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            if hasattr(lib, "crypt_checksalt"):
                lib.crypt_checksalt.restype = ctypes.c_int
                lib.crypt_checksalt.argtypes = [ctypes.c_char_p]
            _lib = lib
        return _lib


def _crypt(phrase: bytes, setting: bytes) -> bytes | None:
    """crypt_rn(phrase, setting): the hash, or None when the library refuses the
    setting (unsupported method, malformed hash)."""
    lib = _libcrypt()
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    out: bytes | None = lib.crypt_rn(phrase, setting, data, _CRYPT_DATA_SIZE)
    if out is None or out.startswith(b"*"):
        return None
    return out


def bcrypt_supported() -> bool:
    """Whether the system's libcrypt hashes bcrypt (``$2b$``)."""
    try:
        lib = _libcrypt()
    except FailedPrecondition:
        return False
    if hasattr(lib, "crypt_checksalt"):
        return bool(lib.crypt_checksalt(b"$2b$05$abcdefghijklmnopqrstuu") == _CRYPT_SALT_OK)
    return _crypt(b"x", b"$2b$04$abcdefghijklmnopqrstuu") is not None


def check_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (constant-time comparison of the hashes).
    Blocks for as long as the hash's cost says (bcrypt cost 10: ~70 ms)."""
    if not hashed or "\0" in password:
        return False
    got = _crypt(password.encode(), hashed.encode())
    return got is not None and hmac.compare_digest(got, hashed.encode())


def hash_password(password: str, *, cost: int = 10, prefix: str = "$2y$") -> str:
    """A new bcrypt hash of ``password`` (what ``htpasswd -B -C cost`` writes)."""
    if not 4 <= cost <= 31:
        raise InvalidArgument(f"bcrypt cost must be 4..31, got {cost}")
    if "\0" in password:
        raise InvalidArgument("a password cannot contain NUL")
    lib = _libcrypt()
    out = ctypes.create_string_buffer(128)
    setting = lib.crypt_gensalt_rn(prefix.encode(), cost, None, 0, out, len(out))
    if setting is None:
        err = ctypes.get_errno()
        raise FailedPrecondition(f"crypt_gensalt_rn({prefix!r}, {cost}): "
                                 f"{os.strerror(err) if err else 'unsupported'}")
    hashed = _crypt(password.encode(), setting)
    if hashed is None:
        raise FailedPrecondition(f"libcrypt cannot hash {prefix} passwords")
    return hashed.decode()


@dataclass(frozen=True, slots=True)
class _Entries:
    mtime_ns: int
    size: int
    users: dict[str, str]


class Htpasswd:
    """An htpasswd file: ``user:hash`` per line (``#`` comments and blank lines
    ignored). Re-read when it changes on disk; a file that vanishes keeps the last
    good contents (and logs), so a half-finished edit does not lock everyone out."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: _Entries | None = None
        self._cache: dict[bytes, float] = {}
        self._cache_key = secrets.token_bytes(32)
        self._load()
        if not bcrypt_supported():
            raise FailedPrecondition(
                "the system libcrypt does not support bcrypt ($2y$/$2b$) hashes; "
                "install libxcrypt (Debian: libcrypt1) to use htpasswd authentication")

    def _load(self) -> _Entries:
        try:
            st = os.stat(self.path)
        except OSError as e:
            if self._entries is not None:
                log.warning("htpasswd %s unreadable (%s); keeping the last version",
                            self.path, e.strerror)
                return self._entries
            raise InvalidArgument(f"cannot read htpasswd file {self.path}: "
                                  f"{e.strerror}") from None
        cur = self._entries
        if cur is not None and (cur.mtime_ns, cur.size) == (st.st_mtime_ns, st.st_size):
            return cur
        users: dict[str, str] = {}
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                user, sep, hashed = line.partition(":")
                if not sep or not user or not hashed:
                    log.warning("htpasswd %s:%d: not user:hash, skipped", self.path, n)
                    continue
                if not hashed.startswith("$") or hashed.startswith(("$apr1$", "{")):
                    log.warning("htpasswd %s:%d: user %s has a hash libcrypt cannot check "
                                "(use htpasswd -B); the user cannot log in", self.path, n, user)
                users[user] = hashed
        self._entries = _Entries(st.st_mtime_ns, st.st_size, users)
        self._cache.clear()
        return self._entries

    @property
    def users(self) -> list[str]:
        with self._lock:
            return sorted(self._load().users)

    def verify(self, user: str, password: str) -> bool:
        """Whether ``user`` exists and ``password`` is theirs. Blocking (bcrypt)."""
        with self._lock:
            hashed = self._load().users.get(user)
        if hashed is None:
            # Spend the same time as a real check, so a probe cannot tell which users exist.
            check_password(password, "$2y$05$abcdefghijklmnopqrstuuGs0lJmBD5xZlQiZrNqDd1hYkPqn7Ulu")
            return False
        key = hmac.new(self._cache_key, b"\0".join((user.encode(), password.encode(),
                                                    hashed.encode())), hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            seen = self._cache.get(key)
            if seen is not None and now - seen < _CACHE_SECONDS:
                return True
        if not check_password(password, hashed):
            return False
        with self._lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = now
        return True
