"""The gRPC transport's server: grpcio's asyncio server, on an event loop thread the server owns.

Why asyncio: grpcio's synchronous server runs every call on a pool thread until its handler returns, so
a deferred reply (the runtime's RunTask, waiting for an instance) or an open deferred stream (a watch)
held a thread for as long as it lasted. On the asyncio server a call is a coroutine on the loop thread:

* a :class:`~flamepy_core.contracts.transport.DeferredHandler` runs on the loop thread (its contract
  says it returns promptly) and its call awaits a future; the :class:`Responder` completes that future
  from any thread (``call_soon_threadsafe``; directly when it runs on the loop thread), once;
* a :class:`~flamepy_core.contracts.transport.DeferredStreamHandler`'s writer queues responses in memory
  (``send`` never blocks) and wakes the call's coroutine, which writes them to gRPC in order;
* plain unary and stream handlers are user code that may block: they run on a bounded pool
  (``max_workers`` threads, started as needed), one pool step per unary call or per stream item, so a
  blocking handler never stalls the loop.

A call's context goes inactive when its coroutine ends: gRPC cancels it when the caller goes away, its
deadline passes or the server stops after ``grace``; from then on responders and writers return False.
Every handler's ``FlameError`` is sent as :mod:`flamepy_transports.grpc.status` says (Flame's status
plus the ``flame-error-code`` trailer), exactly as the client side expects.

One event loop per server: grpcio binds its asyncio completion queue to every loop that runs an aio
object, and hands each completion to the loop of the call it belongs to, so servers stop independently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    DeferredHandler,
    DeferredStreamHandler,
    Handler,
    StreamHandler,
    UnaryHandler,
)
from flamepy_core.kit.basics import message_too_large
from flamepy_core.transport_kit import SimpleCallContext, error_from_handler
from flamepy_transports.grpc.address import (
    Address,
    diagnose_bind_failure,
    parse_endpoint,
    prepare_unix_path,
    remove_socket_file,
)
from flamepy_transports.grpc.status import status_for, trailer_for, wire_message
from flamepy_transports.grpc.tls import server_credentials

if TYPE_CHECKING:
    from flamepy_transports.grpc.transport import GrpcSettings

STOP_WAIT = 10.0
"""Seconds ``stop`` waits, beyond ``grace``, for gRPC to release the endpoint."""
START_WAIT = 30.0
"""Seconds ``serve`` waits for the loop thread to bind and start the server."""
NO_DEADLINE = 1e9
"""gRPC reports "no deadline" as a huge number of seconds: anything above this means none."""

T = TypeVar("T")


class ServerLoop:
    """The event loop thread of one server, and the one way other threads hand work to it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.ident = self._thread.ident

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):  # whatever is left was cancelled by the server's stop
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def on_loop(self) -> bool:
        return threading.get_ident() == self.ident

    def deliver(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop thread (at once when already there); False once the loop has closed."""
        if threading.get_ident() == self.ident:
            fn(*args)
            return True
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the server has stopped
            return False
        return True

    def close(self, timeout: float) -> None:
        """Stop the loop and wait (up to ``timeout``) for its thread to end. Idempotent."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.on_loop():
            self._thread.join(timeout)


# -- one call -----------------------------------------------------------------------------------------


class GrpcCallContext(SimpleCallContext):
    """The :class:`~flamepy_core.contracts.transport.CallContext` of one call, readable from any thread.

    The deadline is read from gRPC once, when the call starts; the call is cancelled (``is_active`` False)
    when its coroutine ends: completed, cancelled by its caller, by its deadline or by the server's stop.
    """

    def __init__(self, method: str, context: Any) -> None:
        remaining = context.time_remaining()
        super().__init__(method, None if remaining is None or remaining > NO_DEADLINE else float(remaining))


async def _abort(context: Any, error: FlameError) -> None:
    """End the call with ``error``: Flame's status for it, the message, and the exact code as a trailer."""
    await context.abort(status_for(error.code), wire_message(error.message), trailer_for(error.code))


class _Limits:
    """What every response is checked against: bytes, and at most the largest message."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.endpoint = "(not bound yet)"
        """Where the server listens, for error messages; set once the address is bound."""

    def checked(self, method: str, value: object, what: str = "response") -> bytes | FlameError:
        """A handler's output as bytes, or the error to send instead (not bytes, or too large)."""
        if type(value) is not bytes:
            if not isinstance(value, (bytearray, memoryview)):
                return FlameError(
                    FlameErrorCode.INTERNAL, f"handler for {method} returned {type(value).__name__}, not bytes"
                )
            value = bytes(value)
        if len(value) > self.limit:
            return message_too_large(len(value), self.limit, what=f"{what} to {method}", endpoint=self.endpoint)
        return value


def _resolve(future: asyncio.Future[bytes | FlameError], outcome: bytes | FlameError) -> None:
    if not future.done():
        future.set_result(outcome)


class _Reply:
    """The :class:`~flamepy_core.contracts.transport.Responder` of one deferred call: the first completion
    counts, from any thread; one after the call ended (its caller gone, its deadline passed) is dropped."""

    __slots__ = ("_ctx", "_future", "_limits", "_lock", "_loop", "_settled")

    def __init__(
        self, ctx: GrpcCallContext, future: asyncio.Future[bytes | FlameError], loop: ServerLoop, limits: _Limits
    ) -> None:
        self._ctx = ctx
        self._future = future
        self._loop = loop
        self._limits = limits
        self._lock = threading.Lock()
        self._settled = False

    def send(self, response: bytes) -> bool:
        checked = self._limits.checked(self._ctx.method, response)
        return self._settle(checked)

    def fail(self, error: BaseException) -> bool:
        return self._settle(error_from_handler(self._ctx.method, error))

    def _settle(self, outcome: bytes | FlameError) -> bool:
        with self._lock:
            if self._settled or not self._ctx.is_active():
                return False
            self._settled = True
        return self._loop.deliver(_resolve, self._future, outcome)


class _Writer:
    """The :class:`~flamepy_core.contracts.transport.StreamWriter` of one deferred stream.

    ``send`` appends to an in-memory queue and, when the call's coroutine waits for more, wakes it; the
    coroutine writes what is queued, in order, then the end. One lock orders producers and the coroutine.
    """

    __slots__ = ("_ctx", "_ended", "_error", "_items", "_limits", "_lock", "_loop", "_waiter")

    def __init__(self, ctx: GrpcCallContext, loop: ServerLoop, limits: _Limits) -> None:
        self._ctx = ctx
        self._loop = loop
        self._limits = limits
        self._lock = threading.Lock()
        self._items: deque[bytes] = deque()
        self._ended = False
        self._error: FlameError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def send(self, response: bytes) -> bool:
        checked = self._limits.checked(self._ctx.method, response, "stream response")
        if isinstance(checked, FlameError):
            self.fail(checked)
            return False  # not sent, and the stream is over: the producer should stop
        with self._lock:
            if self._ended or not self._ctx.is_active():
                return False
            self._items.append(checked)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.deliver(_wake, waiter)
        return True

    def close(self) -> bool:
        return self._end(None)

    def fail(self, error: BaseException) -> bool:
        return self._end(error_from_handler(self._ctx.method, error))

    def _end(self, error: FlameError | None) -> bool:
        with self._lock:
            if self._ended or not self._ctx.is_active():
                return False
            self._ended = True
            self._error = error
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.deliver(_wake, waiter)
        return True

    def abandon(self) -> None:
        """The call is over under the writer: drop what waits; every method returns False from now on."""
        with self._lock:
            self._ended = True
            self._items.clear()

    def take(self) -> tuple[list[bytes], bool, FlameError | None, asyncio.Future[None] | None]:
        """On the loop thread: ``(what was sent since, ended, its error, a future to await for more)``; the
        future is None when there is something to write or the stream has ended."""
        with self._lock:
            batch = list(self._items)
            self._items.clear()
            waiter = None
            if not batch and not self._ended:
                waiter = self._waiter = self._loop.loop.create_future()
            return batch, self._ended, self._error, waiter


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


_END = object()
"""What a pool step returns when a blocking stream handler's iterator is exhausted."""


def _first(fn: Callable[[bytes, Any], Iterator[bytes]], request: bytes, ctx: GrpcCallContext) -> tuple[Any, Any]:
    """Start a blocking stream handler and take its first item, in one pool step."""
    items = iter(fn(request, ctx))
    return items, next(items, _END)


def _close_quietly(items: Any) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


# -- routing --------------------------------------------------------------------------------------------


class _Router(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Routes a full method path to its byte handler; an unknown path gets gRPC's UNIMPLEMENTED."""

    def __init__(self, handlers: Mapping[str, Handler], limit: int, loop: ServerLoop, pool: ThreadPoolExecutor) -> None:
        self.limits = _Limits(limit)
        self._loop = loop
        self._pool = pool
        self._table: dict[str, Any] = {}
        for method, handler in handlers.items():
            if isinstance(handler, UnaryHandler):
                self._table[method] = grpc.unary_unary_rpc_method_handler(self._unary(method, handler))
            elif isinstance(handler, StreamHandler):
                self._table[method] = grpc.unary_stream_rpc_method_handler(self._stream(method, handler))
            elif isinstance(handler, DeferredHandler):
                self._table[method] = grpc.unary_unary_rpc_method_handler(self._deferred(method, handler))
            elif isinstance(handler, DeferredStreamHandler):
                self._table[method] = grpc.unary_stream_rpc_method_handler(self._deferred_stream(method, handler))
            else:
                raise TypeError(
                    f"handler for {method} is {type(handler).__name__}, not a UnaryHandler, StreamHandler, "
                    f"DeferredHandler or DeferredStreamHandler"
                )

    def service(self, handler_call_details: Any) -> Any:
        return self._table.get(handler_call_details.method)

    def _unary(self, method: str, handler: UnaryHandler) -> Any:
        fn = handler.fn
        limits = self.limits
        pool = self._pool
        loop = self._loop.loop

        async def behavior(request: bytes, context: Any) -> bytes | None:
            ctx = GrpcCallContext(method, context)
            try:
                result = await loop.run_in_executor(pool, fn, request, ctx)
            except Exception as exc:
                await _abort(context, error_from_handler(method, exc))
                return None  # pragma: no cover - abort raises
            finally:
                ctx.cancel()
            if type(result) is bytes and len(result) <= limits.limit:
                return result  # the common case, kept short
            checked = limits.checked(method, result)
            if isinstance(checked, FlameError):
                await _abort(context, checked)
                return None  # pragma: no cover - abort raises
            return checked

        return behavior

    def _stream(self, method: str, handler: StreamHandler) -> Any:
        fn = handler.fn
        limits = self.limits
        pool = self._pool

        async def behavior(request: bytes, context: Any) -> AsyncIterator[bytes]:
            # Headers first: the caller's stream() learns at once that the call was accepted.
            await context.send_initial_metadata(())
            ctx = GrpcCallContext(method, context)
            items: Any = None
            step: concurrent.futures.Future[Any] | None = None
            error: FlameError | None = None
            try:
                step = pool.submit(_first, fn, request, ctx)
                items, item = await asyncio.wrap_future(step)
                while item is not _END:
                    checked = limits.checked(method, item, "stream response")
                    if isinstance(checked, FlameError):
                        error = checked
                        break
                    yield checked
                    step = pool.submit(next, items, _END)
                    item = await asyncio.wrap_future(step)
            except Exception as exc:
                error = error_from_handler(method, exc)
            finally:
                ctx.cancel()
                if items is not None and step is not None:  # closed once its running step is over
                    step.add_done_callback(lambda _done: _close_quietly(items))
            if error is not None:
                await _abort(context, error)

        return behavior

    def _deferred(self, method: str, handler: DeferredHandler) -> Any:
        fn = handler.fn
        loop = self._loop
        limits = self.limits

        async def behavior(request: bytes, context: Any) -> bytes | None:
            ctx = GrpcCallContext(method, context)
            future: asyncio.Future[bytes | FlameError] = loop.loop.create_future()
            reply = _Reply(ctx, future, loop, limits)
            try:
                try:
                    fn(request, ctx, reply)
                except Exception as exc:  # before it completed the reply: the call fails with it
                    reply.fail(exc)
                outcome = await future
            finally:
                ctx.cancel()
            if isinstance(outcome, FlameError):
                await _abort(context, outcome)
                return None  # pragma: no cover - abort raises
            return outcome

        return behavior

    def _deferred_stream(self, method: str, handler: DeferredStreamHandler) -> Any:
        fn = handler.fn
        loop = self._loop
        limits = self.limits

        async def behavior(request: bytes, context: Any) -> AsyncIterator[bytes]:
            await context.send_initial_metadata(())
            ctx = GrpcCallContext(method, context)
            writer = _Writer(ctx, loop, limits)
            try:
                try:
                    fn(request, ctx, writer)
                except Exception as exc:  # before the stream ended: it fails with that error
                    writer.fail(exc)
                while True:
                    batch, ended, error, waiter = writer.take()
                    for item in batch:
                        yield item
                    if waiter is not None:
                        await waiter
                    elif ended and not batch:  # everything sent before the end is out
                        break
            finally:
                ctx.cancel()
                writer.abandon()
            if error is not None:
                await _abort(context, error)

        return behavior


# -- the server -----------------------------------------------------------------------------------------


class GrpcServer:
    """A running gRPC server. ``endpoint`` is the bound address with a requested port 0 resolved."""

    def __init__(self, address: Address, server: Any, loop: ServerLoop, pool: ThreadPoolExecutor) -> None:
        self._address = address
        self._server = server
        self._loop = loop
        self._pool = pool
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stopped: concurrent.futures.Future[None] | None = None
        self._dropped = weakref.finalize(self, _drop, server, loop, pool)
        """A server dropped without ``stop`` still ends its calls, its loop thread and its pool."""

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
        """Stop; running calls get up to ``grace`` seconds. Idempotent; returns once the endpoint is free
        (called from a handler on the server's own loop thread, it cannot wait: the stop goes on after)."""
        self._check_process()
        with self._lock:
            first = self._stopped is None
            if self._stopped is None:
                self._dropped.detach()
                self._stopped = self._loop.submit(self._server.stop(grace))
            done = self._stopped
        if self._loop.on_loop():
            return
        with contextlib.suppress(Exception):  # a stop that failed or outlasted its wait still frees what it can
            done.result(timeout=(grace or 0.0) + STOP_WAIT)
        if first:
            self._loop.close(STOP_WAIT)
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self._address.is_unix:
                remove_socket_file(self._address)

    def __repr__(self) -> str:
        return f"GrpcServer({self.endpoint!r})"


def _drop(server: Any, loop: ServerLoop, pool: ThreadPoolExecutor) -> None:
    """What a dropped :class:`GrpcServer` leaves: its calls cancelled now, then its loop and pool ended."""
    if os.getpid() != loop.pid:
        return  # a fork() child's copy: nothing of it runs here
    with contextlib.suppress(RuntimeError):  # the loop has closed already
        loop.submit(server.stop(None)).add_done_callback(lambda _stopped: loop.close(0.0))
    pool.shutdown(wait=False, cancel_futures=True)


async def _bind(router: _Router, address: Address, credentials: Any, options: list[Any]) -> tuple[Any, int]:
    """Build the asyncio server on the running loop and bind it; ``(server, port)``, port 0 when the bind failed."""
    server = grpc.aio.server(handlers=[router], options=options)
    try:
        if credentials is None:
            port = server.add_insecure_port(address.target)
        else:
            port = server.add_secure_port(address.target, credentials)
    except RuntimeError:
        port = 0
    if not port:
        await server.stop(None)
        return server, 0
    await server.start()
    return server, port


def start_server(endpoint: str, handlers: Mapping[str, Handler], settings: GrpcSettings) -> GrpcServer:
    """Serve ``handlers`` on ``endpoint`` (port 0 picks a free port) and return once it accepts calls."""
    address = parse_endpoint(endpoint)
    # A TLS endpoint needs cert_file and key_file: checked (and read) before anything is started.
    credentials = server_credentials(settings.tls, address.endpoint) if address.is_tls else None
    if address.is_unix:
        prepare_unix_path(address)
    pool = ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="flamepy-grpc")
    loop = ServerLoop("flamepy-grpc-loop")
    try:
        router = _Router(handlers, settings.max_message_size, loop, pool)  # refuses a bad handler first
        server, port = loop.submit(_bind(router, address, credentials, settings.server_options)).result(START_WAIT)
    except BaseException:
        loop.close(STOP_WAIT)
        pool.shutdown(wait=False)
        raise
    if not port:
        loop.close(STOP_WAIT)
        pool.shutdown(wait=False)
        code, reason = diagnose_bind_failure(address)
        raise FlameError(code, f"cannot serve on {endpoint}: {reason}")
    bound = address if address.is_unix else address.with_port(port)
    router.limits.endpoint = bound.endpoint
    return GrpcServer(bound, server, loop, pool)
