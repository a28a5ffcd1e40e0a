"""A channel's calls as its callers see them: a unary call waits on a lock, a stream reads a queue.

The channel's I/O thread completes a call (``on_reply`` / ``on_item`` / ``on_end`` / ``on_error``) only
after removing it from the channel's table of pending calls, under the channel's lock; a caller whose
deadline passes removes it the same way (:meth:`Link.abandon`). Whoever removes it owns the outcome, so a
call is completed exactly once and a reply that arrives later finds no call and is dropped.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from typing import Protocol

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.kit.basics import message_too_large
from flamepy_transports.zmq import framing
from flamepy_transports.zmq.config import STREAM_WINDOW_BYTES, STREAM_WINDOW_ITEMS


class Link(Protocol):
    """What a call needs from its channel."""

    def abandon(self, call: ClientCall) -> bool:
        """Remove a call the caller gives up on; False if the I/O thread completed it first."""
        ...

    def expired_error(self, call: ClientCall) -> FlameError:
        """The error for a call whose deadline passed (DEADLINE_EXCEEDED, or why it was never sent)."""
        ...

    def send_control(self, frames: list[bytes]) -> None:
        """Queue a CANCEL / CREDIT message."""
        ...


class ClientCall:
    """One call in flight. ``sent`` is set by the I/O thread, ``done`` when it left the pending table."""

    __slots__ = ("corr", "deadline", "done", "method", "queued_at", "sent", "timeout")

    def __init__(self, corr: int, method: str, timeout: float | None) -> None:
        self.corr = corr
        self.method = method
        self.timeout = timeout
        self.queued_at = time.monotonic()
        self.deadline = None if timeout is None else self.queued_at + timeout
        self.sent = False
        self.done = False

    def on_reply(self, payload: bytes) -> None:
        raise NotImplementedError

    def on_item(self, payload: bytes) -> None:
        raise NotImplementedError

    def on_end(self) -> None:
        raise NotImplementedError

    def on_item_end(self, _unused: object) -> None:
        self.on_end()

    def on_error(self, err: FlameError) -> None:
        raise NotImplementedError


def _wrong_kind(call: ClientCall, what: str) -> FlameError:
    return FlameError(FlameErrorCode.INTERNAL, f"the server sent {what} to the call of {call.method}")


class UnaryCall(ClientCall):
    __slots__ = ("_ready", "error", "result")

    def __init__(self, corr: int, method: str, timeout: float | None) -> None:
        super().__init__(corr, method, timeout)
        self._ready = threading.Lock()
        self._ready.acquire()
        self.result: bytes = b""
        self.error: FlameError | None = None

    def on_reply(self, payload: bytes) -> None:
        self.result = payload
        self._ready.release()

    def on_error(self, err: FlameError) -> None:
        self.error = err
        self._ready.release()

    def on_item(self, payload: bytes) -> None:
        self.on_error(_wrong_kind(self, "a stream item"))

    def on_end(self) -> None:
        self.on_error(_wrong_kind(self, "a stream end"))

    def wait(self, link: Link) -> bytes:
        if self.deadline is None:
            self._ready.acquire()
        elif not self._ready.acquire(timeout=max(0.0, self.deadline - time.monotonic())):
            if link.abandon(self):
                raise link.expired_error(self)
            self._ready.acquire()  # the I/O thread took it first: its outcome is being delivered
        if self.error is not None:
            raise self.error
        return self.result


class AsyncCall(ClientCall):
    """A unary call whose caller does not wait: the I/O thread completes its future (callbacks run there).

    A response larger than ``limit`` fails the future with ``MESSAGE_TOO_LARGE``, as a blocking call's
    would: no caller thread is there to check it afterwards.
    """

    __slots__ = ("endpoint", "future", "limit")

    def __init__(self, corr: int, method: str, timeout: float | None, limit: int, endpoint: str) -> None:
        super().__init__(corr, method, timeout)
        self.limit = limit
        self.endpoint = endpoint
        self.future: Future[bytes] = Future()
        self.future.set_running_or_notify_cancel()

    def on_reply(self, payload: bytes) -> None:
        if len(payload) > self.limit:
            what = f"response to {self.method}"
            self.future.set_exception(message_too_large(len(payload), self.limit, what=what, endpoint=self.endpoint))
            return
        self.future.set_result(payload)

    def on_error(self, err: FlameError) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(err)

    def on_item(self, payload: bytes) -> None:
        self.on_error(_wrong_kind(self, "a stream item"))

    def on_end(self) -> None:
        self.on_error(_wrong_kind(self, "a stream end"))


_END = object()


class StreamCall(ClientCall):
    __slots__ = ("items",)

    def __init__(self, corr: int, method: str, timeout: float | None) -> None:
        super().__init__(corr, method, timeout)
        self.items: queue.SimpleQueue[object] = queue.SimpleQueue()

    def on_item(self, payload: bytes) -> None:
        self.items.put(payload)

    def on_end(self) -> None:
        self.items.put(_END)

    def on_error(self, err: FlameError) -> None:
        self.items.put(err)

    def on_reply(self, payload: bytes) -> None:
        self.on_error(_wrong_kind(self, "a unary reply"))


class CallbackStreamCall(ClientCall):
    """A stream whose items go to a callback on the I/O thread, as they arrive: no thread waits for them.

    ``on_item(payload)`` runs for each item, then ``on_end(None)`` once at the end, or ``on_end(error)``
    once if the call fails. The window is granted back as items are handed over, in halves as
    :class:`StreamResponses` does.
    """

    __slots__ = ("_bytes", "_end", "_item", "_items", "_link")

    def __init__(
        self,
        corr: int,
        method: str,
        timeout: float | None,
        link: Link,
        on_item: Callable[[bytes], None],
        on_end: Callable[[FlameError | None], None],
    ) -> None:
        super().__init__(corr, method, timeout)
        self._link = link
        self._item = on_item
        self._end = on_end
        self._items = 0
        self._bytes = 0

    def on_item(self, payload: bytes) -> None:
        self._items += 1
        self._bytes += len(payload) + framing.ITEM_OVERHEAD
        if self._items >= STREAM_WINDOW_ITEMS // 2 or self._bytes >= STREAM_WINDOW_BYTES // 2:
            self._link.send_control(framing.credit(self.corr, self._items, self._bytes))
            self._items = self._bytes = 0
        self._item(payload)

    def on_end(self) -> None:
        self._end(None)

    def on_error(self, err: FlameError) -> None:
        self._end(err)

    def on_reply(self, payload: bytes) -> None:
        self.on_error(_wrong_kind(self, "a unary reply"))


class StreamResponses(Iterator[bytes]):
    """The iterator :meth:`Channel.stream` returns. Closing it (or dropping it) cancels the call."""

    def __init__(self, call: StreamCall, link: Link) -> None:
        self._call = call
        self._link = link
        self._finished = False
        self._items = 0
        self._bytes = 0

    def __iter__(self) -> StreamResponses:
        return self

    def __next__(self) -> bytes:
        if self._finished:
            raise StopIteration
        item = self._get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, FlameError):
            self._finished = True
            raise item
        assert isinstance(item, bytes)
        self._consumed(len(item))
        return item

    def _get(self) -> object:
        call = self._call
        if call.deadline is None:
            return call.items.get()
        with contextlib.suppress(queue.Empty):
            return call.items.get(timeout=max(0.0, call.deadline - time.monotonic()))
        if self._link.abandon(call):
            self._finished = True
            raise self._link.expired_error(call)
        return call.items.get()  # completed by the I/O thread first: its final marker is queued

    def _consumed(self, size: int) -> None:
        # Grant the window back in halves so the server rarely waits and CREDIT messages stay few.
        self._items += 1
        self._bytes += size + framing.ITEM_OVERHEAD
        if self._items >= STREAM_WINDOW_ITEMS // 2 or self._bytes >= STREAM_WINDOW_BYTES // 2:
            self._link.send_control(framing.credit(self._call.corr, self._items, self._bytes))
            self._items = self._bytes = 0

    def close(self) -> None:
        """Stop reading: the server is told to cancel the call. Idempotent."""
        if not self._finished:
            self._finished = True
            self._link.abandon(self._call)

    def __del__(self) -> None:
        if sys.is_finalizing():
            return  # exiting: a thread stopped for good may hold a lock this would take
        with contextlib.suppress(Exception):
            self.close()
