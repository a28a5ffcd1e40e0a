"""Transports that mishandle stopping, resources or fork, each the way a real one might.

* ``broken-hangstop``    - ``stop(grace)`` waits for every handler to return, the way
  ``ThreadPoolExecutor.shutdown(wait=True)`` does: a handler that hangs holds ``stop`` with it;
* ``broken-timerleak``   - arms a ``threading.Timer`` per call to enforce its deadline and never cancels
  it: a thread per call lives on for the whole deadline;
* ``broken-socketleak``  - makes a socket pair per call to wake its caller and keeps it "for reuse" that
  never comes: two descriptors per call;
* ``broken-noforkcheck`` - the in-memory transport without its ``fork()`` check: a child's call waits for
  server threads that only exist in the parent, until its deadline;
* ``broken-sharedzmq``   - the zmq transport whose channel keeps using the parent's connection in a forked
  child (the pid check dropped): the child's calls go to a socket whose I/O thread is not there.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from broken_transports import InmemWithFlaw, _Wrapped, channel_flaw
from flamepy_transports.inmem.transport import InMemoryChannel, InMemoryServer
from flamepy_transports.zmq.plugin import ZmqTransport as _ZmqDeclared

from flamepy_core.contracts import TransportCapabilities
from flamepy_core.contracts.transport import (
    DEFAULT_TIMEOUT,
    CallContext,
    Channel,
    Handler,
    Server,
    StreamHandler,
    Timeout,
    UnaryHandler,
)
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT, resolve_timeout, unavailable


class _Running:
    """Counts the handlers running on a server, so ``stop`` can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = threading.Condition()

    def __enter__(self) -> None:
        with self.idle:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self.idle:
            self.count -= 1
            self.idle.notify_all()

    def unary(self, fn: Any) -> UnaryHandler:
        def call(request: bytes, ctx: CallContext) -> bytes:
            with self:
                return bytes(fn(request, ctx))

        return UnaryHandler(call)

    def stream(self, fn: Any) -> StreamHandler:
        def call(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            with self:
                yield from fn(request, ctx)

        return StreamHandler(call)


class _JoiningServer:
    def __init__(self, inner: Server, running: _Running) -> None:
        self._inner = inner
        self._running = running

    @property
    def endpoint(self) -> str:
        return self._inner.endpoint

    def stop(self, grace: float | None = None) -> None:
        self._inner.stop(grace)
        with self._running.idle:  # "join the workers": however long they take
            self._running.idle.wait_for(lambda: self._running.count == 0)


class HangStopTransport(InmemWithFlaw):
    name = "broken-hangstop"
    fault = "stop(grace) waits for every handler to return"

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> Server:
        running = _Running()
        wrapped: dict[str, Handler] = {}
        for path, handler in handlers.items():
            if isinstance(handler, UnaryHandler):
                wrapped[path] = running.unary(handler.fn)
            elif isinstance(handler, StreamHandler):
                wrapped[path] = running.stream(handler.fn)
            else:
                wrapped[path] = handler
        return _JoiningServer(self._inner.serve(endpoint, wrapped), running)


class TimerPerCallChannel(_Wrapped):
    """Arms a deadline timer thread per call and never cancels it."""

    def _arm(self, timeout: Timeout) -> None:
        seconds = resolve_timeout(timeout, DEFAULT_CALL_TIMEOUT)
        if seconds is not None:
            timer = threading.Timer(seconds, lambda: None)  # would cancel the call; never disarmed
            timer.daemon = True
            timer.start()

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        self._arm(timeout)
        return self._inner.unary(method, request, timeout)

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        self._arm(timeout)
        return self._inner.stream(method, request, timeout)


_SPARE_WAKERS: list[tuple[socket.socket, socket.socket]] = []
"""Socket pairs kept for reuse, which never happens."""


class SocketPerCallChannel(_Wrapped):
    """Makes a wake-up socket pair per call and keeps it for a reuse that never comes."""

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        _SPARE_WAKERS.append(socket.socketpair())
        return self._inner.unary(method, request, timeout)

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        _SPARE_WAKERS.append(socket.socketpair())
        return self._inner.stream(method, request, timeout)


class _NoForkCheckChannel(InMemoryChannel):
    """The in-memory channel as it was before its fork check: any process may look its server up."""

    def _server(self) -> InMemoryServer:
        if self._closed:
            raise unavailable(self.endpoint, "the channel is closed")
        server = self._transport._lookup(self._name)
        if server is None:
            raise unavailable(self.endpoint, "no server is listening there")
        return server


class NoForkCheckTransport(InmemWithFlaw):
    name = "broken-noforkcheck"
    fault = "an in-memory channel used in a fork() child waits for server threads that only the parent has"

    def connect(self, endpoint: str) -> Channel:
        return _NoForkCheckChannel(self._inner, endpoint, self.default_timeout)


class SharedZmqTransport:
    """The zmq transport, its channels' fork check dropped (built lazily: zmq is imported when chosen)."""

    name = "broken-sharedzmq"
    schemes: tuple[str, ...] = ("zmq+tcp", "zmq+ipc")
    fault = "a zmq channel used in a fork() child keeps the parent's connection"
    spec_capabilities = TransportCapabilities(
        max_message_size=_ZmqDeclared.capabilities.max_message_size, cross_process=True
    )
    spec_options = _ZmqDeclared.options

    def __new__(cls, **options: Any) -> Any:
        from flamepy_transports.zmq import endpoints
        from flamepy_transports.zmq.channel import ZmqChannel
        from flamepy_transports.zmq.plugin import ZmqTransport

        class SharedChannel(ZmqChannel):
            def _get_core(self) -> Any:
                core = self._core
                if core is not None and core.alive:  # no pid check: a child uses the parent's core
                    return core
                return super()._get_core()

        class Shared(ZmqTransport):
            name = "broken-sharedzmq"

            def connect(self, endpoint: str) -> ZmqChannel:
                return SharedChannel(endpoints.parse(endpoint, serving=False), self.config)

        # Calls through the (absent) I/O thread, as the docstring says: with direct_calls a child would
        # use the parent's socket itself and hang in libzmq instead of reaching its deadline.
        return Shared(**{**options, "direct_calls": False})


BROKEN = [
    HangStopTransport,
    channel_flaw("timerleak", TimerPerCallChannel),
    channel_flaw("socketleak", SocketPerCallChannel),
    NoForkCheckTransport,
    SharedZmqTransport,
]
