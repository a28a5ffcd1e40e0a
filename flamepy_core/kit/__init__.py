"""The kit for transport authors: what every transport needs, so each one supplies only its primitives.

* :mod:`.basics` - deadlines, the size check, the errors the contract prescribes, a ready call context,
  and adapters that give deferred replies and asynchronous calls to a transport without them;
* :mod:`.framed` - :class:`FramedTransport`, a base that owns call ids, deadlines, cancellation, stream
  windows, error mapping, deferred replies and ``unary_async``; a subclass supplies ``dial`` and
  ``listen``;
* :mod:`.links` - the :class:`Link` and :class:`Listener` a framed transport supplies, and ready ones over
  stream sockets (TCP, unix).

Plugin authors import all of it, with the contracts and ``hookimpl``, from :mod:`flamepy.plugin`.

Each name is imported on first use (PEP 562): a transport that uses only :mod:`.basics` (the zmq and gRPC
transports, and so every service process) does not load the framed base, its threads or the socket links.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flamepy_core.lazy_names import LazyNames

if TYPE_CHECKING:
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
        borrows_request,
        calls_run_on,
        check_size,
        deadline_exceeded,
        error_from_handler,
        left_to_waiting_thread,
        request_borrowed,
        resolve_timeout,
        run_calls_on,
        send_parts,
        stream_async,
        unary_async,
        unary_read,
        unary_then,
        unavailable,
        unimplemented,
    )
    from flamepy_core.kit.framed import FRAMED_OPTIONS, PEER_WATCH_OPTIONS, FramedTransport
    from flamepy_core.kit.framed_client import FramedChannel, PeerWatch
    from flamepy_core.kit.framed_server import FramedServer
    from flamepy_core.kit.links import (
        Link,
        Listener,
        Oversized,
        SocketLink,
        SocketListener,
        dial_tcp,
        dial_unix,
        listen_tcp,
        listen_unix,
    )

__all__ = [
    "ASYNC_FALLBACK_WORKERS",
    "DEFAULT_CALL_TIMEOUT",
    "FRAMED_OPTIONS",
    "PEER_WATCH_OPTIONS",
    "RAISE_THE_LIMIT",
    "WAIT_SLICE",
    "Deadlines",
    "FramedChannel",
    "FramedServer",
    "FramedTransport",
    "FutureResponder",
    "Link",
    "Listener",
    "Oversized",
    "PeerWatch",
    "QueueWriter",
    "SimpleCallContext",
    "SocketLink",
    "SocketListener",
    "adapt_handlers",
    "answering",
    "blocking_stream",
    "blocking_unary",
    "borrows_request",
    "calls_run_on",
    "check_size",
    "deadline_exceeded",
    "dial_tcp",
    "dial_unix",
    "error_from_handler",
    "left_to_waiting_thread",
    "listen_tcp",
    "listen_unix",
    "request_borrowed",
    "resolve_timeout",
    "run_calls_on",
    "send_parts",
    "stream_async",
    "unary_async",
    "unary_read",
    "unary_then",
    "unavailable",
    "unimplemented",
]

_WHERE: dict[str, str] = {
    "ASYNC_FALLBACK_WORKERS": "flamepy_core.kit.basics",
    "DEFAULT_CALL_TIMEOUT": "flamepy_core.kit.basics",
    "Deadlines": "flamepy_core.kit.basics",
    "FRAMED_OPTIONS": "flamepy_core.kit.framed",
    "FramedChannel": "flamepy_core.kit.framed_client",
    "FramedServer": "flamepy_core.kit.framed_server",
    "FramedTransport": "flamepy_core.kit.framed",
    "FutureResponder": "flamepy_core.kit.basics",
    "Link": "flamepy_core.kit.links",
    "Listener": "flamepy_core.kit.links",
    "Oversized": "flamepy_core.kit.links",
    "PEER_WATCH_OPTIONS": "flamepy_core.kit.framed",
    "PeerWatch": "flamepy_core.kit.framed_client",
    "QueueWriter": "flamepy_core.kit.basics",
    "RAISE_THE_LIMIT": "flamepy_core.kit.basics",
    "SimpleCallContext": "flamepy_core.kit.basics",
    "SocketLink": "flamepy_core.kit.links",
    "SocketListener": "flamepy_core.kit.links",
    "WAIT_SLICE": "flamepy_core.kit.basics",
    "adapt_handlers": "flamepy_core.kit.basics",
    "answering": "flamepy_core.kit.basics",
    "blocking_stream": "flamepy_core.kit.basics",
    "blocking_unary": "flamepy_core.kit.basics",
    "borrows_request": "flamepy_core.kit.basics",
    "calls_run_on": "flamepy_core.kit.basics",
    "check_size": "flamepy_core.kit.basics",
    "deadline_exceeded": "flamepy_core.kit.basics",
    "dial_tcp": "flamepy_core.kit.links",
    "dial_unix": "flamepy_core.kit.links",
    "error_from_handler": "flamepy_core.kit.basics",
    "left_to_waiting_thread": "flamepy_core.kit.basics",
    "listen_tcp": "flamepy_core.kit.links",
    "listen_unix": "flamepy_core.kit.links",
    "request_borrowed": "flamepy_core.kit.basics",
    "resolve_timeout": "flamepy_core.kit.basics",
    "run_calls_on": "flamepy_core.kit.basics",
    "send_parts": "flamepy_core.kit.basics",
    "stream_async": "flamepy_core.kit.basics",
    "unary_async": "flamepy_core.kit.basics",
    "unary_read": "flamepy_core.kit.basics",
    "unary_then": "flamepy_core.kit.basics",
    "unavailable": "flamepy_core.kit.basics",
    "unimplemented": "flamepy_core.kit.basics",
}


_names = LazyNames(__name__, _WHERE, __all__)


def __getattr__(name: str) -> Any:
    """The kit's names, each imported from its module on first use."""
    return _names.load(name)


def __dir__() -> list[str]:
    return _names.listing()
