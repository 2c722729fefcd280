"""A busybox image made on this host, without a registry: the first image of a fresh store.

``bootstrap_busybox`` builds the rootfs of :func:`ketch.runtime.busybox.make_rootfs`
and stores it as a one-layer OCI image::

    manifest (application/vnd.oci.image.manifest.v1+json)
      config   architecture/os of this host, Env PATH, Cmd ["sh"],
               rootfs.diff_ids = [sha256 of the uncompressed tar]
      layers   [gzip'd tar of the rootfs]

It is reproducible: the same busybox binary on the same architecture gives the same
layer, config and manifest digests on every host and every run. To get there the tar
lists entries sorted by path, with uid/gid 0, no user/group names, one fixed mtime
(the busybox binary's, which is also the config's ``created``), modes canonicalised
so the host's umask does not show, and no pax time records; gzip is written with
mtime 0 and no file name.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import tarfile
import tempfile
from datetime import UTC, datetime
from typing import IO, Any, cast

from ketch.content import ContentStore, write_blob
from ketch.image.store import Image, ImageStore, host_platform
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor
from ketch.oci.digest import Digest, digest_of
from ketch.runtime.busybox import BUSYBOX, make_rootfs

__all__ = ["CREATED_BY", "PATH_ENV", "bootstrap_busybox", "reproducible_tar",
           "store_layer_image"]

CREATED_BY = "ketch image bootstrap busybox"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CHUNK = 1 << 20
# modes make_rootfs means, whatever the umask did to them
_DIR_MODES = {"tmp": 0o1777, "root": 0o700}


class _HashingWriter:
    """Passes writes on to ``out`` while hashing them (the layer's diff_id)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)


def _canonical_mode(rel: str, st: os.stat_result) -> int:
    if stat.S_ISDIR(st.st_mode):
        return _DIR_MODES.get(rel, 0o755)
    if stat.S_ISLNK(st.st_mode):
        return 0o777
    return 0o755 if st.st_mode & 0o100 else 0o644


def reproducible_tar(src: str, out: IO[bytes], mtime: int) -> None:
    """Write the tree ``src`` as an uncompressed tar to ``out`` (see the module doc).

    Only directories, regular files and symlinks are expected (what make_rootfs makes).
    """
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for name in sorted([*dirnames, *filenames]):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, src)
                st = os.lstat(path)
                ti = tarfile.TarInfo(rel)
                ti.mode = _canonical_mode(rel, st)
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                ti.mtime = mtime
                if stat.S_ISDIR(st.st_mode):
                    ti.type = tarfile.DIRTYPE
                    tf.addfile(ti)
                elif stat.S_ISLNK(st.st_mode):
                    ti.type = tarfile.SYMTYPE
                    ti.linkname = os.readlink(path)
                    tf.addfile(ti)
                elif stat.S_ISREG(st.st_mode):
                    ti.size = st.st_size
                    with open(path, "rb") as f:
                        tf.addfile(ti, f)
                else:
                    raise ValueError(f"{path}: unexpected file type in a bootstrap rootfs")


def _ingest_file(content: ContentStore, ref: str, path: str) -> tuple[Digest, int]:
    size = os.path.getsize(path)
    w = content.writer(ref)
    if w.offset:  # a stale ingest under our ref: start over
        w.close()
        content.abort(ref)
        w = content.writer(ref)
    with w, open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            w.write(chunk)
        return w.commit(size), size


def _json_blob(content: ContentStore, media_type: str, obj: dict[str, Any]) -> Descriptor:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    digest = write_blob(content, f"bootstrap-{digest_of(data).hex}", data, digest_of(data))
    return Descriptor(media_type, digest, len(data))


def bootstrap_busybox(store: ImageStore, content: ContentStore, *,
                      name: str = "busybox:latest", binary: str = BUSYBOX) -> Image:
    """Build the busybox image from the host's ``binary`` and tag it ``name``.

    ``FailedPrecondition`` (from make_rootfs) if busybox-static is missing.
    """
    mtime = int(os.stat(binary).st_mtime)
    created = datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory(prefix="ketch-bootstrap-") as tmp:
        rootfs = os.path.join(tmp, "rootfs")
        make_rootfs(rootfs, binary=binary)
        layer_path = os.path.join(tmp, "layer.tar.gz")
        with open(layer_path, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                              compresslevel=6) as gz:
            tarw = _HashingWriter(cast(IO[bytes], gz))
            reproducible_tar(rootfs, cast(IO[bytes], tarw), mtime)
        diff_id = "sha256:" + tarw.hash.hexdigest()
        return store_layer_image(store, content, layer_path, diff_id, name=name,
                                 created=created, created_by=CREATED_BY, cmd=["sh"])


def store_layer_image(store: ImageStore, content: ContentStore, layer_path: str,
                      diff_id: str, *, name: str, created: str, created_by: str,
                      cmd: list[str]) -> Image:
    """Store the gzip'd layer at ``layer_path`` (uncompressed digest ``diff_id``) as a
    one-layer OCI image for this host's platform, with Env PATH and ``cmd``, one
    history entry, and tag it ``name``. The same inputs give the same digests."""
    layer_digest, layer_size = _ingest_file(content, f"bootstrap-layer-{diff_id}", layer_path)
    layer = Descriptor(mt.OCI_LAYER_GZIP, layer_digest, layer_size)
    plat = host_platform()
    config: dict[str, Any] = {
        "created": created,
        "architecture": plat.architecture,
        "os": plat.os,
        "config": {"Env": [PATH_ENV], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": created_by}],
    }
    if plat.variant is not None:
        config["variant"] = plat.variant
    config_desc = _json_blob(content, mt.OCI_CONFIG, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [layer.to_json()],
    }
    manifest_desc = _json_blob(content, mt.OCI_MANIFEST, manifest)
    return store.put(name, manifest_desc)
