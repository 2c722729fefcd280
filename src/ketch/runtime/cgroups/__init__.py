"""Container cgroups for the runtime: one manager per container, v1 or v2 as the host has.

Lifecycle of a :class:`CgroupManager`::

    new_manager(cgroupsPath, id)     no side effect; any process can make one for
                                     the same container (the cgroup path is the state)
    create()                         the cgroup exists in every hierarchy
    set(resources)                   OCI linux.resources written (again on update)
    apply(pid)                       a process joins; the container's init calls
                                     apply(0) for itself before it execs
    freeze / thaw / frozen / pids / kill_all / stats / oom_kills   while it runs
    destroy()                        every directory is gone; safe to repeat

Which manager: the host's mode is read from /proc/self/mountinfo once per
process (:func:`ketch.sys.cgroupfs.detect_host`). *unified* hosts get
:class:`~ketch.runtime.cgroups.v2.V2Manager`; *legacy* and *hybrid* hosts get
:class:`~ketch.runtime.cgroups.v1.V1Manager`, which on a hybrid host also keeps
a cgroup in the unified hierarchy for what only cgroup2 offers there.

``cgroupsPath`` (from ``linux.cgroupsPath``):

* absent or empty: ``/ketch/<id>``;
* absolute (``/a/b``): that path under the root of each hierarchy's mount;
* relative (``a/b``): the same as ``/a/b``. runc would put it under the
  runtime's own cgroup; ketch does not, so that the path does not depend on
  where the caller happens to run (a shell, a systemd unit, a daemon).
* ``..`` components and systemd's ``slice:prefix:name`` form are rejected with
  ``InvalidArgument`` (there is no systemd cgroup driver).
"""

from __future__ import annotations

from ketch.errors import InvalidArgument, Unavailable

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ketch.runtime.cgroups.manager import CgroupManager
    from ketch.sys.cgroupfs import Host

__all__ = ["CgroupManager", "new_manager", "resolve_path"]


def __getattr__(name: str) -> object:
    if name == "CgroupManager":  # the Protocol needs typing: loaded only when asked for
        from ketch.runtime.cgroups.manager import CgroupManager

        return CgroupManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_MODES = {"v1": "legacy", "legacy": "legacy", "hybrid": "hybrid",
          "v2": "unified", "unified": "unified"}


def resolve_path(cgroups_path: str | None, container_id: str) -> str:
    """The normalised absolute cgroup path for ``linux.cgroupsPath`` (see the module doc)."""
    if not cgroups_path:
        if not container_id or "/" in container_id or container_id in (".", ".."):
            raise InvalidArgument(f"container id {container_id!r} cannot name a cgroup")
        return f"/ketch/{container_id}"
    if not isinstance(cgroups_path, str) or "\0" in cgroups_path or "\n" in cgroups_path:
        raise InvalidArgument(f"linux.cgroupsPath: {cgroups_path!r} is not a path")
    if not cgroups_path.startswith("/") and cgroups_path.count(":") == 2:
        raise InvalidArgument(
            f"linux.cgroupsPath: {cgroups_path!r} is systemd's slice:prefix:name form; "
            "the systemd cgroup driver is not supported, give a path such as /ketch/<id>")
    parts = [p for p in cgroups_path.split("/") if p and p != "."]
    if ".." in parts:
        raise InvalidArgument(f"linux.cgroupsPath: {cgroups_path!r} must not contain '..'")
    if not parts:
        raise InvalidArgument("linux.cgroupsPath: must not be the root cgroup")
    return "/" + "/".join(parts)


def _host() -> Host:
    from ketch.sys.cgroupfs import detect_host

    try:
        return detect_host()
    except OSError as e:
        raise Unavailable(f"cannot use cgroups: {e.strerror}: {e.filename}") from None


def new_manager(cgroups_path: str | None, container_id: str, *, mode: str | None = None,
                unified_root: str | None = None) -> CgroupManager:
    """The manager for a container's cgroup (nothing is created yet).

    ``mode`` ("legacy"/"v1", "hybrid", "unified"/"v2") overrides detection and
    ``unified_root`` the cgroup2 mountpoint; tests use them to drive the v2
    manager on a hybrid host's unified mount or on a plain directory tree.
    """
    path = resolve_path(cgroups_path, container_id)

    if mode is not None and mode not in _MODES:
        raise InvalidArgument(f"cgroup mode {mode!r}: use legacy, hybrid or unified")
    want = _MODES[mode] if mode is not None else None
    host = None
    if want is None or want != "unified" or unified_root is None:
        host = _host()
        want = want or host.mode
    if want == "unified":
        root = unified_root or (host.unified.mountpoint if host and host.unified else None)
        if root is None:
            raise Unavailable("cgroup v2 requested but no cgroup2 filesystem is mounted")
        from ketch.runtime.cgroups.v2 import V2Manager

        return V2Manager(path, root)
    from ketch.runtime.cgroups.v1 import V1Manager

    host = host or _host()
    if not host.hierarchies:
        raise Unavailable(f"cgroup mode {want}: this host has no cgroup v1 hierarchies")
    if want == "hybrid":
        root = unified_root or (host.unified.mountpoint if host.unified else None)
        if root is None:
            raise Unavailable("hybrid cgroups requested but no cgroup2 filesystem is mounted")
        return V1Manager(path, host.hierarchies, root)
    return V1Manager(path, host.hierarchies)
