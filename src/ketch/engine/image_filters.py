"""The ``filters`` of ``GET /images/json`` and ``POST /images/prune``, and image times.

Filters arrive parsed (``{"label": ["a=b"], ...}``); the meaning is dockerd's:

- ``dangling``: ``true``/``1`` or ``false``/``0``; anything else is an error.
- ``label``: ``key`` (present) or ``key=value``; every one given must match.
  ``label!`` (prune): none of them may match.
- ``reference``: shell globs (``*`` stops at ``/``, as Go's ``path.Match``) against
  the familiar name with tag (``busybox:latest``) or without (``busybox``).
- ``until``: a Unix time (``1700000000[.5]``), an RFC 3339 date or date-time, or a
  Go duration (``10m``, ``1h30m``) back from now.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime

from ketch.errors import InvalidArgument
from ketch.image.changes import parse_duration

__all__ = [
    "LIST_FILTERS",
    "PRUNE_FILTERS",
    "check_filters",
    "dangling_filter",
    "format_time",
    "glob_match",
    "match_labels",
    "parse_created",
    "parse_until",
]

LIST_FILTERS = frozenset({"dangling", "label", "before", "since", "reference", "until"})
PRUNE_FILTERS = frozenset({"dangling", "label", "label!", "until"})
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)(?:[T ](\d\d:\d\d(?::\d\d)?)(?:\.(\d+))?)?"
                      r"(Z|z|[+-]\d\d:?\d\d)?")


def check_filters(filters: Mapping[str, Sequence[str]], allowed: Collection[str]) -> None:
    """``InvalidArgument`` ``invalid filter '<name>'`` for a name outside ``allowed``."""
    for name in filters:
        if name not in allowed:
            raise InvalidArgument(f"invalid filter '{name}'")


def dangling_filter(filters: Mapping[str, Sequence[str]], default: bool | None
                    ) -> bool | None:
    """The ``dangling`` filter as a bool (``default`` when absent)."""
    values = filters.get("dangling") or []
    if not values:
        return default
    out = None
    for v in values:
        low = v.lower()
        if low in ("true", "1"):
            b = True
        elif low in ("false", "0"):
            b = False
        else:
            raise InvalidArgument(f"invalid filter 'dangling={v}'")
        if out is not None and out != b:
            raise InvalidArgument("invalid filter 'dangling': true and false both given")
        out = b
    return out


def match_labels(labels: Mapping[str, str], exprs: Sequence[str]) -> bool:
    """True when every ``key`` / ``key=value`` of ``exprs`` holds for ``labels``."""
    for e in exprs:
        key, eq, value = e.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def _glob_re(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise InvalidArgument(f"invalid reference filter {pattern!r}: syntax error "
                                      f"in pattern")
            body = pattern[i + 1:end]
            neg = body.startswith("^")
            body = body[1:] if neg else body
            out.append("[" + ("^" if neg else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def glob_match(pattern: str, *candidates: str) -> bool:
    """Go ``path.Match`` of ``pattern`` against any of ``candidates``."""
    rx = _glob_re(pattern)
    return any(rx.fullmatch(c) for c in candidates)


def parse_created(text: object) -> datetime | None:
    """An image config's ``created`` (RFC 3339, nanoseconds allowed) as an aware datetime."""
    if not isinstance(text, str):
        return None
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        return None
    day, clock, frac, zone = m.groups()
    iso = f"{day}T{clock or '00:00:00'}"
    if clock is not None and clock.count(":") == 1:
        iso += ":00"
    if frac:
        iso += "." + frac[:6].ljust(6, "0")
    if zone in (None, "Z", "z"):
        iso += "+00:00"
    else:
        iso += zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    try:
        return datetime.fromisoformat(iso)
    except ValueError:
        return None


def format_time(dt: datetime) -> str:
    """RFC 3339 in UTC with Go's trimmed fraction: ``2024-05-01T10:00:00.5Z``."""
    dt = dt.astimezone(UTC)
    frac = f".{dt.microsecond:06d}".rstrip("0") if dt.microsecond else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (frac if frac != "." else "") + "Z"


def parse_until(text: str, now: float | None = None) -> float:
    """An ``until`` value as a Unix time (see the module doc)."""
    now = time.time() if now is None else now
    t = text.strip()
    if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", t):
        return float(t)
    dt = parse_created(t)
    if dt is not None:
        return dt.timestamp()
    try:
        return now - parse_duration(t) / 1e9
    except InvalidArgument:
        raise InvalidArgument(f"invalid filter 'until={text}': want a timestamp, a date or "
                              f"a duration") from None
