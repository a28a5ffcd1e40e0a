"""The helpers every transport needs; kept at this import path for existing code.

They live in :mod:`flamepy_core.kit` (with the framed base and socket links), and plugin authors import
them from :mod:`flamepy.plugin`.
"""

from flamepy_core.kit.basics import (
    ASYNC_FALLBACK_WORKERS,
    DEFAULT_CALL_TIMEOUT,
    RAISE_THE_LIMIT,
    WAIT_SLICE,
    Deadlines,
    FutureResponder,
    QueueWriter,
    SimpleCallContext,
    adapt_handlers,
    answering,
    blocking_stream,
    blocking_unary,
    calls_run_on,
    check_size,
    deadline_exceeded,
    error_from_handler,
    left_to_waiting_thread,
    resolve_timeout,
    run_calls_on,
    stream_async,
    unary_async,
    unary_read,
    unavailable,
    unimplemented,
)

__all__ = [
    "ASYNC_FALLBACK_WORKERS",
    "DEFAULT_CALL_TIMEOUT",
    "RAISE_THE_LIMIT",
    "WAIT_SLICE",
    "Deadlines",
    "FutureResponder",
    "QueueWriter",
    "SimpleCallContext",
    "adapt_handlers",
    "answering",
    "blocking_stream",
    "blocking_unary",
    "calls_run_on",
    "check_size",
    "deadline_exceeded",
    "error_from_handler",
    "left_to_waiting_thread",
    "resolve_timeout",
    "run_calls_on",
    "stream_async",
    "unary_async",
    "unary_read",
    "unavailable",
    "unimplemented",
]
