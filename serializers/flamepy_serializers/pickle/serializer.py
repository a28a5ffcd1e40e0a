"""The standard library's pickle.

Unlike cloudpickle it never pickles code by value: classes and functions travel as references
(``module.qualname``), so both sides must be able to import them, and a lambda or a class defined inside a
function is refused at encode time, in the caller's process. In exchange it needs nothing but the standard
library, and it is faster for plain data. Like any pickle, its ``loads`` can run code named in the payload:
use it only between processes that trust each other (a client and its own service).
"""

from __future__ import annotations

import pickle
from typing import Any

from flamepy_core.contracts.errors import FlameError, FlameErrorCode


class PickleSerializer:
    """Picklable values (domain ``"python"``); classes and functions by reference."""

    name = "pickle"
    domain = "python"

    def __init__(self, protocol: int | None = None) -> None:
        if protocol is not None and (
            isinstance(protocol, bool) or not isinstance(protocol, int) or not 2 <= protocol <= pickle.HIGHEST_PROTOCOL
        ):
            raise ValueError(
                f"pickle protocol must be an integer from 2 to {pickle.HIGHEST_PROTOCOL}, not {protocol!r}"
            )
        self.protocol = pickle.HIGHEST_PROTOCOL if protocol is None else protocol

    def dumps(self, obj: Any) -> bytes:
        try:
            return pickle.dumps(obj, protocol=self.protocol)
        except Exception as exc:  # PicklingError, TypeError, AttributeError ("local object"), RecursionError...
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'pickle' cannot encode a value of type {type(obj).__qualname__}: "
                f"{type(exc).__name__}: {exc}; pickle sends classes and functions by reference, so they must be "
                f"importable module-level names (or choose the 'cloudpickle' serializer)",
            ) from exc

    def loads(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'pickle' cannot decode {len(data)} bytes (starting {bytes(data[:8])!r}): "
                f"{type(exc).__name__}: {str(exc).rstrip('.')}; were they written by another serializer, "
                f"or is a class missing in this process?",
            ) from exc
