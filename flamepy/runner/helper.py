"""Reading Runner task data by hand (debugging, tools): ``get_data``, ``RunnerError``, ``ErrorType``.

A Runner task's input is a cloudpickled :class:`~flamepy.runner.types.RunnerRequest`; its output is a
BSON-encoded ``ObjectRef`` of the result in the object cache. ``get_data`` turns either into a dict,
fetching what the refs point at.
"""

from __future__ import annotations

import enum
from typing import Any

import cloudpickle

from flamepy.runner.types import RunnerRequest
from flamepy_core.client.objects import get_object
from flamepy_core.objref import ObjectRef

__all__ = ["ErrorType", "RunnerError", "get_data"]

MAX_DEPTH = 10
_PICKLE_PROTOCOLS = (2, 3, 4, 5)


class ErrorType(str, enum.Enum):
    DECODE_ERROR = "decode_error"
    CACHE_RETRIEVAL_ERROR = "cache_retrieval_error"
    DATA_FORMAT_ERROR = "data_format_error"


class RunnerError(Exception):
    """A Runner payload could not be read; ``str()`` is ``"[<error type>] <message>"``."""

    def __init__(
        self,
        error_type: ErrorType,
        message: str,
        cause: BaseException | None = None,
        key: str | None = None,
        data_type: str | None = None,
    ) -> None:
        super().__init__(f"[{error_type.value}] {message}")
        self.error_type = error_type
        self.cause = cause
        self.key = key
        self.data_type = data_type


def _is_pickle(data: bytes) -> bool:
    return len(data) >= 2 and data[0] == 0x80 and data[1] in _PICKLE_PROTOCOLS


def _unpickle(data: bytes) -> Any:
    try:
        return cloudpickle.loads(data)
    except Exception:
        return None


def _as_ref(value: Any) -> ObjectRef | None:
    if isinstance(value, ObjectRef):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return ObjectRef.decode(bytes(value))
        except Exception:
            return None
    return None


def _fetch(ref: ObjectRef, metadata: dict[str, Any]) -> Any:
    try:
        value = get_object(ref)
    except Exception as exc:
        raise RunnerError(
            ErrorType.CACHE_RETRIEVAL_ERROR, f"Failed to get object {ref.key} from the cache: {exc}", exc, key=ref.key
        ) from exc
    metadata.setdefault("object_ref_key", ref.key)
    if isinstance(value, bytes) and _is_pickle(value):
        unpickled = _unpickle(value)
        if unpickled is not None:
            return unpickled
    return value


def _resolve(value: Any, metadata: dict[str, Any], depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        return value
    ref = _as_ref(value)
    if ref is not None:
        return _fetch(ref, metadata)
    if isinstance(value, list):
        return [_resolve(v, metadata, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve(v, metadata, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v, metadata, depth + 1) for k, v in value.items()}
    return value


def get_data(data: bytes) -> dict[str, Any]:
    """A Runner task's input or output, decoded.

    Input -> ``{"type": "input", "method", "args", "kwargs", "metadata"}`` with object refs among the
    arguments fetched; output -> ``{"type": "output", "result", "metadata"}``. ``metadata`` holds
    ``object_ref_key`` when a ref was followed. Undecodable bytes raise ``RunnerError(DECODE_ERROR)``; a
    ref whose object cannot be read raises ``RunnerError(CACHE_RETRIEVAL_ERROR)`` with ``.key`` set.
    """
    metadata: dict[str, Any] = {}
    value: Any = None
    if isinstance(data, (bytes, bytearray)) and _is_pickle(bytes(data)):
        value = _unpickle(bytes(data))
    if value is None:
        try:
            ref = ObjectRef.decode(bytes(data))
        except Exception as exc:
            raise RunnerError(
                ErrorType.DECODE_ERROR,
                f"Failed to decode data of {len(data)} bytes: neither a pickled RunnerRequest nor an ObjectRef",
                exc,
                data_type=type(data).__name__,
            ) from exc
        value = _fetch(ref, metadata)
    if isinstance(value, RunnerRequest):
        return {
            "type": "input",
            "method": value.method,
            "args": _resolve(tuple(value.args or ()), metadata),
            "kwargs": _resolve(dict(value.kwargs or {}), metadata),
            "metadata": metadata,
        }
    return {"type": "output", "result": value, "metadata": metadata}
