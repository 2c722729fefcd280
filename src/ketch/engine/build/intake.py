"""The build context's way in: a tar stream, whole or as a diff against a kept tree.

``POST /build`` sends the context as a tar. The executor needs it as a directory (a
:class:`~ketch.image.build.context.BuildContext`) and, for the cache keys of COPY/ADD,
the sha256 of every file it copies. Reading the files a second time only to hash them
doubles the work of a cold build, so both ways in hash each regular file while writing
it and record the digest where :meth:`BuildContext.digest` looks it up (path, device,
inode, size, mtime, ctime — taken after the file's last change), so the first COPY of
a file never re-reads it.

**Whole** (:func:`extract_context`, any docker client): the front end's
``BuildContext.from_tar`` with ``digests``, its rules and errors; the stream is read
once. The caller owns ``workdir`` (empty, created by it) and removes it after the
build; :func:`forget` drops the digests recorded for it from the map.

**Synced** (:func:`apply_synced`, ``ketch build`` with the daemon's context cache,
:mod:`ketch.engine.build.contexts`): the tar's first member is ``.ketch-context.json``,
the client's *manifest*, ``{"entries": [record, ...]}``; then come only regular files
the manifest lists (those the daemon said it lacks). A *record* is what the client saw
of one entry: ``path`` (relative, ``/``-separated, no ``.``/``..``/empty parts),
``type`` (``dir``, ``file``, ``symlink``), ``mode`` (permission bits), ``size``,
``mtime_ns``, ``token`` (st_dev, st_ino, st_ctime_ns of its lstat: equal tokens mean
an unchanged file, as nothing can set a ctime back) and a symlink's ``target``. A
parent no record names (a ``.dockerignore``'d directory with a re-included child) is
*implied*: a 0755 directory, as tar extraction makes it. Applying it to a kept tree:

(a) every tree path the manifest does not hold as the same kind (or a symlink whose
    target changed) is removed — ``rmtree``/``unlink``, never following a link;
(b) the manifest's directories (mode | 0700, as extraction does) and symlinks are made
    from their records, parents first;
(c) each sent file is written to a temp name beside its place (``O_EXCL|O_NOFOLLOW``,
    every parent checked to be a real directory, hashed while written), then renamed
    over it. Names are sanitized as ``from_tar`` does; a member the manifest does not
    list as a file is an error.

A *held* file (:class:`Held`) is one the daemon has in the tree: its record, its
digest and its stat key there (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

from ketch.errors import InvalidArgument
from ketch.image.build.context import BuildContext, DigestCache, safe_name, write_hashed

__all__ = [
    "MANIFEST_NAME",
    "TEMP_PREFIX",
    "Held",
    "Manifest",
    "Record",
    "StatKey",
    "apply_synced",
    "extract_context",
    "forget",
    "needed",
    "parse_manifest",
    "stat_key",
    "unchanged",
]

#: the first member of a synced context tar
MANIFEST_NAME = ".ketch-context.json"
#: how the names of files being written start (a crash may leave some behind)
TEMP_PREFIX = ".ketch-tmp-"

StatKey = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns

_KINDS = frozenset({"dir", "file", "symlink"})
_MAX_MANIFEST = 1 << 30


def extract_context(stream: IO[bytes], workdir: str, digests: DigestCache) -> BuildContext:
    """Extract the tar ``stream`` (plain, gzip, bzip2 or xz) into ``workdir``; hash
    every regular file into ``digests``; return the context (its ``.dockerignore``
    applied)."""
    return BuildContext.from_tar(stream, workdir, digests=digests)


def forget(digests: DigestCache, workdir: str) -> None:
    """Drop the digests :func:`extract_context` recorded for files under ``workdir``."""
    prefix = os.path.realpath(workdir) + "/"
    for key in [k for k in list(digests) if k[0].startswith(prefix)]:
        digests.pop(key, None)


def apply_synced(tar: tarfile.TarFile, tree: str) -> tuple[Manifest, dict[str, Held]]:
    """Apply a synced context tar to ``tree`` (a real directory the caller has locked):
    steps (a)-(c) of the module doc. Returns the manifest and the files written."""
    manifest = _read_manifest(tar)
    _prepare(tree, manifest)
    sent = _receive(tar, tree, manifest)
    _times(tree, manifest)
    return manifest, sent


def _times(tree: str, manifest: Manifest) -> None:
    """Directories and symlinks get the client's mtimes (files got theirs before their
    rename), deepest first, so a COPY keeps them as docker's does."""
    for rec in sorted((r for r in manifest.records.values() if r.kind != "file"),
                      key=lambda r: r.path.count("/"), reverse=True):
        with contextlib.suppress(FileNotFoundError):
            os.utime(os.path.join(tree, rec.path), ns=(rec.mtime_ns, rec.mtime_ns),
                     follow_symlinks=False)


def _int(obj: Mapping[str, Any], name: str, path: object) -> int:
    v = obj.get(name)
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidArgument(f"invalid build context manifest: {path!r}: {name} must be "
                              "an integer")
    return v


def _clean(path: object) -> str:
    """A record's path as given, if it is relative and plain (no ``.``, ``..``, ``//``)."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\0" in path \
            or any(p in ("", ".", "..") for p in path.split("/")):
        raise InvalidArgument(f"invalid build context manifest: bad path {path!r}")
    return path


@dataclass(frozen=True, slots=True)
class Record:
    """One context entry as the client saw it (see the module doc)."""

    path: str
    kind: str
    mode: int
    size: int
    mtime_ns: int
    token: tuple[int, int, int]
    target: str | None = None

    @classmethod
    def from_json(cls, obj: object) -> Record:
        """A record from its JSON object; InvalidArgument names what is wrong."""
        if not isinstance(obj, dict):
            raise InvalidArgument("invalid build context manifest: an entry is not an object")
        path = _clean(obj.get("path"))
        kind = obj.get("type")
        if kind not in _KINDS:
            raise InvalidArgument(f"invalid build context manifest: {path!r}: unknown "
                                  f"type {kind!r}")
        mode, size = _int(obj, "mode", path), _int(obj, "size", path)
        if not 0 <= mode <= 0o7777 or size < 0:
            raise InvalidArgument(f"invalid build context manifest: {path!r}: bad mode "
                                  "or size")
        token = obj.get("token")
        if not isinstance(token, list | tuple) or len(token) != 3 or \
                any(not isinstance(t, int) or isinstance(t, bool) for t in token):
            raise InvalidArgument(f"invalid build context manifest: {path!r}: token must "
                                  "be [st_dev, st_ino, st_ctime_ns]")
        target = obj.get("target")
        if kind == "symlink":
            if not isinstance(target, str) or not target or "\0" in target:
                raise InvalidArgument(f"invalid build context manifest: {path!r}: a "
                                      "symlink needs its target")
        elif target is not None:
            raise InvalidArgument(f"invalid build context manifest: {path!r}: only a "
                                  "symlink has a target")
        return cls(path, str(kind), mode, size, _int(obj, "mtime_ns", path),
                   (token[0], token[1], token[2]), target)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "type": self.kind, "mode": self.mode,
                               "size": self.size, "mtime_ns": self.mtime_ns,
                               "token": list(self.token)}
        if self.target is not None:
            out["target"] = self.target
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed manifest: ``records`` by path (client order) and the ``implied`` parents."""

    records: dict[str, Record]
    implied: frozenset[str]

    def kind(self, path: str) -> str | None:
        rec = self.records.get(path)
        if rec is not None:
            return rec.kind
        return "dir" if path in self.implied else None

    def files(self) -> Iterator[Record]:
        return (r for r in self.records.values() if r.kind == "file")


def parse_manifest(obj: object) -> Manifest:
    """``{"entries": [record, ...]}`` → :class:`Manifest`; InvalidArgument for a bad path,
    a path named twice, or a record under a file or a symlink."""
    entries = obj.get("entries") if isinstance(obj, dict) else None
    if not isinstance(entries, list):
        raise InvalidArgument('invalid build context manifest: want {"entries": [...]}')
    records: dict[str, Record] = {}
    for e in entries:
        rec = Record.from_json(e)
        if rec.path in records:
            raise InvalidArgument(f"invalid build context manifest: {rec.path!r} twice")
        records[rec.path] = rec
    implied: set[str] = set()
    for rec in records.values():
        parent = rec.path.rpartition("/")[0]
        while parent and parent not in implied:
            above = records.get(parent)
            if above is not None:
                if above.kind != "dir":
                    raise InvalidArgument(f"invalid build context manifest: {rec.path!r} "
                                          f"is under the {above.kind} {parent!r}")
                break
            implied.add(parent)
            parent = parent.rpartition("/")[0]
    return Manifest(records, frozenset(implied))


@dataclass(frozen=True, slots=True)
class Held:
    """A file the daemon has in a tree: the client's record, its digest, its stat key."""

    record: Record
    digest: str
    stat: StatKey


def stat_key(st: os.stat_result) -> StatKey:
    """The part of a stat a held file is known by (what the digest cache keys add)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def unchanged(tree: str, held: Held) -> bool:
    """Whether the tree file is still the one the daemon wrote (a regular file, same key)."""
    try:
        st = os.lstat(os.path.join(tree, held.record.path))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and stat_key(st) == held.stat


def needed(manifest: Manifest, held: Mapping[str, Held], tree: str) -> list[str]:
    """The manifest's files the daemon must be sent, in the client's order: those not
    held, held under another record, or whose tree file is not the one written."""
    out = []
    for rec in manifest.files():
        h = held.get(rec.path)
        if h is None or h.record != rec or not unchanged(tree, h):
            out.append(rec.path)
    return out


def _read_manifest(tar: tarfile.TarFile) -> Manifest:
    member = tar.next()
    if member is None or not member.isreg() or safe_name(member.name) != MANIFEST_NAME:
        raise InvalidArgument(f"invalid build context: a synced context starts with "
                              f"{MANIFEST_NAME}")
    if member.size > _MAX_MANIFEST:
        raise InvalidArgument(f"invalid build context: {MANIFEST_NAME} is too large")
    src = tar.extractfile(member)
    assert src is not None
    try:
        obj = json.loads(src.read())
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"invalid build context: {MANIFEST_NAME} is not JSON") from None
    return parse_manifest(obj)


def _prepare(tree: str, manifest: Manifest) -> None:
    """Steps (a) and (b): the tree holds exactly the manifest's directories and symlinks,
    and nothing where it has no entry (files stay where it names a file)."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(tree, rel_dir) if rel_dir else tree) as it:
            entries = list(it)
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            want = manifest.kind(rel)
            if e.is_dir(follow_symlinks=False):
                if want == "dir":
                    stack.append(rel)
                else:
                    shutil.rmtree(e.path)  # does not follow symlinks inside
                continue
            if want == "file" and e.is_file(follow_symlinks=False):
                continue
            if want == "symlink" and e.is_symlink() and \
                    os.readlink(e.path) == manifest.records[rel].target:
                continue
            os.unlink(e.path)
    made: list[tuple[str, Record | None]] = [(rel, None) for rel in manifest.implied]
    made += [(r.path, r) for r in manifest.records.values() if r.kind != "file"]
    for rel, rec in sorted(made, key=lambda m: m[0].split("/")):  # parents first
        path = os.path.join(tree, rel)
        if rec is not None and rec.kind == "symlink":
            if not os.path.lexists(path):
                os.symlink(rec.target or "", path)
            continue
        want_mode = 0o755 if rec is None else rec.mode | 0o700
        try:
            have = stat.S_IMODE(os.lstat(path).st_mode)
        except FileNotFoundError:
            os.mkdir(path, 0o700)
            have = -1
        if have != want_mode:
            os.chmod(path, want_mode)


def _receive(tar: tarfile.TarFile, tree: str, manifest: Manifest) -> dict[str, Held]:
    """Step (c): the files of the tar, each written beside its place and renamed over."""
    sent: dict[str, Held] = {}
    while (member := tar.next()) is not None:
        rel = safe_name(member.name)
        rec = manifest.records.get(rel)
        if rec is None or rec.kind != "file" or not member.isreg() or rel in sent:
            raise InvalidArgument(f"invalid build context: {member.name!r} is not a file "
                                  "of the manifest (or is sent twice)")
        parent = _real_parent(tree, rel)
        src = tar.extractfile(member)
        assert src is not None
        dest = os.path.join(tree, rel)
        tmp = os.path.join(parent, TEMP_PREFIX + secrets.token_hex(8))
        try:
            digest = write_hashed(src, tmp, True)
            os.chmod(tmp, rec.mode)
            os.utime(tmp, ns=(rec.mtime_ns, rec.mtime_ns))
            os.rename(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        sent[rel] = Held(rec, digest, stat_key(os.lstat(dest)))  # after the rename:
        seen = getattr(tar, "members", None)  # it changes the ctime. tarfile keeps every
        if isinstance(seen, list):  # TarInfo; nothing looks back, so drop them
            seen.clear()
    return sent


def _real_parent(tree: str, rel: str) -> str:
    """The directory ``rel`` goes in, every component checked to be a real directory."""
    here = tree
    for part in rel.split("/")[:-1]:
        here = os.path.join(here, part)
        if not stat.S_ISDIR(os.lstat(here).st_mode):
            raise InvalidArgument(f"invalid build context: {rel!r} is under a "
                                  "non-directory (or a symlink)")
    return here


