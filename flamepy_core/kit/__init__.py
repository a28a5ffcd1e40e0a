"""The kit for transport authors: what every transport needs, so each one supplies only its primitives.

* :mod:`.basics` - deadlines, the size check, the errors the contract prescribes, a ready call context,
  and adapters that give deferred replies and asynchronous calls to a transport without them;
* :mod:`.framed` - :class:`FramedTransport`, a base that owns call ids, deadlines, cancellation, stream
  windows, error mapping, deferred replies and ``unary_async``; a subclass supplies ``dial`` and
  ``listen``;
* :mod:`.links` - the :class:`Link` and :class:`Listener` a framed transport supplies, and ready ones over
  stream sockets (TCP, unix).

Plugin authors import all of it, with the contracts and ``hookimpl``, from :mod:`flamepy.plugin`.
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
    blocking_stream,
    blocking_unary,
    check_size,
    deadline_exceeded,
    error_from_handler,
    resolve_timeout,
    unary_async,
    unavailable,
    unimplemented,
)
from flamepy_core.kit.framed import FRAMED_OPTIONS, FramedTransport
from flamepy_core.kit.framed_client import FramedChannel
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
    "QueueWriter",
    "SimpleCallContext",
    "SocketLink",
    "SocketListener",
    "adapt_handlers",
    "blocking_stream",
    "blocking_unary",
    "check_size",
    "deadline_exceeded",
    "dial_tcp",
    "dial_unix",
    "error_from_handler",
    "listen_tcp",
    "listen_unix",
    "resolve_timeout",
    "unary_async",
    "unavailable",
    "unimplemented",
]
