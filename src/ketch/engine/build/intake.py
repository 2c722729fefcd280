"""The build context's way in: a tar stream extracted once, every file hashed on the way.

``POST /build`` sends the context as a tar. The executor needs it as a directory (a
:class:`~ketch.image.build.context.BuildContext`) and, for the cache keys of COPY/ADD,
the sha256 of every file it copies. Reading the files a second time only to hash them
doubles the work of a cold build, so :func:`extract_context` hashes each regular file
while writing it and records the digest in the build cache's file-digest map under the
key :meth:`BuildContext.digest` looks up (path, device, inode, size, mtime, ctime —
taken after the file's last change), so the first COPY of a file never re-reads it.

The extraction is the front end's (``BuildContext.from_tar`` with ``digests``, see
``docs/build.md``), with its rules and errors; the stream is read once.

Lifecycle: the caller owns ``workdir`` (empty, created by it) and removes it after the
build; :func:`forget` drops the digests recorded for it from the map.
"""

from __future__ import annotations

import os
from typing import IO

from ketch.image.build.context import BuildContext, DigestCache

__all__ = ["extract_context", "forget"]


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
