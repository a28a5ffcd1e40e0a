"""Small helpers every transport needs, so each one only moves frames.

Public for transport authors (through :mod:`flamepy.plugin`): deadline arithmetic, the size check with
an error that names both sizes, the mapping of a handler's exception to the error the caller sees, a
ready-made :class:`CallContext`, and adapters that give deferred replies, asynchronous calls and streams
read by callbacks to a transport that does not implement them natively.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import Any, TypeVar

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    DEFAULT_TIMEOUT,
    CallContext,
    Channel,
    DeferredHandler,
    DeferredStreamHandler,
    Handler,
    ReplyPart,
    Responder,
    StreamEndFn,
    StreamHandler,
    StreamItemFn,
    Timeout,
    TransportCapabilities,
    UnaryHandler,
)

DEFAULT_CALL_TIMEOUT = 60.0
"""Seconds a call may take when the caller passes no timeout of its own."""


def resolve_timeout(timeout: Timeout, default: float | None) -> float | None:
    """Seconds for this call: the caller's value, the channel default, or ``None`` (no deadline)."""
    if timeout is DEFAULT_TIMEOUT:
        return default
    if timeout is None:
        return None
    seconds = float(timeout)  # type: ignore[arg-type]
    if seconds < 0:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"timeout must be >= 0 seconds or None, got {timeout}")
    return seconds


RAISE_THE_LIMIT = (
    "send less per call (e.g. put large data in the object cache), or raise the limit on both sides: "
    "FLAME_MAX_MESSAGE_SIZE for the flamepy runtime and its clients (the transport option max_message_size)"
)
"""What a ``MESSAGE_TOO_LARGE`` error tells the user to do: every transport's size errors end with it."""


def message_too_large(size: int, limit: int, *, what: str, endpoint: str) -> FlameError:
    """The ``MESSAGE_TOO_LARGE`` error for a message of ``size`` bytes over ``limit``, naming both numbers.

    For code that delivers the error rather than raising it (a future, a call failed from an I/O thread).
    """
    return FlameError(
        FlameErrorCode.MESSAGE_TOO_LARGE,
        f"{what} of {size} bytes exceeds the largest message of {limit} bytes allowed on {endpoint}; {RAISE_THE_LIMIT}",
    )


def check_size(size: int, limit: int, *, what: str, endpoint: str) -> None:
    """Refuse a message larger than ``limit`` (before sending it, or on receipt), naming both numbers."""
    if size > limit:
        raise message_too_large(size, limit, what=what, endpoint=endpoint)


def error_from_handler(method: str, exc: BaseException) -> FlameError:
    """What the caller sees when a handler raises: the same FlameError, or INTERNAL naming the type."""
    if isinstance(exc, FlameError):
        return exc
    return FlameError(FlameErrorCode.INTERNAL, f"handler for {method} raised {type(exc).__name__}: {exc}")


def deadline_exceeded(method: str, endpoint: str, timeout: float | None) -> FlameError:
    return FlameError(
        FlameErrorCode.DEADLINE_EXCEEDED,
        f"{method} on {endpoint} did not answer within its deadline of {timeout} s",
    )


def unavailable(endpoint: str, detail: str) -> FlameError:
    return FlameError(FlameErrorCode.UNAVAILABLE, f"cannot reach {endpoint}: {detail}")


def unimplemented(method: str, endpoint: str) -> FlameError:
    return FlameError(FlameErrorCode.UNIMPLEMENTED, f"the server at {endpoint} has no method {method}")


class SimpleCallContext:
    """A :class:`~flamepy_core.contracts.transport.CallContext` driven by a deadline and a cancel flag.

    The flag is a plain attribute (nobody waits on it; a ``threading.Event`` would build a lock and a
    condition for every call served)."""

    __slots__ = ("_cancelled", "_deadline", "_method")

    def __init__(self, method: str, timeout: float | None) -> None:
        self._method = method
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._cancelled = False

    @property
    def method(self) -> str:
        return self._method

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        if self._cancelled:
            return False
        return self._deadline is None or time.monotonic() < self._deadline

    def cancel(self) -> None:
        """Mark the call as abandoned by the caller."""
        self._cancelled = True


# -- deferred replies and asynchronous calls, for transports that do not provide them natively ---------


class FutureResponder:
    """A :class:`~flamepy_core.contracts.transport.Responder` over a future: the first completion wins.

    Transports can use it as their responder and complete the wire reply from the future's callback;
    the kit's adapter below waits on it from a server thread.
    """

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: Future[bytes] = Future()

    def send(self, response: bytes) -> bool:
        try:
            self.future.set_result(response)
        except InvalidStateError:
            return False
        return True

    def fail(self, error: BaseException) -> bool:
        try:
            self.future.set_exception(error)
        except InvalidStateError:
            return False
        return True

    def abandon(self) -> None:
        """The caller has gone: later completions return False."""
        self.fail(FlameError(FlameErrorCode.CANCELLED, "the caller went away before the reply was ready"))


WAIT_SLICE = 0.5
"""How often a server thread blocked on a deferred reply re-checks that its caller still waits (seconds)."""


_Deferred = tuple[Channel, str, bytes, Timeout, "Future[bytes]"]
"""A call left for the waiting thread: the channel, method, request, timeout, and the future to complete."""


class _ReplyScope:
    """The calls a waiting server thread makes itself once its deferred handler returns (see :func:`answering`)."""

    __slots__ = ("calls", "key")

    def __init__(self) -> None:
        self.key: Hashable | None = None
        self.calls: list[_Deferred] = []


class _WaitingThread(threading.local):
    scope: _ReplyScope | None = None


_waiting = _WaitingThread()


class _Answering:
    """The block of :func:`answering` on a thread the kit's adapter holds: names the reply's call."""

    __slots__ = ("key", "outer", "scope")

    def __init__(self, scope: _ReplyScope, key: Hashable) -> None:
        self.scope = scope
        self.key = key
        self.outer: Hashable | None = None

    def __enter__(self) -> None:
        self.outer, self.scope.key = self.scope.key, self.key

    def __exit__(self, *exc: object) -> None:
        self.scope.key = self.outer


_NOT_ANSWERING = contextlib.nullcontext()
"""The block of :func:`answering` elsewhere (a transport that defers natively): it does nothing."""


def answering(key: Hashable) -> contextlib.AbstractContextManager[None]:
    """Declare, around the work a deferred handler starts, that its reply is the outcome of ``key``'s call.

    On a transport without ``deferred_replies`` the kit's adapter holds a server thread until the reply
    is sent anyway. A :func:`unary_async` made inside this block with ``answers=key`` is therefore not
    handed to another thread: it is made by that waiting thread itself, as a blocking call, once the
    handler has returned, and its callbacks (which complete the reply) run there too. Two thread
    hand-offs fewer: to the thread that would have made the call, and back with the reply. Only the call
    named by ``key`` is taken: another call started on the way (a task of another session, say) must not
    wait for this thread. Without the adapter's thread (a transport that defers natively) it does nothing.

    (A context manager object, not a generator's: this is on every RunTask's path.)
    """
    scope = _waiting.scope
    return _NOT_ANSWERING if scope is None else _Answering(scope, key)


def left_to_waiting_thread(key: Hashable) -> bool:
    """Whether a :func:`unary_async` made now with ``answers=key`` would be left for this thread to make once
    its deferred handler returns (see :func:`answering`), rather than sent now.

    Such a call reaches its server only later, after anything sent meanwhile on the same channel by other
    threads: a caller that sends calls which must arrive after it (tasks queued behind it on one
    instance) waits for its answer first.
    """
    scope = _waiting.scope
    return scope is not None and scope.key == key


def _run_on_waiting_thread(calls: list[_Deferred], reply: Future[bytes]) -> None:
    """Make the calls :func:`answering` gave this thread, each as a blocking call, while the reply waits on them.

    Once the reply is complete, the rest no longer hold it up: they start as ordinary asynchronous calls.
    """
    for index, (channel, method, request, timeout, future) in enumerate(calls):
        if reply.done():
            _start_elsewhere(calls[index:])
            return
        try:
            response = channel.unary(method, request, timeout)
        except Exception as exc:  # a FlameError as the channel raised it; anything else as the pool would give it
            future.set_exception(exc)
        else:
            future.set_result(response)


def _start_elsewhere(calls: list[_Deferred]) -> None:
    """Start calls left for the waiting thread as ordinary asynchronous ones, each completing its future."""
    for channel, method, request, timeout, target in calls:

        def copy(done: Future[bytes], target: Future[bytes] = target) -> None:
            error = done.exception()
            if error is not None:
                target.set_exception(error)
            else:
                target.set_result(done.result())

        unary_async(channel, method, request, timeout).add_done_callback(copy)


_RUNS_ON = "flamepy_calls_run_on"
"""The attribute of a handler's function that :func:`run_calls_on` sets."""

_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def run_calls_on(fn: _Fn, executor: Executor) -> _Fn:
    """Mark a handler's function: a server may run each whole call to it on ``executor``; returns ``fn``.

    A hint for a transport whose server runs each call as one routine on a thread of its choosing
    (receive the request, run the handler, send the reply, as grpcio's synchronous server does): it may
    submit that routine to ``executor`` instead of its own pool, so the handler runs where its work
    would be handed anyway (a service process's main thread) and no thread waits in between. A
    transport that does not look for the hint, or cannot follow it, runs the call as usual: the handler
    must work on any thread. The kit's adapters keep the hint (:func:`blocking_unary`).
    """
    setattr(fn, _RUNS_ON, executor)
    return fn


def calls_run_on(fn: Callable[..., Any]) -> Executor | None:
    """The executor :func:`run_calls_on` named for a handler's function, if any."""
    executor = getattr(fn, _RUNS_ON, None)
    return executor if isinstance(executor, Executor) else None


_BORROWS = "flamepy_borrows_request"
"""The attribute of a handler's function that :func:`borrows_request` sets."""


def borrows_request(fn: _Fn) -> _Fn:
    """Mark a :class:`DeferredHandler`'s function: it reads its request only while it runs and keeps nothing
    of it (it copies what it keeps); returns ``fn``.

    A hint for a transport that reads messages into a buffer it reuses (the framed kit's links keep one
    for large messages): it may then pass the request as a ``memoryview`` of that buffer, valid until the
    function returns, instead of copying it into ``bytes`` first. A transport that does not look for the
    hint passes ``bytes``, as always: the function must take either.
    """
    setattr(fn, _BORROWS, True)
    return fn


def request_borrowed(fn: Callable[..., Any]) -> bool:
    """Whether :func:`borrows_request` marked a handler's function."""
    return getattr(fn, _BORROWS, False) is True


def blocking_unary(handler: DeferredHandler) -> UnaryHandler:
    """A deferred handler as a plain unary one, for a transport without ``deferred_replies``.

    The server thread waits for the reply (so it costs a thread, as any unary handler does), re-checking
    every :data:`WAIT_SLICE` that the caller is still there; when it has gone, the responder is abandoned
    so a late completion is dropped. A call the handler started for its reply under :func:`answering` is
    made by this thread itself, before it waits.
    """

    def call(request: bytes, ctx: CallContext) -> bytes:
        responder = FutureResponder()
        scope = _ReplyScope()
        outer, _waiting.scope = _waiting.scope, scope
        try:
            handler.fn(request, ctx, responder)
        except BaseException:
            _waiting.scope = outer
            _start_elsewhere(scope.calls)  # the call fails now: what the handler started must not wait for it
            raise
        _waiting.scope = outer
        if scope.calls:
            _run_on_waiting_thread(scope.calls, responder.future)
        while True:
            try:
                return responder.future.result(timeout=WAIT_SLICE)
            except FutureTimeout:
                if not ctx.is_active():
                    responder.abandon()  # unless the reply won the race, this raises CANCELLED below
                    return responder.future.result()

    executor = calls_run_on(handler.fn)
    if executor is not None:
        run_calls_on(call, executor)
    return UnaryHandler(call)


class QueueWriter:
    """A :class:`~flamepy_core.contracts.transport.StreamWriter` over an in-memory queue.

    Transports can feed their wire stream from it; the kit's adapter below drains it on a server thread.
    ``next_event`` hands out what was sent, then the end of the stream (``None``) or its error (raised).
    Given the call's ``ctx``, every method returns False (and drops what waits) once the call is no longer
    active, so a producer learns that its caller has gone at its next ``send``, whoever drains the queue.
    Given ``max_message_size``, a larger response fails the stream with ``MESSAGE_TOO_LARGE``.
    """

    def __init__(self, max_message_size: int | None = None, method: str = "", ctx: CallContext | None = None) -> None:
        self._cond = threading.Condition()
        self._items: deque[bytes] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._limit = max_message_size
        self._method = method
        self._ctx = ctx

    def _gone(self) -> bool:
        """Whether the call ended under the writer (its caller left, its deadline passed); abandons it then."""
        if self._ctx is None or self._ctx.is_active():
            return False
        self.abandon()
        return True

    def send(self, response: bytes) -> bool:
        if self._gone():
            return False
        if self._limit is not None and len(response) > self._limit:
            what = f"stream response to {self._method or 'a deferred stream'}"
            self.fail(message_too_large(len(response), self._limit, what=what, endpoint="this server"))
            return False  # not taken, and the stream is over: the producer should stop
        with self._cond:
            if self._ended:
                return False
            self._items.append(response)
            self._cond.notify()
        return True

    def close(self) -> bool:
        return not self._gone() and self._end(None)

    def fail(self, error: BaseException) -> bool:
        return not self._gone() and self._end(error)

    def abandon(self) -> None:
        """The caller has gone: drop what waits, later sends return False."""
        with self._cond:
            self._items.clear()
        self._end(FlameError(FlameErrorCode.CANCELLED, "the caller went away"))

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended

    def _end(self, error: BaseException | None) -> bool:
        with self._cond:
            if self._ended:
                return False
            self._ended = True
            self._error = error
            self._cond.notify_all()
        return True

    def next_event(self, timeout: float | None) -> tuple[bool, bytes | None]:
        """``(True, response)`` for the next response, ``(True, None)`` at the end of the stream, ``(False,
        None)`` if nothing came within ``timeout``; raises the error a failed stream ended with."""
        with self._cond:
            if not self._items and not self._ended:
                self._cond.wait(timeout)
            if self._items:
                return True, self._items.popleft()
            if not self._ended:
                return False, None
            if self._error is not None:
                raise self._error
            return True, None


def blocking_stream(handler: DeferredStreamHandler, max_message_size: int | None = None) -> StreamHandler:
    """A deferred stream handler as a plain stream one, for a transport without ``deferred_streams``.

    A server thread yields what the handler's writer receives (so the open stream costs a thread, as
    any stream handler does), re-checking every :data:`WAIT_SLICE` that the caller is still there. The
    writer knows the call's context, so ``send`` says False once the caller has gone even while the
    transport keeps that thread waiting; ``max_message_size`` (the transport's) is checked at ``send``.
    """

    def call(request: bytes, ctx: CallContext) -> Iterator[bytes]:
        writer = QueueWriter(max_message_size, ctx.method, ctx)
        try:
            handler.fn(request, ctx, writer)
        except BaseException as exc:
            writer.fail(exc)
        try:
            while True:
                got, response = writer.next_event(WAIT_SLICE)
                if got:
                    if response is None:
                        return
                    yield response
                elif not ctx.is_active():
                    return
        finally:
            writer.abandon()  # closed early by the caller, or its deadline: later sends return False

    return StreamHandler(call)


def adapt_handlers(handlers: Mapping[str, Handler], capabilities: TransportCapabilities) -> dict[str, Handler]:
    """``handlers`` as the transport can serve them: deferred ones made blocking unless it runs them natively."""
    adapted: dict[str, Handler] = {}
    for path, handler in handlers.items():
        if isinstance(handler, DeferredHandler) and not capabilities.deferred_replies:
            adapted[path] = blocking_unary(handler)
        elif isinstance(handler, DeferredStreamHandler) and not capabilities.deferred_streams:
            adapted[path] = blocking_stream(handler, capabilities.max_message_size)
        else:
            adapted[path] = handler
    return adapted


_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None
ASYNC_FALLBACK_WORKERS = 16


def _fallback_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():  # a pool's threads do not survive fork()
            _pool = (os.getpid(), ThreadPoolExecutor(ASYNC_FALLBACK_WORKERS, thread_name_prefix="flamepy-async-call"))
        return _pool[1]


def unary_async(
    channel: Channel,
    method: str,
    request: bytes,
    timeout: Timeout = DEFAULT_TIMEOUT,
    *,
    answers: Hashable | None = None,
) -> Future[bytes]:
    """``channel.unary_async`` when the channel has it; otherwise the blocking call on a small shared pool.

    ``answers``: the key of an enclosing :func:`answering` block whose reply this call's outcome makes; on
    the kit adapter's waiting thread the call is then left for that thread to make (see :func:`answering`).
    """
    if answers is not None:
        scope = _waiting.scope
        if scope is not None and scope.key == answers:
            future: Future[bytes] = Future()
            future.set_running_or_notify_cancel()
            scope.calls.append((channel, method, request, timeout, future))
            return future
    native = getattr(channel, "unary_async", None)
    if native is not None:
        return native(method, request, timeout)  # type: ignore[no-any-return]
    return _fallback_pool().submit(channel.unary, method, request, timeout)


def unary_then(
    channel: Channel,
    method: str,
    request: bytes,
    on_done: Callable[[bytes | FlameError], None],
    timeout: Timeout = DEFAULT_TIMEOUT,
    *,
    answers: Hashable | None = None,
) -> Callable[[], None]:
    """``channel.unary_then`` when the channel has it
    (:class:`~flamepy_core.contracts.transport.CallbackChannel`); otherwise :func:`unary_async`'s future,
    whose outcome goes to ``on_done`` once ``arm()`` was called. Either way: send now, return ``arm``, and
    call ``on_done(response)`` or ``on_done(error)`` (a :class:`FlameError`) exactly once, never before ``arm()``
    (which runs it itself when the outcome came first). An error before the request went out comes
    through ``on_done`` too, once armed. ``answers``: as :func:`unary_async`'s (such a call takes the
    future's way)."""
    native = getattr(channel, "unary_then", None)
    scope = None if answers is None else _waiting.scope
    if native is not None and (scope is None or scope.key != answers):
        try:
            arm: Callable[[], None] = native(method, request, on_done, timeout)
        except FlameError as exc:
            return partial(on_done, exc)
        return arm
    try:
        future = unary_async(channel, method, request, timeout, answers=answers)
    except FlameError as exc:  # (a channel's own unary_async that raises rather than fail its future)
        return partial(on_done, exc)

    def deliver(done: Future[bytes]) -> None:
        error = done.exception()
        if error is None:
            on_done(done.result())
        else:
            on_done(error if isinstance(error, FlameError) else _not_flame(method, error))

    return partial(future.add_done_callback, deliver)


def _not_flame(method: str, error: BaseException) -> FlameError:
    """An error below a channel's contract (which raises FlameErrors only), as the one a caller gets."""
    return FlameError(
        FlameErrorCode.INTERNAL,
        f"calling {method} failed: {error!r} (the channel broke its contract, which fails a call with a "
        "FlameError: report it to the transport's authors)",
    )


def send_parts(responder: Responder, parts: Sequence[ReplyPart]) -> bool:
    """``responder.send_parts(parts)`` when the responder has it
    (:class:`~flamepy_core.contracts.transport.PartsResponder`: the parts sent as they are, none copied into
    one message); otherwise ``responder.send`` of the parts joined. Returns what that returned."""
    native = getattr(responder, "send_parts", None)
    if native is not None:
        return bool(native(parts))
    return responder.send(parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts))


_R = TypeVar("_R")


def unary_read(
    channel: Channel,
    method: str,
    request: Sequence[bytes | memoryview],
    read: Callable[[memoryview], _R],
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> _R:
    """``channel.unary_read`` when the channel has it (:class:`~flamepy_core.contracts.transport.ReadingChannel`):
    the request sent as its parts, the response read by ``read`` where it arrived; otherwise the parts joined
    (one part as it is) for ``channel.unary``, and ``read`` run on its answer. Either way ``read`` gets a
    buffer valid only while it runs, and copies what it keeps."""
    native = getattr(channel, "unary_read", None)
    if native is not None:
        return native(method, request, read, timeout)  # type: ignore[no-any-return]
    data = request[0] if len(request) == 1 else b"".join(request)
    return read(memoryview(channel.unary(method, bytes(data), timeout)))


def stream_async(
    channel: Channel,
    method: str,
    request: bytes,
    on_item: StreamItemFn,
    on_end: StreamEndFn,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """``channel.stream_async`` when the channel has it; otherwise a thread that reads ``channel.stream``.

    Either way ``on_item`` gets each response in order, then ``on_end`` gets None or the
    :class:`FlameError` that ended the stream, exactly once (see
    :meth:`~flamepy_core.contracts.transport.AsyncStreamChannel.stream_async`). The fallback costs one
    thread per open stream, for as long as it is open: a thread of its own rather than one of a bounded
    pool, since a stream may stay open for as long as its server takes (a batch of tasks whose first runs
    for hours) and streams queued behind it must not wait for it.
    """
    native = getattr(channel, "stream_async", None)
    if native is not None:
        native(method, request, on_item, on_end, timeout)
        return
    thread = threading.Thread(
        target=_read_stream,
        args=(channel, method, request, on_item, on_end, timeout),
        name="flamepy-stream-reader",
        daemon=True,
    )
    thread.start()


def _read_stream(
    channel: Channel, method: str, request: bytes, on_item: StreamItemFn, on_end: StreamEndFn, timeout: Timeout
) -> None:
    """Read one stream to its end on this thread, handing each response and then its end to the callbacks."""
    error: FlameError | None = None
    try:
        responses = channel.stream(method, request, timeout)
        try:
            for response in responses:
                on_item(response)
        finally:
            close = getattr(responses, "close", None)
            if close is not None:
                close()  # a callback that raised leaves the stream unread: cancel it, not leave it open
    except FlameError as exc:
        error = exc
    except Exception as exc:  # a callback's bug (or the transport's): the stream ends with it, said once
        logging.getLogger(__name__).exception("reading the stream of %s failed", method)
        error = error_from_handler(method, exc)
    on_end(error)


class Deadlines:
    """One daemon thread that runs a callback when its deadline passes; for futures nobody waits on.

    ``add(deadline, callback)`` (``deadline`` on the ``time.monotonic()`` clock) returns at once; the
    callback runs on the timer thread, so it must be quick. The thread starts on first use and ends with
    :meth:`close`.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, deadline: float, callback: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, (deadline, next(self._ids), callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic()))
                if self._closed:
                    return
                _deadline, _id, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:  # a callback's bug must not stop the other deadlines
                logging.getLogger(__name__).exception("a deadline callback failed")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
