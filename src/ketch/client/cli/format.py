"""Output like the docker CLI's: aligned tables, human sizes and times, ``--format``.

* :func:`tabulate` aligns cells the way Go's ``text/tabwriter`` does with docker's
  settings (minimum width 10, padding 3, last column not padded).
* :func:`human_size` (``4.26MB``, decimal units, 3 significant digits) and
  :func:`human_duration` (``About a minute``, ``3 hours``) — docker's wording.
* :class:`Template`: the small part of Go's text/template that scripts use with
  docker: ``{{.Field}}``, ``{{.A.B}}``, ``{{json .}}``, ``{{json .Field}}``; plus
  the ``table`` prefix and ``\\t``/``\\n`` escapes. :func:`render_rows` applies
  a ``--format`` value (empty, ``table ...``, ``json`` or a template) to rows.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from ketch.client.cli.base import Context, UsageError
from ketch.errors import NotFound
from ketch.units import human_duration

__all__ = [
    "Template",
    "created_at",
    "ellipsis",
    "go_json",
    "go_value",
    "human_duration",
    "human_size",
    "render_rows",
    "short_id",
    "since",
    "tabulate",
    "write_inspect",
]

MIN_WIDTH, PADDING = 10, 3
_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def tabulate(rows: Iterable[Sequence[str]], min_width: int = MIN_WIDTH) -> str:
    """Rows of cells → aligned text, one line per row (each ending in a newline).

    Column width is ``max(min_width, widest cell + 3)``; the last cell of a row is written
    as is, like tabwriter's unterminated cell.
    """
    table = [list(r) for r in rows]
    widths: list[int] = []
    for row in table:
        for i, cell in enumerate(row[:-1]):
            w = max(min_width, len(cell) + PADDING)
            if i == len(widths):
                widths.append(w)
            elif w > widths[i]:
                widths[i] = w
    return "".join("".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1]))
                   + (row[-1] if row else "") + "\n" for row in table)


def human_size(size: float, precision: int = 3) -> str:
    """Bytes in decimal units with ``precision`` significant digits: ``4.26MB``, ``0B``."""
    unit = 0
    while size >= 1000 and unit < len(_UNITS) - 1:
        size /= 1000
        unit += 1
    return f"{size:.{precision}g}{_UNITS[unit]}"


def since(ts: float, now: float | None = None) -> str:
    """``About a minute ago`` for the Unix time ``ts``."""
    return human_duration((time.time() if now is None else now) - ts) + " ago"


def created_at(ts: float) -> str:
    """Go's ``time.Time.String()`` in local time: ``2024-05-01 10:20:30 +0200 CEST``."""
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z %Z")


def short_id(ident: str, trunc: bool = True) -> str:
    """``sha256:`` dropped and 12 hex digits kept (all of them unless ``trunc``)."""
    if ":" in ident and ident.split(":", 1)[0] in ("sha256", "sha512"):
        rest = ident.split(":", 1)[1]
        return rest[:12] if trunc else ident
    return ident[:12] if trunc else ident


def ellipsis(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one ``…`` when cut."""
    if len(text) <= width:
        return text
    return text[:width - 1] + "…" if width > 1 else text[:width]


# -- Go text/template subset -----------------------------------------------------------

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_PATH = re.compile(r"\.(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?\Z")


class _Missing:
    pass


_MISSING = _Missing()


def go_json(v: Any) -> str:
    """Compact JSON as Go's encoder writes it (``<``, ``>``, ``&`` escaped)."""
    text = json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def go_value(v: Any) -> str:
    """A value as Go's ``fmt.Print`` shows decoded JSON (``map[a:1]``, ``[x y]``, ``true``)."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return str(int(v))
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{k}:{go_value(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, list | tuple):
        return "[" + " ".join(go_value(x) for x in v) + "]"
    return str(v)


@dataclass(frozen=True, slots=True)
class _Action:
    func: str | None  # None or "json"
    path: tuple[str, ...]  # () is "." itself


class Template:
    """A parsed ``--format`` template (see the module doc for what is supported).

    ``strict``: unknown fields are errors (docker's row contexts: ``can't evaluate
    field``); otherwise they print ``<no value>`` (maps, as with ``inspect``).
    """

    def __init__(self, text: str) -> None:
        self.text = text.replace("\\t", "\t").replace("\\n", "\n")
        self.parts: list[str | _Action] = []
        pos = 0
        for m in _ACTION.finditer(self.text):
            if m.start() > pos:
                self.parts.append(self.text[pos:m.start()])
            self.parts.append(self._parse(m.group(1)))
            pos = m.end()
        if pos < len(self.text):
            self.parts.append(self.text[pos:])

    def _parse(self, action: str) -> _Action:
        words = action.split()
        func = None
        if len(words) == 2 and words[0] == "json":
            func, words = "json", words[1:]
        if len(words) != 1 or not _PATH.match(words[0]):
            raise UsageError(f"template parsing error: unsupported action {{{{{action}}}}} "
                             "(only {{.Field}} and {{json .}} are supported)")
        path = tuple(p for p in words[0].split(".") if p)
        return _Action(func, path)

    def _lookup(self, obj: Any, path: tuple[str, ...], strict: bool) -> Any:
        for name in path:
            if isinstance(obj, Mapping) and name in obj:
                obj = obj[name]
            elif strict:
                raise UsageError(f"template: executing {self.text!r}: can't evaluate field {name}")
            else:
                return _MISSING
        return obj

    def render(self, obj: Any, *, strict: bool = False) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = self._lookup(obj, part.path, strict)
            if part.func == "json":
                out.append("null" if value is _MISSING else go_json(value))
            else:
                out.append("<no value>" if value is _MISSING else go_value(value))
        return "".join(out)


def render_rows(out: TextIO, rows: Sequence[Mapping[str, str]], fmt: str | None, *,
                default: str, headers: Mapping[str, str]) -> None:
    """Write ``rows`` as ``fmt`` says (the command's ``default`` table when empty).

    ``json`` writes one JSON object per line; ``table ...`` a header (from
    ``headers``: field name → column title) and aligned rows; anything else is a
    template rendered once per row.
    """
    fmt = fmt or default
    if fmt.strip() == "json":
        for row in rows:
            out.write(go_json(dict(sorted(row.items()))) + "\n")
        return
    if fmt.startswith("table"):
        tpl = Template(fmt[len("table"):].lstrip(" ") or default[len("table"):].lstrip(" "))
        table = [tpl.render(headers).split("\t")]
        table += [tpl.render(row, strict=True).split("\t") for row in rows]
        out.write(tabulate(table))
        return
    tpl = Template(fmt)
    for row in rows:
        out.write(tpl.render(row, strict=True) + "\n")


def write_inspect(out: TextIO, objects: Sequence[Any], fmt: str | None) -> None:
    """``inspect`` output: a JSON array indented by 4, or ``fmt`` per object."""
    if not fmt:
        out.write(json.dumps(list(objects), indent=4, ensure_ascii=False) + "\n")
        return
    if fmt.strip() == "json":
        for obj in objects:
            out.write(go_json(obj) + "\n")
        return
    tpl = Template(fmt)
    for obj in objects:
        out.write(tpl.render(obj) + "\n")


def inspect_each(ctx: Context, names: Sequence[str], fetch: Callable[[str], Any],
                 fmt: str | None) -> int:
    """``docker <thing> inspect``: fetch each name, print what was found, 1 if any was not."""
    found, status = [], 0
    for name in names:
        try:
            found.append(fetch(name))
        except NotFound as e:
            ctx.error(f"Error: {e}")
            status = 1
    write_inspect(ctx.out, found, fmt)
    return status
