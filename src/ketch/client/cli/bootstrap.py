"""``ketch image bootstrap``: base images built on this host, without a registry.

``busybox`` is built from the host's busybox-static by
:func:`ketch.image.bootstrap.bootstrap_busybox`; ``debian:<suite>[-slim]`` from a Debian
mirror by :func:`ketch.image.bootstrap_debian.bootstrap_debian` (mmdebstrap, run here,
as the user running ``ketch``). Either is built into a throwaway content and image
store, written out as a ``docker save`` archive by :func:`ketch.image.archive.save` and
sent to the engine with ``POST /images/load`` — the same path as ``ketch load``, so the
engine needs nothing special for it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

from ketch.client.cli.base import Command, Context, UsageError
from ketch.client.cli.images import load_tarball
from ketch.client.cli.term import Progress
from ketch.content.local import LocalContentStore
from ketch.errors import KetchError
from ketch.image.bootstrap import bootstrap_busybox
from ketch.image.bootstrap_debian import (
    DEFAULT_VARIANT,
    VARIANTS,
    DebianTarget,
    bootstrap_debian,
    default_mirror,
    parse_target,
)
from ketch.image.store import Image, ImageStore
from ketch.runtime.busybox import BUSYBOX

__all__ = ["BOOTSTRAP", "build_busybox_archive", "build_debian_archive"]

DEFAULT_TAG = "busybox:latest"


def _save(tmp: str, build: Callable[[ImageStore, LocalContentStore], Image]) -> str:
    # Imported here, not at the top: only this verb needs the archive writer.
    from ketch.image import archive

    content = LocalContentStore(os.path.join(tmp, "content"))
    store = ImageStore(os.path.join(tmp, "images"), content)
    image = build(store, content)
    path = os.path.join(tmp, "image.tar")
    with open(path, "wb") as f:
        archive.save(store, content, [image.name], f)
    return path


def build_busybox_archive(tmp: str, tag: str, binary: str = BUSYBOX) -> str:
    """Build the busybox image under ``tmp`` and save it there; the archive's path.

    FailedPrecondition if ``binary`` is not a static busybox.
    """
    return _save(tmp, lambda store, content: bootstrap_busybox(store, content, name=tag,
                                                               binary=binary))


def build_debian_archive(tmp: str, target: DebianTarget, tag: str, *, mirror: str,
                         variant: str = DEFAULT_VARIANT,
                         on_log: Callable[[str], None] | None = None) -> str:
    """Build ``target`` from ``mirror`` under ``tmp`` and save it there; the archive's path.

    Errors as :func:`ketch.image.bootstrap_debian.bootstrap_debian`.
    """
    return _save(tmp, lambda store, content: bootstrap_debian(
        store, content, target, mirror=mirror, variant=variant, name=tag, on_log=on_log,
        workdir=tmp))


def _bootstrap(ctx: Context, args: argparse.Namespace) -> int:
    image: str = args.image
    debian = image == "debian" or image.startswith("debian:")
    if not debian and image not in ("busybox", "busybox:latest"):
        raise UsageError(f"don't know how to bootstrap {image!r} "
                         "(only: busybox, debian:<suite>[-slim])")
    if not debian and (args.mirror or args.variant):
        raise UsageError("--mirror and --variant are for debian images")
    if debian and args.busybox:
        raise UsageError("--busybox is for the busybox image")
    progress = Progress("Building", ctx.err)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ketch-bootstrap-") as tmp:
        try:
            if debian:
                target = parse_target(image)
                tag = args.tag or target.name
                mirror = args.mirror or default_mirror()
                progress.phase(f"Building {tag} from {mirror}")

                def on_log(line: str) -> None:
                    if line.startswith("I: "):
                        progress.phase(f"Building {tag}: {line[3:]}")

                path = build_debian_archive(tmp, target, tag, mirror=mirror,
                                            variant=args.variant or DEFAULT_VARIANT,
                                            on_log=on_log)
                progress.finish(f"Built {tag} ({target.suite} from {mirror}) in "
                                f"{time.monotonic() - t0:.0f} s")
            else:
                tag = args.tag or DEFAULT_TAG
                binary = args.busybox or BUSYBOX
                progress.phase(f"Building {tag} from {binary}")
                path = build_busybox_archive(tmp, tag, binary)
        except KetchError as e:
            progress.finish()
            ctx.error(f"Error: {e}")
            return 1
        with open(path, "rb") as f:
            load_tarball(ctx, f, progress=progress)
    return 0


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE",
                   help="what to build: busybox, or debian:<suite>[-slim] "
                        "(e.g. debian:bookworm, debian:bookworm-slim, debian:trixie)")
    p.add_argument("--tag", "-t", default=None,
                   help=f"name of the image (default: IMAGE; {DEFAULT_TAG} for busybox)")
    p.add_argument("--busybox", default=None,
                   help=f"busybox: the static busybox binary to use (default {BUSYBOX})")
    p.add_argument("--mirror", default=None,
                   help="debian: the Debian mirror to build from and to name in the image's "
                        "apt sources (default: the host's apt mirror, else "
                        "http://deb.debian.org/debian)")
    p.add_argument("--variant", default=None, choices=VARIANTS,
                   help=f"debian: mmdebstrap's package set (default {DEFAULT_VARIANT}: "
                        "essential packages and apt; minbase adds Priority: required)")


BOOTSTRAP = Command("bootstrap", "Build a base image on this host, without a registry "
                    "(busybox: from Debian's busybox-static; debian: from a Debian mirror "
                    "with mmdebstrap)", _setup, _bootstrap,
                    usage="ketch bootstrap busybox|debian:<suite>[-slim] [--tag NAME] "
                          "[--mirror URL] [--variant VARIANT]")
