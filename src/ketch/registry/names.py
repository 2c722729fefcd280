"""Repository names, tags, references, digests and upload ids, as the spec spells them.

Every value taken from a URL passes one of these checks before it reaches a storage
path, so no request can name a path outside its repository: name components start
with ``[a-z0-9]`` (never ``.``/``..``/``_``), tags start with ``[A-Za-z0-9_]``, digests
are ``algorithm:lowercase-hex`` and upload ids are 32 hex characters.
"""

from __future__ import annotations

import re

from ketch.errors import InvalidArgument
from ketch.oci.digest import Digest
from ketch.registry.errors import DigestInvalid, ManifestInvalid, NameInvalid

__all__ = [
    "MAX_NAME",
    "check_name",
    "is_tag",
    "is_upload_id",
    "parse_digest",
    "parse_reference",
]

MAX_NAME = 255
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_UPLOAD = re.compile(r"[0-9a-f]{32}")


def check_name(name: str) -> str:
    """``name`` if it is a valid repository name, else ``NameInvalid``."""
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise NameInvalid(detail={"name": name[:300]})
    return name


def is_tag(ref: str) -> bool:
    return _TAG.fullmatch(ref) is not None


def parse_reference(ref: str) -> Digest | str:
    """A manifest reference: a ``Digest`` (``DigestInvalid`` if malformed) or a tag
    (``ManifestInvalid`` if malformed — a bad request, not an unknown manifest)."""
    if ":" in ref:
        return parse_digest(ref)
    if not is_tag(ref):
        raise ManifestInvalid(f"invalid tag {ref[:140]!r}", detail={"tag": ref[:140]})
    return ref


def parse_digest(text: str) -> Digest:
    """A ``Digest``, or ``DigestInvalid`` (400) naming the bad input."""
    try:
        return Digest.parse(text)
    except InvalidArgument as e:
        raise DigestInvalid(str(e), detail={"digest": text[:200]}) from None


def is_upload_id(text: str) -> bool:
    return _UPLOAD.fullmatch(text) is not None
