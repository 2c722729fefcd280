"""A container's filesystem seen from the host: ``docker cp`` and ``docker export``.

While a container exists its root is a directory on the host (the mounted overlay
``merged`` directory, or a native snapshot's tree) and its volumes and binds are
host directories that, in the container's own mount namespace, sit on top of it.
:class:`FsView` describes that pair; every function here works on one::

    stat_path(view, path)              PathStat for HEAD/GET /containers/{id}/archive
    get_archive(view, path, out)       GET  /containers/{id}/archive: a tar of path
    put_archive(view, path, tar, ...)  PUT  /containers/{id}/archive: extract into path
    export(view, out)                  GET  /containers/{id}/export: the root, no volumes

Paths follow Docker: taken as absolute in the container and cleaned lexically; the
last component is not followed if it is a symlink unless the path ends in ``/`` or
``/.``; a tar's top entry is the path's base name (``.`` for ``dir/.``, whose
entries are then ``./…``). An extraction point is always followed and must be a
directory.

Safety. The container owns what is in its root and its writable mounts and may
change it while we work: swapping a directory for a symlink to a host path between
our check and our use is the CVE-2018-15664 attack. So no path under the root is
ever resolved by the kernel. :class:`Scope` looks up one component at a time with
``openat(parent, name, O_PATH|O_NOFOLLOW)`` from a descriptor it already holds,
reads symlinks itself, restarts an absolute target at the container's root and
stops ``..`` there; everything is then read and written through the descriptors
(or ``*at`` calls on a held parent, never following the last component). Whatever
the container swaps in meanwhile, nothing outside its root and mount sources is
reached. Tar entries are confined the same way: ``..`` that would climb above the
extraction point is refused, absolute names are taken relative to it, and symlinks
and hard links are interpreted inside the container only.

Mounts. A lookup that reaches a mount's destination continues in the mount's host
source (trusted: chosen by the engine). Destinations are matched as given, the
canonical paths the runtime mounted on. tmpfs mounts are not part of a view: on the
host their content exists only inside the container's mount namespace, so paths
below one show, and are written to, the root underneath.

Modules: ``view`` (FsView, the confined lookups of :class:`Scope`, request paths,
stat_path and stat_header), ``tarout`` (TarWriter, get_archive, export) and
``extract`` (put_archive).
"""

from ketch.engine.archive.extract import put_archive
from ketch.engine.archive.tarout import TarWriter, export, get_archive
from ketch.engine.archive.view import FsView, stat_header, stat_path

__all__ = ["FsView", "TarWriter", "export", "get_archive", "put_archive", "stat_header",
           "stat_path"]
