"""Unpack an image's layers into committed snapshots, and give containers a rootfs on them.

Each layer becomes one committed snapshot whose key is the layer's *chain ID* (image-spec
``config.md``), which names the whole stack of layers up to it::

    ChainID(L0)     = DiffID(L0)
    ChainID(L0..n)  = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))

so two images sharing their bottom layers share those snapshots, and a snapshot that
exists already is reused, not applied again. For a missing one::

    prepare  "extract-<random> <chain id>"   active, on the previous chain ID
    mount it at a temp dir; apply_layer (reading the blob as a stream); unmount
    check    diff_id of what was applied == config rootfs.diff_ids[i]
             digest of the blob as read   == the layer descriptor's digest
    commit   as "<chain id>"

On any failure the active snapshot is removed, so a bad layer leaves nothing behind.
Two processes unpacking the same image race harmlessly: whoever commits second finds
the chain ID taken by an identical snapshot and drops its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence

from ketch.content import ContentStore
from ketch.errors import Conflict, InvalidArgument, KetchError, NotFound
from ketch.image.layer import apply_layer
from ketch.image.store import Image, manifest_layers, read_config, read_manifest
from ketch.oci.descriptor import Descriptor
from ketch.snapshot import Kind, Mount, Snapshotter, mount_all, unmount

__all__ = ["chain_ids", "committed", "prepare_rootfs", "unpack"]

log = logging.getLogger(__name__)


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain ID of each prefix of ``diff_ids`` (see the module doc)."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def committed(snapshotter: Snapshotter, key: str) -> bool:
    """Whether snapshot ``key`` exists, committed; ``Conflict`` if it exists otherwise."""
    try:
        info = snapshotter.stat(key)
    except NotFound:
        return False
    if info.kind is not Kind.COMMITTED:
        raise Conflict(f"snapshot {key!r} exists but is {info.kind.value}, not committed")
    return True


def unpack(image: Image, content: ContentStore, snapshotter: Snapshotter) -> str | None:
    """Make sure every layer of ``image`` is a committed snapshot; return the top chain ID.

    ``None`` for an image without layers. ``InvalidArgument`` ("layer N: ...") if a
    layer cannot be applied or is not what the config says it is.
    """
    manifest = read_manifest(content, image.target)
    config = read_config(content, manifest)
    layers = manifest_layers(manifest)
    diff_ids: list[str] = config["rootfs"]["diff_ids"]
    parent: str | None = None
    for i, (desc, diff_id, chain) in enumerate(zip(layers, diff_ids, chain_ids(diff_ids),
                                                   strict=True)):
        if not committed(snapshotter, chain):
            _apply(i, desc, diff_id, chain, parent, content, snapshotter)
        parent = chain
    return parent


def _apply(i: int, desc: Descriptor, diff_id: str, chain: str, parent: str | None,
           content: ContentStore, snapshotter: Snapshotter) -> None:
    key = f"extract-{uuid.uuid4().hex[:12]} {chain}"
    mounts = snapshotter.prepare(key, parent, labels={"ketch.io/unpack.layer": str(desc.digest)})
    target = tempfile.mkdtemp(prefix="ketch-unpack-")
    ok = False
    try:
        mount_all(mounts, target)
        try:
            with content.open(desc.digest) as f:
                res = apply_layer(f, target)
        except KetchError as e:
            raise type(e)(f"layer {i}: {e}") from e
        finally:
            unmount(target)
        if res.diff_id != diff_id:
            raise InvalidArgument(f"layer {i}: diff_id mismatch: the config says {diff_id}, "
                                  f"the layer {desc.digest} unpacks to {res.diff_id}")
        if res.digest != str(desc.digest):
            raise InvalidArgument(f"layer {i}: digest mismatch: the manifest says "
                                  f"{desc.digest}, the blob is {res.digest}")
        try:
            snapshotter.commit(chain, key, labels={"ketch.io/diff_id": diff_id})
        except Conflict:
            if not committed(snapshotter, chain):
                raise
            log.debug("layer %d: %s was committed meanwhile; dropping ours", i, chain)
            return  # ``key`` is removed below
        ok = True
    finally:
        if not ok:
            with contextlib.suppress(NotFound):
                snapshotter.remove(key)
        with contextlib.suppress(OSError):  # rmdir, not rmtree: never through a mount
            os.rmdir(target)


def prepare_rootfs(image: Image, key: str, content: ContentStore, snapshotter: Snapshotter,
                   labels: Mapping[str, str] | None = None) -> list[Mount]:
    """Unpack ``image`` if needed, then make active snapshot ``key`` on top of it.

    The mounts are a container's writable root filesystem; ``snapshotter.remove(key)``
    when the container is deleted.
    """
    top = unpack(image, content, snapshotter)
    return snapshotter.prepare(key, top, labels)
