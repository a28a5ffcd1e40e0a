"""The server half of the framed base: an accept thread, a reader thread per link, handlers on a pool.

A reader thread only routes: it answers what it can at once (an unknown method, a request too large, a
server shutting down), runs a :class:`DeferredHandler`'s or :class:`DeferredStreamHandler`'s ``fn``
itself (it must return promptly; the reply, or each response of the stream, goes out when its responder
or writer is fed, from any thread, and holds no thread meanwhile), and hands unary and stream handlers to
the pool, so a slow handler never holds up the other calls on its link. Each call's context is cancelled
when the client sends ``CANCEL``, its deadline passes or its link drops: ``ctx.is_active()`` turns
false, a stream waiting for window stops, and a deferred reply or response sent after that is dropped
(``send`` says False). A stream sends only as much as the caller's window allows: a stream handler's
thread waits for window; a deferred stream's writer keeps what does not fit, in order, in memory, and the
reader thread releases it as the caller's ``CREDIT`` returns. What a deferred stream releases is written
by one sender thread per link (started when the first such response is posted), so a producer never
blocks on a socket whose client reads slowly or not at all: threads grow with links, not with streams.
Every other answer goes the same way when the link can send without waiting (``send_nowait``, see
:class:`~flamepy_core.kit.links.Link`): the thread that completes it writes what the socket takes at once,
and the sender thread the rest, so a frozen client with a 16 MiB reply holds no thread but its own sender.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    DeferredHandler,
    DeferredStreamHandler,
    Handler,
    ReplyPart,
    StreamHandler,
    UnaryHandler,
)
from flamepy_core.kit import frames
from flamepy_core.kit.basics import (
    SimpleCallContext,
    check_size,
    error_from_handler,
    request_borrowed,
    unavailable,
    unimplemented,
)
from flamepy_core.kit.framed_client import ITEM_OVERHEAD
from flamepy_core.kit.frames import Frame, Kind
from flamepy_core.kit.lease import LinkLease, Waker, lendable
from flamepy_core.kit.links import Link, Listener, NowaitLink, Oversized, sends_nowait

STOP_WAIT = 5.0
"""Seconds ``stop`` waits, after the grace, for reader threads to notice their links were closed."""
WINDOW_POLL = 0.25
"""A stream waiting for window re-checks that its caller is still there this often (seconds)."""


class _Window:
    """A stream's flow control: what the caller's window still allows."""

    def __init__(self, items: int, kib: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._items = items or 1
        self._bytes = (kib or 1) * 1024

    def grant(self, items: int, kib: int) -> None:
        with self._cond:
            self._items += items
            self._bytes += kib * 1024
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def take(self, size: int, ctx: SimpleCallContext) -> bool:
        """Room for one item of ``size`` bytes; False once the call ended while waiting."""
        with self._cond:
            while not (self._items > 0 and self._bytes > 0):
                if not ctx.is_active():
                    return False
                remaining = ctx.time_remaining()
                self._cond.wait(WINDOW_POLL if remaining is None else min(WINDOW_POLL, remaining))
            if not ctx.is_active():
                return False
            self._items -= 1
            self._bytes -= size + ITEM_OVERHEAD
            return True

    def try_take(self, size: int) -> bool:
        """Room for one item of ``size`` bytes now, without waiting (a deferred stream's writer)."""
        with self._cond:
            if not (self._items > 0 and self._bytes > 0):
                return False
            self._items -= 1
            self._bytes -= size + ITEM_OVERHEAD
            return True


class _Served:
    """One call being served: where its answers go, and whether they still may."""

    __slots__ = ("call_id", "ctx", "deferred", "ended", "method", "peer", "window", "writer")

    def __init__(self, peer: _Peer, call_id: int, method: str, timeout: float | None, window: _Window | None):
        self.deferred = False
        self.writer: _Writer | None = None
        self.peer = peer
        self.call_id = call_id
        self.method = method
        self.ctx = SimpleCallContext(method, timeout)
        self.window = window
        self.ended = False

    def cancel(self) -> None:
        self.ctx.cancel()
        if self.window is not None:
            self.window.wake()
        if self.writer is not None:
            self.writer.abandon()  # its caller has gone: drop what waits for window, end the call now

    def grant(self, items: int, kib: int) -> None:
        """The caller's ``CREDIT``: more window, and a deferred stream sends what waited for it."""
        if self.window is not None:
            self.window.grant(items, kib)
        if self.writer is not None:
            self.writer.pump()

    def end(self, parts: list[bytes | memoryview] | None, *, posted: bool = False) -> bool:
        """End the call (once), sending ``parts`` when its caller still waits; True when this ended it.

        ``posted``: through the peer's sender thread, behind the responses a deferred stream posted there.
        """
        with self.peer.lock:
            if self.ended:
                return False
            self.ended = True
            self.peer.calls.pop(self.call_id, None)
        if parts is not None and self.ctx.is_active():
            if posted:
                self.peer.post(parts)
            else:
                self.peer.send(parts)
        self.peer.server.finished()
        return True


class _Responder:
    """Completes a deferred call exactly once, from any thread; dropped once its caller has gone."""

    __slots__ = ("_call",)

    def __init__(self, call: _Served) -> None:
        self._call = call

    def _late(self) -> bool:
        """The call ended, or its caller has gone or its deadline passed: whatever completes it is dropped."""
        call = self._call
        if call.ended or not call.ctx.is_active():
            call.end(None)
            return True
        return False

    def send(self, response: bytes) -> bool:
        if self._late():
            return False
        call = self._call
        try:
            data = _checked(call.method, response, call.peer.server.limit, call.peer.server.endpoint)
        except FlameError as exc:
            return self.fail(exc)
        return call.end(frames.encode(Kind.REPLY, call.call_id, data))

    def send_parts(self, parts: Sequence[ReplyPart]) -> bool:
        """:meth:`send` of the parts' concatenation, none copied: the link writes them as one message (and a
        link that keeps what the socket did not take at once keeps views of them, the parts being read-only)."""
        if self._late():
            return False
        call = self._call
        held: list[bytes | memoryview] = []
        for part in parts:
            if type(part) is not bytes:
                view = memoryview(part)
                part = view if view.readonly else bytes(view)  # a writable buffer may change: copied, as send does
            held.append(part)
        parts = held
        try:
            check_size(
                sum(map(len, parts)),
                call.peer.server.limit,
                what=f"response to {call.method}",
                endpoint=call.peer.server.endpoint,
            )
        except FlameError as exc:
            return self.fail(exc)
        return call.end(frames.encode(Kind.REPLY, call.call_id) + [part for part in parts if part])

    def fail(self, error: BaseException) -> bool:
        if self._late():
            return False
        call = self._call
        return call.end(frames.error(call.call_id, error_from_handler(call.method, error)))


class _Writer:
    """The :class:`~flamepy_core.contracts.transport.StreamWriter` of one deferred stream.

    ``send`` never waits: a response is posted to the link's sender thread at once while the caller's
    window allows (a socket write may block on a slow or frozen client: the producer never does), else it
    waits in ``_pending`` (in order, in memory) for the ``CREDIT`` that the link's reader thread turns into
    :meth:`pump`. ``close``/``fail`` end the stream after what is pending. One lock orders everything a
    producer and the reader thread do, so responses leave in the order they were sent.
    """

    __slots__ = ("_call", "_final", "_lock", "_pending", "_stopped")

    def __init__(self, call: _Served) -> None:
        self._call = call
        self._lock = threading.Lock()
        self._pending: deque[bytes] = deque()
        self._final: list[bytes | memoryview] | None = None
        """The END or ERROR frame, once ``close``/``fail`` was called; sent after ``_pending``."""
        self._stopped = False
        """No more sends: ``close``/``fail`` was called, or the call ended."""

    def _live(self) -> bool:
        """Whether the stream still takes responses (called with the lock held); ends a call whose caller left."""
        call = self._call
        if self._stopped:
            return False
        if call.ended or not call.ctx.is_active():
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        self._stopped = True
        self._pending.clear()
        self._final = None
        self._call.end(None)  # late: its caller has gone or its deadline passed; nothing more goes out

    def send(self, response: bytes) -> bool:
        call = self._call
        server = call.peer.server
        try:
            data = _checked(call.method, response, server.limit, server.endpoint, what="stream response")
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
        return self._end(frames.encode(Kind.END, self._call.call_id))

    def fail(self, error: BaseException) -> bool:
        call = self._call
        return self._end(frames.error(call.call_id, error_from_handler(call.method, error)))

    def _end(self, final: list[bytes | memoryview]) -> bool:
        with self._lock:
            if not self._live():
                return False
            self._stopped = True
            self._final = final
            self._flush()
        return True

    def pump(self) -> None:
        """Send what the window allows now (the reader thread, after a ``CREDIT``)."""
        with self._lock:
            call = self._call
            if call.ended:
                return
            if not call.ctx.is_active():
                self._drop()
                return
            self._flush()

    def abandon(self) -> None:
        """The call was cancelled (its caller left, or the server stops): later sends return False."""
        with self._lock:
            self._drop()

    def _flush(self) -> None:
        # With the lock held.
        call, window, pending = self._call, self._call.window, self._pending
        assert window is not None
        while pending and window.try_take(len(pending[0])):
            call.peer.post(frames.encode(Kind.ITEM, call.call_id, pending.popleft()))
        if not pending and self._final is not None:
            final, self._final = self._final, None
            call.end(final, posted=True)


def _checked(method: str, value: object, limit: int, endpoint: str, what: str = "response") -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise FlameError(FlameErrorCode.INTERNAL, f"handler for {method} returned {type(value).__name__}, not bytes")
    if len(value) > limit:  # (looked at first: the error's text is made only for the error)
        check_size(len(value), limit, what=f"{what} to {method}", endpoint=endpoint)
    return value if type(value) is bytes else bytes(value)


def _always() -> bool:
    return True


class _Inline(NamedTuple):
    """How a host runs the calls of one method itself (:meth:`FramedServer.serve_inline`)."""

    fn: Callable[[bytes], bytes]
    ready: Callable[[], bool]
    unanswered: tuple[type[BaseException], ...]


class _Peer:
    """One client link: its reader thread, the calls it has in flight, and (started on first use) a sender
    thread that writes, in order, what deferred streams post and what the socket did not take at once.

    An answer that does not go at once waits in memory, with every later one to this client, until the
    sender thread has written it. Nothing bounds that but the answers themselves: they are what the
    handlers produced for this client (a stream's by its window), held until it reads them or leaves.
    """

    def __init__(self, server: FramedServer, link: Link) -> None:
        self.server = server
        self.link = link
        self.calls: dict[int, _Served] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, name="flamepy-kit-peer", daemon=True)
        self._posted: deque[list[bytes | memoryview] | None] = deque()
        """What the sender thread writes next, in order; None: the rest a ``send_nowait`` kept (``flush``)."""
        self._post_cond = threading.Condition(threading.Lock())
        self._sender: threading.Thread | None = None
        self._gone = False
        self._backlog = False
        """Something was posted and is not written yet: later answers queue behind it (read without the lock)."""
        self._nowait: NowaitLink | None = link if sends_nowait(link) else None
        """The link, when it can send without waiting (``send_nowait``, ``flush``): None, and every send blocks."""
        self.lease: LinkLease | None = None
        """Set when the server is hosted (see :meth:`FramedServer.host_wait`): the link may be lent."""
        if server.hosted:
            self.give_lease()

    def give_lease(self) -> LinkLease | None:
        """The link's lease, made now if the link can be lent (its reader takes it up at its next turn);
        None when it cannot, or has just closed (its descriptor is gone: its reader ends it)."""
        if self.lease is None and lendable(self.link):
            with contextlib.suppress(OSError, ValueError):
                self.lease = LinkLease(self.link, self.handle, self.server.host_waker)
        return self.lease

    def send(self, parts: list[bytes | memoryview]) -> None:
        """Send one answer without waiting for the client (a link without ``send_nowait``: blocking).

        On an idle link what the socket takes goes at once, from this thread, in one system call: a small
        answer whole. The rest, and every answer sent while something waits for the sender thread, is the
        sender thread's. A hosted server's threads finish their writes themselves instead: its client is
        the one process its host serves, and waiting for it holds up nobody else (no hand-off then)."""
        nowait = self._nowait
        try:
            if nowait is None:
                self.link.send(parts)
                return
            if not self._backlog:
                sent = nowait.send_nowait(parts)
                if sent:
                    return
                if not self.server.hosted:
                    self.post(parts if sent is False else None)
                elif sent is None:
                    nowait.flush()
                else:
                    self._write(parts)
                return
        except OSError:
            return  # the client has gone: its reader cleans up
        self.post(parts)

    def _write(self, parts: list[bytes | memoryview]) -> None:
        """Write ``parts`` whole, waiting for the client as needed (the sender thread; a hosted server's)."""
        nowait = self._nowait
        if nowait is None:
            self.link.send(parts)
            return
        while (sent := nowait.send_nowait(parts)) is False:
            nowait.flush()  # the rest of an earlier answer goes first
        if sent is None:
            nowait.flush()

    def post(self, parts: list[bytes | memoryview] | None) -> None:
        """Queue ``parts`` for the sender thread (started on first use): never blocks the caller. None: the
        link's ``flush``, for the rest of an answer that ``send_nowait`` did not send whole."""
        with self._post_cond:
            if self._gone:
                return
            self._posted.append(parts)
            self._backlog = True
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_posted, name="flamepy-kit-sender", daemon=True)
                self._sender.start()
            self._post_cond.notify()

    def _send_posted(self) -> None:
        while True:
            with self._post_cond:
                while not self._posted and not self._gone:
                    self._backlog = False  # all written: the next answer may go at once again
                    self._post_cond.wait()
                if self._gone:
                    return
                parts = self._posted.popleft()
            with contextlib.suppress(OSError):  # the client has gone: its reader cleans up
                if parts is None:
                    assert self._nowait is not None  # only a link that keeps a rest has it flushed
                    self._nowait.flush()
                else:
                    self._write(parts)

    def _stop_sending(self) -> None:
        with self._post_cond:
            self._gone = True
            self._posted.clear()
            self._post_cond.notify()

    def handle(self, message: bytes | bytearray | memoryview | Oversized) -> bool:
        """Handle one message of the link (on whichever thread read it); True when a deferred handler ran.

        Raises ``frames.ProtocolError`` for what no client sends (the link then ends)."""
        if isinstance(message, Oversized):
            self._oversized(message)
            return False
        return self._handle_frame(frames.decode(message))

    def _handle_frame(self, frame: Frame) -> bool:
        if frame.kind in frames.REQUESTS:
            return self.server._admit(self, frame)
        if frame.kind is Kind.CANCEL or frame.kind is Kind.CREDIT:
            with self.lock:
                call = self.calls.get(frame.call_id)
            if call is not None and frame.kind is Kind.CANCEL:
                call.cancel()
            elif call is not None:
                call.grant(frame.a, frame.b)
            return False
        raise frames.ProtocolError("an answer from a client: not this protocol")

    def handle_hosted(self, message: bytes | bytearray | memoryview | Oversized) -> bool | Callable[[], None]:
        """:meth:`handle` for the host thread (:meth:`LinkLease.host`), the message decoded once: what runs a
        call the server serves inline (:meth:`FramedServer.serve_inline`) and sends its answer, for the host
        to run once it has let go of the link; otherwise the message handled here, and what :meth:`handle`
        returns (a call with a deadline, too large, refused as the server stops...: as it always is)."""
        if isinstance(message, Oversized):
            self._oversized(message)
            return False
        frame = frames.decode(message)
        server = self.server
        inline = server._inline.get(frame.method) if frame.kind is Kind.UNARY and frame.timeout is None else None
        if inline is None or len(frame.payload) > server.limit or server._stopping or not inline.ready():
            return self._handle_frame(frame)
        call_id, method, request = frame.call_id, frame.method, bytes(frame.payload)

        def run() -> None:
            try:
                reply = _checked(method, inline.fn(request), server.limit, server.endpoint)
            except BaseException as exc:  # the caller's error, never a hang
                if isinstance(exc, inline.unanswered):
                    raise
                self.send(frames.error(call_id, error_from_handler(method, exc)))
                if not isinstance(exc, Exception):
                    raise
                return
            self.send(frames.encode(Kind.REPLY, call_id, reply))

        return run

    def _read(self) -> None:
        server = self.server
        lease: LinkLease | None = None
        try:
            while True:
                lease = self.lease  # (a host may give this link a lease on its first wait: see host_wait)
                # (With a lease: False too when the host read the message, or has the link.) Without one, the
                # link's own wait, in ``poll``: the client's reads of our answers do not wake it (SocketLink).
                admitted = self.handle(self.link.recv()) if lease is None else lease.reader_step()
                if admitted and server.hosted:
                    server.host_waker.signal()  # a host waiting elsewhere runs what this queued
        except (EOFError, OSError, ValueError, frames.ProtocolError):
            pass  # the client went away, spoke another protocol, or stop() closed the link
        finally:
            with self.lock:
                calls = list(self.calls.values())
            for call in calls:
                call.cancel()  # nobody waits for these answers any more
                if call.deferred:
                    call.end(None)  # its responder may come later, or never: it finds the call ended
            self._stop_sending()
            self.link.close()
            self.server._forget(self)
            if lease is not None:
                self.lease = None  # (the lease's handler refers to this peer)
                lease.close()

    def _oversized(self, message: Oversized) -> None:
        """A request over this server's limit, read and dropped: its caller gets MESSAGE_TOO_LARGE."""
        found = frames.peek(message.head)
        if found is None:
            raise frames.ProtocolError("an oversized message that is not a frame")
        kind, call_id, method = found
        if kind in frames.REQUESTS:
            size = message.size - frames.HEADER.size - len(method.encode())
            server = self.server
            error = FlameError(
                FlameErrorCode.MESSAGE_TOO_LARGE,
                f"request to {method} of {size} bytes exceeds the largest message of {server.limit} bytes allowed "
                f"on {server.endpoint}; send less per call (e.g. put large data in the object cache) or raise "
                f"max_message_size",
            )
            self.send(frames.error(call_id, error))


class FramedServer:
    """A running server over a :class:`Listener`. ``endpoint`` is the bound address, a port 0 resolved."""

    def __init__(self, listener: Listener, handlers: Mapping[str, Handler], limit: int, max_workers: int) -> None:
        for method, handler in handlers.items():
            if not isinstance(handler, (UnaryHandler, StreamHandler, DeferredHandler, DeferredStreamHandler)):
                raise TypeError(
                    f"handler for {method} is a {type(handler).__name__}, not a Unary/Stream/Deferred/"
                    f"DeferredStreamHandler"
                )
        self.limit = limit
        self.endpoint = listener.endpoint
        self._listener = listener
        self._handlers = dict(handlers)
        self._borrowing = frozenset(
            method
            for method, handler in handlers.items()
            if isinstance(handler, DeferredHandler) and request_borrowed(handler.fn)
        )
        """The methods whose deferred handler borrows its request (``kit.borrows_request``)."""
        self._pid = os.getpid()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="flamepy-kit-handler")
        self._peers: set[_Peer] = set()
        self._running = 0
        self._mutex = threading.Lock()
        """Guards the count of running calls, the stopping flag and the links. Taken as it is on every call's
        way in and out and every wait of a host (a ``Condition``'s ``with`` is two Python calls more);
        ``_lock`` is the condition on it, for :meth:`stop` to wait on."""
        self._lock = threading.Condition(self._mutex)
        self._stopping = False
        self._stopped = threading.Event()
        self.hosted = False
        """A thread has called :meth:`host_wait`: links accepted from then on may be lent to it."""
        self._inline: dict[str, _Inline] = {}
        """The unary methods a host runs itself as it reads them (:meth:`serve_inline`)."""
        self.host_waker = Waker()
        """Ends a host's wait: :meth:`wake_host`, a new link, a call a reader thread queued, :meth:`stop`."""
        self._host_alone = select.poll()
        """A host's wait with no link of its own to read: on the waker alone."""
        self._host_alone.register(self.host_waker.fd, select.POLLIN)
        self._acceptor = threading.Thread(target=self._accept, name=f"flamepy-kit-accept {self.endpoint}", daemon=True)
        self._acceptor.start()

    # -- accepting and routing ----------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            link = self._listener.accept()
            if link is None:
                return
            peer = _Peer(self, link)
            with self._lock:
                if self._stopping:
                    link.close()
                    return
                self._peers.add(peer)
            peer.thread.start()
            if self.hosted:
                self.host_waker.signal()  # a host waiting with no link to read looks again

    def _forget(self, peer: _Peer) -> None:
        with self._lock:
            self._peers.discard(peer)

    def finished(self) -> None:
        with self._mutex:
            self._running -= 1
            if self._stopping:  # only :meth:`stop` waits for the count (and sets this first)
                self._lock.notify_all()

    def _refuse(self, peer: _Peer, call_id: int, error: FlameError) -> None:
        peer.send(frames.error(call_id, error))

    def _admit(self, peer: _Peer, frame: Frame) -> bool:
        """Route one request: refuse it at once, run a deferred handler here, or hand it to the pool. True when
        a deferred handler ran: what it queued may be work for a host thread (see :meth:`host_wait`)."""
        method, call_id = frame.method, frame.call_id
        handler = self._handlers.get(method)
        streaming = frame.kind is Kind.STREAM
        if handler is None:
            self._refuse(peer, call_id, unimplemented(method, self.endpoint))
            return False
        if isinstance(handler, (StreamHandler, DeferredStreamHandler)) != streaming:
            shape = "a unary" if streaming else "a streaming"
            self._refuse(
                peer,
                call_id,
                FlameError(FlameErrorCode.UNIMPLEMENTED, f"{method} on {self.endpoint} is {shape} method"),
            )
            return False
        if len(frame.payload) > self.limit:  # (looked at first: the error's text is made only for the error)
            try:
                check_size(len(frame.payload), self.limit, what=f"request to {method}", endpoint=self.endpoint)
            except FlameError as exc:
                self._refuse(peer, call_id, exc)
                return False
        with self._mutex:
            if self._stopping:
                self._refuse(peer, call_id, unavailable(self.endpoint, "the server is shutting down"))
                return False
            self._running += 1
        window = _Window(frame.a, frame.b) if streaming else None
        call = _Served(peer, call_id, method, frame.timeout, window)
        with peer.lock:
            peer.calls[call_id] = call
        if isinstance(handler, DeferredHandler):
            call.deferred = True
            responder = _Responder(call)
            # A function that borrows its request reads it where the link read it: it returns before the
            # link reads its next message (this thread reads it), and keeps nothing of it.
            fn: Callable[..., None] = handler.fn  # (given bytes, or a view when it borrows)
            request = frame.payload if method in self._borrowing else bytes(frame.payload)
            try:
                fn(request, call.ctx, responder)
            except BaseException as exc:  # raised before completing the reply: the call fails with it
                responder.fail(exc)
            return True
        request = bytes(frame.payload)
        if isinstance(handler, DeferredStreamHandler):
            call.deferred = True
            writer = call.writer = _Writer(call)
            try:
                handler.fn(request, call.ctx, writer)
            except BaseException as exc:  # raised before the stream ended: it fails with that error
                writer.fail(exc)
            return True
        try:
            if isinstance(handler, UnaryHandler):
                self._pool.submit(self._run_unary, call, handler, request)
            else:
                self._pool.submit(self._run_stream, call, handler, request)
        except RuntimeError:  # the pool was shut down between the check and the submit
            call.end(frames.error(call_id, unavailable(self.endpoint, "the server is shutting down")))
        return False

    # -- running handlers ---------------------------------------------------------------------------

    def _run_unary(self, call: _Served, handler: UnaryHandler, request: bytes) -> None:
        if not call.ctx.is_active():
            call.end(None)  # the deadline passed while queued, or the caller cancelled
            return
        try:
            data = _checked(call.method, handler.fn(request, call.ctx), self.limit, self.endpoint)
        except BaseException as exc:  # whatever a handler raises becomes the caller's error, never a hang
            call.end(frames.error(call.call_id, error_from_handler(call.method, exc)))
        else:
            call.end(frames.encode(Kind.REPLY, call.call_id, data))

    def _run_stream(self, call: _Served, handler: StreamHandler, request: bytes) -> None:
        window = call.window
        assert window is not None
        items: Iterator[bytes] | None = None
        try:
            if not call.ctx.is_active():
                call.end(None)
                return
            items = iter(handler.fn(request, call.ctx))
            for item in items:
                data = _checked(call.method, item, self.limit, self.endpoint)
                if not window.take(len(data), call.ctx):
                    call.end(None)  # cancelled, past its deadline, or the caller has gone
                    return
                call.peer.send(frames.encode(Kind.ITEM, call.call_id, data))
            call.end(frames.encode(Kind.END, call.call_id))
        except BaseException as exc:
            call.end(frames.error(call.call_id, error_from_handler(call.method, exc)))
        finally:
            close = getattr(items, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()

    # -- a host thread ------------------------------------------------------------------------------

    def host_wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for calls on this thread, reading the link itself (see
        :mod:`~flamepy_core.kit.lease`): a deferred handler then runs on this thread, and whatever it queues
        for this thread is there to run when this returns. One thread only (the host) calls it.

        Returns after a wait that ran a deferred handler, after :meth:`wake_host` (or a link accepted, or a
        call that a reader thread queued meanwhile), or at the timeout. A link is lent only while it is the
        only one (a service process has one: its server's); with none, or several, this waits for the
        wake-up instead. False when this server cannot host (stopping, another process): the caller then
        waits for its calls as before.
        """
        if self._stopping or os.getpid() != self._pid:
            return False
        self.hosted = True
        with self._mutex:
            peers = list(self._peers)
        if len(peers) == 1:
            lease = peers[0].give_lease()
            if lease is not None and lease.joined:
                lease.host(time.monotonic() + timeout, peers[0].handle_hosted if self._inline else None)
                return True
        for peer in peers:
            # A link lent while it was the only one is read by its reader again: a wait of the host that ended
            # at its deadline did not wake that reader (the host reads on at once, as a rule), and it may be
            # napping until the host leaves a wait it will not start now.
            if peer.lease is not None:
                peer.lease.give_back()
        if self._host_alone.poll(int(timeout * 1000) + 1):
            self.host_waker.drain()
        return True

    def serve_inline(
        self,
        method: str,
        fn: Callable[[bytes], bytes],
        ready: Callable[[], bool] = _always,
        unanswered: tuple[type[BaseException], ...] = (),
    ) -> None:
        """Have a host thread (:meth:`host_wait`) run ``fn(request) -> reply`` itself for a unary call of
        ``method`` without a deadline that it reads, and send the reply (or the error ``fn`` raised), instead
        of admitting the call for the method's handler to run. Calls of ``method`` that the link's reader
        thread reads (the host away), that carry a deadline, or that come while ``ready()`` is false (the
        host has other calls to run first, queued by the reader meanwhile: they keep their order) go to the
        handler as before (see :meth:`_Peer.handle_hosted`).

        Why: a service process runs every task on its main thread, which hosts its one link. Admitted, a task
        went through the call's bookkeeping, the handler, the serving thread's queue and back to this wait:
        about twenty Python calls of a warm invoke (docs/benchmarks.md). ``fn`` runs on the host thread,
        which must be the only thread that runs the calls of ``method``. What ``fn`` raises is the caller's
        error, as a handler's is; one that is not an ``Exception`` (``SystemExit``...) then leaves
        ``host_wait``, and one of the types ``unanswered`` (a signal's that stops the call) leaves it at once,
        the call unanswered."""
        self._inline[method] = _Inline(fn, ready, unanswered)

    def wake_host(self) -> None:
        """End a host thread's :meth:`host_wait` now (from another thread, or a signal handler)."""
        self.host_waker.signal()

    # -- stopping -----------------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let running ones finish for up to ``grace`` s, then drop every link.

        Idempotent. Returns once the endpoint can be bound again. A handler that ignores its context may
        keep running in its thread, but its caller already has ``UNAVAILABLE``.
        """
        if os.getpid() != self._pid:
            raise FlameError(
                FlameErrorCode.INVALID_STATE,
                f"the server on {self.endpoint} was started by process {self._pid} and cannot be stopped from "
                f"process {os.getpid()} (a forked child); start a server in the child instead",
            )
        with self._lock:
            first, self._stopping = not self._stopping, True
        self.host_waker.signal()  # a host's wait ends: it waits for its calls as before
        if not first:
            self._stopped.wait((grace or 0.0) + STOP_WAIT)
            return
        self._listener.close()
        self._acceptor.join(STOP_WAIT)
        deadline = time.monotonic() + (grace or 0.0)
        with self._lock:
            self._lock.wait_for(lambda: self._running <= 0, timeout=max(0.0, deadline - time.monotonic()))
            peers = list(self._peers)
        for peer in peers:
            peer.link.close()  # its reader cancels the calls and exits; callers get UNAVAILABLE
        for peer in peers:
            peer.thread.join(STOP_WAIT)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()

    def __repr__(self) -> str:
        return f"FramedServer({self.endpoint!r})"
