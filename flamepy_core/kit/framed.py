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
from flamepy_core.kit.framed_client import FramedChannel, PeerWatch
from flamepy_core.kit.framed_server import FramedServer
from flamepy_core.kit.links import Link, Listener

__all__ = [
    "DEFAULT_HEARTBEAT_IVL_MS",
    "DEFAULT_HEARTBEAT_TIMEOUT_MS",
    "FRAMED_OPTIONS",
    "PEER_WATCH_OPTIONS",
    "FramedTransport",
]

FRAMED_OPTIONS = frozenset({"max_message_size", "default_timeout", "max_workers", "connect_timeout"})
"""The options :class:`FramedTransport` takes; a subclass may add its own."""
PEER_WATCH_OPTIONS = frozenset({"heartbeat_ivl_ms", "heartbeat_timeout_ms"})
"""The options of the watch for a stopped server (:class:`~flamepy_core.kit.framed_client.PeerWatch`). The base
takes them too; a subclass whose links can tell a stopped peer (unix sockets) declares them beside
:data:`FRAMED_OPTIONS`. Named as ZeroMQ's heartbeat options, with their defaults and their bound, so a
setting means the same on either local transport; no heartbeat frames are sent."""
DEFAULT_HEARTBEAT_IVL_MS = 1000
DEFAULT_HEARTBEAT_TIMEOUT_MS = 3000


class FramedTransport:
    """The base of a framed transport. Subclasses declare themselves and implement :meth:`dial` and :meth:`listen`.

    Declare ``capabilities`` with ``deferred_replies=True``, ``deferred_streams=True``, ``async_calls=True``
    and ``async_streams=True``: the base provides all four. Options: ``max_message_size`` (bytes each way),
    ``default_timeout`` (seconds for calls made without one; ``None``: no deadline), ``max_workers``
    (handler threads per server) and ``connect_timeout`` (seconds to open a link); and
    ``heartbeat_ivl_ms`` / ``heartbeat_timeout_ms``: while calls wait, a client whose link can tell
    (``peer_stopped``: unix sockets on Linux) looks whether the server process is stopped every interval,
    and fails its calls with ``UNAVAILABLE`` once it has been stopped for the timeout.
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
        heartbeat_ivl_ms: int = DEFAULT_HEARTBEAT_IVL_MS,
        heartbeat_timeout_ms: int = DEFAULT_HEARTBEAT_TIMEOUT_MS,
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
        for option, ms in (("heartbeat_ivl_ms", heartbeat_ivl_ms), ("heartbeat_timeout_ms", heartbeat_timeout_ms)):
            if isinstance(ms, bool) or not isinstance(ms, int) or ms <= 0:
                raise ValueError(f"{option} must be a whole number of milliseconds > 0, got {ms!r}")
        self.capabilities = dataclasses.replace(type(self).capabilities, max_message_size=size)
        self.max_message_size = size
        self.default_timeout = default_timeout
        self.max_workers = max_workers
        self.connect_timeout = connect_timeout
        self.peer_watch = PeerWatch(heartbeat_ivl_ms / 1000.0, heartbeat_timeout_ms / 1000.0)
        """How this transport's channels watch for a stopped server."""

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
            self.peer_watch,
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
