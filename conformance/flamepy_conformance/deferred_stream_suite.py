"""Deferred streams: the contract of ``DeferredStreamHandler`` and its ``StreamWriter``.

Mixed into :class:`~flamepy_conformance.TransportTests`. A transport that declares ``deferred_streams``
serves the handler itself; for one that does not, the suite serves it through the core's adapter
(:func:`flamepy_core.kit.adapt_handlers`, a server thread per open stream), which must keep the same
contract; so these tests run on every transport with ``streaming``, except the one that counts threads,
which is gated on ``deferred_streams``.

What the writer must show:

* responses sent from another thread arrive in order, then the end: ``close`` after N sends gives
  exactly N; ``fail`` gives N then the error (a ``FlameError``'s code and message intact, anything else
  ``INTERNAL`` naming its type); ``fn`` raising fails the stream the same way;
* ``send`` never blocks: far more sends than the stream window, before the caller reads anything, all
  arrive, in order;
* once the caller closes its iterator early, or its deadline passes, ``send`` returns False within
  :data:`~flamepy_core.contracts.bounds.CANCEL_NOTICE_S` and ``ctx.is_active()`` is False;
* a stream ends once: a second ``close`` or ``fail`` returns False and changes nothing;
* a response over the largest message is not sent (``send`` says False) and fails the stream with
  ``MESSAGE_TOO_LARGE`` naming both sizes;
* an open stream with no sends holds no server thread (``deferred_streams`` only).
"""

from __future__ import annotations

import contextlib
import functools
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

from hypothesis import given
from hypothesis import strategies as st

from flamepy_conformance.capabilities import Capability, requires
from flamepy_conformance.strategies import error_codes, error_messages, stream_chunks
from flamepy_conformance.transport_base import TransportSuiteBase, _Background, _close_iterator, _mentions
from flamepy_core.contracts.bounds import CANCEL_NOTICE_S, STREAM_WINDOW_BYTES, STREAM_WINDOW_ITEMS
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    CallContext,
    Channel,
    DeferredStreamHandler,
    Handler,
    Server,
    StreamWriter,
    Transport,
)
from flamepy_core.kit import adapt_handlers

_SERVICE = "/flamepy.conformance.DeferredStream"
_PARKED = f"{_SERVICE}/Parked"
_RAISE = f"{_SERVICE}/Raise"
_GREET = f"{_SERVICE}/Greet"
_SMALL_LIMIT = 64 * 1024
"""The largest message of the transport the oversized-response test builds."""


class _Parked:
    """A deferred stream handler that parks every stream (context, writer) for the test to feed."""

    def __init__(self, greeting: bytes | None = None) -> None:
        self.streams: queue.SimpleQueue[tuple[CallContext, StreamWriter]] = queue.SimpleQueue()
        self._greeting = greeting

    def __call__(self, request: bytes, ctx: CallContext, writer: StreamWriter) -> None:
        if self._greeting is not None:
            writer.send(self._greeting)
        self.streams.put((ctx, writer))

    def next(self, timeout: float) -> tuple[CallContext, StreamWriter]:
        try:
            return self.streams.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no deferred stream reached its handler within {timeout} s") from None


@dataclass
class _Read:
    """What a caller read from a stream: its responses, then how it ended (``None``: normally)."""

    items: list[bytes]
    error: BaseException | None


def _read_all(channel: Channel, method: str, timeout: float) -> Callable[[], _Read]:
    def read() -> _Read:
        items: list[bytes] = []
        try:
            for item in channel.stream(method, b"", timeout=timeout):
                items.append(item)
        except BaseException as exc:
            return _Read(items, exc)
        return _Read(items, None)

    return read


def _raise_after(request: bytes, ctx: CallContext, writer: StreamWriter) -> None:
    """Sends ``request`` as one response, then raises NOT_FOUND before ending the stream."""
    writer.send(request)
    raise FlameError(FlameErrorCode.NOT_FOUND, "raised by fn after one response")


def _send_all(writer: StreamWriter, responses: list[bytes]) -> bool:
    """Send every response, then close: True when each of them took effect."""
    return all([writer.send(response) for response in responses]) and writer.close()


def _wait_until(condition: Callable[[], bool], within: float) -> float | None:
    """Seconds until ``condition`` held (polled every 10 ms), or None if it did not within ``within``."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if condition():
            return time.monotonic() - start
        time.sleep(0.01)
    return None


class _Ending:
    """How a drawn stream ends: ``close``, ``fail`` with a FlameError, or ``fail`` with another exception."""

    def __init__(self, how: str, code: FlameErrorCode = FlameErrorCode.INTERNAL, message: str = "") -> None:
        self.how, self.code, self.message = how, code, message

    def apply(self, writer: StreamWriter) -> bool:
        if self.how == "close":
            return writer.close()
        if self.how == "flame":
            return writer.fail(FlameError(self.code, self.message))
        return writer.fail(LookupError(self.message))

    def check(self, read: _Read) -> None:
        if self.how == "close":
            assert read.error is None, f"a stream ended with close() failed for its caller: {read.error!r}"
            return
        error = read.error
        assert isinstance(error, FlameError), f"a stream ended with fail() gave the caller {error!r}"
        if self.how == "flame":
            assert (error.code, error.message) == (self.code, self.message), repr(error)
        else:
            assert error.code == FlameErrorCode.INTERNAL, f"fail(LookupError) gave {error.code.name}: {error!r}"
            assert "LookupError" in error.message, f"fail(LookupError): the message does not name it: {error!r}"

    def __repr__(self) -> str:
        return f"_Ending({self.how!r}, {self.code.name}, {self.message!r})"


def _endings() -> st.SearchStrategy[_Ending]:
    return st.one_of(
        st.just(_Ending("close")),
        st.builds(_Ending, st.just("flame"), error_codes(), error_messages()),
        st.builds(_Ending, st.just("other"), st.just(FlameErrorCode.INTERNAL), st.text(max_size=40)),
    )


class DeferredStreamTests(TransportSuiteBase):
    """The tests of deferred streams (mixed into ``TransportTests``)."""

    open_streams: ClassVar[int] = 50
    """How many silent deferred streams stay open at once in the no-thread-per-stream test."""
    thread_slack: ClassVar[int] = 5
    """Threads the process may gain while they are open (a pool growing a little; one per stream may not)."""

    def serve_deferred(
        self, handlers: Mapping[str, Handler], transport: Transport | None = None
    ) -> contextlib.AbstractContextManager[tuple[Server, Channel]]:
        """:meth:`served`, through the core's adapter: native deferred streams, or a thread per stream."""
        transport = transport or self.transport
        return self.served(adapt_handlers(handlers, transport.capabilities), transport=transport)

    def _stream_then_read(
        self, channel: Channel, parked: _Parked, method: str = _PARKED
    ) -> tuple[_Background[_Read], CallContext, StreamWriter]:
        """Open a stream read by a thread of its own; the handler's context and writer, to feed it."""
        reader = _Background(_read_all(channel, method, self.call_timeout))
        ctx, writer = parked.next(self.call_timeout)
        return reader, ctx, writer

    def _result(self, reader: _Background[_Read], what: str) -> _Read:
        assert reader.join(self.call_timeout), f"{what}: the caller was still reading {self.call_timeout} s later"
        if reader.error is not None:
            raise reader.error
        assert reader.result is not None
        return reader.result

    @requires("streaming")
    def test_deferred_stream_sends_arrive_in_order_then_its_end(self) -> None:
        """Responses sent from another thread arrive in order, exactly as many as were sent, then the end
        (``close``; ``fail`` with a FlameError, intact; ``fail`` with anything else, INTERNAL naming it)."""
        parked = _Parked()

        @given(items=stream_chunks(max_items=12, max_size=512), ending=_endings())
        def check(items: list[bytes], ending: _Ending) -> None:
            reader, _ctx, writer = self._stream_then_read(channel, parked)
            sender = threading.Thread(target=lambda: [writer.send(item) for item in items])
            sender.start()  # from a thread that is neither the transport's nor the reader's
            sender.join(self.call_timeout)
            assert not sender.is_alive(), f"{len(items)} sends did not return within {self.call_timeout} s"
            assert ending.apply(writer) is True, f"{ending!r}: the first end of a stream did not take effect"
            read = self._result(reader, f"a stream of {len(items)} responses")
            assert read.items == items, f"sent {len(items)} responses, the caller read {len(read.items)}: {read!r}"
            ending.check(read)

        with self.serve_deferred({_PARKED: DeferredStreamHandler(parked)}) as (_server, channel):
            self.hypothesis_settings(0.5)(check)()

    @requires("streaming")
    def test_a_deferred_stream_ends_once(self) -> None:
        """After ``close``, another ``close``, a ``fail`` and a ``send`` return False and change nothing;
        after ``fail``, likewise."""
        parked = _Parked()
        with self.serve_deferred({_PARKED: DeferredStreamHandler(parked)}) as (_server, channel):
            reader, _ctx, writer = self._stream_then_read(channel, parked)
            assert writer.send(b"one") and writer.send(b"two")
            assert writer.close() is True
            assert writer.close() is False, "a second close() must return False"
            assert writer.fail(FlameError(FlameErrorCode.INTERNAL, "late")) is False, "fail() after close()"
            assert writer.send(b"three") is False, "send() after close() must return False"
            read = self._result(reader, "a closed stream")
            assert (read.items, read.error) == ([b"one", b"two"], None), read

            reader, _ctx, writer = self._stream_then_read(channel, parked)
            assert writer.send(b"one")
            assert writer.fail(FlameError(FlameErrorCode.INVALID_STATE, "first")) is True
            assert writer.fail(FlameError(FlameErrorCode.INTERNAL, "second")) is False, "a second fail()"
            assert writer.close() is False, "close() after fail() must return False"
            read = self._result(reader, "a failed stream")
            assert read.items == [b"one"], read
            assert isinstance(read.error, FlameError), read
            assert (read.error.code, read.error.message) == (FlameErrorCode.INVALID_STATE, "first"), repr(read.error)

    @requires("streaming")
    def test_a_deferred_stream_fn_that_raises_fails_the_stream(self) -> None:
        """``fn`` raising before the stream ended: what it sent arrives, then its error."""
        with self.serve_deferred({_RAISE: DeferredStreamHandler(_raise_after)}) as (_server, channel):
            items: list[bytes] = []
            try:
                for item in channel.stream(_RAISE, b"sent first", timeout=self.call_timeout):
                    items.append(item)
            except FlameError as err:
                assert err.code == FlameErrorCode.NOT_FOUND, repr(err)
                assert err.message == "raised by fn after one response", repr(err)
            else:
                raise AssertionError(f"fn raised, but the stream ended normally after {items!r}")
            assert items == [b"sent first"], items

    @requires("streaming")
    def test_sends_far_past_the_window_before_any_read_all_arrive(self) -> None:
        """``send`` never blocks: twice the item window of small responses, then past the byte window in
        large ones, all sent before the caller reads anything, arrive complete and in order."""
        parked = _Parked()
        large_size = min(self.max_message_size, self.max_message_cap, 1024 * 1024)
        large_count = math.ceil(1.25 * STREAM_WINDOW_BYTES / large_size)
        small = [b"%08d" % i for i in range(2 * STREAM_WINDOW_ITEMS)]
        large = [bytes([i % 251]) * (large_size - 8) + b"%08d" % i for i in range(large_count)]
        with self.serve_deferred({_PARKED: DeferredStreamHandler(parked)}) as (_server, channel):
            for what, responses in (("small", small), ("large", large)):
                items = channel.stream(_PARKED, b"", timeout=self.call_timeout)
                try:
                    _ctx, writer = parked.next(self.call_timeout)
                    sender = _Background(functools.partial(_send_all, writer, responses))
                    assert sender.join(self.call_timeout), (
                        f"{len(responses)} {what} sends before any read did not return within {self.call_timeout} s "
                        f"(send must never wait for the caller)"
                    )
                    assert sender.result is True, f"a send or the close of {len(responses)} {what} responses said False"
                    got = 0
                    for item in items:
                        assert got < len(responses) and item == responses[got], (
                            f"{what} response {got} of {len(responses)}: out of order, damaged or extra"
                        )
                        got += 1
                    assert got == len(responses), f"{got} of {len(responses)} {what} responses arrived"
                finally:
                    _close_iterator(items)

    @requires("streaming")
    def test_a_deferred_stream_left_by_its_caller_refuses_sends(self) -> None:
        """The caller closes its iterator after one response, or lets its deadline pass: within the
        contract's bound ``send`` returns False and ``ctx.is_active()`` is False."""
        parked = _Parked(greeting=b"hello")
        with self.serve_deferred({_PARKED: DeferredStreamHandler(parked)}) as (_server, channel):
            items = channel.stream(_PARKED, b"", timeout=self.call_timeout)
            ctx, writer = parked.next(self.call_timeout)
            assert next(items) == b"hello"
            _close_iterator(items)
            self._expect_refused("closed by its caller", ctx, writer)

            deadline = self.deadline_timeout
            items = channel.stream(_PARKED, b"", timeout=deadline)
            ctx, writer = parked.next(self.call_timeout)
            time.sleep(deadline)
            self._expect_refused(f"past its {deadline} s deadline", ctx, writer)
            _close_iterator(items)
            self._expect_greeting(channel, parked, b"hello")  # the channel goes on working

    def _expect_refused(self, what: str, ctx: CallContext, writer: StreamWriter) -> None:
        took = _wait_until(lambda: not writer.send(b"anyone there?"), CANCEL_NOTICE_S)
        assert took is not None, f"a deferred stream {what}: send() still returned True {CANCEL_NOTICE_S} s later"
        assert not ctx.is_active(), f"a deferred stream {what}: send() returned False, ctx.is_active() True"
        assert writer.close() is False, f"a deferred stream {what}: close() took effect after send() said False"

    def _expect_greeting(self, channel: Channel, parked: _Parked, greeting: bytes) -> None:
        """One whole stream (its greeting, then ``close``): the channel works."""
        items = channel.stream(_PARKED, b"", timeout=self.call_timeout)
        try:
            assert next(items) == greeting
            _ctx, writer = parked.next(self.call_timeout)
            assert writer.close()
            assert list(items) == []
        finally:
            _close_iterator(items)

    @requires("streaming")
    def test_an_oversized_deferred_response_fails_the_stream(self) -> None:
        """A response over the largest message is not sent (``send`` says False); the caller gets what
        came before it, then ``MESSAGE_TOO_LARGE`` naming both sizes."""
        transport = self.make_transport_with(max_message_size=_SMALL_LIMIT)
        parked = _Parked()
        handlers = {_PARKED: DeferredStreamHandler(parked)}
        with self.serve_deferred(handlers, transport) as (_server, channel):
            reader, _ctx, writer = self._stream_then_read(channel, parked)
            assert writer.send(b"small") is True
            size = _SMALL_LIMIT + 1
            assert writer.send(b"x" * size) is False, "an oversized response: send() must return False"
            assert writer.send(b"after") is False, "send() after the stream failed must return False"
            read = self._result(reader, "a stream with an oversized response")
            assert read.items == [b"small"], read.items
            error = read.error
            assert isinstance(error, FlameError) and error.code == FlameErrorCode.MESSAGE_TOO_LARGE, repr(error)
            assert _mentions(error.message, size) and _mentions(error.message, _SMALL_LIMIT), (
                f"MESSAGE_TOO_LARGE must name both sizes ({size} and {_SMALL_LIMIT}): {error.message!r}"
            )

    @requires("deferred_streams")
    def test_open_deferred_streams_hold_no_server_thread(self) -> None:
        """Many open streams that send nothing more hold no thread each: the process's thread count with
        them open stays within a few of its count with none."""
        parked = _Parked(greeting=b"open")
        with self.serve_deferred({_PARKED: DeferredStreamHandler(parked)}) as (_server, channel):
            self._expect_greeting(channel, parked, b"open")  # the connection and its threads exist before counting
            before = threading.active_count()
            streams: list[Iterator[bytes]] = []
            writers: list[tuple[CallContext, StreamWriter]] = []
            try:
                for _ in range(self.open_streams):
                    streams.append(channel.stream(_PARKED, b"", timeout=self.call_timeout))
                    writers.append(parked.next(self.call_timeout))
                for items in streams:
                    assert next(items) == b"open"
                during = threading.active_count()
                assert during - before <= self.thread_slack, (
                    f"{self.open_streams} open deferred streams: {during} threads, {before} with none open; a "
                    f"transport declaring {Capability.DEFERRED_STREAMS} holds no thread per open stream"
                )
            finally:
                for items in streams:
                    _close_iterator(items)
            for ctx, writer in writers:
                self._expect_refused("closed by its caller", ctx, writer)
