"""Printing for flmctl: aligned tables and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from enum import Enum
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table (as Flame's flmctl prints), empty cells as ``-``."""
    cells = [[str(h) for h in headers]] + [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells)


def when(dt: datetime | None) -> str:
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def to_json(value: Any) -> str:
    def plain(o: Any) -> Any:
        # json.dumps never calls ``default`` for IntEnum members (they are ints): name them here.
        if isinstance(o, Enum):
            return o.name
        if isinstance(o, dict):
            return {k: plain(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [plain(v) for v in o]
        return o

    def default(o: Any) -> Any:
        if isinstance(o, datetime):
            return o.isoformat()
        if isinstance(o, bytes):
            return f"<{len(o)} bytes>"
        if hasattr(o, "name") and hasattr(o, "value"):
            return o.name
        return str(o)

    return json.dumps(plain(value), indent=2, default=default, sort_keys=False)
