"""What a server's worker threads do: run one handler, turn its outcome into reply frames; and the
responders of deferred calls and the writers of deferred streams, which need no worker at all.

Workers never touch a socket. They hand frames to the server's I/O thread (:meth:`Replies.post`) and end
every call exactly once (:meth:`Replies.finish`), with a final message or silently when nobody waits any
more (the caller cancelled, its deadline passed, or the server already answered it while stopping).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import DeferredFn, DeferredStreamFn, StreamFn, UnaryFn
from flamepy_core.transport_kit import check_size, error_from_handler
from flamepy_transports.zmq import framing

CREDIT_POLL = 0.25
"""A producer waiting for stream credit re-checks its call's deadline this often (seconds)."""


class ServerContext:
    """The :class:`CallContext` a handler gets: the caller's deadline and a cancel flag, no locks."""

    __slots__ = ("_cancelled", "_method", "deadline")

    def __init__(self, method: str, timeout: float | None) -> None:
        self._method = method
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._cancelled = False

    @property
    def method(self) -> str:
        return self._method

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def is_active(self) -> bool:
        if self._cancelled:
            return False
        return self.deadline is None or time.monotonic() < self.deadline

    def cancel(self) -> None:
        self._cancelled = True


class StreamFlow:
    """Credit-based flow control of one server stream: the window the caller has left open."""

    def __init__(self, items: int, nbytes: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._items = items
        self._bytes = nbytes
        self._closed = False

    def grant(self, items: int, nbytes: int) -> None:
        with self._cond:
            self._items += items
            self._bytes += nbytes
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def acquire(self, size: int, ctx: ServerContext) -> bool:
        """Take credit for one item of ``size`` bytes; False when the call ended while waiting."""
        with self._cond:
            while not (self._items > 0 and self._bytes > 0):
                if self._closed or not ctx.is_active():
                    return False
                remaining = ctx.time_remaining()
                self._cond.wait(CREDIT_POLL if remaining is None else min(CREDIT_POLL, remaining))
            if self._closed or not ctx.is_active():
                return False
            self._items -= 1
            self._bytes -= size + framing.ITEM_OVERHEAD
            return True

    def try_acquire(self, size: int) -> bool:
        """Take credit for one item of ``size`` bytes if the window has it now (never waits)."""
        with self._cond:
            if self._closed or not (self._items > 0 and self._bytes > 0):
                return False
            self._items -= 1
            self._bytes -= size + framing.ITEM_OVERHEAD
            return True


class ServerCall:
    """One call being served: who asked (routing id + correlation id), its context and stream window."""

    __slots__ = ("corr", "ctx", "finished", "flow", "ident", "key", "method", "writer")

    def __init__(self, ident: bytes, corr: int, method: str, timeout: float | None, flow: StreamFlow | None):
        self.writer: DeferredStream | None = None
        """A deferred stream's writer: CREDIT pumps it, CANCEL abandons it."""
        self.ident = ident
        self.corr = framing.pack_corr(corr)
        self.key = (ident, corr)
        self.method = method
        self.ctx = ServerContext(method, timeout)
        self.flow = flow
        self.finished = False

    @property
    def deadline(self) -> float | None:
        return self.ctx.deadline

    def cancel(self) -> None:
        self.ctx.cancel()
        if self.flow is not None:
            self.flow.close()


class Replies(Protocol):
    endpoint: str
    max_message_size: int

    def post(self, call: ServerCall, frames: list[bytes]) -> None:
        """Queue a non-final message (a stream item) for the call's caller."""
        ...

    def finish(self, call: ServerCall, frames: list[bytes] | None) -> bool:
        """End the call (once; later calls are no-ops, returning False), sending ``frames`` if given."""
        ...


def _as_bytes(method: str, value: object, what: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise FlameError(FlameErrorCode.INTERNAL, f"handler for {method} {what} {type(value).__name__}, not bytes")


def run_unary(server: Replies, call: ServerCall, fn: UnaryFn, request: bytes) -> None:
    if not call.ctx.is_active():
        server.finish(call, None)  # the deadline passed while queued, or the caller cancelled
        return
    try:
        data = _as_bytes(call.method, fn(request, call.ctx), "returned")
        if len(data) > server.max_message_size:  # (the test written out: every reply runs it)
            check_size(len(data), server.max_message_size, what=f"response to {call.method}", endpoint=server.endpoint)
    except BaseException as exc:
        server.finish(call, framing.error(call.corr, error_from_handler(call.method, exc)))
    else:
        server.finish(call, framing.reply(framing.Kind.REPLY, call.corr, data))


def run_stream(server: Replies, call: ServerCall, fn: StreamFn, request: bytes) -> None:
    ctx, flow = call.ctx, call.flow
    assert flow is not None
    if not ctx.is_active():
        server.finish(call, None)
        return
    items: Iterator[bytes] | None = None
    try:
        items = iter(fn(request, ctx))
        for item in items:
            data = _as_bytes(call.method, item, "yielded")
            check_size(
                len(data),
                server.max_message_size,
                what=f"stream item of {call.method}",
                endpoint=server.endpoint,
            )
            if not flow.acquire(len(data), ctx):
                server.finish(call, None)  # cancelled, past its deadline, or the server is stopping
                return
            server.post(call, framing.reply(framing.Kind.ITEM, call.corr, data))
    except BaseException as exc:
        server.finish(call, framing.error(call.corr, error_from_handler(call.method, exc)))
    else:
        server.finish(call, framing.reply(framing.Kind.END, call.corr))
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


class DeferredReply:
    """The :class:`~flamepy_core.contracts.transport.Responder` of one deferred call: completes it once,
    from any thread, and drops a reply whose caller has gone or whose deadline passed."""

    __slots__ = ("_call", "_server")

    def __init__(self, server: Replies, call: ServerCall) -> None:
        self._server = server
        self._call = call

    def send(self, response: bytes) -> bool:
        call = self._call
        if call.finished or not call.ctx.is_active():
            self._server.finish(call, None)
            return False
        try:
            data = _as_bytes(call.method, response, "completed with")
            if len(data) > self._server.max_message_size:  # (the test written out: every reply runs it)
                what = f"response to {call.method}"
                check_size(len(data), self._server.max_message_size, what=what, endpoint=self._server.endpoint)
        except FlameError as exc:
            return self.fail(exc)
        return self._server.finish(call, framing.reply(framing.Kind.REPLY, call.corr, data))

    def fail(self, error: BaseException) -> bool:
        call = self._call
        if call.finished or not call.ctx.is_active():
            self._server.finish(call, None)
            return False
        return self._server.finish(call, framing.error(call.corr, error_from_handler(call.method, error)))


def run_deferred(server: Replies, call: ServerCall, fn: DeferredFn, request: bytes) -> None:
    """Start a deferred handler (on the server's I/O thread); a raise before it completed fails the call."""
    if not call.ctx.is_active():
        server.finish(call, None)
        return
    reply = DeferredReply(server, call)
    try:
        fn(request, call.ctx, reply)
    except BaseException as exc:
        reply.fail(exc)


class DeferredStream:
    """The :class:`~flamepy_core.contracts.transport.StreamWriter` of one deferred stream.

    ``send`` never waits: a response is posted to the I/O thread at once while the caller's window has
    credit, else it waits in ``_pending`` (in order, in memory) for the ``CREDIT`` that the I/O thread
    turns into :meth:`pump`. ``close``/``fail`` end the call after what is pending. One lock orders what
    producers and the I/O thread do, so responses leave in the order they were sent. Once the call is
    over (cancelled, past its deadline, its peer gone, the server stopping) every method returns False
    and what was pending is dropped.
    """

    __slots__ = ("_call", "_final", "_lock", "_pending", "_server", "_stopped")

    def __init__(self, server: Replies, call: ServerCall) -> None:
        self._server = server
        self._call = call
        self._lock = threading.Lock()
        self._pending: deque[bytes] = deque()
        self._final: list[bytes] | None = None
        """The END or ERROR message once ``close``/``fail`` was called, sent after ``_pending``."""
        self._stopped = False
        """No more sends: ``close``/``fail`` was called, or the call is over."""

    def send(self, response: bytes) -> bool:
        call = self._call
        try:
            data = _as_bytes(call.method, response, "sent")
            check_size(
                len(data),
                self._server.max_message_size,
                what=f"stream response to {call.method}",
                endpoint=self._server.endpoint,
            )
        except FlameError as exc:
            self.fail(exc)
            return False  # not sent, and the stream is over: the producer should stop
        with self._lock:
            if not self._live():
                return False
            self._pending.append(data)
            self._flush()
        return True

    def close(self) -> bool:
        return self._end(framing.reply(framing.Kind.END, self._call.corr))

    def fail(self, error: BaseException) -> bool:
        call = self._call
        return self._end(framing.error(call.corr, error_from_handler(call.method, error)))

    def pump(self) -> None:
        """Send what the window allows now (the I/O thread, after a CREDIT)."""
        with self._lock:
            if self._live() or self._final is not None:
                self._flush()

    def abandon(self) -> None:
        """The caller has gone (CANCEL, its peer unreachable): end the call without a word."""
        with self._lock:
            self._drop()

    def _end(self, final: list[bytes]) -> bool:
        with self._lock:
            if not self._live():
                return False
            self._stopped = True
            self._final = final
            self._flush()
        return True

    def _live(self) -> bool:
        # With the lock held: whether the stream still takes responses; a call whose caller left ends here.
        if self._stopped:
            if self._final is not None and not self._call.ctx.is_active():
                self._drop()  # closed, but its caller left before the rest went out
            return False
        call = self._call
        if call.finished or not call.ctx.is_active():
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        self._stopped = True
        self._pending.clear()
        self._final = None
        self._server.finish(self._call, None)  # a no-op when the call was already ended (server stopping)

    def _flush(self) -> None:
        # With the lock held.
        call, pending, flow = self._call, self._pending, self._call.flow
        assert flow is not None
        while pending and flow.try_acquire(len(pending[0])):
            self._server.post(call, framing.reply(framing.Kind.ITEM, call.corr, pending.popleft()))
        if not pending and self._final is not None:
            final, self._final = self._final, None
            self._server.finish(call, final)


def run_deferred_stream(server: Replies, call: ServerCall, fn: DeferredStreamFn, request: bytes) -> None:
    """Start a deferred stream (on the server's I/O thread); a raise before it ended fails the stream."""
    if not call.ctx.is_active():
        server.finish(call, None)
        return
    writer = call.writer = DeferredStream(server, call)
    try:
        fn(request, call.ctx, writer)
    except BaseException as exc:
        writer.fail(exc)
