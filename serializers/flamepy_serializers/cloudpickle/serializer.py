"""cloudpickle, emitting plain cloudpickle bytes: exactly what Flame's service layer sends and expects."""

from __future__ import annotations

import io
import logging
import pickle
import sys
import threading
import time
from typing import Any

import cloudpickle

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

log = logging.getLogger(__name__)

_MAIN = b"__main__"
"""In a payload only when something names the ``__main__`` module: the cheap test before the real one."""

_ATOMS = frozenset({bytes, str, int, float, bool, type(None)})
"""Types that cloudpickle writes exactly as pickle does (its pickler consults its own reducers only for
other types): a value of one of these is written by ``pickle.dumps``, the same bytes without setting up
cloudpickle's pickler (4.0 -> 0.8 µs for 100 bytes, on both sides of every typed call)."""


class CloudpickleSerializer:
    """Any picklable value. Classes defined in ``__main__`` travel by value (slower; keep types importable)."""

    name = "cloudpickle"
    domain = "python"

    def __init__(self, protocol: int | None = None) -> None:
        if protocol is not None and not 2 <= protocol <= pickle.HIGHEST_PROTOCOL:
            raise ValueError(f"pickle protocol must be between 2 and {pickle.HIGHEST_PROTOCOL}, got {protocol}")
        self.protocol = protocol

    def dumps(self, obj: Any) -> bytes:
        if type(obj) in _ATOMS:
            return pickle.dumps(obj, protocol=cloudpickle.DEFAULT_PROTOCOL if self.protocol is None else self.protocol)
        try:
            data: bytes = cloudpickle.dumps(obj, protocol=self.protocol)
        except Exception as exc:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"serializer 'cloudpickle' cannot encode a value of type {type(obj).__qualname__}: "
                f"{type(exc).__name__}: {exc}",
            ) from exc
        if _MAIN in data:
            _report_main_classes(obj, len(data), self.protocol)
        return data

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


# -- classes pickled by value ---------------------------------------------------------------------------

_lock = threading.Lock()
_checked_types: set[type] = set()
"""Top-level value types already examined: each is examined once, so the steady state costs one byte search."""
_reported: set[str] = set()


def classes_by_value(obj: Any, protocol: int | None = None) -> list[type]:
    """The classes of ``__main__`` that pickling ``obj`` sends by value (whole definitions, not references).

    cloudpickle sends a class by reference (module and name) when the receiver can import it, and by value
    otherwise; a script's ``__main__`` is never importable elsewhere, so its classes always go by value.
    """
    found: list[type] = []

    class Watching(cloudpickle.CloudPickler):  # type: ignore[misc]
        def reducer_override(self, value: Any) -> Any:
            if isinstance(value, type) and value.__module__ == "__main__" and value not in found:
                found.append(value)
            return super().reducer_override(value)

    Watching(io.BytesIO(), protocol=protocol).dump(obj)
    return found


def _report_main_classes(obj: Any, payload_size: int, protocol: int | None) -> None:
    """Log once per class, at INFO, which ``__main__`` class travels by value, what it costs, and the fix."""
    with _lock:
        if type(obj) in _checked_types:
            return
        _checked_types.add(type(obj))
    try:
        classes = classes_by_value(obj, protocol)
    except Exception:  # the value pickled a moment ago; a watcher that fails must not fail the call
        return
    for cls in classes:
        with _lock:
            if cls.__qualname__ in _reported:
                continue
            _reported.add(cls.__qualname__)
        size, seconds = _cost(cls, protocol)
        log.info(
            "cloudpickle sends class %s by value with every payload that holds it (this one: %d bytes), "
            "because it is defined in __main__, the script that was run, which the other side cannot import: "
            "about %d bytes and %.2f ms of pickling each time, and the receiver gets a rebuilt copy of the "
            "class (isinstance checks against the original are False). Define %s in a module both sides "
            "import (for example %s_types.py) so that only a reference travels.",
            cls.__qualname__,
            payload_size,
            size,
            seconds * 1000,
            cls.__qualname__,
            _module_hint(cls),
        )


def _cost(cls: type, protocol: int | None) -> tuple[int, float]:
    """Bytes and seconds of pickling the class definition alone (the best of a few runs)."""
    size, best = 0, float("inf")
    for _ in range(3):
        started = time.perf_counter()
        size = len(cloudpickle.dumps(cls, protocol=protocol))
        best = min(best, time.perf_counter() - started)
    return size, best


def _module_hint(cls: type) -> str:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or ""
    stem = path.rsplit("/", 1)[-1].removesuffix(".py")
    return stem.removesuffix("_service") if stem.isidentifier() else "my"
