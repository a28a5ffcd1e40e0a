"""Small helpers every transport needs, so each one only moves frames.

Public for third-party transport authors: deadline arithmetic, the size check with an error that
names both sizes, the mapping of a handler's exception to the error the caller sees, and a
ready-made :class:`CallContext`.
"""

from __future__ import annotations

import threading
import time

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import DEFAULT_TIMEOUT, Timeout

DEFAULT_CALL_TIMEOUT = 60.0
"""Seconds a call may take when the caller passes no timeout of its own."""


def resolve_timeout(timeout: Timeout, default: float | None) -> float | None:
    """Seconds for this call: the caller's value, the channel default, or ``None`` (no deadline)."""
    if timeout is DEFAULT_TIMEOUT:
        return default
    if timeout is None:
        return None
    seconds = float(timeout)  # type: ignore[arg-type]
    if seconds < 0:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"timeout must be >= 0 seconds or None, got {timeout}")
    return seconds


def check_size(size: int, limit: int, *, what: str, endpoint: str) -> None:
    """Refuse a message larger than ``limit`` before it is sent, naming both numbers."""
    if size > limit:
        raise FlameError(
            FlameErrorCode.MESSAGE_TOO_LARGE,
            f"{what} of {size} bytes exceeds the largest message of {limit} bytes allowed on {endpoint}; "
            f"send less per call (e.g. put large data in the object cache) or raise max_message_size",
        )


def error_from_handler(method: str, exc: BaseException) -> FlameError:
    """What the caller sees when a handler raises: the same FlameError, or INTERNAL naming the type."""
    if isinstance(exc, FlameError):
        return exc
    return FlameError(FlameErrorCode.INTERNAL, f"handler for {method} raised {type(exc).__name__}: {exc}")


def deadline_exceeded(method: str, endpoint: str, timeout: float | None) -> FlameError:
    return FlameError(
        FlameErrorCode.DEADLINE_EXCEEDED,
        f"{method} on {endpoint} did not answer within its deadline of {timeout} s",
    )


def unavailable(endpoint: str, detail: str) -> FlameError:
    return FlameError(FlameErrorCode.UNAVAILABLE, f"cannot reach {endpoint}: {detail}")


def unimplemented(method: str, endpoint: str) -> FlameError:
    return FlameError(FlameErrorCode.UNIMPLEMENTED, f"the server at {endpoint} has no method {method}")


class SimpleCallContext:
    """A :class:`~flamepy_core.contracts.transport.CallContext` driven by a deadline and a cancel flag."""

    def __init__(self, method: str, timeout: float | None) -> None:
        self._method = method
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._cancelled = threading.Event()

    @property
    def method(self) -> str:
        return self._method

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        if self._cancelled.is_set():
            return False
        return self._deadline is None or time.monotonic() < self._deadline

    def cancel(self) -> None:
        """Mark the call as abandoned by the caller."""
        self._cancelled.set()
