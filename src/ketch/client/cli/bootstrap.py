"""``ketch image bootstrap busybox``: the first image of an engine, built on this host.

No registry is involved: the image is built from the host's busybox-static by
:func:`ketch.image.bootstrap.bootstrap_busybox` into a throwaway content and image
store, written out as a ``docker save`` archive by :func:`ketch.image.archive.save`
and sent to the engine with ``POST /images/load`` — the same path as ``ketch load``,
so the engine needs nothing special for it.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from ketch.client.cli.base import Command, Context, UsageError
from ketch.client.cli.images import load_tarball
from ketch.client.cli.term import Progress
from ketch.content.local import LocalContentStore
from ketch.errors import KetchError
from ketch.image.bootstrap import bootstrap_busybox
from ketch.image.store import ImageStore
from ketch.runtime.busybox import BUSYBOX

__all__ = ["BOOTSTRAP", "build_busybox_archive"]

DEFAULT_TAG = "busybox:latest"


def build_busybox_archive(tmp: str, tag: str, binary: str = BUSYBOX) -> str:
    """Build the busybox image under ``tmp`` and save it there; the archive's path.

    FailedPrecondition if ``binary`` is not a static busybox.
    """
    # Imported here, not at the top: only this verb needs the archive writer.
    from ketch.image import archive

    content = LocalContentStore(os.path.join(tmp, "content"))
    store = ImageStore(os.path.join(tmp, "images"), content)
    image = bootstrap_busybox(store, content, name=tag, binary=binary)
    path = os.path.join(tmp, "image.tar")
    with open(path, "wb") as f:
        archive.save(store, content, [image.name], f)
    return path


def _bootstrap(ctx: Context, args: argparse.Namespace) -> int:
    if args.image != "busybox":
        raise UsageError(f"don't know how to bootstrap {args.image!r} (only: busybox)")
    progress = Progress("Building", ctx.err)
    with tempfile.TemporaryDirectory(prefix="ketch-bootstrap-") as tmp:
        progress.phase(f"Building {args.tag} from {args.busybox}")
        try:
            path = build_busybox_archive(tmp, args.tag, args.busybox)
        except KetchError as e:
            progress.finish()
            ctx.error(f"Error: {e}")
            return 1
        with open(path, "rb") as f:
            load_tarball(ctx, f, progress=progress)
    return 0


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", choices=["busybox"], help="what to build (busybox)")
    p.add_argument("--tag", "-t", default=DEFAULT_TAG,
                   help=f"name of the image (default {DEFAULT_TAG})")
    p.add_argument("--busybox", default=BUSYBOX,
                   help=f"the static busybox binary to use (default {BUSYBOX})")


BOOTSTRAP = Command("bootstrap", "Build a base image on this host, without a registry "
                    "(busybox: from Debian's busybox-static)", _setup, _bootstrap,
                    usage="ketch image bootstrap busybox [--tag NAME]")
