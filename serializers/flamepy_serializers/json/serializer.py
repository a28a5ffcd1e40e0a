"""JSON (UTF-8), strict: a value either comes back exactly as it was sent or is refused when it is sent.

The domain is ``"json"``: ``None``, ``bool``, ``int``, finite ``float``, ``str`` (valid Unicode: no lone
surrogates, since the output is real UTF-8 any JSON reader accepts), ``list`` and ``dict`` with ``str``
keys, nested freely. Only these exact types: Python's ``json`` module would quietly turn a tuple into a
list, an ``int`` key into a string, a ``str`` subclass or an ``IntEnum`` into its base value and NaN into
a token other readers reject, so the receiver would get something other than what was sent. Here each
of those is an error, raised in the sender's process before anything travels, naming the type and where
in the value it sits. Convert such values yourself (``list(t)``, ``str(k)``) or choose a serializer whose
domain holds them (``cloudpickle``, ``pickle``).

Dict order is kept; output is compact (no spaces) and not key-sorted.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

_DOMAIN_TEXT = "None, bool, int, finite float, str, list and dict with str keys"


class _Refused(Exception):
    """A part of the value outside the JSON domain: ``where`` is its path, ``why`` what is wrong."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(why)
        self.where = where
        self.why = why


def _hint(kind: type) -> str:
    if kind is tuple:
        return "; send a list instead (list(value))"
    if kind in (set, frozenset):
        return "; send a list instead (sorted(value) or list(value))"
    if kind in (bytes, bytearray, memoryview):
        return "; encode it as text first (e.g. base64) or choose the 'msgpack' serializer"
    return ""


def _check(value: Any, where: str, active: set[int]) -> None:
    """Refuse anything that would not come back from ``json.loads`` as the same value and type."""
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return
    if kind is float:
        if not math.isfinite(value):
            raise _Refused(where, f"float {value!r} has no JSON form (JSON numbers are finite)")
        return
    if kind is list or kind is dict:
        if id(value) in active:
            raise _Refused(where, f"the {kind.__name__} contains itself; JSON cannot express a cycle")
        active.add(id(value))
        if kind is list:
            for i, item in enumerate(value):
                _check(item, f"{where}[{i}]", active)
        else:
            for key, item in value.items():
                if type(key) is not str:
                    raise _Refused(
                        where,
                        f"dict key {key!r} ({type(key).__qualname__}) is not a str; JSON object keys are str "
                        f"(json would turn it into a string and the receiver would get another key)",
                    )
                _check(item, f"{where}[{key!r}]", active)
        active.discard(id(value))
        return
    detail = f"{kind.__qualname__} is not a JSON type (the 'json' serializer carries {_DOMAIN_TEXT})"
    raise _Refused(where, detail + _hint(kind))


def _refuse_constant(token: str) -> NoReturn:
    # json.loads accepts NaN and Infinity by default; the domain (and other JSON readers) do not.
    raise ValueError(f"{token} is not JSON")


class JsonSerializer:
    """JSON with the exact-round-trip domain described in the module docstring."""

    name = "json"
    domain = "json"

    def dumps(self, obj: Any) -> bytes:
        try:
            _check(obj, "", set())
            text = json.dumps(obj, ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":"))
            return text.encode("utf-8")
        except _Refused as refused:
            problem = f": at value{refused.where}: {refused.why}" if refused.where else f": {refused.why}"
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'json' cannot encode a value of type {type(obj).__qualname__}{problem}",
            ) from None
        except RecursionError:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'json' cannot encode a value of type {type(obj).__qualname__}: it is nested too deeply",
            ) from None
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else "?"
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'json' cannot encode a value of type {type(obj).__qualname__}: a str holds the lone "
                f"surrogate {bad!r}, which UTF-8 cannot carry",
            ) from exc
        except Exception as exc:  # e.g. an int beyond Python's int-to-str digit limit
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'json' cannot encode a value of type {type(obj).__qualname__}: "
                f"{type(exc).__name__}: {exc}",
            ) from exc

    def loads(self, data: bytes) -> Any:
        try:
            return json.loads(bytes(data), parse_constant=_refuse_constant)
        except Exception as exc:  # JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'json' cannot decode {len(data)} bytes (starting {bytes(data[:8])!r}): "
                f"{type(exc).__name__}: {str(exc).rstrip('.')}; were they written by another serializer?",
            ) from exc
