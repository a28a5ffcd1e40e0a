"""In-memory transport: a server is an entry in *this transport object's* table, a call is a thread hop.

Declared once: :class:`InMemoryTransport` carries its name, schemes, capabilities and options, and the
``flamepy.transports`` entry point names it (``flamepy_transports.inmem.transport:InMemoryTransport``).

No class-level state: two ``InMemoryTransport`` objects are two separate worlds, so tests are isolated.
Every request and response is copied into fresh ``bytes``, so no caller shares a mutable buffer with a
handler. Handlers run on the server's thread pool, which is what lets a caller's deadline fire while a
handler is still busy. Deferred handlers take no pool thread: a ``DeferredHandler``'s or
``DeferredStreamHandler``'s ``fn`` runs on the caller's thread (it only starts work), and its responder
or stream writer hands the reply, or each response, straight to the waiting caller, so an open deferred
stream holds no thread at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import ClassVar

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    DEFAULT_TIMEOUT,
    DeferredHandler,
    DeferredStreamHandler,
    Handler,
    StreamHandler,
    Timeout,
    TransportCapabilities,
    UnaryHandler,
)
from flamepy_core.kit import (
    DEFAULT_CALL_TIMEOUT,
    Deadlines,
    FutureResponder,
    SimpleCallContext,
    check_size,
    deadline_exceeded,
    error_from_handler,
    resolve_timeout,
    unavailable,
    unimplemented,
)

NAME = "inmem"
SCHEME = "inmem://"
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
_END = object()


class _DeadlinePassed(Exception):
    """The caller's deadline passed while waiting (distinct from a handler raising TimeoutError)."""


def _name_of(endpoint: str) -> str:
    if not endpoint.startswith(SCHEME):
        raise FlameError(
            FlameErrorCode.INVALID_ARGUMENT, f"in-memory endpoints look like inmem://NAME, got '{endpoint}'"
        )
    return endpoint[len(SCHEME) :]


class _Responder(FutureResponder):
    """A deferred call's responder: completes once, from any thread; dropped once the caller has gone."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: SimpleCallContext) -> None:
        super().__init__()
        self._ctx = ctx

    def send(self, response: bytes) -> bool:
        return self._ctx.is_active() and super().send(response)

    def fail(self, error: BaseException) -> bool:
        return self._ctx.is_active() and super().fail(error)


class _StreamWriter:
    """A deferred stream's writer: puts each response on the caller's queue (unbounded: ``send`` never
    waits); False once the stream ended or its caller has gone (``ctx`` inactive)."""

    def __init__(self, server: InMemoryServer, method: str, ctx: SimpleCallContext, items: queue.Queue[object]):
        self._server = server
        self._method = method
        self._ctx = ctx
        self._items = items
        self._lock = threading.Lock()
        self._ended = False

    def send(self, response: bytes) -> bool:
        try:
            data = self._server._outcome(self._method, response, "stream response")
        except FlameError as exc:
            self.fail(exc)
            return False  # not sent, and the stream is over: the producer should stop
        with self._lock:
            if not self._live():
                return False
            self._items.put(data)
        return True

    def close(self) -> bool:
        return self._end(_END)

    def fail(self, error: BaseException) -> bool:
        return self._end(error_from_handler(self._method, error))

    def _end(self, final: object) -> bool:
        with self._lock:
            if not self._live():
                return False
            self._ended = True
            self._items.put(final)
        self._server._release(self._ctx)
        return True

    def _live(self) -> bool:
        # With the lock held.
        if self._ended:
            return False
        if not self._ctx.is_active():
            self._ended = True
            self._server._release(self._ctx)
            return False
        return True


class _Responses(Iterator[bytes]):
    """A stream's responses; closing it (or dropping it) before its end cancels the call, read or not."""

    def __init__(self, items: Generator[bytes, None, None], ctx: SimpleCallContext) -> None:
        self._items = items
        self._ctx = ctx

    def __next__(self) -> bytes:
        return next(self._items)

    def close(self) -> None:
        self._ctx.cancel()
        self._items.close()

    def __del__(self) -> None:
        if sys.is_finalizing():
            return  # exiting: a thread stopped for good may hold a lock this would take
        with contextlib.suppress(Exception):
            self.close()


class InMemoryServer:
    """A server registered in one transport's table; stopping it frees the name."""

    def __init__(
        self, transport: InMemoryTransport, name: str, handlers: Mapping[str, Handler], max_workers: int
    ) -> None:
        self._transport = transport
        self._name = name
        self._handlers = dict(handlers)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"inmem-{name}")
        self._active: set[SimpleCallContext] = set()
        self._waiting: set[Future[bytes]] = set()
        self._deadlines = Deadlines(f"inmem-{name}-deadlines")
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.pid = os.getpid()
        """The process whose threads serve it: after ``fork()`` a child has the object, not the threads."""

    @property
    def endpoint(self) -> str:
        return SCHEME + self._name

    def _admit(self, method: str, timeout: float | None) -> tuple[Handler, SimpleCallContext]:
        handler = self._handlers.get(method)
        if handler is None:
            raise unimplemented(method, self.endpoint)
        ctx = SimpleCallContext(method, timeout)
        with self._lock:
            if self._stopped.is_set():
                raise unavailable(self.endpoint, "the server is shutting down")
            self._active.add(ctx)
        return handler, ctx

    def _release(self, ctx: SimpleCallContext) -> None:
        with self._lock:
            self._active.discard(ctx)

    def _start(self, method: str, request: bytes, timeout: float | None) -> tuple[Future[bytes], SimpleCallContext]:
        """Start a unary or deferred call: a future of the handler's answer, and the call's context.

        A unary handler runs on the server's pool; a deferred one's ``fn`` on the caller's thread (it only
        starts work), its responder completing the future later, from any thread.
        """
        handler, ctx = self._admit(method, timeout)
        if isinstance(handler, DeferredHandler):
            responder = _Responder(ctx)
            responder.future.add_done_callback(lambda _f: self._release(ctx))
            try:
                handler.fn(request, ctx, responder)
            except BaseException as exc:  # raised before completing the reply: the call fails with it
                responder.fail(exc)
            return responder.future, ctx
        if not isinstance(handler, UnaryHandler):
            self._release(ctx)
            raise FlameError(FlameErrorCode.UNIMPLEMENTED, f"{method} on {self.endpoint} is a streaming method")
        try:
            future: Future[bytes] = self._pool.submit(handler.fn, request, ctx)
        except RuntimeError as exc:  # the pool was shut down between admit and submit
            self._release(ctx)
            raise unavailable(self.endpoint, "the server is shutting down") from exc
        future.add_done_callback(lambda _f: self._release(ctx))
        return future, ctx

    def _outcome(self, method: str, result: object, what: str = "response") -> bytes:
        if not isinstance(result, (bytes, bytearray, memoryview)):
            raise FlameError(
                FlameErrorCode.INTERNAL, f"handler for {method} returned {type(result).__name__}, not bytes"
            )
        data = bytes(result)
        check_size(
            len(data),
            self._transport.capabilities.max_message_size,
            what=f"{what} to {method}",
            endpoint=self.endpoint,
        )
        return data

    def _error(self, method: str, exc: BaseException) -> FlameError:
        if self._stopped.is_set() and not isinstance(exc, FlameError):
            return unavailable(self.endpoint, "the server stopped during the call")
        return error_from_handler(method, exc)

    def submit_unary(self, method: str, request: bytes, timeout: float | None) -> bytes:
        future, ctx = self._start(method, request, timeout)
        try:
            result = self._await(future, ctx, method, timeout)
        except _DeadlinePassed:
            ctx.cancel()
            future.cancel()  # a deferred reply not sent yet: releases the call now; a late one is dropped
            raise deadline_exceeded(method, self.endpoint, timeout) from None
        except BaseException as exc:
            raise self._error(method, exc) from exc
        return self._outcome(method, result)

    def submit_async(self, method: str, request: bytes, timeout: float | None) -> Future[bytes]:
        """The call's answer as a future no thread waits on; its deadline is kept by the server's timer."""
        answer: Future[bytes] = Future()
        answer.set_running_or_notify_cancel()
        future, ctx = self._start(method, request, timeout)

        def settle(done: Future[bytes]) -> None:
            try:
                value = self._outcome(method, done.result())
            except BaseException as exc:
                error = exc if isinstance(exc, FlameError) else self._error(method, exc)
                with contextlib.suppress(InvalidStateError):
                    answer.set_exception(error)
            else:
                with contextlib.suppress(InvalidStateError):
                    answer.set_result(value)

        def expire() -> None:
            if not answer.done():
                with contextlib.suppress(InvalidStateError):
                    answer.set_exception(deadline_exceeded(method, self.endpoint, timeout))
                ctx.cancel()
                future.cancel()  # settles nothing more: the answer is already DEADLINE_EXCEEDED

        future.add_done_callback(settle)
        if timeout is not None:
            self._deadlines.add(time.monotonic() + timeout, expire)
        with self._lock:
            self._waiting.add(answer)
        answer.add_done_callback(self._waiting.discard)
        return answer

    def _await(self, future: Future[bytes], ctx: SimpleCallContext, method: str, timeout: float | None) -> bytes:
        """The handler's result; _DeadlinePassed at the deadline; UNAVAILABLE once stop() cancels the call.

        Waits in short slices so a call whose handler ignores cancellation still ends when the server's
        grace runs out, instead of waiting for the handler (or the whole deadline).
        """
        while True:
            remaining = ctx.time_remaining()
            try:
                return future.result(timeout=0.05 if remaining is None else min(remaining, 0.05))
            except FutureTimeout:
                if future.done():  # done after all: it finished just as the wait ran out, or its handler
                    return future.result()  # raised a TimeoutError of its own (raised again here, as is)
                if remaining is not None and ctx.time_remaining() == 0.0:
                    raise _DeadlinePassed from None
                if self._stopped.is_set() and not ctx.is_active():
                    raise unavailable(self.endpoint, f"the server stopped during the call of {method}") from None

    def submit_stream(self, method: str, request: bytes, timeout: float | None) -> Iterator[bytes]:
        handler, ctx = self._admit(method, timeout)
        if isinstance(handler, DeferredStreamHandler):
            responses: queue.Queue[object] = queue.Queue()
            writer = _StreamWriter(self, method, ctx, responses)
            try:
                handler.fn(request, ctx, writer)
            except BaseException as exc:  # raised before the stream ended: it fails with that error
                writer.fail(exc)
            return _Responses(self._consume(method, ctx, responses, timeout), ctx)
        if not isinstance(handler, StreamHandler):
            self._release(ctx)
            raise FlameError(FlameErrorCode.UNIMPLEMENTED, f"{method} on {self.endpoint} is a unary method")
        items: queue.Queue[object] = queue.Queue(maxsize=64)

        def produce() -> None:
            try:
                limit = self._transport.capabilities.max_message_size
                for item in handler.fn(request, ctx):
                    data = bytes(item)
                    check_size(len(data), limit, what=f"response to {method}", endpoint=self.endpoint)
                    while ctx.is_active():
                        try:
                            items.put(data, timeout=0.05)
                            break
                        except queue.Full:
                            continue
                    if not ctx.is_active():
                        return
                items.put(_END)
            except BaseException as exc:
                items.put(error_from_handler(method, exc))
            finally:
                self._release(ctx)

        try:
            self._pool.submit(produce)
        except RuntimeError as exc:
            self._release(ctx)
            raise unavailable(self.endpoint, "the server is shutting down") from exc
        return _Responses(self._consume(method, ctx, items, timeout), ctx)

    def _consume(
        self, method: str, ctx: SimpleCallContext, items: queue.Queue[object], timeout: float | None
    ) -> Generator[bytes, None, None]:
        try:
            while True:
                remaining = ctx.time_remaining()
                try:
                    item = items.get(timeout=min(remaining, 0.1) if remaining is not None else 0.1)
                except queue.Empty:
                    if self._stopped.is_set() and not ctx.is_active():
                        raise unavailable(self.endpoint, "the server stopped during the stream") from None
                    if ctx.time_remaining() == 0.0:
                        raise deadline_exceeded(method, self.endpoint, timeout) from None
                    continue
                if item is _END:
                    return
                if isinstance(item, FlameError):
                    if self._stopped.is_set() and item.code == FlameErrorCode.INTERNAL:
                        raise unavailable(self.endpoint, "the server stopped during the stream")
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            ctx.cancel()

    def _running(self, ctx: SimpleCallContext) -> bool:
        # A finished call is released from _active but its context stays "active" until its deadline.
        with self._lock:
            return ctx in self._active

    def stop(self, grace: float | None = None) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            active = list(self._active)
        self._transport._unbind(self._name, self)
        if grace:
            # Running calls may finish within grace; new calls are already refused.
            waited = threading.Event()
            deadline = grace
            step = 0.01
            while deadline > 0 and any(c.is_active() and self._running(c) for c in active):
                waited.wait(step)
                deadline -= step
        for ctx in active:
            ctx.cancel()
        with self._lock:
            waiting = list(self._waiting)
        for answer in waiting:  # asynchronous calls nobody waits on: told now, not at their deadline
            with contextlib.suppress(InvalidStateError):
                answer.set_exception(unavailable(self.endpoint, "the server stopped during the call"))
        self._deadlines.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class InMemoryChannel:
    """A channel that looks its server up on every call, so a restarted server is found again."""

    def __init__(self, transport: InMemoryTransport, endpoint: str, default_timeout: float | None) -> None:
        self._transport = transport
        self._endpoint = endpoint
        self._name = _name_of(endpoint)
        self._default_timeout = default_timeout
        self._closed = False

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def _server(self) -> InMemoryServer:
        if self._closed:
            raise unavailable(self._endpoint, "the channel is closed")
        server = self._transport._lookup(self._name)
        if server is None:
            raise unavailable(self._endpoint, "no server is listening there")
        if server.pid != os.getpid():
            raise unavailable(
                self._endpoint,
                f"its server lives in process {server.pid} and this is process {os.getpid()}, a fork() child: "
                f"in-memory servers do not cross processes (use a cross-process transport's endpoint here)",
            )
        return server

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        limit = self._transport.capabilities.max_message_size
        check_size(len(request), limit, what="request", endpoint=self._endpoint)
        seconds = resolve_timeout(timeout, self._default_timeout)
        return self._server().submit_unary(method, bytes(request), seconds)

    def unary_async(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Future[bytes]:
        """The call started now; the future completes with the response or a FlameError (no thread waits)."""
        try:
            limit = self._transport.capabilities.max_message_size
            check_size(len(request), limit, what="request", endpoint=self._endpoint)
            seconds = resolve_timeout(timeout, self._default_timeout)
            return self._server().submit_async(method, bytes(request), seconds)
        except FlameError as exc:
            failed: Future[bytes] = Future()
            failed.set_exception(exc)
            return failed

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        limit = self._transport.capabilities.max_message_size
        check_size(len(request), limit, what="request", endpoint=self._endpoint)
        seconds = resolve_timeout(timeout, self._default_timeout)
        return self._server().submit_stream(method, bytes(request), seconds)

    def close(self) -> None:
        self._closed = True


class InMemoryTransport:
    """The in-memory transport. Each object is its own namespace of ``inmem://`` servers."""

    name: ClassVar[str] = NAME
    schemes: ClassVar[tuple[str, ...]] = (NAME,)
    capabilities: TransportCapabilities = TransportCapabilities(
        max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
        streaming=True,
        cross_process=False,
        in_process=True,
        deferred_replies=True,
        deferred_streams=True,
        async_calls=True,
    )
    options: ClassVar[frozenset[str]] = frozenset({"max_message_size", "default_timeout", "max_workers"})
    description: ClassVar[str] = "in-process calls between threads; each transport object is its own namespace"

    def __init__(
        self,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        default_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        max_workers: int = 32,
    ) -> None:
        if max_message_size <= 0:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        self.capabilities = dataclasses.replace(type(self).capabilities, max_message_size=max_message_size)
        self._default_timeout = default_timeout
        self._max_workers = max_workers
        self._servers: dict[str, InMemoryServer] = {}
        self._lock = threading.Lock()
        self._anonymous = itertools.count(1)

    def _lookup(self, name: str) -> InMemoryServer | None:
        with self._lock:
            return self._servers.get(name)

    def _unbind(self, name: str, server: InMemoryServer) -> None:
        with self._lock:
            if self._servers.get(name) is server:
                del self._servers[name]

    def local_endpoint(self, directory: str, name: str) -> str:
        """``inmem://<name>``: a name in this transport object's own namespace (``directory`` plays no part)."""
        return SCHEME + name

    def connect(self, endpoint: str) -> InMemoryChannel:
        return InMemoryChannel(self, endpoint, self._default_timeout)

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> InMemoryServer:
        name = _name_of(endpoint)
        with self._lock:
            if name in ("", "0"):
                name = f"anonymous-{next(self._anonymous)}"
            if name in self._servers:
                raise FlameError(FlameErrorCode.ALREADY_EXISTS, f"{SCHEME}{name} is already served by this transport")
            server = InMemoryServer(self, name, handlers, self._max_workers)
            self._servers[name] = server
        return server
