"""Copy-up: seed an empty volume with the image's content at the mount destination.

Docker does this on a volume's first use unless the mount says ``nocopy``: when
a container mounts an empty volume over a directory its image populates, the
volume starts with that directory's files. Owners, modes, extended attributes,
symlinks, hard links within one entry and timestamps are kept (the snapshotter's
``copy_tree`` does the per-entry work), and the volume's root takes the source
directory's owner and mode, so ``/var/lib/mysql`` stays ``mysql``'s.

A volume with anything in it is left alone: copy-up never merges.
"""

from __future__ import annotations

import os
import stat

from ketch.snapshot.native import copy_tree

__all__ = ["copy_up"]


def copy_up(src_dir: str, volume_path: str) -> bool:
    """Copy ``src_dir``'s content into ``volume_path`` if that is empty; True if copied.

    A missing or non-directory ``src_dir`` copies nothing (and returns False).
    Entries on other filesystems than ``src_dir`` (mount points below it) are
    skipped, as they are not the image's content.
    """
    with os.scandir(volume_path) as it:
        if any(True for _ in it):
            return False
    try:
        top = os.stat(src_dir)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(top.st_mode):
        return False
    with os.scandir(src_dir) as it:
        entries = [e for e in it if e.stat(follow_symlinks=False).st_dev == top.st_dev]
    for e in entries:
        copy_tree(e.path, os.path.join(volume_path, e.name))
    os.chown(volume_path, top.st_uid, top.st_gid)
    os.chmod(volume_path, stat.S_IMODE(top.st_mode))
    return True
