"""Choosing one manifest from an index (a manifest list) by platform.

``--platform`` is ``os[/arch[/variant]]``; the default is the host. Matching follows
containerd's rules, in a simple form: os and architecture must be equal; if a variant is
wanted, an entry with that variant wins, then one without a variant; with no variant
wanted, an entry without one (or the first) wins. ``arm64`` without a variant matches
``arm64/v8`` and the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence

from ketch.errors import InvalidArgument, NotFound
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor, Platform

__all__ = ["format_platform", "parse_platform", "select_manifest"]


def parse_platform(text: str, default: Platform) -> Platform:
    """``os[/arch[/variant]]`` (arch and variant default to ``default``'s)."""
    parts = text.strip().lower().split("/")
    if not text.strip() or len(parts) > 3 or not all(parts):
        raise InvalidArgument(f"invalid platform {text!r}: want os[/arch[/variant]]")
    os_name = parts[0]
    arch = parts[1] if len(parts) > 1 else default.architecture
    variant = parts[2] if len(parts) > 2 else (default.variant if len(parts) == 1 else None)
    return Platform(architecture=arch, os=os_name, variant=variant)


def format_platform(p: Platform) -> str:
    return "/".join(x for x in (p.os, p.architecture, p.variant) if x)


def _variant(p: Platform) -> str | None:
    if p.architecture == "arm64" and p.variant in (None, "v8"):
        return None
    return p.variant


def select_manifest(manifests: Sequence[Descriptor], want: Platform) -> Descriptor:
    """The entry of an index's ``manifests`` for ``want`` (see the module doc)."""
    fits = [d for d in manifests
            if d.media_type in mt.MANIFEST_TYPES and d.platform is not None
            and (d.platform.os, d.platform.architecture) == (want.os, want.architecture)]
    if not fits:
        raise NotFound(f"no matching manifest for {format_platform(want)} in the manifest "
                       f"list entries")
    wanted = _variant(want)
    for d in fits:
        assert d.platform is not None
        if _variant(d.platform) == wanted:
            return d
    if wanted is None:
        return fits[0]
    raise NotFound(f"no matching manifest for {format_platform(want)} in the manifest "
                   f"list entries")
