"""Engine API version negotiation.

Clients may prefix any path with ``/vX.Y``; unprefixed paths mean the current
version. The docker CLI first asks ``/_ping`` for ``API-Version`` and then uses
min(its own, ours), so advertising a version is a promise about response shapes.

CURRENT is 1.47: the newest *released* spec we keep beside the code
(/work/shared/specs/docker-engine-api/v1.47.yaml, Docker 27.x). ``v1.56-latest``
is a moving target, and nothing ketch serves yet needs a later shape; docker
CLI 28 negotiates down to 1.47 without complaint. MINIMUM is 1.24, the oldest
version dockerd still accepted (docker-py and compose v1 pin it).
"""

from __future__ import annotations

import re

from ketch.errors import InvalidArgument

__all__ = ["CURRENT", "MINIMUM", "check", "compare", "parse", "split_path"]

CURRENT = "1.47"
MINIMUM = "1.24"

_PREFIX = re.compile(r"^/v([0-9][0-9.]*)(/.*)?$")


def parse(version: str) -> tuple[int, ...]:
    """``"1.47"`` → ``(1, 47)``; InvalidArgument when it is not dotted integers."""
    try:
        parts = tuple(int(p) for p in version.split("."))
    except ValueError:
        raise InvalidArgument(f"invalid API version {version!r}") from None
    if not parts or any(p < 0 for p in parts):
        raise InvalidArgument(f"invalid API version {version!r}")
    return parts


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is older than, equal to or newer than ``b`` (1.9 < 1.24)."""
    pa, pb = parse(a), parse(b)
    width = max(len(pa), len(pb))
    pa += (0,) * (width - len(pa))
    pb += (0,) * (width - len(pb))
    return (pa > pb) - (pa < pb)


def split_path(path: str) -> tuple[str | None, str]:
    """``/v1.41/containers/json`` → ``("1.41", "/containers/json")``; no prefix → None."""
    m = _PREFIX.match(path)
    if m is None:
        return None, path
    return m.group(1), m.group(2) or "/"


def check(version: str | None) -> str:
    """The version a request is served at; InvalidArgument (400) outside our range.

    The wording is dockerd's, which users and scripts recognise.
    """
    if version is None:
        return CURRENT
    if compare(version, CURRENT) > 0:
        raise InvalidArgument(
            f"client version {version} is too new. Maximum supported API version is {CURRENT}")
    if compare(version, MINIMUM) < 0:
        raise InvalidArgument(
            f"client version {version} is too old. Minimum supported API version is {MINIMUM}, "
            "please upgrade your client to a newer version")
    return version
