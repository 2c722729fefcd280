"""The build context's way in: a tar stream extracted once, every file hashed on the way.

``POST /build`` sends the context as a tar. The executor needs it as a directory (a
:class:`~ketch.image.build.context.BuildContext`) and, for the cache keys of COPY/ADD,
the sha256 of every file it copies. Reading the files a second time only to hash them
doubles the work of a cold build, so :func:`extract_context` hashes each regular file
while writing it and records the digest in the build cache's file-digest map under the
key :meth:`BuildContext.digest` looks up (path, device, inode, size, mtime, ctime —
taken after the file's last change), so the first COPY of a file never re-reads it.

Extraction follows the front end's rules (``BuildContext.from_tar``, see
``docs/build.md``): absolute names, ``..`` and NUL bytes are refused; a member behind
a symlink or a file is refused; hard links must name a file already extracted, reached
without a symlink; devices, fifos and sockets are skipped; owners and times are
dropped, permission bits kept. A broken stream is ``InvalidArgument("failed to read
build context: …")``. The stream is read once, in large pieces (``_CHUNK``); a
seekable one (a spooled body) in place, without tarfile's stream buffering.

Lifecycle: the caller owns ``workdir`` (empty, created by it) and removes it after the
build; :func:`forget` drops the digests recorded for it from the map.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from typing import IO, Literal

from ketch.errors import InvalidArgument
from ketch.image.build.context import BuildContext, DigestCache

__all__ = ["extract_context", "forget"]

_CHUNK = 1 << 20


def extract_context(stream: IO[bytes], workdir: str, digests: DigestCache) -> BuildContext:
    """Extract the tar ``stream`` (plain, gzip, bzip2 or xz) into ``workdir``; hash
    every regular file into ``digests``; return the context (its ``.dockerignore``
    applied)."""
    root = os.path.realpath(workdir)
    hashed: dict[str, str] = {}  # context path -> content digest
    try:
        # a seekable body (spooled) is read in place; a socket's as a stream
        mode: Literal["r:*", "r|*"] = "r:*" if _seekable(stream) else "r|*"
        with tarfile.open(fileobj=stream, mode=mode, bufsize=_CHUNK) as tar:
            while (member := tar.next()) is not None:
                _extract(tar, member, root, hashed)
                seen = getattr(tar, "members", None)  # stream mode keeps every TarInfo;
                if isinstance(seen, list):  # nothing looks back, so drop them
                    seen.clear()
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise InvalidArgument(f"failed to read build context: {e}") from None
    for rel, digest in hashed.items():  # keyed after the last change (links bump ctime)
        path = os.path.join(root, rel)
        try:
            st = os.stat(path)
        except OSError:
            continue
        digests[(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)] = \
            digest
    return BuildContext.from_directory(root)


def forget(digests: DigestCache, workdir: str) -> None:
    """Drop the digests :func:`extract_context` recorded for files under ``workdir``."""
    prefix = os.path.realpath(workdir) + "/"
    for key in [k for k in list(digests) if k[0].startswith(prefix)]:
        digests.pop(key, None)


def _seekable(stream: IO[bytes]) -> bool:
    try:
        return stream.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def _safe_name(name: str) -> str:
    """A member name as a context path; refuses absolute names, ``..`` and NUL."""
    if name.startswith("/") or "\0" in name:
        raise InvalidArgument(f"invalid build context: absolute path {name!r} in the tar")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"invalid build context: {name!r} climbs out of the context")
    return "/".join(parts)


def _make_parents(root: str, rel: str) -> None:
    """Create the missing parents of ``rel`` (0755); refuse to pass a non-directory."""
    here = root
    for part in rel.split("/")[:-1]:
        here = os.path.join(here, part)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            os.mkdir(here, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"invalid build context: {rel!r} is under a "
                                  "non-directory (or a symlink)")


def _remove(path: str) -> None:
    """Make room for a non-directory at ``path``; a directory there is an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"invalid build context: {path!r} is a directory and a file")
    os.unlink(path)


def _plain_file(root: str, rel: str) -> bool:
    """Whether ``rel`` is a regular file reached without any symlink."""
    here = root
    for part in rel.split("/"):
        here = os.path.join(here, part)
        try:
            st = os.lstat(here)
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            return False
    return stat.S_ISREG(st.st_mode)


def _write_hashed(src: IO[bytes], dest: str) -> str:
    """Copy ``src`` into the new file ``dest`` (mode 0600); the content's digest."""
    h = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest()


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, root: str,
             hashed: dict[str, str]) -> None:
    rel = _safe_name(member.name)
    if not rel:
        return
    _make_parents(root, rel)
    dest = os.path.join(root, rel)
    mode = member.mode & 0o7777
    hashed.pop(rel, None)
    if member.isdir():
        if not os.path.isdir(dest) or os.path.islink(dest):
            _remove(dest)
            os.mkdir(dest, 0o755)
        os.chmod(dest, mode | 0o700)
    elif member.isreg():
        _remove(dest)
        src = tar.extractfile(member)
        assert src is not None
        hashed[rel] = _write_hashed(src, dest)
        os.chmod(dest, mode)
    elif member.issym():
        _remove(dest)
        os.symlink(member.linkname, dest)
    elif member.islnk():
        target = _safe_name(member.linkname)
        if not target or not _plain_file(root, target):
            raise InvalidArgument(f"invalid build context: hard link {member.name!r} to "
                                  f"{member.linkname!r} is not to a file in the context")
        _remove(dest)
        os.link(os.path.join(root, target), dest)
        if target in hashed:
            hashed[rel] = hashed[target]
    # devices, fifos and sockets have no place in a build context: skipped
