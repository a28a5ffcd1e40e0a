"""cloudpickle, emitting plain cloudpickle bytes: exactly what Flame's service layer sends and expects."""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from flamepy_core.contracts.errors import FlameError, FlameErrorCode


class CloudpickleSerializer:
    """Any picklable value. Classes defined in ``__main__`` travel by value (slower; keep types importable)."""

    name = "cloudpickle"
    domain = "python"

    def __init__(self, protocol: int | None = None) -> None:
        if protocol is not None and not 2 <= protocol <= pickle.HIGHEST_PROTOCOL:
            raise ValueError(f"pickle protocol must be between 2 and {pickle.HIGHEST_PROTOCOL}, got {protocol}")
        self.protocol = protocol

    def dumps(self, obj: Any) -> bytes:
        try:
            return cloudpickle.dumps(obj, protocol=self.protocol)  # type: ignore[no-any-return]
        except Exception as exc:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'cloudpickle' cannot encode a value of type {type(obj).__qualname__}: "
                f"{type(exc).__name__}: {exc}",
            ) from exc

    def loads(self, data: bytes) -> Any:
        try:
            return cloudpickle.loads(data)
        except Exception as exc:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'cloudpickle' cannot decode {len(data)} bytes "
                f"(starting {bytes(data[:8])!r}): {type(exc).__name__}: {str(exc).rstrip('.')}; "
                f"were they written by another serializer, or is a class missing in this process?",
            ) from exc
