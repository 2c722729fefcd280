"""Tiny busybox root filesystems and bundles, for tests and benchmarks.

The host's statically linked busybox (Debian's ``busybox-static``) is the whole
userland: one binary plus a symlink per applet. A rootfs made here looks like::

    bin/busybox          a copy of the host binary
    bin/<applet>         -> busybox, for every applet busybox lists (sh, echo, sleep, ...)
    sbin/<applet>        -> ../bin/busybox, for applets busybox installs under sbin
    etc/passwd, etc/group   root and nobody
    proc sys dev run var root   empty directories (the runtime mounts over some)
    tmp                  mode 1777

Nothing is pulled from the internet. Building one takes a few milliseconds; the
applet list and the static-binary check are cached per process.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import subprocess

from ketch.errors import FailedPrecondition
from ketch.runtime.specgen import default_spec

__all__ = ["BUSYBOX", "applets", "copy_rootfs", "make_bundle", "make_rootfs"]

BUSYBOX = "/bin/busybox"

_PT_INTERP = 3
_DIRS = ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var", "usr")
_PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _require_static(path: str) -> None:
    """Raise FailedPrecondition unless ``path`` is an ELF file with no PT_INTERP header.

    A dynamically linked busybox would need the host's loader and libc inside
    the rootfs, which these bundles do not have.
    """
    hint = "install busybox-static (apt-get install busybox-static)"
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if len(ident) < 52 or ident[:4] != b"\x7fELF":
                raise FailedPrecondition(f"{path} is not an ELF binary; {hint}")
            is64 = ident[4] == 2
            endian = "<" if ident[5] == 1 else ">"
            if is64:
                phoff, = struct.unpack_from(endian + "Q", ident, 32)
                phentsize, phnum = struct.unpack_from(endian + "HH", ident, 54)
            else:
                phoff, = struct.unpack_from(endian + "I", ident, 28)
                phentsize, phnum = struct.unpack_from(endian + "HH", ident, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except FileNotFoundError:
        raise FailedPrecondition(f"{path} not found; {hint}") from None
    for i in range(phnum):
        p_type, = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == _PT_INTERP:
            raise FailedPrecondition(f"{path} is dynamically linked; {hint}")


@functools.cache
def _applets(binary: str, mtime_ns: int) -> tuple[tuple[str, ...], frozenset[str]]:
    # mtime_ns is only part of the cache key: a reinstalled busybox is re-read
    _require_static(binary)
    names = subprocess.run([binary, "--list"], capture_output=True, text=True,
                           check=True).stdout.split()
    full = subprocess.run([binary, "--list-full"], capture_output=True, text=True,
                          check=False).stdout.split()
    sbin = frozenset(os.path.basename(p) for p in full if p.startswith(("sbin/", "usr/sbin/")))
    return tuple(n for n in names if n and "/" not in n and n != "busybox"), sbin


def _mtime(binary: str) -> int:
    try:
        return os.stat(binary).st_mtime_ns
    except FileNotFoundError:
        raise FailedPrecondition(
            f"{binary} not found; install busybox-static (apt-get install busybox-static)"
        ) from None


def applets(binary: str = BUSYBOX) -> list[str]:
    """Applet names of the static busybox at ``binary`` (FailedPrecondition if unusable)."""
    return list(_applets(binary, _mtime(binary))[0])


def make_rootfs(dest: str, *, binary: str = BUSYBOX) -> None:
    """Create a busybox root filesystem at ``dest`` (created; may exist but should be empty).

    Raises FailedPrecondition when ``binary`` is missing or not statically linked.
    """
    names, sbin = _applets(binary, _mtime(binary))
    os.makedirs(dest, exist_ok=True)
    for d in _DIRS:
        os.makedirs(os.path.join(dest, d), mode=0o755, exist_ok=True)
    # mode= on makedirs is filtered by the umask; the sticky bit needs chmod
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    os.chmod(os.path.join(dest, "root"), 0o700)
    bb = os.path.join(dest, "bin", "busybox")
    shutil.copyfile(binary, bb)
    os.chmod(bb, 0o755)
    bindir = os.path.join(dest, "bin")
    sbindir = os.path.join(dest, "sbin")
    for name in names:
        # relative targets resolve both inside the container and from the host
        os.symlink("busybox", os.path.join(bindir, name))
        if name in sbin:
            os.symlink("../bin/busybox", os.path.join(sbindir, name))
    with open(os.path.join(dest, "etc", "passwd"), "w") as f:
        f.write(_PASSWD)
    with open(os.path.join(dest, "etc", "group"), "w") as f:
        f.write(_GROUP)


def copy_rootfs(src: str, dst: str) -> None:
    """Recreate the tree ``src`` at ``dst`` (which must not exist).

    Regular files are hard-linked when ``src`` and ``dst`` share a filesystem
    (copied otherwise), so a template built once is cheap to clone; a container
    that writes *into* a hard-linked file changes the template too, so clone only
    trees whose files the container leaves alone. Symlinks are copied as links,
    directory modes (including the sticky bit) are kept by copytree's copystat.
    """
    def link_or_copy(s: str, d: str) -> object:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
        return d

    shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)


def make_bundle(dest: str, args: list[str], *, terminal: bool = False, rootless: bool = False,
                rootfs: str | None = None, readonly: bool = False) -> str:
    """Write an OCI bundle at ``dest`` and return its absolute path.

    ``dest/config.json`` comes from ``specgen.default_spec`` with ``args`` as the
    process; ``root.readonly`` is ``readonly`` (default False, so tests can write
    anywhere). Without ``rootfs`` a fresh busybox tree is made at ``dest/rootfs``;
    with it, that existing tree is used in place (``root.path`` set to its
    absolute path) — share it only between containers that do not write to it.
    """
    bundle = os.path.abspath(dest)
    os.makedirs(bundle, exist_ok=True)
    if rootfs is None:
        make_rootfs(os.path.join(bundle, "rootfs"))
        root_path = "rootfs"
    else:
        root_path = os.path.abspath(rootfs)
    spec = default_spec(rootless=rootless, args=list(args), root_path=root_path,
                        terminal=terminal)
    spec["root"]["readonly"] = readonly
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f, indent=2)
    return bundle
