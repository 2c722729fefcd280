"""The build context: the files COPY and ADD may take, as a safe read-only view.

A context is a directory: the one the user named (``ketch build DIR``) or one the
daemon extracted a tar stream into (``POST /build``, :meth:`BuildContext.from_tar`).
Extraction refuses absolute names, ``..`` components and members that would land
behind a symlink, so everything extracted is under the directory.

COPY/ADD sources are resolved inside the context (:meth:`BuildContext.resolve`):

- a source is a path relative to the context root (a leading ``/`` is the root);
  one that climbs out (``../x``) is an error;
- symlinks met on the way are followed only while they stay inside the context; an
  absolute symlink, or one that climbs out, is an error. (Docker resolves such links
  *as if* the context were ``/``; ketch refuses them so a build never silently copies
  a different file than the one the link names.)
- a source with ``*``, ``?`` or ``[`` is a glob matched against every context path
  (``*`` does not cross ``/``); no match is an error;
- a directory source stands for its contents (:meth:`BuildContext.walk`); inside it,
  symlinks are copied as symlinks and ``.dockerignore``'d paths are left out;
- a path ``.dockerignore`` excludes is "not found", as docker says.

:meth:`BuildContext.digest` is the content hash of what a COPY takes, for the layer
cache key: names, types, permission bits, symlink targets and file contents, never
mtimes or owners (COPY sets the owner). An optional mapping caches file digests by
``(path, device, inode, size, mtime, ctime)`` so an unchanged 100 MB file is not
re-read on a cached rebuild.

Errors about a source are ``DockerfileError(line, ..., parse=False)``; a broken tar
stream is ``InvalidArgument``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import IO, Literal

from ketch.errors import InvalidArgument
from ketch.image.build.dockerignore import DockerIgnore, clean_path
from ketch.image.build.instructions import DockerfileError

__all__ = ["BuildContext", "DigestCache", "Entry", "Source", "open_context_tar", "safe_name",
           "write_hashed"]

#: (path, st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) → "sha256:..." of the content
DigestCache = MutableMapping[tuple[str, int, int, int, int, int], str]

_GLOB = re.compile(r"(?<!\\)[*?\[]")
_MAX_LINKS = 40
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing a COPY writes: ``path`` is relative to the source (``/``-separated).

    ``kind`` is ``"file"``, ``"dir"`` or ``"symlink"``; ``mode`` the permission bits
    (``S_IMODE``); ``target`` the link text of a symlink. ``host_path`` is where to
    read it from.
    """

    path: str
    kind: str
    mode: int
    size: int
    host_path: str
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """A resolved COPY/ADD source: ``path`` in the context (``""`` is the root).

    ``requested`` is the source as the Dockerfile wrote it (expanded). A file source
    is copied under its own base name when the destination is a directory; a
    directory source copies its contents.
    """

    requested: str
    path: str
    is_dir: bool


class BuildContext:
    """A directory of build inputs, read through ``.dockerignore``."""

    def __init__(self, root: str, ignore: DockerIgnore | None = None) -> None:
        self.root = os.path.realpath(root)
        self.ignore = ignore if ignore is not None else DockerIgnore()

    @classmethod
    def from_directory(cls, path: str, *, dockerignore: bool = True) -> BuildContext:
        """Use *path* in place; its ``.dockerignore`` applies unless told otherwise."""
        if not os.path.isdir(path):
            raise InvalidArgument(f"unable to prepare context: path {path!r} not found")
        ctx = cls(path)
        if dockerignore:
            ctx.ignore = _read_ignore(ctx.root)
        return ctx

    @classmethod
    def from_tar(cls, stream: IO[bytes], workdir: str, *, dockerignore: bool = True,
                 digests: DigestCache | None = None) -> BuildContext:
        """Extract a tar stream (plain, gzip, bzip2 or xz) into *workdir* and use it.

        *workdir* must be an empty directory the caller owns and removes. Modification
        times are restored (COPY keeps them, as docker's does), owners are not; devices,
        fifos and sockets are skipped. With *digests*,
        every regular file is hashed while it is written and its digest recorded under
        the key :meth:`digest` looks up, so the first COPY of a file never re-reads it.
        A seekable stream (a spooled body) is read in place, a socket's as a stream.
        """
        root = os.path.realpath(workdir)
        hashed: dict[str, str] | None = {} if digests is not None else None
        try:
            dirs: list[tuple[str, int]] = []  # their times go last: children change them
            with open_context_tar(stream) as tar:
                while (member := tar.next()) is not None:
                    _extract(tar, member, root, hashed, dirs)
                    seen = getattr(tar, "members", None)  # tarfile keeps every TarInfo;
                    if isinstance(seen, list):  # nothing looks back, so drop them
                        seen.clear()
            for rel, ns in reversed(dirs):  # a later member may have made a parent a
                if _plain_path(root, rel):  # symlink: never touch anything through it
                    with contextlib.suppress(OSError):
                        os.utime(os.path.join(root, rel), ns=(ns, ns), follow_symlinks=False)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise InvalidArgument(f"failed to read build context: {e}") from None
        if digests is not None and hashed:
            for rel, digest in hashed.items():  # keyed after the last change (links bump
                with contextlib.suppress(OSError):  # ctime)
                    digests[_digest_key(os.path.join(root, rel))] = digest
        ctx = cls(root)
        if dockerignore:
            ctx.ignore = _read_ignore(root)
        return ctx

    # -- files the builder reads itself -------------------------------------------------

    def read_file(self, path: str) -> bytes:
        """Read a file such as the Dockerfile (``.dockerignore`` does not apply)."""
        rel = self._resolve(path, line=0, keyword="", requested=path, check_ignore=False)
        full = os.path.join(self.root, rel)
        if not os.path.isfile(full):
            raise InvalidArgument(f"Cannot locate specified Dockerfile: {path}")
        with open(full, "rb") as f:
            return f.read()

    # -- COPY/ADD sources -------------------------------------------------------------

    def resolve(self, sources: Sequence[str], *, line: int, keyword: str = "COPY",
                dest: str | None = None) -> tuple[Source, ...]:
        """Resolve the (expanded) sources of one COPY/ADD at Dockerfile line *line*.

        With *dest*, also apply docker's rule that several sources (after globbing)
        need a directory destination ending in ``/``.
        """
        out: list[Source] = []
        for src in sources:
            if _GLOB.search(src):
                out.extend(self._glob(src, line, keyword))
                continue
            rel = self._resolve(src, line=line, keyword=keyword, requested=src)
            out.append(Source(src, rel, os.path.isdir(self._host(rel))))
        if dest is not None and len(out) > 1 and not _dir_like(dest):
            raise DockerfileError(
                line, f"When using {keyword} with more than one source file, the "
                "destination must be a directory and end with a /", parse=False)
        return tuple(out)

    def walk(self, source: Source) -> Iterator[Entry]:
        """What a source copies: a file (named by its base name) or a tree's contents.

        Directories come before their contents, names in sorted order; a directory's
        own entry is omitted when ``.dockerignore`` excludes it but re-includes
        something inside (create missing parents as 0755).
        """
        host = self._host(source.path)
        if not source.is_dir:
            st = os.stat(host)
            name = posixpath.basename(source.path) or posixpath.basename(source.requested)
            yield Entry(name, "file", stat.S_IMODE(st.st_mode), st.st_size, host)
            return
        yield from self._walk_dir(source.path, "")

    def digest(self, sources: Sequence[Source], *, cache: DigestCache | None = None) -> str:
        """``sha256:...`` of names, kinds, modes, link targets and contents (no mtimes)."""
        h = hashlib.sha256()
        for i, src in enumerate(sources):
            h.update(f"source\0{i}\0{'dir' if src.is_dir else 'file'}\n".encode())
            for e in self.walk(src):
                if e.kind == "file":
                    content = _file_digest(e.host_path, cache)
                elif e.kind == "symlink":
                    content = e.target or ""
                else:
                    content = ""
                h.update(f"{e.kind}\0{e.path}\0{e.mode:o}\0{content}\n".encode(
                    "utf-8", "surrogateescape"))
        return "sha256:" + h.hexdigest()

    # -- internals ------------------------------------------------------------------------

    def _host(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _resolve(self, src: str, *, line: int, keyword: str, requested: str,
                 check_ignore: bool = True) -> str:
        """Context-relative path of *src* with in-context symlinks followed."""
        def fail(problem: str) -> DockerfileError:
            return DockerfileError(line, f"{keyword} failed: {problem}", parse=False)

        cleaned = clean_path(src)
        if cleaned == ".." or cleaned.startswith("../"):
            raise fail(f"forbidden path outside the build context: {requested}")
        parts = [p for p in src.split("/") if p not in ("", ".")]
        resolved: list[str] = []
        hops = 0
        while parts:
            name = parts.pop(0)
            if name == "..":
                if not resolved:
                    raise fail(f"forbidden path outside the build context: {requested}")
                resolved.pop()
                continue
            here = "/".join([*resolved, name])
            try:
                st = os.lstat(self._host(here))
            except FileNotFoundError:
                raise fail("file not found in build context or excluded by "
                           f".dockerignore: stat {requested}: file does not exist") from None
            except NotADirectoryError:
                raise fail(f"stat {requested}: not a directory") from None
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_LINKS:
                    raise fail(f"stat {requested}: too many levels of symbolic links")
                target = os.readlink(self._host(here))
                if target.startswith("/"):
                    raise fail(f"forbidden path outside the build context: {requested} "
                               f"(symlink {here} points to {target})")
                depth = len(resolved)
                for step in target.split("/"):
                    if step == "..":
                        depth -= 1
                    elif step not in ("", "."):
                        depth += 1
                    if depth < 0:
                        raise fail(f"forbidden path outside the build context: {requested} "
                                   f"(symlink {here} points to {target})")
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            resolved.append(name)
        rel = "/".join(resolved)
        if check_ignore and rel and self.ignore.excluded(rel):
            is_dir = os.path.isdir(self._host(rel))
            if not is_dir or self.ignore.prunable(rel):
                raise fail("file not found in build context or excluded by "
                           f".dockerignore: stat {requested}: file does not exist")
        return rel

    def _glob(self, pattern: str, line: int, keyword: str) -> list[Source]:
        cleaned = clean_path(pattern.lstrip("/"))
        if cleaned == ".." or cleaned.startswith("../"):
            raise DockerfileError(line, f"{keyword} failed: forbidden path outside the "
                                  f"build context: {pattern}", parse=False)
        rx = _glob_regex(cleaned)
        found: list[Source] = []
        for rel in self._all_paths(""):
            if rx.fullmatch(rel):
                path = self._resolve(rel, line=line, keyword=keyword, requested=rel)
                found.append(Source(rel, path, os.path.isdir(self._host(path))))
        if not found:
            raise DockerfileError(line, f"{keyword} failed: no source files were specified",
                                  parse=False)
        return found

    def _all_paths(self, rel: str) -> Iterator[str]:
        """Every non-excluded context path under *rel* (not following symlinks)."""
        try:
            names = sorted(os.listdir(self._host(rel)))
        except OSError:
            return
        for name in names:
            child = f"{rel}/{name}" if rel else name
            host = self._host(child)
            is_dir = os.path.isdir(host) and not os.path.islink(host)
            if self.ignore.excluded(child):
                if is_dir and not self.ignore.prunable(child):
                    yield from self._all_paths(child)
                continue
            yield child
            if is_dir:
                yield from self._all_paths(child)

    def _walk_dir(self, rel: str, prefix: str) -> Iterator[Entry]:
        try:
            names = sorted(os.listdir(self._host(rel)))
        except OSError as e:
            raise InvalidArgument(f"failed to read build context: {e}") from None
        for name in names:
            child = f"{rel}/{name}" if rel else name
            out = f"{prefix}/{name}" if prefix else name
            host = self._host(child)
            st = os.lstat(host)
            excluded = self.ignore.excluded(child)
            if stat.S_ISDIR(st.st_mode):
                if excluded and self.ignore.prunable(child):
                    continue
                if not excluded:
                    yield Entry(out, "dir", stat.S_IMODE(st.st_mode), 0, host)
                yield from self._walk_dir(child, out)
            elif excluded:
                continue
            elif stat.S_ISREG(st.st_mode):
                yield Entry(out, "file", stat.S_IMODE(st.st_mode), st.st_size, host)
            elif stat.S_ISLNK(st.st_mode):
                yield Entry(out, "symlink", stat.S_IMODE(st.st_mode), 0, host,
                            os.readlink(host))


def _dir_like(dest: str) -> bool:
    return dest.endswith("/") or dest in ("", ".", "..") or dest.endswith(("/.", "/.."))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Go ``filepath.Match`` as a regex: ``*``/``?`` stay inside one path element."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and i < len(pattern):
            out.append(re.escape(pattern[i]))
            i += 1
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise InvalidArgument(f"syntax error in pattern: {pattern}")
            body = pattern[i:end]
            neg = body.startswith("^")
            body = body[1:] if neg else body
            esc = "".join("\\" + c if c in "\\[]" else c for c in body)
            out.append("[" + ("^" if neg else "") + esc + "]")
            i = end + 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _digest_key(path: str) -> tuple[str, int, int, int, int, int]:
    st = os.stat(path)
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _file_digest(path: str, cache: DigestCache | None) -> str:
    key = _digest_key(path)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    if cache is not None:
        cache[key] = digest
    return digest


def open_context_tar(stream: IO[bytes]) -> tarfile.TarFile:
    """A context tar (plain, gzip, bzip2 or xz) open for reading in order: a seekable
    stream (a spooled body) in place, a socket's as a stream, read 1 MiB at a time."""
    try:
        seekable = stream.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    mode: Literal["r:*", "r|*"] = "r:*" if seekable else "r|*"
    return tarfile.open(fileobj=stream, mode=mode, bufsize=_CHUNK)


def _read_ignore(root: str) -> DockerIgnore:
    path = os.path.join(root, ".dockerignore")
    if os.path.islink(path) or not os.path.isfile(path):
        return DockerIgnore()
    with open(path, "rb") as f:
        return DockerIgnore.parse(f.read())


def safe_name(name: str) -> str:
    """A tar member name as a context path; refuses absolute names and ``..``."""
    if name.startswith("/") or "\0" in name:
        raise InvalidArgument(f"invalid build context: absolute path {name!r} in the tar")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"invalid build context: {name!r} climbs out of the context")
    return "/".join(parts)


def _make_parents(root: str, rel: str) -> None:
    """Create the parents of *rel*; refuse to go through a symlink."""
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


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, root: str,
             hashed: dict[str, str] | None, dirs: list[tuple[str, int]]) -> None:
    """One member into *root*, with its mtime (a directory's is noted in *dirs*, as a
    context path, for the end: what is extracted into it changes it); with *hashed*,
    the digest of each regular file written (context path → digest; a hard link
    shares its target's)."""
    rel = safe_name(member.name)
    if not rel:
        return
    _make_parents(root, rel)
    dest = os.path.join(root, rel)
    mode = member.mode & 0o7777
    ns = int(member.mtime * 1_000_000_000)
    if hashed is not None:
        hashed.pop(rel, None)
    if member.isdir():
        if not os.path.isdir(dest) or os.path.islink(dest):
            _remove(dest)
            os.mkdir(dest, 0o755)
        os.chmod(dest, mode | 0o700)
        dirs.append((rel, ns))
        return
    if member.isreg():
        _remove(dest)
        src = tar.extractfile(member)
        assert src is not None
        digest = write_hashed(src, dest, hashed is not None)
        if hashed is not None:
            hashed[rel] = digest
        os.chmod(dest, mode)
    elif member.issym():
        _remove(dest)
        os.symlink(member.linkname, dest)
    elif member.islnk():
        target = safe_name(member.linkname)
        target_path = os.path.join(root, target)
        if not target or not _plain_path(root, target) or not os.path.isfile(target_path):
            raise InvalidArgument(f"invalid build context: hard link {member.name!r} to "
                                  f"{member.linkname!r} is not to a file in the context")
        _remove(dest)
        os.link(target_path, dest)
        if hashed is not None and target in hashed:
            hashed[rel] = hashed[target]
    else:  # devices, fifos and sockets have no place in a build context: skipped
        return
    with contextlib.suppress(OSError):  # just made, under real directories
        os.utime(dest, ns=(ns, ns), follow_symlinks=False)


def write_hashed(src: IO[bytes], dest: str, hash_it: bool) -> str:
    """Copy *src* into the new file *dest* (mode 0600); its digest when *hash_it*
    (else "")."""
    h = hashlib.sha256() if hash_it else None
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        while chunk := src.read(_CHUNK):
            if h is not None:
                h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest() if h is not None else ""


def _plain_path(root: str, rel: str) -> bool:
    """Whether no component of *rel* under *root* is a symlink (and all exist)."""
    here = root
    for part in rel.split("/"):
        here = os.path.join(here, part)
        try:
            if stat.S_ISLNK(os.lstat(here).st_mode):
                return False
        except OSError:
            return False
    return True


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"invalid build context: {path!r} is a directory and a file")
    os.unlink(path)
