"""The gRPC transport: opaque bytes on gRPC method paths, so it speaks Flame's own protocol.

Server: one :class:`grpc.GenericRpcHandler` routes the full method path (``/flame.v1.Frontend/CreateTask``)
to our byte handler; no (de)serializer is installed, so message bytes pass through untouched and a Flame
client stub lands on our handler. A handler's ``FlameError`` is sent with the status Flame's own server
uses plus the trailer ``flame-error-code`` (see :mod:`flamepy_transports.grpc.status`).

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
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

import grpc

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    DEFAULT_TIMEOUT,
    Handler,
    StreamHandler,
    Timeout,
    UnaryHandler,
)
from flamepy_core.transport_kit import (
    calls_run_on,
    check_size,
    error_from_handler,
    resolve_timeout,
    unavailable,
)
from flamepy_transports.grpc.address import (
    Address,
    diagnose_bind_failure,
    parse_endpoint,
    prepare_unix_path,
    remove_socket_file,
)
from flamepy_transports.grpc.status import (
    MAX_METADATA_SIZE,
    code_from_trailer,
    error_from_status,
    status_for,
    trailer_for,
    wire_message,
)
from flamepy_transports.grpc.tls import ClientTls, TlsOptions, client_tls, explain_unavailable, server_credentials

STOP_WAIT = 10.0
"""Seconds ``stop`` waits, beyond ``grace``, for gRPC to release the endpoint."""

SINGLE_THREADED_STREAMS = "SingleThreadedUnaryStream"
"""grpcio's channel option ``grpc.experimental.ChannelOptions.SingleThreadedUnaryStream`` (spelled out, so
the experimental module is not imported for it): the thread that iterates a server stream polls the
call's completion queue itself. Every stream here is read by one thread at a time (``ResponseStream``),
the only use the option allows; ``close`` from another thread cancels the call, which ends that poll."""

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
        # A stream's reader polls for its next response itself, instead of waiting for the channel's
        # spin thread to hand it over: a hand-off less per response (docs/benchmarks.md, gRPC run()).
        (SINGLE_THREADED_STREAMS, 1),
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


# -- server -----------------------------------------------------------------------------------------


class GrpcCallContext:
    """The server-side :class:`~flamepy_core.contracts.transport.CallContext` over a ServicerContext."""

    __slots__ = ("_context", "_method")

    def __init__(self, method: str, context: Any) -> None:
        self._method = method
        self._context = context

    @property
    def method(self) -> str:
        return self._method

    def time_remaining(self) -> float | None:
        remaining = self._context.time_remaining()
        if remaining is None or remaining > 1e9:  # gRPC reports "no deadline" as a huge number
            return None
        return max(0.0, float(remaining))

    def is_active(self) -> bool:
        if not self._context.is_active():
            return False
        remaining = self.time_remaining()
        return remaining is None or remaining > 0.0


def _abort(context: Any, error: FlameError) -> None:
    """End the call with ``error``: Flame's status for it, the message, and the exact code as a trailer."""
    context.set_trailing_metadata(trailer_for(error.code))
    context.abort(status_for(error.code), wire_message(error.message))


class _Submitting(ThreadPoolExecutor):
    """Hands grpcio's routine for each call of one method to the executor its handler named (``run_calls_on``).

    grpcio's synchronous server runs a call (wait for the request, run the handler, send the reply) by
    submitting one routine to the server's pool, unless the method's behavior carries an
    ``experimental_thread_pool`` that is a ``ThreadPoolExecutor``: then it submits it there. This is
    one, in name only (it starts no thread). Without that hook (another grpcio), the call runs on the
    server's pool as any other: the same answer, one hand-off more.
    """

    def __init__(self, executor: Executor) -> None:
        super().__init__(max_workers=1)
        self._target = executor

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._target.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to stop here: the executor it hands to belongs to whoever made the handler."""


class _Router(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Routes a full method path to its byte handler; an unknown path gets gRPC's UNIMPLEMENTED."""

    def __init__(self, handlers: Mapping[str, Handler], limit: int) -> None:
        self.endpoint = "(not bound yet)"
        """Where the server listens, for error messages; set once the address is bound."""
        self._limit = limit
        self._table: dict[str, Any] = {}
        for method, handler in handlers.items():
            if isinstance(handler, UnaryHandler):
                self._table[method] = grpc.unary_unary_rpc_method_handler(self._unary(method, handler))
            elif isinstance(handler, StreamHandler):
                self._table[method] = grpc.unary_stream_rpc_method_handler(self._stream(method, handler))
            else:
                raise TypeError(
                    f"handler for {method} is {type(handler).__name__}, not a UnaryHandler or StreamHandler"
                )

    def service(self, handler_call_details: Any) -> Any:
        return self._table.get(handler_call_details.method)

    def _checked(self, method: str, value: object) -> bytes | FlameError:
        """A handler's output as bytes, or the error to send instead (not bytes, or too large)."""
        if type(value) is not bytes:
            if not isinstance(value, (bytearray, memoryview)):
                return FlameError(
                    FlameErrorCode.INTERNAL, f"handler for {method} returned {type(value).__name__}, not bytes"
                )
            value = bytes(value)
        if len(value) > self._limit:
            try:
                check_size(len(value), self._limit, what=f"response to {method}", endpoint=self.endpoint)
            except FlameError as exc:
                return exc
        return value

    def _unary(self, method: str, handler: UnaryHandler) -> Any:
        fn = handler.fn
        limit = self._limit

        def behavior(request: bytes, context: Any) -> bytes | None:
            try:
                result = fn(request, GrpcCallContext(method, context))
            except Exception as exc:
                _abort(context, error_from_handler(method, exc))
                return None  # pragma: no cover - abort raises
            if type(result) is bytes and len(result) <= limit:
                return result  # the common case, kept short
            checked = self._checked(method, result)
            if isinstance(checked, FlameError):
                _abort(context, checked)
                return None  # pragma: no cover - abort raises
            return checked

        executor = calls_run_on(fn)
        if executor is not None:
            behavior.experimental_thread_pool = _Submitting(executor)  # type: ignore[attr-defined]
        return behavior

    def _stream(self, method: str, handler: StreamHandler) -> Any:
        fn = handler.fn

        def behavior(request: bytes, context: Any) -> Iterator[bytes]:
            # Headers first: the caller's stream() learns at once that the call was accepted.
            context.send_initial_metadata(())
            error: FlameError | None = None
            try:
                for item in fn(request, GrpcCallContext(method, context)):
                    checked = self._checked(method, item)
                    if isinstance(checked, FlameError):
                        error = checked
                        break
                    yield checked
            except Exception as exc:
                error = error_from_handler(method, exc)
            if error is not None:
                _abort(context, error)

        return behavior


class GrpcServer:
    """A running gRPC server. ``endpoint`` is the bound address with a requested port 0 resolved."""

    def __init__(self, address: Address, server: Any, pool: ThreadPoolExecutor) -> None:
        self._address = address
        self._server = server
        self._pool = pool
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stopped: threading.Event | None = None

    @property
    def endpoint(self) -> str:
        return self._address.endpoint

    def _check_process(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            raise FlameError(
                FlameErrorCode.INVALID_STATE,
                f"the gRPC server on {self.endpoint} was created in process {self._pid} and cannot be used "
                f"in process {pid} (a fork() child); gRPC servers do not survive fork, start a new one here",
            )

    def stop(self, grace: float | None = None) -> None:
        """Stop; running calls get up to ``grace`` seconds. Idempotent; returns once the endpoint is free."""
        self._check_process()
        with self._lock:
            first = self._stopped is None
            if self._stopped is None:
                self._stopped = self._server.stop(grace)
            done = self._stopped
        done.wait(timeout=(grace or 0.0) + STOP_WAIT)
        if first:
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self._address.is_unix:
                remove_socket_file(self._address)

    def __repr__(self) -> str:
        return f"GrpcServer({self.endpoint!r})"


# -- client -----------------------------------------------------------------------------------------


_RELEASE = "/flamepy.grpc.Channel/Release"
"""The method of the short call that lets a held completion thread end (no server has it: it fails)."""
_RELEASE_TIMEOUT = 0.05
"""Seconds the short call may stay in flight: until its server answers (UNIMPLEMENTED) or this passes."""
_RELEASE_TRIES = 8
"""Short calls started at the most when each completes before it is checked."""


class _Link:
    """One ``grpc.Channel`` and its cached callables, owned by the process that built it."""

    __slots__ = ("channel", "held", "pid", "streams", "tried", "unaries")

    def __init__(self, target: str, options: list[Any], tls: ClientTls | None = None) -> None:
        self.pid = os.getpid()
        if tls is None:
            self.channel: Any = grpc.insecure_channel(target, options=options)
        else:  # credentials are made here, per channel, so a forked child never uses the parent's
            self.channel = grpc.secure_channel(target, tls.credentials(), options=options + tls.channel_options())
        self.unaries: dict[str, Any] = {}
        self.streams: dict[str, Any] = {}
        self.tried = False
        self.held: Any = None

    def hold_completion_thread(self) -> None:
        """Keep grpcio's completion thread of this channel alive between ``future()`` calls.

        grpcio completes a channel's ``future()`` calls on one thread that it starts when a call begins
        with none in flight and that ends when the last one completes: one call at a time (a warm
        session's tasks) would start a thread per call, which costs more than the kit's pool did
        (measured: docs/benchmarks.md). Counting one call more than are in flight keeps it. This reads
        grpcio's private call state (``_call_state.managed_calls``, in every grpcio since 1.x); if it is
        not there, calls still complete, only with a thread each. Called once a call is in flight.
        """
        self.tried = True
        state: Any = getattr(self.channel, "_call_state", None)
        lock = getattr(state, "lock", None)
        if lock is None or not isinstance(getattr(state, "managed_calls", None), int):
            return
        with lock:
            if state.managed_calls > 0:  # the thread runs (it ends only once the count is zero)
                state.managed_calls += 1
                self.held = state

    def release(self) -> None:
        """Let the held completion thread end: before the channel closes, or when the link is dropped.

        A thread waiting with nothing in flight would only wake at the channel's close, with an event
        grpcio's loop cannot handle (a traceback). So our extra count is given up only while a call is in
        flight besides it (checked and given up under grpcio's lock, which its thread counts down under
        too): that call's completion is then what ends the thread. With none in flight, one short call is
        started to be that call, and the check made again; it is made again rather than assumed, since
        the short call may complete before the check (a busy machine), and giving up the count after it
        would leave the thread waiting on nothing.
        """
        state, self.held = self.held, None
        if state is None or self.pid != os.getpid():
            return
        for _ in range(_RELEASE_TRIES):
            with state.lock:
                if state.managed_calls > 1:
                    state.managed_calls -= 1
                    return
            with contextlib.suppress(Exception):
                self.channel.unary_unary(_RELEASE).future(b"", timeout=_RELEASE_TIMEOUT)
        with state.lock:  # every short call completed before its check: give the count up all the same
            state.managed_calls -= 1

    def __del__(self) -> None:
        if sys.is_finalizing():
            return  # exiting: a thread stopped for good may hold a lock this would take
        with contextlib.suppress(Exception):  # at interpreter shutdown there is nothing left to release
            self.release()

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
        if sys.is_finalizing():
            return  # exiting: a thread stopped for good may hold a lock this would take
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
                link.release()

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

    def unary_async(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Future[bytes]:
        """Send one request now and return at once; the future completes with the response or a FlameError.

        gRPC's own ``future()`` call: no thread of ours waits for it. grpcio completes it on the channel's
        completion thread (it runs while the channel has calls in flight), and the callback there maps a
        failure exactly as :meth:`unary` does, so callbacks added to the returned future run on that thread
        and must not block.
        """
        result: Future[bytes] = Future()
        result.set_running_or_notify_cancel()  # a call on the wire cannot be taken back by the caller
        try:
            check_size(len(request), self._limit, what="request", endpoint=self._endpoint)
            seconds = resolve_timeout(timeout, self._default_timeout)
            link = self._current()
            if type(request) is not bytes:
                request = bytes(request)
            call = link.unary(method).future(request, timeout=seconds)
            if not link.tried:
                link.hold_completion_thread()
        except FlameError as exc:
            result.set_exception(exc)
            return result
        except ValueError:  # "Cannot invoke RPC on closed channel!"
            if not self._closed:
                raise
            result.set_exception(self._closed_error())
            return result

        def done(call: Any) -> None:
            # Runs once, on grpcio's completion thread (or here, if the call is over already).
            try:
                response = call.result()
            except grpc.RpcError as exc:
                result.set_exception(self._error(exc, method, seconds, link))
            except grpc.FutureCancelledError:  # cancelled by the channel's close (nothing else cancels it)
                result.set_exception(self._closed_error())
            else:
                result.set_result(response)

        call.add_done_callback(done)
        return result

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
            link.release()
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


def start_server(endpoint: str, handlers: Mapping[str, Handler], settings: GrpcSettings) -> GrpcServer:
    """Serve ``handlers`` on ``endpoint`` (port 0 picks a free port) and return once it accepts calls."""
    address = parse_endpoint(endpoint)
    # A TLS endpoint needs cert_file and key_file: checked (and read) before anything is started.
    credentials = server_credentials(settings.tls, address.endpoint) if address.is_tls else None
    if address.is_unix:
        prepare_unix_path(address)
    router = _Router(handlers, settings.max_message_size)  # refuses a bad handler first
    pool = ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="flamepy-grpc")
    server = grpc.server(pool, handlers=[router], options=settings.server_options)
    try:
        if credentials is None:
            port = server.add_insecure_port(address.target)
        else:
            port = server.add_secure_port(address.target, credentials)
    except RuntimeError:
        port = 0
    if not port:
        server.stop(None)
        pool.shutdown(wait=False)
        code, reason = diagnose_bind_failure(address)
        raise FlameError(code, f"cannot serve on {endpoint}: {reason}")
    bound = address if address.is_unix else address.with_port(port)
    router.endpoint = bound.endpoint
    server.start()
    return GrpcServer(bound, server, pool)
