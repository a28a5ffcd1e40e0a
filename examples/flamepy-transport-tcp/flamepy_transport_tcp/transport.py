"""The tcp transport: the factory of :class:`TcpChannel` and :class:`TcpServer` for ``tcp://`` endpoints.

What each module does: :mod:`.frames` is the wire format, :mod:`.address` parses endpoints and opens
sockets, :mod:`.client` multiplexes calls over one connection per channel, :mod:`.server` accepts
connections and runs handlers. This class only validates options and wires them together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from flamepy_core.contracts.transport import Handler, StreamHandler, TransportCapabilities, UnaryHandler
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT

from flamepy_transport_tcp.address import listen, parse_endpoint
from flamepy_transport_tcp.client import TcpChannel
from flamepy_transport_tcp.frames import MAX_PAYLOAD
from flamepy_transport_tcp.plugin import DEFAULT_MAX_MESSAGE_SIZE, NAME, SCHEMES
from flamepy_transport_tcp.server import TcpServer

DEFAULT_MAX_WORKERS = 32
DEFAULT_CONNECT_TIMEOUT = 5.0


class TcpTransport:
    """Plain TCP, length-prefixed frames, one multiplexed connection per channel. No TLS, no auth."""

    name = NAME
    schemes: tuple[str, ...] = SCHEMES

    def __init__(
        self,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        default_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        max_workers: int = DEFAULT_MAX_WORKERS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        """Options (all checked here, so a bad one fails when the transport is built, not on first use):

        ``max_message_size`` bytes each way per message (at most 4 GiB - 1, the frame's length field);
        ``default_timeout`` seconds for calls made without a timeout (``None``: no deadline);
        ``max_workers`` handler threads per server; ``connect_timeout`` seconds to open a connection.
        """
        if not 0 < max_message_size <= MAX_PAYLOAD:
            raise ValueError(f"max_message_size must be between 1 and {MAX_PAYLOAD} bytes, got {max_message_size}")
        if default_timeout is not None and default_timeout <= 0:
            raise ValueError(f"default_timeout must be > 0 seconds or None, got {default_timeout}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
        self.capabilities = TransportCapabilities(
            max_message_size=max_message_size, streaming=True, cross_process=True, tls=False, auth=False
        )
        self._default_timeout = default_timeout
        self._max_workers = max_workers
        self._connect_timeout = connect_timeout

    def connect(self, endpoint: str) -> TcpChannel:
        """A channel to ``endpoint``. Lazy: an absent server shows as UNAVAILABLE on the first call."""
        return TcpChannel(
            parse_endpoint(endpoint),
            endpoint,
            self.capabilities.max_message_size,
            self._default_timeout,
            self._connect_timeout,
        )

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> TcpServer:
        """Serve ``handlers`` on ``endpoint`` (port 0 picks a free port); returns once it accepts calls."""
        for method, handler in handlers.items():
            if not isinstance(handler, (UnaryHandler, StreamHandler)):
                kind = type(handler).__name__
                raise TypeError(f"handler for {method} is {kind}, not a UnaryHandler or StreamHandler")
        address = parse_endpoint(endpoint)
        listener = listen(address)
        bound = dataclasses.replace(address, port=listener.getsockname()[1])
        return TcpServer(listener, bound.endpoint, handlers, self.capabilities.max_message_size, self._max_workers)
