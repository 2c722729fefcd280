"""Image references as Docker spells them, and their normalised form.

Grammar (the distribution project's, which Docker and every registry client use)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path
    domain     := host [ ":" port ]          host: dot-separated DNS labels,
                                              "localhost" or "[ipv6]"
    path       := component ( "/" component )*
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}

Normalisation (what ``docker pull busybox`` means by ``busybox``):

- the first component is a domain only if it holds a "." or a ":" or is
  ``localhost`` (or starts with an uppercase letter, which Docker also takes for a
  host); otherwise the domain is ``docker.io``;
- ``index.docker.io`` is ``docker.io``; a single-component path on ``docker.io``
  gets ``library/`` (the official images);
- without tag or digest the tag is ``latest``.

So ``busybox`` is ``docker.io/library/busybox:latest`` and
``localhost:5000/a/b@sha256:…`` stays as it is. ``familiar()`` goes back to the short
form Docker prints. Errors are ``InvalidArgument`` in Docker's wording
(``invalid reference format``), because clients match on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ketch.errors import InvalidArgument
from ketch.oci.digest import Digest

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "Reference",
    "is_image_id",
    "normalize",
    "parse",
]

DEFAULT_DOMAIN: Final = "docker.io"
DEFAULT_TAG: Final = "latest"
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL = "library/"
_NAME_MAX = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
# the name part is matched loosely, then checked per piece for better messages
_REFERENCE = re.compile(
    rf"(?P<name>(?:\[[0-9a-fA-F:]+\](?::[0-9]+)?/|[^:@/]+:[0-9]+/)?[^:@]+)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?")
_DOMAIN_RE = re.compile(_DOMAIN)
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_ANCHORED_ID = re.compile(r"[a-f0-9]{64}")


def _invalid(why: str = "") -> InvalidArgument:
    return InvalidArgument("invalid reference format" + (f": {why}" if why else ""))


def is_image_id(text: str) -> bool:
    """True for a full 64-hex image ID, which can never be a repository name."""
    return bool(_ANCHORED_ID.fullmatch(text))


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed reference; ``domain`` is "" only for unnormalised, domain-less input."""

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        """The repository: ``domain/path`` (``docker.io/library/busybox``)."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def familiar(self) -> str:
        """The short form Docker shows: ``busybox:latest``, ``me/app:1``, ``host:5000/x:y``."""
        path = self.path
        if self.domain == DEFAULT_DOMAIN:
            if path.startswith(_OFFICIAL) and path.count("/") == 1:
                path = path[len(_OFFICIAL):]
            short = path
        else:
            short = self.name
        if self.tag is not None:
            short += f":{self.tag}"
        if self.digest is not None:
            short += f"@{self.digest}"
        return short


def parse(text: str) -> Reference:
    """Parse ``text`` as written, without normalising it (no default domain or tag)."""
    if not isinstance(text, str) or not text:
        raise _invalid()
    m = _REFERENCE.fullmatch(text)
    if m is None:
        raise _invalid()
    name, tag, dig = m.group("name"), m.group("tag"), m.group("digest")
    if len(name) > _NAME_MAX:
        raise _invalid(f"repository name must not be more than {_NAME_MAX} characters")
    domain, sep, path = name.partition("/")
    if not sep or not _looks_like_domain(domain):
        domain, path = "", name
    if domain and not _DOMAIN_RE.fullmatch(domain):
        raise _invalid()
    if not _PATH_RE.fullmatch(path):
        if _PATH_RE.fullmatch(path.lower()):
            raise _invalid(f"repository name ({path}) must be lowercase")
        raise _invalid()
    digest = None
    if dig is not None:
        try:
            digest = Digest.parse(dig)
        except InvalidArgument as e:
            raise _invalid(str(e)) from None
    return Reference(domain, path, tag, digest)


def _looks_like_domain(first: str) -> bool:
    return ("." in first or ":" in first or first == "localhost"
            or first.lower() != first)


def normalize(text: str | Reference) -> Reference:
    """The fully qualified reference Docker means by ``text`` (see the module doc).

    A bare 64-hex string is refused, as Docker does: it would be read as an image ID.
    """
    if isinstance(text, Reference):
        ref = text
    else:
        if is_image_id(text):
            raise InvalidArgument(
                f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings")
        ref = parse(text)
    domain, path = ref.domain, ref.path
    if not domain or domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = _OFFICIAL + path
    tag = ref.tag
    if tag is None and ref.digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, ref.digest)
