"""COPY and ADD: a layer written straight from the sources, without running a container.

A COPY step is one layer on the stage's parent snapshot::

    prepare  "build-<random>"        active snapshot on the parent's chain ID; mounted
    plan     the entries to write    destination rules (below), checked against the
                                     mounted parent tree: what exists, where symlinks lead
    write    the tree                each entry written into the mounted snapshot
                                     (:mod:`.tree`: the layer applier's rules), the
                                     sources read once
             the layer tar           on overlay with the engine's DerivedContent: not
                                     written; its digest (the diff_id) is taken from
                                     :func:`ketch.engine.diff.diff_tar` of the snapshot,
                                     which makes the same bytes when the blob is first
                                     read (:mod:`ketch.engine.derived`). Otherwise
                                     written into the content store alongside the tree,
                                     hashed on the way (a plain tar: its own diff_id)
    commit   "<chain id>"            the snapshot the next step's container or COPY uses

``ADD`` of a local archive takes the longer road: the tar first, then
``apply_layer(blob)`` into the snapshot (ketch.image.layer: every path resolved inside
the root), since an archive's members can be of any kind.

On any failure the active snapshot and the half-written blob ingest are dropped.

Destination rules (docker's): a relative destination is under WORKDIR; the destination
is a directory when it ends in ``/`` (or ``.``), when there are several sources, or when
it already is one in the image; a file source then lands under its base name, else it
*is* the destination. A directory source copies its contents. Missing parents are
created 0755, owned like the copied files. Owners are ``--chown`` (names looked up in
the image's ``/etc/passwd`` and ``/etc/group``) or 0:0; modes are the source's or
``--chmod``; mtimes are kept. ``ADD`` of a local tar archive (plain, gzip, bzip2, xz)
extracts it into the destination directory, keeping the members' owners and modes.

The tar names are the destination paths resolved inside the parent tree, so a
destination reached through a symlink (``/var/run`` → ``/run``) lands where the link
leads and the layer records the real path.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tarfile
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, cast

from ketch.content import ContentStore, Writer
from ketch.engine.build.tree import TreeWriter
from ketch.engine.derived import DerivedContent
from ketch.engine.diff import diff_tar
from ketch.errors import Conflict, InvalidArgument, KetchError, NotFound
from ketch.image import blobs
from ketch.image.build.context import BuildContext, Entry, Source
from ketch.image.layer import WHITEOUT_PREFIX, apply_layer
from ketch.image.unpack import chain_ids, committed
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor
from ketch.oci.digest import Digester
from ketch.runtime.rootfs import secure_join
from ketch.snapshot import Snapshotter, mount_all, unmount
from ketch.snapshot.overlay import OverlaySnapshotter

__all__ = ["CopySpec", "Layer", "mounted_view", "parse_chmod", "workdir_layer",
           "write_copy_layer"]

_CHUNK = 1 << 20
_BLOCK = 512


@dataclass(frozen=True, slots=True)
class Layer:
    """A layer a step made: its blob descriptor, diff_id and the snapshot's chain ID."""

    descriptor: Descriptor
    diff_id: str
    chain_id: str


@dataclass(frozen=True, slots=True)
class CopySpec:
    """One COPY/ADD, expanded and resolved: what to take from where, and to where.

    ``sources`` are resolved in ``context`` (the build context, or a view of another
    stage's or image's root for ``--from``). ``inline`` are heredoc files
    ``(name, content)``. ``extract`` (ADD) unpacks local tar archives.
    """

    context: BuildContext
    sources: tuple[Source, ...]
    dest: str
    workdir: str
    inline: tuple[tuple[str, str], ...] = ()
    chown: str | None = None
    chmod: int | None = None
    extract: bool = False
    keyword: str = "COPY"
    line: int = 0


def parse_chmod(text: str | None, line: int, keyword: str) -> int | None:
    """``--chmod`` as octal bits (docker's classic builder takes octal only)."""
    if text is None:
        return None
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        from ketch.image.build.instructions import DockerfileError

        raise DockerfileError(line, f"{keyword} failed: invalid chmod parameter: "
                              f"{text!r}: must be an octal mode", parse=False)
    return mode


# -- owners --------------------------------------------------------------------------------


def _db_lookup(root: str, path: str, name: str) -> tuple[int, int] | None:
    """``(id, gid)`` of ``name`` in the image's passwd/group file (gid: passwd only)."""
    try:
        with open(secure_join(root, path), encoding="utf-8", errors="replace") as f:
            for row in f:
                fields = row.rstrip("\n").split(":")
                if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
                    gid = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else -1
                    return int(fields[2]), gid
    except OSError:
        return None
    return None


def resolve_owner(root: str, spec: str | None, line: int, keyword: str) -> tuple[int, int]:
    """``--chown=user[:group]`` → ``(uid, gid)``, names from the image's own files."""
    if not spec:
        return 0, 0
    user, _, group = spec.partition(":")

    def fail(what: str) -> InvalidArgument:
        from ketch.image.build.instructions import DockerfileError

        return DockerfileError(line, f"{keyword} failed: unable to convert uid/gid chown "
                               f"string to host mapping: {what}", parse=False)

    if user.isdigit():
        uid, gid = int(user), int(user)
    else:
        found = _db_lookup(root, "/etc/passwd", user)
        if found is None:
            raise fail(f"can't find uid for user {user}: no such user: {user}")
        uid, gid = found
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = _db_lookup(root, "/etc/group", group)
            if g is None:
                raise fail(f"can't find gid for group {group}: no such group: {group}")
            gid = g[0]
    elif gid < 0:
        gid = uid
    return uid, gid


# -- the entries of a COPY ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    """One tar member to write: ``name`` relative to the root."""

    name: str
    kind: str  # file, dir, symlink, data, archive
    mode: int
    uid: int
    gid: int
    mtime: int = 0
    host_path: str = ""
    target: str = ""
    data: bytes = b""


def _rel(root: str, resolved: str) -> str:
    rel = os.path.relpath(resolved, root)
    return "" if rel == "." else rel


def _is_archive(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def _plan(root: str, spec: CopySpec, owner: tuple[int, int]) -> list[_Item]:
    """The entries a COPY writes, with the destination rules of the module doc."""
    uid, gid = owner
    dest = spec.dest
    if not dest.startswith("/"):
        dest = posixpath.join(spec.workdir or "/", dest)
    dir_like = dest.endswith(("/", "/.")) or spec.dest in (".", "./") or \
        len(spec.sources) + len(spec.inline) > 1
    resolved = secure_join(root, dest)
    if os.path.isdir(resolved):
        dir_like = True
    items: list[_Item] = []
    made: set[str] = set()

    def parents(rel: str, *, include_self: bool) -> None:
        """Dir entries for the missing directories on the way to ``rel``."""
        parts = rel.split("/") if rel else []
        upto = len(parts) if include_self else len(parts) - 1
        for i in range(1, upto + 1):
            sub = "/".join(parts[:i])
            if sub in made:
                continue
            host = os.path.join(root, sub)
            if os.path.lexists(host):
                if os.path.isdir(host) and not os.path.islink(host):
                    continue
                if i < upto or include_self:
                    raise InvalidArgument(f"{spec.keyword} failed: /{sub} exists and is not a "
                                          "directory")
            made.add(sub)
            items.append(_Item(sub, "dir", 0o755, uid, gid))

    if dir_like:
        base = _rel(root, resolved)
        parents(base, include_self=True)
    else:
        up = _rel(root, secure_join(root, posixpath.dirname(dest.rstrip("/")) or "/"))
        parents(up, include_self=True)
        base = posixpath.join(up, posixpath.basename(dest.rstrip("/")))

    def under(path: str) -> str:
        return posixpath.join(base, path) if dir_like else base

    for src in spec.sources:
        host = os.path.join(spec.context.root, src.path) if src.path else spec.context.root
        if spec.extract and not src.is_dir and _is_archive(host) and tarfile.is_tarfile(host):
            parents(base, include_self=True)
            items.append(_Item(base, "archive", 0, 0, 0, host_path=host))
            continue
        if src.is_dir:
            parents(base, include_self=True)
        for e in spec.context.walk(src):
            name = posixpath.join(base, e.path) if src.is_dir else under(e.path)
            items.append(_entry_item(e, name, uid, gid, spec.chmod))
    for name, body in spec.inline:
        mode = spec.chmod if spec.chmod is not None else 0o644
        items.append(_Item(under(name), "data", mode, uid, gid, data=body.encode()))
    return items


def _entry_item(e: Entry, name: str, uid: int, gid: int, chmod: int | None) -> _Item:
    st = os.lstat(e.host_path)
    mtime = int(st.st_mtime)
    if e.kind == "dir":
        return _Item(name, "dir", chmod if chmod is not None else e.mode, uid, gid, mtime)
    if e.kind == "symlink":
        return _Item(name, "symlink", 0o777, uid, gid, mtime, target=e.target or "")
    return _Item(name, "file", chmod if chmod is not None else e.mode, uid, gid, mtime,
                 host_path=e.host_path)


# -- writing the tar -----------------------------------------------------------------------


class _Out:
    """Buffered writes into a content ingest, counting bytes (``w`` None: counted and
    dropped, when only the snapshot is written)."""

    def __init__(self, w: Writer | None) -> None:
        self.w = w
        self.buf = bytearray()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.w is None:
            return
        if len(data) >= _CHUNK:
            self.flush()
            self.w.write(data)
            return
        self.buf += data
        if len(self.buf) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.buf and self.w is not None:
            self.w.write(bytes(self.buf))
            self.buf.clear()


class _Digester:
    """A binary sink that keeps only the sha256 and the count of what it is given."""

    def __init__(self) -> None:
        self.digester = Digester()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digester.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _header(out: _Out, ti: tarfile.TarInfo) -> None:
    ti.uname = ti.gname = ""
    out.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))


def _copy_file(out: _Out, path: str, size: int, tree_fd: int | None = None) -> None:
    """The file's bytes into the tar (padded to a block) and, with ``tree_fd``, into
    the snapshot's copy: one read of the source for both."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        left = size
        while left:
            chunk = os.read(fd, min(left, _CHUNK))
            if not chunk:
                chunk = bytes(min(left, _CHUNK))  # the file shrank: pad as announced
            out.write(chunk)
            if tree_fd is not None:
                TreeWriter.write(tree_fd, chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if size % _BLOCK:
        out.write(bytes(_BLOCK - size % _BLOCK))


def _member_name(base: str, name: str, archive: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts or "\0" in name:
        raise InvalidArgument(f"ADD failed: archive {archive}: member {name!r} climbs out "
                              "of the destination")
    if any(p.startswith(WHITEOUT_PREFIX) for p in parts):
        raise InvalidArgument(f"ADD failed: archive {archive}: member {name!r} has a "
                              "whiteout name")
    return posixpath.join(base, *parts) if parts else base


def _write_archive(out: _Out, item: _Item) -> None:
    shown = posixpath.basename(item.host_path)
    try:
        with tarfile.open(item.host_path, mode="r:*") as tar:
            for ti in tar:
                name = _member_name(item.name, ti.name, shown)
                if name == item.name:
                    continue  # the destination itself ("./")
                new = tarfile.TarInfo(name)
                new.mode, new.uid, new.gid, new.mtime = ti.mode, ti.uid, ti.gid, int(ti.mtime)
                new.pax_headers = {k: v for k, v in ti.pax_headers.items()
                                   if k.startswith("SCHILY.xattr.user.")}
                if ti.isreg():
                    new.size = ti.size
                    _header(out, new)
                    src = tar.extractfile(ti)
                    assert src is not None
                    left = ti.size
                    while left:
                        chunk = src.read(min(left, _CHUNK))
                        if not chunk:
                            raise InvalidArgument(f"ADD failed: archive {shown} is truncated")
                        out.write(chunk)
                        left -= len(chunk)
                    if ti.size % _BLOCK:
                        out.write(bytes(_BLOCK - ti.size % _BLOCK))
                    continue
                if ti.isdir():
                    new.type = tarfile.DIRTYPE
                elif ti.issym():
                    new.type, new.linkname = tarfile.SYMTYPE, ti.linkname
                elif ti.islnk():
                    new.type = tarfile.LNKTYPE
                    new.linkname = _member_name(item.name, ti.linkname, shown)
                elif ti.ischr() or ti.isblk() or ti.isfifo():
                    new.type, new.devmajor, new.devminor = ti.type, ti.devmajor, ti.devminor
                else:
                    continue
                _header(out, new)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidArgument(f"ADD failed: archive {shown}: {e}") from None


def _write_tar(out: _Out, items: Iterable[_Item], tree: TreeWriter | None = None) -> None:
    """The layer tar of ``items`` into ``out``; with ``tree``, the same entries written
    into the snapshot as they go (no archives then: see :mod:`.tree`)."""
    for it in items:
        if it.kind == "archive":
            assert tree is None, "archives are applied from the tar"
            _write_archive(out, it)
            continue
        ti = tarfile.TarInfo(it.name)
        ti.mode, ti.uid, ti.gid, ti.mtime = it.mode, it.uid, it.gid, it.mtime
        if it.kind == "dir":
            ti.type = tarfile.DIRTYPE
            _header(out, ti)
            if tree is not None:
                tree.directory(it.name, it.mode, it.uid, it.gid, it.mtime)
        elif it.kind == "symlink":
            ti.type, ti.linkname = tarfile.SYMTYPE, it.target
            _header(out, ti)
            if tree is not None:
                tree.symlink(it.name, it.target, it.uid, it.gid, it.mtime)
        else:
            size = len(it.data) if it.kind == "data" else os.lstat(it.host_path).st_size
            ti.size = size
            _header(out, ti)
            fd = tree.create(it.name) if tree is not None else None
            try:
                if it.kind == "data":
                    out.write(it.data)
                    if size % _BLOCK:
                        out.write(bytes(_BLOCK - size % _BLOCK))
                    if fd is not None:
                        TreeWriter.write(fd, it.data)
                else:
                    _copy_file(out, it.host_path, size, fd)
            finally:
                if tree is not None and fd is not None:
                    tree.close_file(fd, it.mode, it.uid, it.gid, it.mtime)
    out.write(bytes(2 * _BLOCK))
    out.flush()
    if tree is not None:
        tree.finish()


# -- the step ------------------------------------------------------------------------------


@contextlib.contextmanager
def mounted_view(snapshotter: Snapshotter, parent: str | None) -> Iterator[str]:
    """A read-only mount of the tree at chain ID ``parent`` (empty dir for None)."""
    target = tempfile.mkdtemp(prefix="ketch-build-view-")
    key = f"build-view-{uuid.uuid4().hex[:12]}"
    try:
        if parent is None:
            yield target
            return
        mounts = snapshotter.view(key, parent)
        try:
            mount_all(mounts, target)
            try:
                yield target
            finally:
                unmount(target)
        finally:
            with contextlib.suppress(NotFound):
                snapshotter.remove(key)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(target)


def write_copy_layer(content: ContentStore, snapshotter: Snapshotter, parent: str | None,
                     parent_diff_ids: Sequence[str], spec: CopySpec) -> Layer:
    """Run one COPY/ADD on the tree at chain ID ``parent``; see the module doc.

    ``parent_diff_ids`` are the parent image's diff IDs (for the new chain ID).
    Errors name the step's line when they are about the sources or destination.
    With a :class:`~ketch.engine.derived.DerivedContent` store on overlay snapshots the
    layer is written only as the snapshot, and its tar is a derived blob (digest taken
    by :func:`ketch.engine.diff.diff_tar`, made when it is first read).
    """
    key = f"build-{uuid.uuid4().hex[:12]}"
    target = tempfile.mkdtemp(prefix="ketch-build-")
    derive = isinstance(content, DerivedContent) and isinstance(snapshotter, OverlaySnapshotter)
    w: Writer | None = None
    done = False
    try:
        mounts = snapshotter.prepare(key, parent, labels={"ketch.io/build": spec.keyword})
        mount_all(mounts, target)
        try:
            try:
                owner = resolve_owner(target, spec.chown, spec.line, spec.keyword)
                items = _plan(target, spec, owner)
                # one pass (tar and tree together) unless an archive is extracted
                one_pass = all(it.kind != "archive" for it in items)
                derive = derive and one_pass
                if not derive:
                    w = blobs.new_writer(content, "build")
                out = _Out(w)
                _write_tar(out, items, TreeWriter(target) if one_pass else None)
            except OSError as e:
                raise InvalidArgument(f"Dockerfile:{spec.line}: {spec.keyword} failed: "
                                      f"{e}") from None
            except InvalidArgument as e:
                text = str(e)
                if not text.startswith("Dockerfile:"):
                    raise InvalidArgument(f"Dockerfile:{spec.line}: {text}") from None
                raise
            if w is not None:
                digest, _ = blobs.finish(content, w, out.size, None,
                                         {blobs.LABEL_UNCOMPRESSED: str(out.size)})
                size = out.size
                diff_id = str(digest)  # a plain tar: the blob is its own diff
                if not one_pass:
                    with content.open(digest) as f:
                        diff_id = apply_layer(f, target).diff_id
        finally:
            unmount(target)
        if w is None:  # the tar is the snapshot's own diff: only its digest is taken now
            sink = _Digester()
            diff_tar(snapshotter, key, cast(IO[bytes], sink))
            digest, size = sink.digester.digest(), sink.size
            diff_id = str(digest)
        chain = chain_ids([*parent_diff_ids, diff_id])[-1]
        try:
            snapshotter.commit(chain, key, labels={"ketch.io/diff_id": diff_id})
            done = True
        except Conflict:
            if not committed(snapshotter, chain):
                raise
        if w is None:
            assert isinstance(content, DerivedContent)
            content.add(digest, size, chain, {blobs.LABEL_UNCOMPRESSED: str(size)})
        return Layer(Descriptor(mt.OCI_LAYER, digest, size), diff_id, chain)
    except BaseException:
        if w is not None:
            w.close()
            with contextlib.suppress(KetchError):
                content.abort(w.ref)
        raise
    finally:
        if not done:
            with contextlib.suppress(NotFound):
                snapshotter.remove(key)
        with contextlib.suppress(OSError):
            os.rmdir(target)


def workdir_layer(content: ContentStore, snapshotter: Snapshotter, parent: str | None,
                  parent_diff_ids: Sequence[str], context: BuildContext, path: str,
                  line: int) -> Layer | None:
    """WORKDIR as dockerd's classic builder runs it: a missing ``path`` (and its missing
    parents) is made as a layer, 0755 and owned by root; None when it is a directory
    already (the step is then metadata only). A non-directory in the way is an error
    naming the line."""
    with mounted_view(snapshotter, parent) as root:
        try:
            if os.path.isdir(secure_join(root, path)):
                return None
        except OSError as e:  # a file where a directory has to be
            raise InvalidArgument(f"Dockerfile:{line}: WORKDIR failed: mkdir {path}: "
                                  f"{e.strerror.lower() if e.strerror else e}") from None
    spec = CopySpec(context, (), path.rstrip("/") + "/", "/", (), None, None, False,
                    "WORKDIR", line)
    return write_copy_layer(content, snapshotter, parent, parent_diff_ids, spec)
