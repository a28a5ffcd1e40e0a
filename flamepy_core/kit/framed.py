"""A base for transports that move framed messages: the author supplies only links.

Subclass :class:`FramedTransport`, declare the class attributes every transport declares (``name``,
``schemes``, ``capabilities``, ``options``) and implement two primitives:

* :meth:`FramedTransport.dial` - open a :class:`~flamepy_core.kit.links.Link` to an endpoint;
* :meth:`FramedTransport.listen` - bind a :class:`~flamepy_core.kit.links.Listener` on an endpoint.

Everything else is the base's: call ids, deadlines (carried to the server), cancellation, stream windows
(flow control), the error rules of the contract, size limits on both ends, deferred replies and
deferred streams served natively (a deferred call, or an open deferred stream, holds no thread),
``unary_async`` natively (a call in flight holds no thread), a lost link failing every call at once,
reconnection, and fork safety. A transport over stream sockets
also uses :class:`~flamepy_core.kit.links.SocketLink` and the ``listen_*``/``dial_*`` helpers, so it
writes its address parsing and little more (the TCP example in ``examples/flamepy-transport-tcp``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from flamepy_core.contracts.transport import Handler, TransportCapabilities
from flamepy_core.kit.basics import DEFAULT_CALL_TIMEOUT
from flamepy_core.kit.framed_client import FramedChannel
from flamepy_core.kit.framed_server import FramedServer
from flamepy_core.kit.links import Link, Listener

__all__ = ["FRAMED_OPTIONS", "FramedTransport"]

FRAMED_OPTIONS = frozenset({"max_message_size", "default_timeout", "max_workers", "connect_timeout"})
"""The options :class:`FramedTransport` takes; a subclass may add its own."""


class FramedTransport:
    """The base of a framed transport. Subclasses declare themselves and implement :meth:`dial` and :meth:`listen`.

    Declare ``capabilities`` with ``deferred_replies=True``, ``deferred_streams=True``, ``async_calls=True``
    and ``async_streams=True``: the base provides all four. Options: ``max_message_size`` (bytes each way),
    ``default_timeout`` (seconds for calls made without one; ``None``: no deadline), ``max_workers``
    (handler threads per server) and ``connect_timeout`` (seconds to open a link).
    """

    name: ClassVar[str]
    schemes: ClassVar[tuple[str, ...]]
    capabilities: TransportCapabilities
    options: ClassVar[frozenset[str]] = FRAMED_OPTIONS
    max_message_limit: ClassVar[int] = 2**40
    """The largest ``max_message_size`` the subclass's links can carry."""

    def __init__(
        self,
        max_message_size: int | None = None,
        default_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        max_workers: int = 32,
        connect_timeout: float = 5.0,
    ) -> None:
        size = type(self).capabilities.max_message_size if max_message_size is None else max_message_size
        if not 0 < size <= self.max_message_limit:
            raise ValueError(f"max_message_size must be between 1 and {self.max_message_limit} bytes, got {size}")
        if default_timeout is not None and default_timeout <= 0:
            raise ValueError(f"default_timeout must be > 0 seconds or None, got {default_timeout}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
        self.capabilities = dataclasses.replace(type(self).capabilities, max_message_size=size)
        self.max_message_size = size
        self.default_timeout = default_timeout
        self.max_workers = max_workers
        self.connect_timeout = connect_timeout

    # -- the primitives a subclass supplies ---------------------------------------------------------

    def dial(self, endpoint: str, timeout: float) -> Link:
        """A link to ``endpoint`` within ``timeout`` seconds; ``FlameError(UNAVAILABLE)`` when nobody answers.

        Endpoint errors (a malformed address) are ``FlameError(INVALID_ARGUMENT)``; check them in
        :meth:`check_endpoint` so :meth:`connect` refuses them at once.
        """
        raise NotImplementedError

    def listen(self, endpoint: str) -> Listener:
        """A listener bound on ``endpoint`` (port 0: a free port); ``ALREADY_EXISTS`` when it is taken."""
        raise NotImplementedError

    def check_endpoint(self, endpoint: str) -> None:
        """Refuse a malformed endpoint with ``FlameError(INVALID_ARGUMENT)`` (default: accept anything)."""

    # -- what the base builds -------------------------------------------------------------------------

    def connect(self, endpoint: str) -> FramedChannel:
        """A channel to ``endpoint``; lazy: an absent server shows on the first call."""
        self.check_endpoint(endpoint)
        return FramedChannel(
            endpoint,
            lambda timeout: self.dial(endpoint, timeout),
            self.max_message_size,
            self.default_timeout,
            self.connect_timeout,
        )

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> FramedServer:
        """Serve ``handlers`` on ``endpoint`` and return once it accepts calls."""
        self.check_endpoint(endpoint)
        listener = self.listen(endpoint)
        try:
            return FramedServer(listener, handlers, self.max_message_size, self.max_workers)
        except BaseException:
            listener.close()
            raise
