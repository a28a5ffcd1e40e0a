"""Transports that get streams wrong, each the way a real one might (see ``broken_transports.py``).

* ``broken-keepopen``   - keeps every stream it opened in a list (to close them all with the channel), and
  its iterator's ``close()`` only stops reading: the call is never cancelled, so the handler runs on;
* ``broken-dropnocancel`` - tracks its open streams so that closing the channel can cancel them: a
  stream's ``close()`` cancels it and forgets it, but a stream its caller drops without closing stays
  tracked, so its call is never cancelled and the handler runs on;
* ``broken-ringbuffer`` - reads ahead into a ring buffer of 64 items to bound memory, dropping the oldest
  when the reader is slow: long streams lose items;
* ``broken-bytecredit`` - flow control whose producer spends the window in bytes while the reader gives
  it back one unit per item: large items run the window dry and the stream stalls.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Iterator

from broken_transports import _Wrapped, channel_flaw

from flamepy_core.contracts.errors import FlameError
from flamepy_core.contracts.transport import DEFAULT_TIMEOUT, Channel, Timeout
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT, deadline_exceeded, resolve_timeout


class KeepStreamsChannel(_Wrapped):
    """Its streams' close() stops reading but never cancels the call."""

    def __init__(self, inner: Channel) -> None:
        super().__init__(inner)
        self._opened: list[Iterator[bytes]] = []

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        inner = self._inner.stream(method, request, timeout)
        self._opened.append(inner)  # "closed with the channel": until then, nothing cancels it

        def items() -> Iterator[bytes]:
            for item in inner:  # noqa: UP028 - the fault: unlike `yield from`, closing this leaves `inner` open
                yield item

        return items()

    def close(self) -> None:
        for inner in self._opened:
            close = getattr(inner, "close", None)
            if close is not None:
                close()
        super().close()


class TrackedStreamsChannel(_Wrapped):
    """Tracks open streams to cancel them with the channel; a dropped stream stays tracked (and running)."""

    def __init__(self, inner: Channel) -> None:
        super().__init__(inner)
        self._open: dict[int, Iterator[bytes]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        call_id = next(self._ids)
        inner = self._inner.stream(method, request, timeout)
        with self._lock:
            self._open[call_id] = inner  # the channel's reference keeps the call alive until forgotten
        return _TrackedStream(self, call_id, inner)

    def forget(self, call_id: int) -> Iterator[bytes] | None:
        with self._lock:
            return self._open.pop(call_id, None)

    def close(self) -> None:
        with self._lock:
            still_open, self._open = list(self._open.values()), {}
        for inner in still_open:
            _close(inner)
        super().close()


def _close(items: Iterator[bytes]) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()


class _TrackedStream:
    """One stream of a :class:`TrackedStreamsChannel`: ``close()`` and the stream's end forget it; nothing
    else does (no ``__del__``)."""

    def __init__(self, channel: TrackedStreamsChannel, call_id: int, inner: Iterator[bytes]) -> None:
        self._channel, self._id, self._inner = channel, call_id, inner

    def __iter__(self) -> _TrackedStream:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._inner)
        except (StopIteration, FlameError):
            self._channel.forget(self._id)
            raise

    def close(self) -> None:
        inner = self._channel.forget(self._id)
        if inner is not None:
            _close(inner)


class _ReadAhead:
    """A pump thread reading a stream ahead of its reader into a buffer the subclass manages."""

    def __init__(self, inner: Iterator[bytes], method: str, endpoint: str, seconds: float | None) -> None:
        self.cond = threading.Condition()
        self.buffer: collections.deque[bytes] = collections.deque()
        self.outcome: list[FlameError | None] = []
        self._deadline = None if seconds is None else time.monotonic() + seconds
        self._method, self._endpoint, self._seconds = method, endpoint, seconds
        self._inner = inner
        threading.Thread(target=self._pump, name="broken-read-ahead", daemon=True).start()

    def admit(self, item: bytes) -> None:
        self.buffer.append(item)

    def _pump(self) -> None:
        error: FlameError | None = None
        try:
            for item in self._inner:
                with self.cond:
                    self.admit(item)
                    self.cond.notify_all()
        except FlameError as err:
            error = err
        with self.cond:
            self.outcome.append(error)
            self.cond.notify_all()

    def taken(self, item: bytes) -> None:
        """Called (under the lock) when the reader takes ``item``."""

    def items(self) -> Iterator[bytes]:
        while True:
            with self.cond:
                while not self.buffer and not self.outcome:
                    left = None if self._deadline is None else self._deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise deadline_exceeded(self._method, self._endpoint, self._seconds)
                    self.cond.wait(0.05 if left is None else min(left, 0.05))
                if self.buffer:
                    item = self.buffer.popleft()
                    self.taken(item)
                    self.cond.notify_all()
                else:
                    error = self.outcome[0]
                    if error is not None:
                        raise error
                    return
            yield item


class _Ring(_ReadAhead):
    def admit(self, item: bytes) -> None:
        if len(self.buffer) >= 64:
            self.buffer.popleft()  # the reader is slow: make room by dropping the oldest
        self.buffer.append(item)


class RingBufferChannel(_Wrapped):
    """Reads ahead into a 64-item ring buffer that drops the oldest item when full."""

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        seconds = resolve_timeout(timeout, DEFAULT_CALL_TIMEOUT)
        return _Ring(self._inner.stream(method, request, timeout), method, self.endpoint, seconds).items()


class _ByteCredit(_ReadAhead):
    WINDOW = 1024 * 1024

    def __init__(self, inner: Iterator[bytes], method: str, endpoint: str, seconds: float | None) -> None:
        self.credit = self.WINDOW
        super().__init__(inner, method, endpoint, seconds)

    def admit(self, item: bytes) -> None:
        while self.credit < len(item):  # wait for window: spent in bytes...
            self.cond.wait(0.05)
        self.credit -= len(item)
        self.buffer.append(item)

    def taken(self, item: bytes) -> None:
        self.credit += 1  # ...but given back one per item


class ByteCreditChannel(_Wrapped):
    """Spends its flow-control window in bytes and gets it back one unit per item: large items stall."""

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        seconds = resolve_timeout(timeout, DEFAULT_CALL_TIMEOUT)
        return _ByteCredit(self._inner.stream(method, request, timeout), method, self.endpoint, seconds).items()


BROKEN = [
    channel_flaw("keepopen", KeepStreamsChannel),
    channel_flaw("dropnocancel", TrackedStreamsChannel),
    channel_flaw("ringbuffer", RingBufferChannel),
    channel_flaw("bytecredit", ByteCreditChannel),
]
