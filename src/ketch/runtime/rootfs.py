"""The container's filesystem view: mounts, devices, pivot_root, masked and read-only paths.

Runs inside the container's new mount namespace (in the init process), in two
stages around the createContainer hooks:

    prepare(...)   before pivot_root, paths are host paths: make the host's mounts
                   slaves of ours (nothing propagates back out), bind the rootfs onto
                   itself, perform config.mounts under the rootfs, create /dev nodes
    pivot(...)     pivot_root into the rootfs and detach the old root
    finalize(...)  after pivot_root: maskedPaths, readonlyPaths, read-only root

Every mount destination is resolved inside the rootfs, symlinks and ``..``
included, so nothing can lead out of it: by the kernel with openat2's
RESOLVE_IN_ROOT when the target exists (one call), else by :func:`secure_join`,
which also creates what is missing. The mount is made on the ``O_PATH``
descriptor of the resolved target (checked for where it really points, on the
secure_join path), so a symlink swapped in between cannot redirect it either.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping, Sequence

from ketch.errors import InvalidArgument
from ketch.oci.runtime_spec import DEFAULT_DEVICES, PROPAGATION, parse_mount_options
from ketch.sys.mount import MNT_DETACH, MS, mount, pivot_root, umount
from ketch.sys.openat2 import RESOLVE, openat2

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["finalize", "pivot", "prepare", "secure_join"]

_MAX_SYMLINKS = 255


def secure_join(root: str, unsafe: str) -> str:
    """``root`` + ``unsafe`` with every symlink and ``..`` resolved *inside* ``root``.

    Components that do not exist yet are kept lexically. The result always lies
    under ``root`` (which must be an absolute, symlink-free path).
    """
    todo = [p for p in unsafe.split("/") if p]
    todo.reverse()
    cur: list[str] = []
    links = 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            if cur:
                cur.pop()
            continue
        candidate = os.path.join(root, *cur, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            cur.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), unsafe)
            target = os.readlink(candidate)
            if target.startswith("/"):
                cur = []
            more = [p for p in target.split("/") if p]
            more.reverse()
            todo.extend(more)
            continue
        cur.append(part)
    return os.path.join(root, *cur) if cur else root


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _open_verified(root: str, path: str) -> int:
    """O_PATH fd of ``path`` after checking the kernel agrees it is inside ``root``."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    real = os.readlink(f"/proc/self/fd/{fd}")
    if not _inside(root, real):
        os.close(fd)
        raise InvalidArgument(f"mount destination {path} escapes the rootfs (resolves to {real})")
    return fd


def _mkdirs(root: str, path: str) -> None:
    """mkdir -p for ``path`` (already resolved inside ``root``), one verified step at a time."""
    rel = os.path.relpath(path, root)
    cur = root
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        nxt = os.path.join(cur, part)
        try:
            os.mkdir(nxt, 0o755)
        except FileExistsError:
            if stat.S_ISLNK(os.lstat(nxt).st_mode):  # resolve it inside root, like secure_join
                nxt = secure_join(root, os.path.relpath(nxt, root))
                try:
                    os.mkdir(nxt, 0o755)
                except FileExistsError:
                    pass
        cur = nxt


def _make_target(root: str, dest: str, is_dir: bool) -> str:
    path = secure_join(root, dest)
    if os.path.lexists(path):
        return path
    _mkdirs(root, os.path.dirname(path))
    path = secure_join(root, dest)
    if is_dir:
        _mkdirs(root, path)
    else:
        fd = os.open(path, os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_WRONLY, 0o644)
        os.close(fd)
    return path


# prepare()'s (rootfs, O_PATH descriptor of it) while it runs: openat2 resolves mount
# targets under it in one call, the kernel keeping every step inside (Linux 5.6+).
_root_fd: tuple[str, int] | None = None
_IN_ROOT = int(RESOLVE.IN_ROOT | RESOLVE.NO_MAGICLINKS)
_FALLBACK = (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG, errno.EAGAIN, errno.EXDEV)


def _open_existing(root: str, dest: str) -> int | None:
    """O_PATH descriptor of ``dest`` resolved inside ``root`` if it exists; None when it
    does not, or when openat2 cannot say (old kernel, seccomp): the caller then walks."""
    global _root_fd
    if _root_fd is None or _root_fd[0] != root:
        return None
    try:
        return openat2(_root_fd[1], dest, os.O_PATH | os.O_CLOEXEC, 0, _IN_ROOT)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        if e.errno in _FALLBACK:
            os.close(_root_fd[1])
            _root_fd = None
            return None
        raise


def _target(root: str, dest: str, is_dir: bool) -> int:
    """O_PATH descriptor of mount target ``dest`` inside ``root``, made if missing."""
    fd = _open_existing(root, dest)
    if fd is not None:
        return fd
    return _open_verified(root, _make_target(root, dest, is_dir))


def _mount_fd(fd: int, source: str | None, fstype: str | None, flags: int,
              data: str | None) -> None:
    """mount(2) on what ``fd`` names; closes ``fd``."""
    try:
        mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
    finally:
        os.close(fd)


def _mount_at(root: str, path: str, source: str | None, fstype: str | None, flags: int,
              data: str | None) -> None:
    fd = _open_verified(root, path)
    try:
        mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
    finally:
        os.close(fd)


def _locked_flags(path: str) -> int:
    """Flags a bind remount must keep (the kernel refuses to clear locked ones)."""
    st = os.statvfs(path)
    out = 0
    for vfs, ms in ((os.ST_NOSUID, MS.NOSUID), (os.ST_NODEV, MS.NODEV),
                    (os.ST_NOEXEC, MS.NOEXEC), (os.ST_RDONLY, MS.RDONLY)):
        if st.f_flag & vfs:
            out |= ms
    return out


def _do_mount(root: str, bundle: str, m: Mapping[str, Any], userns: bool,
              cgroup_binds: Sequence[tuple[str, str]]) -> None:
    dest = m["destination"]
    if not dest.startswith("/"):
        dest = "/" + dest
    options: list[str] = list(m.get("options") or [])
    fstype = m.get("type") or ""
    flags, prop, data, _rec = parse_mount_options(options)
    source = m.get("source") or fstype or "none"
    is_bind = bool(flags & MS.BIND) or fstype == "bind"
    if is_bind:
        if not source.startswith("/"):
            source = os.path.join(bundle, source)
        is_dir = os.path.isdir(source)
        _mount_fd(_target(root, dest, is_dir), source, None, MS.BIND | (flags & MS.REC), None)
        extra = flags & ~(MS.BIND | MS.REC | MS.REMOUNT)
        if extra:
            fd = _target(root, dest, is_dir)  # the bind now, not what it covers
            locked = _locked_flags(f"/proc/self/fd/{fd}") if userns else 0
            _mount_fd(fd, None, None, MS.BIND | MS.REMOUNT | extra | locked, None)
    elif fstype == "cgroup" or fstype == "cgroup2":
        _mount_cgroup(root, dest, fstype, flags, cgroup_binds)
    else:
        ro_later = dest == "/dev" and bool(flags & MS.RDONLY)  # /dev gets its nodes first
        try:
            _mount_fd(_target(root, dest, True), source, fstype,
                      flags & ~(MS.RDONLY if ro_later else 0), data or None)
        except PermissionError:
            if fstype != "sysfs":
                raise
            # no network namespace of our own: sysfs cannot be mounted, bind the host's
            _mount_fd(_target(root, dest, True), "/sys", None, MS.BIND | MS.REC, None)
            _mount_fd(_target(root, dest, True), None, None,
                      MS.BIND | MS.REMOUNT | MS.REC | flags, None)
    if prop:
        _mount_fd(_target(root, dest, True), None, None, prop, None)


def _mount_cgroup(root: str, dest: str, fstype: str, flags: int,
                  cgroup_binds: Sequence[tuple[str, str]]) -> None:
    """A ``cgroup`` mount: the container's own cgroups, bound from the host's hierarchies.

    ``cgroup_binds`` lists (name under dest, host directory of the container's
    cgroup in that hierarchy). On a unified host it has one entry with name "".
    """
    ro = flags & MS.RDONLY
    base = flags & (MS.NOSUID | MS.NODEV | MS.NOEXEC)
    if len(cgroup_binds) == 1 and cgroup_binds[0][0] == "":
        host = cgroup_binds[0][1]
        _mount_fd(_target(root, dest, True), host, None, MS.BIND | MS.REC, None)
        _mount_fd(_target(root, dest, True), None, None, MS.BIND | MS.REMOUNT | base | ro, None)
        return
    _mount_fd(_target(root, dest, True), "tmpfs", "tmpfs", base, "mode=755")
    # The tmpfs was made just now by us: nothing in it can be a symlink, so its
    # subdirectories are reached through a descriptor of it, without secure_join.
    tmpfs = _target(root, dest, True)
    try:
        for name, host in cgroup_binds:
            os.mkdir(name, 0o755, dir_fd=tmpfs)
            _mount_under(tmpfs, name, host, None, MS.BIND | MS.REC, None)
            # a new descriptor: the bind is on top of the one the first one names
            _mount_under(tmpfs, name, None, None, MS.BIND | MS.REMOUNT | base | ro, None)
    finally:
        os.close(tmpfs)
    if ro:
        _mount_fd(_target(root, dest, True), None, None, MS.REMOUNT | base | MS.RDONLY,
                  "mode=755")


def _mount_under(dirfd: int, name: str, source: str | None, fstype: str | None, flags: int,
                 data: str | None) -> None:
    """mount(2) on ``name`` (one component, no symlink followed) inside ``dirfd``."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
    finally:
        os.close(fd)


def _create_device(root: str, dev: Mapping[str, Any], userns: bool) -> None:
    path = secure_join(root, dev["path"])
    _mkdirs(root, os.path.dirname(path))
    if os.path.lexists(path):
        os.unlink(path)
    kind = dev["type"]
    mode = dev.get("fileMode", 0o666) & 0o7777
    if userns:
        # mknod is not allowed in a user namespace: bind the host's node instead
        fd = os.open(path, os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_WRONLY, 0o644)
        os.close(fd)
        _mount_at(root, path, dev["path"], None, MS.BIND, None)
        return
    fmt = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]
    rdev = os.makedev(dev.get("major", 0), dev.get("minor", 0)) if kind != "p" else 0
    os.mknod(path, fmt | mode, rdev)
    os.chmod(path, mode)  # mknod is subject to umask
    os.chown(path, dev.get("uid", 0), dev.get("gid", 0))


def _setup_dev(root: str, config: Mapping[str, Any], userns: bool, dev_is_tmpfs: bool) -> None:
    linux = config.get("linux") or {}
    devices: list[Mapping[str, Any]] = list(DEFAULT_DEVICES) if dev_is_tmpfs else []
    explicit = {d["path"] for d in linux.get("devices") or []}
    devices = [d for d in devices if d["path"] not in explicit] + list(linux.get("devices") or [])
    for d in devices:
        _create_device(root, d, userns)
    if not dev_is_tmpfs:
        return
    for src, name in (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"),
                      ("/proc/self/fd/1", "stdout"), ("/proc/self/fd/2", "stderr")):
        link = secure_join(root, "/dev/" + name)
        if not os.path.lexists(link):
            os.symlink(src, link)
    if os.path.exists("/proc/kcore"):
        link = secure_join(root, "/dev/core")
        if not os.path.lexists(link):
            os.symlink("/proc/kcore", link)
    ptmx = secure_join(root, "/dev/ptmx")
    if not explicit.intersection({"/dev/ptmx"}):
        if os.path.lexists(ptmx):
            os.unlink(ptmx)
        os.symlink("pts/ptmx", ptmx)
    if (config.get("process") or {}).get("terminal"):
        console = secure_join(root, "/dev/console")
        if not os.path.lexists(console):
            os.close(os.open(console, os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))


def prepare(root: str, bundle: str, config: Mapping[str, Any], *, userns: bool,
            cgroup_binds: Sequence[tuple[str, str]] = ()) -> None:
    """Stage 1 (before pivot_root), in the container's fresh mount namespace."""
    linux = config.get("linux") or {}
    prop = PROPAGATION.get(linux.get("rootfsPropagation") or "rslave", MS.SLAVE | MS.REC)
    # The host must never see our mounts: make every inherited mount a slave (or the
    # requested kind) before touching anything.
    mount(None, "/", None, MS.SLAVE | MS.REC if prop & MS.SHARED else prop)
    mount(root, root, None, MS.BIND | MS.REC)
    global _root_fd
    # opened after the bind above, so targets resolve through it
    _root_fd = (root, os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    try:
        dev_is_tmpfs = False
        for m in config.get("mounts") or []:
            _do_mount(root, bundle, m, userns, cgroup_binds)
            if m.get("destination") in ("/dev", "/dev/") and m.get("type") != "bind":
                dev_is_tmpfs = True
        _setup_dev(root, config, userns, dev_is_tmpfs)
    finally:
        if _root_fd is not None:
            os.close(_root_fd[1])
            _root_fd = None
    if prop & MS.SHARED:
        mount(None, root, None, prop)


def pivot(root: str, *, no_pivot: bool = False) -> None:
    """Make ``root`` the process's ``/``.

    pivot_root(".", ".") stacks the old root under the new one; it is then made a
    slave (so the detach does not propagate to the host) and lazily unmounted.
    ``no_pivot`` (for rootfs on ramfs, where pivot_root is refused) moves the
    rootfs over ``/`` and chroots, as runc's flag of the same name does.
    """
    if no_pivot:
        os.chdir(root)
        mount(root, "/", None, MS.MOVE)
        os.chroot(".")
        os.chdir("/")
        return
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new = os.open(root, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new)
        pivot_root(".", ".")
        os.fchdir(old)
        mount(None, ".", None, MS.SLAVE | MS.REC)
        umount(".", MNT_DETACH)
    finally:
        os.close(old)
        os.close(new)
    os.chdir("/")


def _mask(path: str) -> None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode):
        mount("tmpfs", path, "tmpfs", MS.RDONLY, None)
    else:
        mount("/dev/null", path, None, MS.BIND, None)


def _readonly(path: str, userns: bool) -> None:
    try:
        mount(path, path, None, MS.BIND | MS.REC, None)
    except FileNotFoundError:
        return
    flags = MS.BIND | MS.REMOUNT | MS.RDONLY | MS.REC
    if userns:
        flags |= _locked_flags(path)
    mount(None, path, None, flags, None)


def finalize(config: Mapping[str, Any], *, userns: bool) -> None:
    """Stage 3 (after pivot_root): masks, read-only paths, a read-only root or /dev."""
    linux = config.get("linux") or {}
    for p in linux.get("readonlyPaths") or []:
        _readonly(p, userns)
    for p in linux.get("maskedPaths") or []:
        _mask(p)
    for m in config.get("mounts") or []:
        if m.get("destination") in ("/dev", "/dev/") and "ro" in (m.get("options") or []):
            mount(None, "/dev", None, MS.REMOUNT | MS.RDONLY | _locked_flags("/dev"), None)
    if (config.get("root") or {}).get("readonly"):
        flags = MS.BIND | MS.REMOUNT | MS.RDONLY
        mount(None, "/", None, flags | (_locked_flags("/") if userns else 0), None)
