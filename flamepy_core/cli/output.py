"""Printing for flmctl: aligned tables, and the same records as JSON or YAML.

A command builds plain records (dicts of JSON-ready values, the same for every format) and a list of
:class:`Column` to show them as a table; ``-o json`` and ``-o yaml`` print the records whole, so a script
never parses a table, and ``-o wide`` adds the columns marked ``wide``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import yaml


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table (as Flame's flmctl prints), empty cells as ``-``."""
    cells = [[str(h) for h in headers]] + [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells)


def when(dt: datetime | str | None) -> str:
    """A time for a table: local, to the second; ``-`` when unset. Accepts a datetime or its ISO text."""
    if not dt:
        return "-"
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt)
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def plain(value: Any) -> Any:
    """``value`` as JSON/YAML-ready data: enums by name, times in ISO 8601, bytes by their size."""
    if isinstance(value, Enum):  # before int: IntEnum members are ints
        return value.name
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def to_json(value: Any) -> str:
    return json.dumps(plain(value), indent=2)


def to_yaml(value: Any) -> str:
    return yaml.safe_dump(plain(value), sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


@dataclass(frozen=True)
class Column:
    """One table column: its header and how to show it from a record."""

    header: str
    show: Callable[[Mapping[str, Any]], Any]
    wide: bool = False
    """Shown only with ``-o wide``."""


def field(name: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda record: record.get(name)


def render(records: Any, fmt: str, columns: Sequence[Column] | None = None) -> str:
    """Records as ``fmt``: ``json``/``yaml`` print them whole; ``table``/``wide`` use ``columns``.

    ``records`` is a list for a listing, or one mapping for a view without ``columns`` (printed as
    ``key: value`` lines).
    """
    if fmt == "json":
        return to_json(records)
    if fmt == "yaml":
        return to_yaml(records)
    if columns is None:
        return key_values(records)
    shown = [c for c in columns if fmt == "wide" or not c.wide]
    return table([c.header for c in shown], [[c.show(r) for c in shown] for r in records])


def key_values(record: Mapping[str, Any], width: int = 0) -> str:
    """``key:  value`` lines, aligned; nested values on one line."""
    width = width or max((len(k) for k in record), default=0) + 2
    lines = []
    for key, value in record.items():
        shown = "-" if value is None or value == "" else value
        if isinstance(shown, (list, dict)):
            shown = json.dumps(shown) if shown else "-"
        lines.append(f"{key + ':':<{width}}{shown}")
    return "\n".join(lines)


def first_line(text: str | None, limit: int = 80) -> str:
    """The first line of ``text``, cut to ``limit`` characters (for one-line error cells)."""
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
