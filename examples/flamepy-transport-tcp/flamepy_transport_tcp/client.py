"""The client side: a channel owns one TCP connection and multiplexes every concurrent call over it.

Each call gets a call id and an inbox; the connection's reader thread drops each arriving frame into the
inbox of its call, and the calling thread waits on its inbox with its own deadline. So a missed deadline
is noticed by the caller's clock (then a CANCEL frame tells the server), and a lost connection wakes
every waiter at once with UNAVAILABLE instead of leaving them to their deadlines.

A dead connection is replaced on the next call, so a server restarted on the same endpoint is found
again. After ``fork()`` a child never uses its parent's connection: it opens its own (see
:func:`_after_fork_in_child`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import TypeAlias

from flamepy_core.contracts.errors import FlameError
from flamepy_core.contracts.transport import DEFAULT_TIMEOUT, Timeout
from flamepy_core.transport_kit import check_size, deadline_exceeded, resolve_timeout, unavailable

from flamepy_transport_tcp.address import Address, dial
from flamepy_transport_tcp.frames import PREAMBLE, Frame, FrameSocket, Kind, PeerClosed, error_of

Inbox: TypeAlias = "queue.SimpleQueue[Frame | FlameError]"
"""Where the reader thread puts a call's frames, or the error that ended its connection."""


class _Connection:
    """One TCP connection of a channel: the socket, its reader thread, and the calls waiting on it."""

    def __init__(self, address: Address, endpoint: str, limit: int, connect_timeout: float) -> None:
        self.endpoint = endpoint
        self.dead: FlameError | None = None
        self._calls: dict[int, Inbox] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        sock = dial(address, endpoint, connect_timeout)
        try:
            sock.sendall(PREAMBLE)
            self.wire = FrameSocket(sock, limit)
        except OSError as exc:
            sock.close()
            raise unavailable(endpoint, f"the connection failed at once: {exc}") from exc
        threading.Thread(target=self._read, name=f"flamepy-tcp-reader {endpoint}", daemon=True).start()

    def usable(self) -> bool:
        return self.dead is None and self.wire.pid == os.getpid()

    def start(self, kind: Kind, method: str, request: bytes, timeout: float | None) -> tuple[int, Inbox]:
        """Register a call and send its request; its replies arrive in the returned inbox."""
        inbox: Inbox = queue.SimpleQueue()
        with self._lock:
            if self.dead is not None:
                raise self.dead
            call_id = next(self._ids)
            self._calls[call_id] = inbox
        try:
            self.wire.send(kind, call_id, request, method=method, timeout=timeout)
        except OSError as exc:
            error = unavailable(self.endpoint, f"the connection broke while sending: {exc}")
            self.fail(error)
            raise (self.dead or error) from exc
        except FlameError:
            self.finish(call_id)
            raise
        return call_id, inbox

    def finish(self, call_id: int, *, cancel: bool = False) -> None:
        """Forget a call; with ``cancel``, also tell the server to stop working on it."""
        with self._lock:
            pending = self._calls.pop(call_id, None) is not None and self.dead is None
        if cancel and pending:
            with contextlib.suppress(OSError):
                self.wire.send(Kind.CANCEL, call_id)

    def _read(self) -> None:
        reason = "the server closed the connection"
        try:
            while True:
                frame = self.wire.recv()
                inbox = self._calls.get(frame.call_id)  # None: a call already given up (deadline, cancel)
                if inbox is not None:
                    inbox.put(frame)
        except PeerClosed:
            pass
        except OSError as exc:
            reason = f"the connection broke: {exc}"
        finally:
            self.fail(unavailable(self.endpoint, reason))
            self.wire.release()

    def fail(self, error: FlameError) -> None:
        """Mark the connection dead and wake every waiting call with ``error``. Idempotent."""
        with self._lock:
            if self.dead is not None:
                return
            self.dead = error
            waiting = list(self._calls.values())
            self._calls.clear()
        for inbox in waiting:
            inbox.put(error)
        self.wire.shutdown()


class _Call:
    """The caller's side of one call: waits for its frames against the call's deadline."""

    def __init__(self, channel: TcpChannel, kind: Kind, method: str, request: bytes, timeout: Timeout) -> None:
        check_size(len(request), channel.limit, what="request", endpoint=channel.endpoint)
        self.channel = channel  # a dropped channel closes (see __del__): not while a call is running
        self.method = method
        self.seconds = resolve_timeout(timeout, channel.default_timeout)
        self.deadline = None if self.seconds is None else time.monotonic() + self.seconds
        self.endpoint = channel.endpoint
        self.conn = channel.connection(self.deadline, self.seconds)
        self.call_id, self.inbox = self.conn.start(kind, method, request, self._remaining())

    def _remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def next_frame(self) -> Frame:
        """The call's next frame; its error frame, a lost connection or the deadline raise FlameError."""
        try:
            item = self.inbox.get(timeout=self._remaining())
        except queue.Empty:
            self.conn.finish(self.call_id, cancel=True)
            raise deadline_exceeded(self.method, self.endpoint, self.seconds) from None
        except BaseException:  # e.g. KeyboardInterrupt while waiting: the server need not go on
            self.conn.finish(self.call_id, cancel=True)
            raise
        if isinstance(item, FlameError):
            raise item
        if item.kind == Kind.ERROR:
            self.conn.finish(self.call_id)
            raise error_of(item)
        if item.oversized:  # the reader discarded a reply over this channel's limit
            self.conn.finish(self.call_id, cancel=True)
            check_size(  # raises MESSAGE_TOO_LARGE naming both sizes
                item.oversized, self.conn.wire.limit, what=f"response to {self.method}", endpoint=self.endpoint
            )
        return item


class ResponseStream(Iterator[bytes]):
    """The iterator :meth:`TcpChannel.stream` returns. Closing it early (or dropping it) cancels the call."""

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._finished = False

    def __iter__(self) -> ResponseStream:
        return self

    def __next__(self) -> bytes:
        if self._finished:
            raise StopIteration
        try:
            frame = self._call.next_frame()
        except BaseException:
            self._finished = True
            raise
        if frame.kind == Kind.END:
            self._finished = True
            self._call.conn.finish(self._call.call_id)
            raise StopIteration
        return frame.payload

    def close(self) -> None:
        """Stop reading; a stream still running is cancelled on the server. Idempotent."""
        if not self._finished:
            self._finished = True
            self._call.conn.finish(self._call.call_id, cancel=True)

    def __enter__(self) -> ResponseStream:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit there may be nothing left to cancel
            self.close()


class TcpChannel:
    """A thread-safe channel to one ``tcp://`` endpoint. Connects lazily, reconnects after a failure."""

    def __init__(
        self, address: Address, endpoint: str, limit: int, default_timeout: float | None, connect_timeout: float
    ) -> None:
        self._address = address
        self._endpoint = endpoint
        self.limit = limit
        self.default_timeout = default_timeout
        self._connect_timeout = connect_timeout
        self._conn: _Connection | None = None
        self._dial_lock = threading.Lock()
        self._closed = False
        _channels.add(self)

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def _closed_error(self) -> FlameError:
        return unavailable(self.endpoint, "the channel is closed")

    def connection(self, deadline: float | None, seconds: float | None) -> _Connection:
        """The live connection, dialling a new one (once, for all waiting threads) when there is none."""
        conn = self._conn
        if self._closed:
            raise self._closed_error()
        if conn is None or not conn.usable():
            with self._dial_lock:
                conn = self._conn
                if conn is None or not conn.usable():
                    if conn is not None and conn.wire.pid != os.getpid():
                        conn.wire.abandon()  # a fork the at-fork hook did not see
                    budget = self._connect_timeout
                    if deadline is not None:
                        budget = min(budget, max(0.0, deadline - time.monotonic()))
                    try:
                        conn = self._conn = _Connection(self._address, self.endpoint, self.limit, budget)
                    except FlameError:
                        if deadline is not None and time.monotonic() >= deadline:
                            raise deadline_exceeded("connect", self.endpoint, seconds) from None
                        raise
            if self._closed:  # close() ran while we dialled
                conn.fail(self._closed_error())
                raise self._closed_error()
        return conn

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        """Send one request and return the one response; every failure is a :class:`FlameError`."""
        call = _Call(self, Kind.UNARY, method, request, timeout)
        frame = call.next_frame()
        call.conn.finish(call.call_id)
        return frame.payload

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> ResponseStream:
        """Send one request and iterate the responses; one deadline covers the whole stream.

        Items are not flow-controlled: the reader thread buffers what the server sends until it is read.
        """
        return ResponseStream(_Call(self, Kind.STREAM, method, request, timeout))

    def close(self) -> None:
        """Close the connection and fail calls in flight with UNAVAILABLE. Idempotent."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None and conn.wire.pid == os.getpid():
            conn.fail(self._closed_error())

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # a dropped channel must not leave its reader thread behind
            self.close()

    def _after_fork_in_child(self) -> None:
        """Forget the parent's connection (and a dial lock a parent thread may have held at fork time)."""
        self._dial_lock = threading.Lock()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.wire.abandon()

    def __repr__(self) -> str:
        return f"TcpChannel({self.endpoint!r}{', closed' if self._closed else ''})"


_channels: weakref.WeakSet[TcpChannel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for channel in list(_channels):
        channel._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
