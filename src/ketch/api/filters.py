"""The ``filters`` query parameter of list and prune endpoints.

Clients send a JSON object mapping a filter name to its values, in one of two
shapes, both accepted::

    {"label": {"a=b": true, "c": true}}     docker CLI (Go's filters.Args)
    {"label": ["a=b", "c"]}                 docker-py, older clients

:func:`parse_filters` turns either into ``{"label": ["a=b", "c"]}``: values in
arrival order, duplicates dropped, and, in the map shape, only those marked
``true`` (a name left without values is dropped). What a filter means is the
engine's business; routers pass the dict on.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from ketch.errors import InvalidArgument

__all__ = ["parse_filters"]


def parse_filters(text: str | None,
                  allowed: Collection[str] | None = None) -> dict[str, list[str]]:
    """Parse a ``filters`` query value; ``{}`` for ``None`` or an empty string.

    Malformed JSON or values of the wrong type are ``InvalidArgument``; with
    ``allowed`` given, a filter name outside it is ``InvalidArgument``
    ``invalid filter '<name>'`` (dockerd's wording).
    """
    if text is None or not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"invalid filters: {e}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("invalid filters: expected a JSON object of filter names")
    out: dict[str, list[str]] = {}
    for key, spec in raw.items():
        if allowed is not None and key not in allowed:
            raise InvalidArgument(f"invalid filter '{key}'")
        values: list[str] = []
        if isinstance(spec, dict):
            for value, on in spec.items():
                if not isinstance(on, bool):
                    raise InvalidArgument(
                        f"invalid filters: {key!r}: {value!r} must map to true or false")
                if on and value not in values:
                    values.append(value)
        elif isinstance(spec, list):
            for value in spec:
                if not isinstance(value, str):
                    raise InvalidArgument(
                        f"invalid filters: {key!r} must be a list of strings")
                if value not in values:
                    values.append(value)
        else:
            raise InvalidArgument(
                f"invalid filters: {key!r} must be an object or a list of strings")
        if values:
            out[key] = values
    return out
