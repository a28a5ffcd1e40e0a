"""The gRPC transport: opaque bytes on gRPC method paths, so it speaks Flame's own protocol.

Server (:mod:`flamepy_transports.grpc.server`): grpcio's asyncio server on a loop thread of its own; one
:class:`grpc.GenericRpcHandler` routes the full method path (``/flame.v1.Frontend/CreateTask``) to our byte
handler; no (de)serializer is installed, so message bytes pass through untouched and a Flame client stub
lands on our handler. A handler's ``FlameError`` is sent with the status Flame's own server uses plus the
trailer ``flame-error-code`` (see :mod:`flamepy_transports.grpc.status`).

TLS: ``grpcs://`` and ``https://`` endpoints are served and dialled with TLS (mutual TLS when the server
has ``client_ca_file``); the options and the explanations of failed handshakes live in
:mod:`flamepy_transports.grpc.tls`. ``grpc://``, ``http://`` and ``unix://`` stay plain.

Client: :class:`GrpcChannel` wraps one ``grpc.Channel``. Calls are not ``wait_for_ready``, so a stopped
server fails promptly with UNAVAILABLE. A connection-level UNAVAILABLE retires the ``grpc.Channel``
and the next call dials a fresh one at once, so a server restarted on the same endpoint is reached by
the next call instead of after gRPC's reconnect back-off (kept short anyway: 100 ms to 1 s).

Fork hygiene follows gRPC's "use after fork" advice (doc/fork_support.md): a gRPC object made before
``fork()`` is never used in the child. The channel wrapper records the pid that built its
``grpc.Channel`` and, in another process, builds a fresh one; the parent's is kept referenced in the
child, never closed or destroyed there. Every channel uses a *local* subchannel pool, so that fresh
channel opens its own connection instead of picking the parent's inherited socket out of gRPC's global
pool (without it, children fail intermittently). A server is refused by name in a forked child.
``GRPC_ENABLE_FORK_SUPPORT``/``GRPC_POLL_STRATEGY=poll`` are deliberately not set: measured with grpcio
1.85, they made forked children hang whenever the parent had calls in flight. gRPC itself cannot fork
safely while another thread is inside it (its fork handlers are then skipped), so fork from a process
that is a client between calls, not from one that runs a gRPC server.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import grpc

from flamepy_core.contracts.errors import FlameError
from flamepy_core.contracts.transport import (
    DEFAULT_TIMEOUT,
    Timeout,
)
from flamepy_core.transport_kit import (
    check_size,
    resolve_timeout,
    unavailable,
)
from flamepy_transports.grpc.address import (
    Address,
    parse_endpoint,
)
from flamepy_transports.grpc.status import (
    MAX_METADATA_SIZE,
    code_from_trailer,
    error_from_status,
)
from flamepy_transports.grpc.tls import ClientTls, TlsOptions, client_tls, explain_unavailable

STOP_WAIT = 10.0
"""Seconds ``stop`` waits, beyond ``grace``, for gRPC to release the endpoint."""

_inherited: list[Any] = []
"""gRPC channels a forked child inherited: kept referenced so the child never closes or destroys them."""


def _client_options(max_message_size: int, keepalive_time_ms: int, keepalive_timeout_ms: int) -> list[Any]:
    return [
        ("grpc.max_send_message_length", max_message_size),
        ("grpc.max_receive_message_length", max_message_size),
        ("grpc.max_metadata_size", MAX_METADATA_SIZE),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_SIZE),
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        # A restarted server is found again quickly; a call is never queued waiting for one.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # Each channel owns its connections: after fork a fresh channel never picks up the parent's.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def _server_options(max_message_size: int, keepalive_time_ms: int, keepalive_timeout_ms: int) -> list[Any]:
    return [
        ("grpc.max_send_message_length", max_message_size),
        ("grpc.max_receive_message_length", max_message_size),
        ("grpc.max_metadata_size", MAX_METADATA_SIZE),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_SIZE),
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Accept our clients' keepalive pings (and anyone's at most this often) without a GOAWAY.
        ("grpc.http2.min_ping_interval_without_data_ms", min(keepalive_time_ms, 10_000)),
        ("grpc.http2.max_ping_strikes", 0),
        # A port already served must fail to bind, not be silently shared.
        ("grpc.so_reuseport", 0),
    ]


# -- client -----------------------------------------------------------------------------------------


class _Link:
    """One ``grpc.Channel`` and its cached callables, owned by the process that built it."""

    __slots__ = ("channel", "pid", "streams", "unaries")

    def __init__(self, target: str, options: list[Any], tls: ClientTls | None = None) -> None:
        self.pid = os.getpid()
        if tls is None:
            self.channel: Any = grpc.insecure_channel(target, options=options)
        else:  # credentials are made here, per channel, so a forked child never uses the parent's
            self.channel = grpc.secure_channel(target, tls.credentials(), options=options + tls.channel_options())
        self.unaries: dict[str, Any] = {}
        self.streams: dict[str, Any] = {}

    def unary(self, method: str) -> Any:
        call = self.unaries.get(method)
        if call is None:
            call = self.unaries[method] = self.channel.unary_unary(method)
        return call

    def stream(self, method: str) -> Any:
        call = self.streams.get(method)
        if call is None:
            call = self.streams[method] = self.channel.unary_stream(method)
        return call


class ResponseStream(Iterator[bytes]):
    """The iterator ``GrpcChannel.stream`` returns. Closing it early (or dropping it) cancels the call."""

    def __init__(self, channel: GrpcChannel, link: _Link, method: str, call: Any, timeout: float | None) -> None:
        self._channel = channel
        self._link = link
        self._method = method
        self._call = call
        self._timeout = timeout
        self._finished = False

    def __iter__(self) -> ResponseStream:
        return self

    def __next__(self) -> bytes:
        if self._finished:
            raise StopIteration
        try:
            item: bytes = next(self._call)
        except StopIteration:
            self._finished = True
            raise
        except grpc.RpcError as exc:
            self._finished = True
            raise self._channel._error(exc, self._method, self._timeout, self._link) from None
        return item

    def close(self) -> None:
        """Stop reading; cancels the call if it is still running. Idempotent."""
        if not self._finished:
            self._finished = True
            self._call.cancel()

    def __enter__(self) -> ResponseStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown there is nothing left to cancel
            self.close()


class GrpcChannel:
    """A thread-safe channel to one endpoint; rebuilt transparently in a forked child."""

    def __init__(
        self,
        address: Address,
        options: list[Any],
        default_timeout: float | None,
        max_message_size: int,
        tls: ClientTls | None = None,
    ) -> None:
        self._address = address
        self._endpoint = address.endpoint
        self._options = options
        self._tls = tls
        self._default_timeout = default_timeout
        self._limit = max_message_size
        self._lock = threading.Lock()
        self._closed = False
        self._link = _Link(address.target, options, tls)

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def _closed_error(self) -> FlameError:
        return unavailable(self._endpoint, "the channel is closed")

    def _current(self) -> _Link:
        link = self._link
        if self._closed:
            raise self._closed_error()
        if link.pid == os.getpid():
            return link
        with self._lock:
            if self._closed:
                raise self._closed_error()
            link = self._link
            if link.pid != os.getpid():
                # A forked child: never touch the parent's channel (keep it alive so it is not
                # destroyed here either); open this process's own.
                _inherited.append(link.channel)
                link = self._link = _Link(self._address.target, self._options, self._tls)
            return link

    def _error(self, exc: Any, method: str, timeout: float | None, link: _Link | None = None) -> FlameError:
        """The FlameError for a failed call; a connection-level UNAVAILABLE also retires ``link``."""
        code = exc.code() if hasattr(exc, "code") else None
        if self._closed and code == grpc.StatusCode.CANCELLED:
            return self._closed_error()
        trailer = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        unreachable = code == grpc.StatusCode.UNAVAILABLE and code_from_trailer(trailer) is None
        # A refused or mismatched TLS handshake is only "UNAVAILABLE: Socket closed" to gRPC: say why.
        diagnosis = explain_unavailable(self._address, self._tls, details or "") if unreachable else None
        error = error_from_status(
            code,
            details,
            trailer,
            endpoint=self._endpoint,
            method=method,
            timeout=timeout,
            hint=diagnosis.reason if diagnosis is not None else None,
        )
        if diagnosis is not None and diagnosis.code != error.code:
            error = FlameError(diagnosis.code, error.message)
        if link is not None and unreachable:
            self._retire(link)
        return error

    def _retire(self, link: _Link) -> None:
        """Replace a link whose connection failed, so the next call dials at once.

        gRPC would otherwise wait out its reconnect back-off before trying again, and a server restarted
        on the same endpoint would stay unreachable for that long. The old channel is dropped, not
        closed: calls still running on it end on their own and it is freed with its last reference.
        """
        with self._lock:
            if self._link is link and not self._closed and link.pid == os.getpid():
                self._link = _Link(self._address.target, self._options, self._tls)

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        """Send one request, return the one response; every failure is a :class:`FlameError`."""
        check_size(len(request), self._limit, what="request", endpoint=self._endpoint)
        seconds = resolve_timeout(timeout, self._default_timeout)
        link = self._current()
        call = link.unary(method)
        if type(request) is not bytes:
            request = bytes(request)
        try:
            response: bytes = call(request, timeout=seconds)
        except grpc.RpcError as exc:
            raise self._error(exc, method, seconds, link) from None
        except ValueError:  # "Cannot invoke RPC on closed channel!"
            if self._closed:
                raise self._closed_error() from None
            raise
        return response

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> ResponseStream:
        """Send one request and iterate the responses; one deadline covers the whole stream.

        Returns once the server has accepted the call, so an unknown method or an absent server raises
        here; a handler's own error is raised while iterating.
        """
        check_size(len(request), self._limit, what="request", endpoint=self._endpoint)
        seconds = resolve_timeout(timeout, self._default_timeout)
        link = self._current()
        multi = link.stream(method)
        if type(request) is not bytes:
            request = bytes(request)
        try:
            call = multi(request, timeout=seconds)
        except ValueError:
            if self._closed:
                raise self._closed_error() from None
            raise
        stream = ResponseStream(self, link, method, call, seconds)
        try:
            call.initial_metadata()  # headers, or the end of a call that failed before any
            if call.done() and call.code() != grpc.StatusCode.OK and not _has_error_trailer(call):
                raise self._error(call, method, seconds, link)
        except BaseException:
            stream.close()
            raise
        return stream

    def wait_ready(self, timeout: float) -> None:
        """Block until the channel is connected; ``FlameError(UNAVAILABLE)`` after ``timeout`` seconds."""
        future = grpc.channel_ready_future(self._current().channel)
        try:
            future.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise unavailable(self._endpoint, f"the gRPC channel was not ready within {timeout} s") from None
        finally:
            future.cancel()

    def close(self) -> None:
        """Close the channel. Idempotent; later calls raise ``FlameError(UNAVAILABLE)``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            link = self._link
        if link.pid == os.getpid():
            link.channel.close()
        else:
            _inherited.append(link.channel)  # the parent's: leave it alone

    def __enter__(self) -> GrpcChannel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GrpcChannel({self._endpoint!r}{', closed' if self._closed else ''})"


def _has_error_trailer(call: Any) -> bool:
    metadata: Iterable[Any] | None = call.trailing_metadata()
    return code_from_trailer(metadata) is not None


# -- transport --------------------------------------------------------------------------------------


# -- what the transport object builds ---------------------------------------------------------------


class GrpcSettings:
    """The validated options of one :class:`~flamepy_transports.grpc.plugin.GrpcTransport`, as gRPC wants them."""

    def __init__(
        self,
        max_message_size: int,
        default_timeout: float | None,
        max_workers: int,
        keepalive_time_ms: int,
        keepalive_timeout_ms: int,
        tls: TlsOptions,
    ) -> None:
        self.max_message_size = max_message_size
        self.default_timeout = default_timeout
        self.max_workers = max_workers
        self.tls = tls
        self.client_options = _client_options(max_message_size, keepalive_time_ms, keepalive_timeout_ms)
        self.server_options = _server_options(max_message_size, keepalive_time_ms, keepalive_timeout_ms)


def open_channel(endpoint: str, settings: GrpcSettings) -> GrpcChannel:
    """A channel to ``endpoint``; lazy: an absent server shows on the first call (or ``wait_ready``).

    A TLS endpoint's files (``ca_file``, ``cert_file``, ``key_file``) are read and checked now.
    """
    address = parse_endpoint(endpoint)
    tls = client_tls(settings.tls, address.endpoint) if address.is_tls else None
    return GrpcChannel(address, settings.client_options, settings.default_timeout, settings.max_message_size, tls)
