"""JSON through flamepy's own strict ``json`` serializer, then zlib.

Reusing the bundled serializer (found through the registry like any plugin) keeps the domain exact:
tuples, sets, NaN and non-string keys are refused at encode time, never silently changed.
"""

from __future__ import annotations

import zlib
from typing import Any

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.plugins import get_registry

NAME = "zjson"


class ZjsonSerializer:
    """JSON values, compressed. Thread-safe and stateless between calls."""

    name = NAME
    domain = "json"

    def __init__(self, level: int = 6) -> None:
        if not isinstance(level, int) or not 0 <= level <= 9:
            raise ValueError(f"zlib level must be an integer from 0 to 9, got {level!r}")
        self.level = level
        self._json = get_registry().serializer("json")

    def dumps(self, obj: Any) -> bytes:
        try:
            text = self._json.dumps(obj)
        except FlameError as exc:
            raise FlameError(exc.code, f"serializer '{NAME}': {exc.message}") from exc
        return zlib.compress(text, self.level)

    def loads(self, data: bytes) -> Any:
        try:
            text = zlib.decompress(bytes(data))
        except zlib.error as exc:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer '{NAME}' cannot decode {len(data)} bytes: not zlib data ({exc}); "
                f"were they written by another serializer?",
            ) from exc
        try:
            return self._json.loads(text)
        except FlameError as exc:
            raise FlameError(exc.code, f"serializer '{NAME}': {exc.message}") from exc
