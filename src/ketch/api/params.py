"""Reading request parameters the way dockerd does: booleans, integers, JSON bodies."""

from __future__ import annotations

import json
from typing import Any

from ketch.errors import InvalidArgument
from ketch.httpserver import Request

__all__ = ["bool_arg", "int_arg", "json_body"]

_TRUE = {"1", "true", "True", "TRUE", "yes", "t"}
_FALSE = {"", "0", "false", "False", "FALSE", "no", "f"}


def bool_arg(request: Request, name: str, default: bool = False) -> bool:
    """``?x=1``/``true`` → True, ``0``/``false``/empty → False; anything else is 400."""
    value = request.arg(name)
    if value is None:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgument(f"invalid value for {name}: {value!r} is not a boolean")


def int_arg(request: Request, name: str, default: int | None = None) -> int | None:
    value = request.arg(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"invalid value for {name}: {value!r} is not an integer") \
            from None


def json_body(request: Request, *, allow_empty: bool = True) -> Any:
    """The decoded JSON body; a clear 400 for bad JSON (None when empty and allowed)."""
    data = request.body if request.spool is None else request.body_io().read()
    if not data.strip():
        if allow_empty:
            return None
        raise InvalidArgument("request body is empty: a JSON object is required")
    ctype = (request.headers.get("content-type") or "application/json").split(";")[0].strip()
    if ctype not in ("application/json", "text/plain", ""):
        raise InvalidArgument(f"unsupported Content-Type {ctype!r}: expected application/json")
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise InvalidArgument("invalid JSON: body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
