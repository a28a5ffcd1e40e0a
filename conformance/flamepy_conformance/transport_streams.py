"""Long streams and streams the caller leaves early (a mixin of :class:`~flamepy_conformance.TransportTests`).

What the contract says and this module checks:

* a stream has no length limit: a long stream of small items and one of large items, each running
  :data:`~flamepy_core.contracts.bounds.LONG_STREAM_FACTOR` times past the largest flow-control window
  (:data:`~flamepy_core.contracts.bounds.STREAM_WINDOW_ITEMS` items,
  :data:`~flamepy_core.contracts.bounds.STREAM_WINDOW_BYTES` bytes), arrive complete, in order, each item
  once, and do not stall, even when the reader pauses long enough for every window to fill;
* closing a stream early, or dropping it, cancels the call: the handler observes it (its generator is
  closed, or ``ctx.is_active()`` turns False) within :data:`~flamepy_core.contracts.bounds.CANCEL_NOTICE_S`,
  and the channel goes on working.
"""

from __future__ import annotations

import gc
import math
import struct
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

from flamepy_conformance.capabilities import Capability
from flamepy_conformance.probe import PROBE_SERVICE, probe_handlers
from flamepy_conformance.transport_base import TransportSuiteBase, _close_iterator, _show
from flamepy_core.contracts.bounds import (
    CANCEL_NOTICE_S,
    LONG_STREAM_FACTOR,
    STREAM_WINDOW_BYTES,
    STREAM_WINDOW_ITEMS,
)
from flamepy_core.contracts.errors import FlameError
from flamepy_core.contracts.transport import CallContext, Channel, StreamHandler

_LONG = f"{PROBE_SERVICE}/LongStream"
_ENDLESS = f"{PROBE_SERVICE}/EndlessStream"
_HEADER = struct.Struct(">QI")
"""A long stream's request (count, item size) and each item's prefix (index, size)."""
_INDEX = struct.Struct(">Q")


def long_stream_item(index: int, size: int) -> bytes:
    """Item ``index`` of a long stream: its index, then filler that differs from one item to the next."""
    filler = max(0, size - _INDEX.size)
    return _INDEX.pack(index) + bytes([index % 251]) * filler


def _long_stream(request: bytes, ctx: CallContext) -> Iterator[bytes]:
    count, size = _HEADER.unpack(request)
    for index in range(count):
        yield long_stream_item(index, size)


class StreamTests(TransportSuiteBase):
    """Streams far past any flow-control window, and streams closed or dropped before their end."""

    stream_pause_s: ClassVar[float] = 0.2
    """How long the long-stream reader pauses after the first item, so every window fills."""

    def _read_long_stream(self, channel: Channel, count: int, size: int, what: str) -> None:
        """Read a stream of ``count`` items of ``size`` bytes; every item once, in order, exact, no stall."""
        timeout = self.call_timeout  # a stream of 64 MiB takes well under a second on every bundled transport
        items = channel.stream(_LONG, _HEADER.pack(count, size), timeout=timeout)
        expected = 0
        started = time.monotonic()
        try:
            for item in items:
                if expected == 1:
                    time.sleep(self.stream_pause_s)  # a slow reader: the producer must wait, not drop
                index = _INDEX.unpack_from(item)[0] if len(item) >= _INDEX.size else -1
                if index != expected:
                    problem = "a duplicate" if 0 <= index < expected else "out of order or missing items"
                    raise AssertionError(
                        f"{what}: item {expected} expected, item {index} arrived ({problem}; {len(item)} bytes)"
                    )
                if item != long_stream_item(index, size):
                    raise AssertionError(f"{what}: item {index} arrived damaged: {_show(item, 80)}")
                expected += 1
        except FlameError as err:
            raise AssertionError(
                f"{what}: the stream failed after {expected} of {count} items and {time.monotonic() - started:.1f} s "
                f"(a stall ends at the {timeout:.0f} s deadline): FlameError({err.code.name}, {err.message!r})"
            ) from err
        finally:
            _close_iterator(items)
        assert expected == count, f"{what}: the stream ended after {expected} of {count} items"

    def test_long_streams_arrive_whole_in_order_without_stalling(self) -> None:
        """Small items four windows past the item window, large ones four windows past the byte window."""
        self.require(Capability.STREAMING)
        small_count = LONG_STREAM_FACTOR * STREAM_WINDOW_ITEMS
        large_size = min(self.max_message_size, self.max_message_cap, 1024 * 1024)
        large_count = math.ceil(LONG_STREAM_FACTOR * STREAM_WINDOW_BYTES / large_size)
        with self.served({_LONG: StreamHandler(_long_stream), **probe_handlers()}) as (_server, channel):
            self._read_long_stream(channel, small_count, 16, f"a stream of {small_count} items of 16 bytes")
            self._read_long_stream(
                channel, large_count, large_size, f"a stream of {large_count} items of {large_size} bytes"
            )
            self.echo(channel, b"after the long streams")

    def test_closing_or_dropping_a_stream_cancels_its_handler(self) -> None:
        """The caller leaves a stream after three items (``close()``, or the last reference dropped):
        the handler notices within the contract's bound."""
        self.require(Capability.STREAMING)
        stopped = threading.Event()
        contexts: list[CallContext] = []
        pace = threading.Event()  # never set: paces the handler, cut short at the end
        cap = 2000  # a handler nobody stops still ends (after ~10 s), so a broken run terminates

        def endless(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            contexts.append(ctx)
            try:
                for index in range(cap):
                    if not ctx.is_active():
                        return
                    yield _INDEX.pack(index)
                    pace.wait(0.005)
            finally:
                stopped.set()

        with self.served({_ENDLESS: StreamHandler(endless), **probe_handlers()}) as (_server, channel):
            try:
                for how in ("close", "drop"):
                    stopped.clear()
                    contexts.clear()
                    items = channel.stream(_ENDLESS, b"", timeout=self.call_timeout)
                    first = [next(items) for _ in range(3)]
                    assert first == [_INDEX.pack(i) for i in range(3)], first
                    left = time.monotonic()
                    if how == "close":
                        _close_iterator(items)
                    else:
                        del items
                        gc.collect()
                    self._expect_cancelled(how, stopped, contexts, left)
                    self.echo(channel, f"after a stream was left ({how})".encode())
            finally:
                pace.set()

    def _expect_cancelled(self, how: str, stopped: threading.Event, contexts: list[CallContext], left: float) -> None:
        what = "closed" if how == "close" else "dropped (its last reference gone)"
        noticed = stopped.wait(CANCEL_NOTICE_S)
        took = time.monotonic() - left
        assert noticed, (
            f"a stream {what} after 3 items: its handler was still running {took:.1f} s later (the caller's leaving "
            f"must reach it within {CANCEL_NOTICE_S} s: close its generator or make ctx.is_active() False)"
        )
        assert contexts, "the handler never ran"
        ctx = contexts[-1]
        while ctx.is_active() and time.monotonic() - left < CANCEL_NOTICE_S:
            time.sleep(0.01)
        assert not ctx.is_active(), (
            f"a stream {what}: its handler's generator ended, but ctx.is_active() was still True "
            f"{CANCEL_NOTICE_S} s later"
        )
