"""Apply one image layer (an OCI/Docker changeset tarball) onto a directory.

A layer is a tar archive of what changed against the layers below it: added and
modified paths in full, deleted paths as *whiteouts* (image-spec ``layer.md``)::

    etc/app.d/              a directory: created, or its attributes replace the old ones
    etc/app.d/default.cfg   anything else: whatever was at the path is removed first
    etc/.wh.app.cfg         whiteout: etc/app.cfg of the lower layers is deleted
    bin/.wh..wh..opq        opaque whiteout: everything bin/ held below is deleted,
                            wherever the marker sits in the tar (before or after the
                            entries this layer adds to bin/, which are kept)

``apply_layer(stream, dest)`` reads the tar once, as a stream (``tarfile`` mode ``r|``),
never spooling it to disk or memory, and hashes it on the way: ``diff_id`` is the
sha256 of the uncompressed tar, ``digest`` that of the bytes as given. The
compression is recognised by its magic: gzip or none; zstd (no stdlib module on
3.11), bzip2 and xz raise ``NotImplementedYet``.

``whiteouts="overlay"`` is for applying into an overlayfs upper directory whose lower
layers are mounted beneath it: deletions become overlayfs whiteouts (a 0/0 character
device) and opaque directories get ``trusted.overlay.opaque=y``; both need root.

Safety. The layer is untrusted. Every entry path is taken relative to ``dest`` (a
leading ``/`` is dropped, as Docker does); ``..`` components and NUL bytes are refused.
Parent directories are resolved with :func:`ketch.runtime.rootfs.secure_join`, so
symlinks met on the way, whether already in ``dest`` or made by an earlier entry, are
followed *inside* ``dest`` and never out of it (containerd's rule, which layers
relying on e.g. ``lib -> usr/lib`` need). The final component is never followed: it
is unlinked and re-created (``O_EXCL|O_NOFOLLOW``), and metadata is set on the open
descriptor where the kernel allows. Hard links must name an existing non-directory
inside ``dest`` and link it without following a symlink. Device nodes are made only
by root (otherwise skipped and listed in ``LayerResult.skipped``); ownership is applied
by root only, always by number. Parent resolution works on path strings, so it
assumes nobody else modifies ``dest`` meanwhile (it is a private, fresh snapshot).

Not atomic: on error (``InvalidArgument`` for a bad entry or a truncated/malformed
tar) whatever was applied so far stays. The caller applies into a fresh snapshot and
discards it on failure.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from typing import IO, BinaryIO, Literal, Protocol, cast

from ketch.errors import FailedPrecondition, InvalidArgument, NotImplementedYet
from ketch.runtime.rootfs import secure_join

__all__ = ["OPAQUE_WHITEOUT", "WHITEOUT_PREFIX", "LayerResult", "apply_layer", "clear_entry"]

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_WHITEOUT_META = ".wh..wh."  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs...): ignored
_OVERLAY_OPAQUE = "trusted.overlay.opaque"

_CHUNK = 256 * 1024
_TAR_BUFSIZE = 64 * 1024
_TAIL = 4 * _TAR_BUFSIZE
_BLOCK = 512

_GZIP_MAGIC = b"\x1f\x8b"
_UNSUPPORTED_MAGIC = (
    (b"\x28\xb5\x2f\xfd", "zstd (Python 3.11 has no zstd module; use a gzip or plain layer)"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)
# xattr namespaces a layer may set; trusted.overlay.* would steer overlayfs itself
_XATTR_ALLOWED = ("user.", "security.", "trusted.")
_XATTR_DENIED = ("trusted.overlay.",)
_XATTR_QUIET_ERRNOS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES)


def clear_entry(path: str, *, keep_dir: bool) -> bool:
    """Make room for a layer entry at ``path``: remove what is there (never following
    it). With ``keep_dir`` a directory there stays (True is returned)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return True
        shutil.rmtree(path)
    else:
        os.unlink(path)
    return False


@dataclass(frozen=True, slots=True)
class LayerResult:
    """What applying a layer read and did."""

    diff_id: str  #: "sha256:<hex>" of the uncompressed tar
    digest: str  #: "sha256:<hex>" of the stream as given (equals diff_id if uncompressed)
    size: int  #: bytes of uncompressed tar
    entries: int  #: tar members processed (whiteouts included)
    skipped: tuple[str, ...] = ()  #: members not applied (device nodes without privilege...)


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Reader:
    """Counts, hashes and passes on the bytes of ``src``; remembers a short tail.

    ``read(n)`` returns exactly ``n`` bytes unless the source is exhausted. The tail
    (the last few hundred KiB, with their offset) lets the caller look at the block
    where tarfile stopped reading headers.
    """

    def __init__(self, src: _Readable) -> None:
        self._src = src
        self._pending = b""
        self.hash = hashlib.sha256()
        self.size = 0
        self._tail = bytearray()
        self._tail_start = 0

    def _pull(self, n: int) -> bytes:
        data = self._src.read(n)
        if data:
            self.hash.update(data)
            self.size += len(data)
            self._tail += data
            if len(self._tail) > 2 * _TAIL:
                cut = len(self._tail) - _TAIL
                del self._tail[:cut]
                self._tail_start += cut
        return data

    def peek(self, n: int) -> bytes:
        while len(self._pending) < n:
            more = self._pull(n - len(self._pending))
            if not more:
                break
            self._pending += more
        return self._pending[:n]

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [self._pending]
            self._pending = b""
            while more := self._pull(_CHUNK):
                parts.append(more)
            return b"".join(parts)
        out = [self._pending[:n]]
        self._pending = self._pending[n:]
        got = len(out[0])
        while got < n:
            more = self._pull(n - got)
            if not more:
                break
            out.append(more)
            got += len(more)
        return b"".join(out)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def block_at(self, offset: int) -> bytes:
        """Up to one tar block at ``offset``, reading on if needed (b"" at the end)."""
        while self.size < offset + _BLOCK and self.read(_BLOCK):
            pass
        start = offset - self._tail_start
        if start < 0:  # cannot happen: tarfile reads at most one buffer past its offset
            raise AssertionError("layer: end-of-archive block fell out of the tail window")
        return bytes(self._tail[start:start + _BLOCK])

    def sha256(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def apply_layer(stream: BinaryIO, dest: str, *,
                whiteouts: Literal["oci", "overlay"] | str = "oci") -> LayerResult:
    """Apply the layer tarball read from ``stream`` onto the directory ``dest``.

    ``stream`` is read to its end. See the module docstring for the semantics.
    Raises ``InvalidArgument`` naming the entry for an unsafe or impossible entry,
    or for a truncated or malformed tar; ``NotImplementedYet`` for zstd, bzip2, xz.
    """
    if whiteouts not in ("oci", "overlay"):
        raise InvalidArgument(f"layer: whiteouts must be 'oci' or 'overlay', not {whiteouts!r}")
    root = os.path.realpath(dest)
    if not os.path.isdir(root):
        raise InvalidArgument(f"layer: destination {dest!r} is not a directory")

    raw = _Reader(stream)
    magic = raw.peek(6)
    for prefix, what in _UNSUPPORTED_MAGIC:
        if magic.startswith(prefix):
            raise NotImplementedYet(f"layer: {what}-compressed layers are not supported yet")
    gz = magic.startswith(_GZIP_MAGIC)
    body = _Reader(gzip.GzipFile(fileobj=cast(IO[bytes], raw), mode="rb")) if gz else raw

    applier = _Applier(root, overlay=whiteouts == "overlay")
    try:
        with tarfile.open(fileobj=cast(IO[bytes], body), mode="r|",
                          bufsize=_TAR_BUFSIZE) as tf:
            while (ti := tf.next()) is not None:
                applier.apply(tf, ti)
                # stream mode still keeps every TarInfo; we never look back, so drop them
                members = getattr(tf, "members", None)
                if isinstance(members, list):
                    members.clear()
            _check_end(body, tf.offset)
        body.drain()
        raw.drain()
    except EOFError as e:
        raise InvalidArgument(f"layer: truncated tar (compressed stream ends early: {e})") from e
    except (tarfile.TarError, zlib.error, gzip.BadGzipFile) as e:
        raise InvalidArgument(f"layer: truncated tar or malformed layer: {e}") from e
    applier.finish()
    return LayerResult(diff_id=body.sha256(), digest=raw.sha256(), size=body.size,
                       entries=applier.entries, skipped=tuple(applier.skipped))


def _check_end(body: _Reader, offset: int) -> None:
    """Refuse a tar whose header reading stopped on anything but a clean end.

    tarfile's stream mode ends the archive silently on a short or corrupt header
    after the first member; like Go's archive/tar we accept only the end of the
    data or a zero block at that point.
    """
    block = body.block_at(offset)
    if not block:
        return
    if len(block) < _BLOCK:
        raise InvalidArgument(f"layer: truncated tar: partial header at byte {offset}")
    if block.count(0) != _BLOCK:
        raise InvalidArgument(f"layer: truncated tar or malformed layer: bad header at byte "
                              f"{offset}")


def _split(name: str, entry: str, what: str = "path") -> list[str]:
    if "\x00" in name:
        raise InvalidArgument(f"layer: entry {entry!r}: {what} contains a NUL byte")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"layer: entry {entry!r}: {what} {name!r} contains '..'")
    return parts


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    return round(float(ti.mtime) * 1_000_000_000)


class _Applier:
    """The state of one apply: what this layer created, and directory times to set last."""

    def __init__(self, root: str, *, overlay: bool) -> None:
        self.root = root
        self.overlay = overlay
        self.privileged = os.geteuid() == 0
        self.entries = 0
        self.skipped: list[str] = []
        self.added: set[str] = set()  # resolved paths (relative to root) this layer made
        self.ancestors: set[str] = set()  # directories with something this layer made below
        self.dirs: dict[str, tuple[int, int, int]] = {}  # path -> (inode, mode, mtime ns)

    # -- paths ---------------------------------------------------------------------

    def _rel(self, path: str) -> str:
        rel = os.path.relpath(path, self.root)
        return "" if rel == "." else rel

    def _mark(self, path: str) -> None:
        rel = self._rel(path)
        self.added.add(rel)
        while rel:
            rel = os.path.dirname(rel)
            if rel in self.ancestors:
                break
            self.ancestors.add(rel)

    def _parent(self, parts: list[str], entry: str, create: bool = True) -> str | None:
        """The directory for ``parts`` resolved inside root, made if missing (like mkdir -p)."""
        resolved = secure_join(self.root, "/".join(parts))
        cur = self.root
        for comp in self._rel(resolved).split("/"):
            if not comp:
                continue
            cur = os.path.join(cur, comp)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(cur, 0o755)
                self._mark(cur)
                continue
            if not stat.S_ISDIR(st.st_mode):
                if not create:
                    return None
                raise InvalidArgument(
                    f"layer: entry {entry!r}: {self._rel(cur)!r} is not a directory")
        return resolved

    def _remove_lower(self, path: str) -> None:
        """Delete ``path`` as lower layers left it, keeping what this layer added."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        rel = self._rel(path)
        if stat.S_ISDIR(st.st_mode) and (rel in self.ancestors or rel in self.added):
            for name in os.listdir(path):
                self._remove_lower(os.path.join(path, name))
        elif rel in self.added:
            return
        elif stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    # -- entries -------------------------------------------------------------------

    def apply(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        self.entries += 1
        try:
            self._apply(tf, ti)
        except OSError as e:
            e.add_note(f"layer entry {ti.name!r}")
            raise

    def _apply(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        name = ti.name
        parts = _split(name, name)
        if parts and parts[-1].startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, name)
            return
        if not parts:
            if not ti.isdir():
                raise InvalidArgument(f"layer: entry {name!r}: the root must be a directory")
            self._dir(self.root, ti)
            return
        parent = self._parent(parts[:-1], name)
        assert parent is not None
        path = os.path.join(parent, parts[-1])
        if ti.isdir():
            self._dir(path, ti)
        elif ti.isreg():
            self._file(tf, ti, path)
        elif ti.issym():
            self._symlink(ti, path)
        elif ti.islnk():
            self._hardlink(ti, path)
        elif ti.ischr() or ti.isblk() or ti.isfifo():
            if not self._node(ti, path):
                return
        else:
            self._skip(name, f"unsupported tar type {ti.type!r}")
            return
        self._mark(path)

    def _skip(self, name: str, why: str) -> None:
        log.warning("layer: skipping %r: %s", name, why)
        self.skipped.append(name)

    def _dir(self, path: str, ti: tarfile.TarInfo) -> None:
        if not clear_entry(path, keep_dir=True):
            os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._chown(fd, ti)
            self._xattrs(fd, ti)
            ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        # mode and times last: a read-only directory must still take its children, and
        # creating them would bump its mtime
        self.dirs[path] = (ino, ti.mode & 0o7777, _mtime_ns(ti))

    def _file(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, path: str) -> None:
        clear_entry(path, keep_dir=False)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            src = tf.extractfile(ti)
            if src is not None:
                while chunk := src.read(_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            self._chown(fd, ti)
            os.fchmod(fd, ti.mode & 0o7777)  # after chown, which clears setuid
            self._xattrs(fd, ti)  # after chown, which clears security.capability
            os.utime(fd, ns=(_mtime_ns(ti), _mtime_ns(ti)))
        finally:
            os.close(fd)

    def _symlink(self, ti: tarfile.TarInfo, path: str) -> None:
        if not ti.linkname or "\x00" in ti.linkname:
            raise InvalidArgument(f"layer: entry {ti.name!r}: bad symlink target")
        clear_entry(path, keep_dir=False)
        os.symlink(ti.linkname, path)
        self._chown(path, ti)
        self._xattrs(path, ti)
        os.utime(path, ns=(_mtime_ns(ti), _mtime_ns(ti)), follow_symlinks=False)

    def _hardlink(self, ti: tarfile.TarInfo, path: str) -> None:
        tparts = _split(ti.linkname, ti.name, "hardlink target")
        tparent = self._parent(tparts[:-1], ti.name, create=False) if tparts else None
        target = os.path.join(tparent, tparts[-1]) if tparent is not None else None
        try:
            st = os.lstat(target) if target is not None else None
        except FileNotFoundError:
            st = None
        if target is None or st is None:
            raise InvalidArgument(f"layer: entry {ti.name!r}: hardlink target "
                                  f"{ti.linkname!r} does not exist in the layer or below")
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"layer: entry {ti.name!r}: hardlink target "
                                  f"{ti.linkname!r} is a directory")
        if target == path:
            return
        clear_entry(path, keep_dir=False)
        # never AT_SYMLINK_FOLLOW: a link to a symlink is a second name for the symlink
        os.link(target, path, follow_symlinks=False)

    def _node(self, ti: tarfile.TarInfo, path: str) -> bool:
        fifo = ti.isfifo()
        if not fifo and not self.privileged:
            self._skip(ti.name, "device nodes need root")
            return False
        clear_entry(path, keep_dir=False)
        fmt = stat.S_IFIFO if fifo else stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
        try:
            os.mknod(path, fmt | 0o600, 0 if fifo else os.makedev(ti.devmajor, ti.devminor))
        except PermissionError:
            self._skip(ti.name, "mknod not permitted")
            return False
        self._chown(path, ti)
        os.chmod(path, ti.mode & 0o7777)  # just made by us, not a symlink
        self._xattrs(path, ti)
        os.utime(path, ns=(_mtime_ns(ti), _mtime_ns(ti)), follow_symlinks=False)
        return True

    # -- metadata ------------------------------------------------------------------

    def _chown(self, target: int | str, ti: tarfile.TarInfo) -> None:
        if not self.privileged:
            return
        try:
            if isinstance(target, int):
                os.fchown(target, ti.uid, ti.gid)
            else:
                os.chown(target, ti.uid, ti.gid, follow_symlinks=False)
        except OSError as e:
            raise InvalidArgument(f"layer: entry {ti.name!r}: cannot chown to "
                                  f"{ti.uid}:{ti.gid}: {e.strerror}") from e

    def _xattrs(self, target: int | str, ti: tarfile.TarInfo) -> None:
        for key, value in ti.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            attr = key[len("SCHILY.xattr."):]
            if "\x00" in attr:
                raise InvalidArgument(f"layer: entry {ti.name!r}: xattr name contains NUL")
            if not attr.startswith(_XATTR_ALLOWED) or attr.startswith(_XATTR_DENIED):
                log.debug("layer: %r: ignoring xattr %s", ti.name, attr)
                continue
            # tarfile decoded the raw PAX value as UTF-8 with surrogateescape: undo it
            raw = value.encode("utf-8", "surrogateescape")
            try:
                if isinstance(target, int):
                    os.setxattr(target, attr, raw)
                else:
                    os.setxattr(target, attr, raw, follow_symlinks=False)
            except OSError as e:
                if e.errno not in _XATTR_QUIET_ERRNOS:
                    raise
                log.debug("layer: %r: xattr %s not set: %s", ti.name, attr, e.strerror)

    # -- whiteouts -----------------------------------------------------------------

    def _whiteout(self, parts: list[str], name: str) -> None:
        base = parts[-1]
        parent = self._parent(parts[:-1], name, create=self.overlay)
        if base == OPAQUE_WHITEOUT:
            if parent is None:
                return
            if self.overlay:
                try:
                    os.setxattr(parent, _OVERLAY_OPAQUE, b"y", follow_symlinks=False)
                except PermissionError as e:
                    raise FailedPrecondition(
                        f"layer: entry {name!r}: setting {_OVERLAY_OPAQUE} needs root") from e
            else:
                for child in os.listdir(parent):
                    self._remove_lower(os.path.join(parent, child))
            return
        if base.startswith(_WHITEOUT_META):
            log.debug("layer: ignoring whiteout metadata %r", name)
            return
        victim = base[len(WHITEOUT_PREFIX):]
        if victim in ("", ".", ".."):
            raise InvalidArgument(f"layer: entry {name!r}: whiteout names no sibling")
        if parent is None:
            return
        target = os.path.join(parent, victim)
        if not self.overlay:
            self._remove_lower(target)
            return
        if self._rel(target) in self.added:  # whiteouts hide lower layers only
            return
        clear_entry(target, keep_dir=False)
        try:
            os.mknod(target, stat.S_IFCHR, os.makedev(0, 0))
        except PermissionError as e:
            raise FailedPrecondition(
                f"layer: entry {name!r}: overlay whiteouts (0/0 devices) need root") from e

    def finish(self) -> None:
        """Set directory modes and times, now that nothing more is created inside."""
        for path, (ino, mode, mtime) in self.dirs.items():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue  # replaced by a later entry
            try:
                if os.fstat(fd).st_ino != ino:
                    continue
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)
