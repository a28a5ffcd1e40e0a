"""Streams read by callbacks: the contract of ``stream_async``, native or the kit's.

Mixed into :class:`~flamepy_conformance.TransportTests`. The runtime reads some streams with callbacks
instead of a thread waiting on each (the server's batches of tasks to its instances), through the kit's
:func:`flamepy_core.kit.stream_async`: the channel's own ``stream_async`` when the transport declares
``async_streams``, otherwise a thread that reads ``Channel.stream``. Either way the caller sees the same
contract, so these tests run on every transport with ``streaming``, except the one that counts threads,
which is gated on ``async_streams``.

What the caller must see:

* ``stream_async`` returns at once; ``on_item`` gets each response in order, then ``on_end(None)`` once,
  after the last item;
* a stream that fails gives its items, then ``on_end`` with the handler's ``FlameError`` (code and message
  intact) once; an unknown method ends with ``UNIMPLEMENTED``, a missed deadline with
  ``DEADLINE_EXCEEDED`` promptly, an absent server with ``UNAVAILABLE`` promptly;
* an error found before sending (a request over the largest message) reaches ``on_end``, never raised;
* with ``async_streams``: the channel has ``stream_async``, and open streams hold no thread of the caller's
  process each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from hypothesis import given

from flamepy_conformance.capabilities import requires
from flamepy_conformance.probe import (
    CHUNKS,
    MISSING,
    chunk_answers,
    pack_chunks,
    pack_failure,
    probe_handlers,
    unpack_chunks,
    unpack_failure,
)
from flamepy_conformance.strategies import error_codes, error_messages, stream_chunks
from flamepy_conformance.transport_base import TransportSuiteBase, _mentions
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    AsyncStreamChannel,
    CallContext,
    Channel,
    DeferredStreamHandler,
    Handler,
    StreamHandler,
    StreamWriter,
    Timeout,
)
from flamepy_core.kit import adapt_handlers, stream_async

_SERVICE = "/flamepy.conformance.AsyncStream"
_FAIL_AFTER = f"{_SERVICE}/FailAfter"
_HOLD = f"{_SERVICE}/Hold"

_ENDED = "end"
_ITEM = "item"


class _Collected:
    """What the callbacks of one stream received, in the order they ran."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes | FlameError | None]] = []
        self.threads: set[int] = set()
        self._cond = threading.Condition()

    def on_item(self, item: bytes) -> None:
        with self._cond:
            self.events.append((_ITEM, item))
            self.threads.add(threading.get_ident())

    def on_end(self, error: FlameError | None) -> None:
        with self._cond:
            self.events.append((_ENDED, error))
            self._cond.notify_all()

    @property
    def items(self) -> list[bytes]:
        with self._cond:
            return [item for kind, item in self.events if kind == _ITEM and isinstance(item, bytes)]

    def ended(self) -> bool:
        with self._cond:
            return any(kind == _ENDED for kind, _ in self.events)

    def end(self, timeout: float) -> FlameError | None:
        """How the stream ended (None: normally); fails unless it ended exactly once, after every item."""
        with self._cond:
            ended = self._cond.wait_for(lambda: any(kind == _ENDED for kind, _ in self.events), timeout)
            assert ended, f"on_end was not called within {timeout} s (items so far: {len(self.items)})"
        time.sleep(0.02)  # a second on_end, or an item after the end, would show by now
        with self._cond:
            ends = [value for kind, value in self.events if kind == _ENDED]
            assert len(ends) == 1, f"on_end was called {len(ends)} times: {ends!r}"
            assert self.events[-1][0] == _ENDED, "an item was handed over after on_end"
            error = ends[0]
        assert error is None or isinstance(error, FlameError), f"on_end got {error!r}, not a FlameError or None"
        return error


def _open(channel: Channel, method: str, request: bytes, timeout: Timeout) -> _Collected:
    collected = _Collected()
    stream_async(channel, method, request, collected.on_item, collected.on_end, timeout)
    return collected


def _fail_after(request: bytes, ctx: CallContext) -> Iterator[bytes]:
    """Answers the chunks packed after the first, then raises the error the first describes."""
    failure, *chunks = unpack_chunks(request)
    yield from chunk_answers(chunks)
    raise unpack_failure(failure)


class AsyncStreamTests(TransportSuiteBase):
    """The tests of streams read by callbacks (mixed into ``TransportTests``)."""

    held_streams: int = 16
    """Streams held open at once in the no-thread-per-stream test."""

    @requires("streaming")
    def test_stream_async_hands_over_every_item_in_order_then_the_end(self) -> None:
        with self.served(probe_handlers()) as (_server, channel):

            @given(chunks=stream_chunks(max_items=12, max_size=128))
            def check(chunks: list[bytes]) -> None:
                collected = _open(channel, CHUNKS, pack_chunks(chunks), self.call_timeout)
                assert collected.end(self.call_timeout) is None
                assert collected.items == chunk_answers(chunks), "items were lost, reordered or changed"

            self.hypothesis_settings(0.5)(check)()

    @requires("streaming")
    def test_stream_async_ends_with_the_handlers_error_after_its_items(self) -> None:
        handlers: dict[str, Handler] = {_FAIL_AFTER: StreamHandler(_fail_after)}
        with self.served(handlers) as (_server, channel):

            @given(
                chunks=stream_chunks(max_items=6, max_size=64), code=error_codes(), message=error_messages(max_size=80)
            )
            def check(chunks: list[bytes], code: FlameErrorCode, message: str) -> None:
                request = pack_chunks([pack_failure(code, message), *chunks])
                collected = _open(channel, _FAIL_AFTER, request, self.call_timeout)
                error = collected.end(self.call_timeout)
                assert collected.items == chunk_answers(chunks), "items before the error were lost or reordered"
                assert error is not None, "the stream ended normally; the handler raised"
                assert (error.code, error.message) == (code, message), repr(error)

            self.hypothesis_settings(0.5)(check)()
            missing = _open(channel, MISSING, b"", self.call_timeout)
            error = missing.end(self.call_timeout)
            assert error is not None and error.code == FlameErrorCode.UNIMPLEMENTED, repr(error)

    @requires("streaming")
    def test_stream_async_deadline_and_absent_server_end_promptly(self) -> None:
        release = threading.Event()

        def hold(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            yield b"first"
            release.wait(self.call_timeout)

        try:
            with self.served({_HOLD: StreamHandler(hold)}) as (_server, channel):
                start = time.monotonic()
                collected = _open(channel, _HOLD, b"", self.deadline_timeout)
                error = collected.end(self.deadline_timeout + self.prompt_deadline_s)
                elapsed = time.monotonic() - start
                assert error is not None and error.code == FlameErrorCode.DEADLINE_EXCEEDED, repr(error)
                assert elapsed < self.deadline_timeout + self.prompt_deadline_s, f"it ended after {elapsed:.2f} s"
                release.set()
        finally:
            release.set()
        nobody = self.transport.connect(self.new_endpoint())
        try:
            collected = _open(nobody, CHUNKS, pack_chunks([b"x"]), self.call_timeout)
            error = collected.end(self.prompt_unavailable_s + 1)
            assert error is not None and error.code == FlameErrorCode.UNAVAILABLE, repr(error)
            assert collected.items == []
        finally:
            nobody.close()

    @requires("streaming")
    def test_stream_async_gives_a_request_over_the_limit_to_on_end(self) -> None:
        limit = self.boundary_size()
        with self.served(probe_handlers()) as (_server, channel):
            collected = _open(channel, CHUNKS, bytes(limit + 1), self.call_timeout)  # must not raise
            error = collected.end(self.call_timeout)
            assert error is not None and error.code == FlameErrorCode.MESSAGE_TOO_LARGE, repr(error)
            assert _mentions(error.message, limit) and _mentions(error.message, limit + 1), error.message
            self.echo(channel, b"still fine")

    @requires("streaming", "async_streams")
    def test_open_async_streams_hold_no_caller_thread(self) -> None:
        writers: list[StreamWriter] = []

        def hold(request: bytes, ctx: CallContext, writer: StreamWriter) -> None:
            writer.send(b"open")
            writers.append(writer)

        handlers = adapt_handlers({_HOLD: DeferredStreamHandler(hold), **probe_handlers()}, self.capabilities)
        with self.served(handlers) as (_server, channel):
            assert isinstance(channel, AsyncStreamChannel), (
                f"transport {self.transport.name} declares async_streams but its channel has no stream_async"
            )
            self.echo(channel, b"warm")  # the channel's own threads, if any, start here
            before = threading.active_count()
            try:
                opened = [_open(channel, _HOLD, b"", self.call_timeout) for _ in range(self.held_streams)]
                deadline = time.monotonic() + self.call_timeout
                while not all(c.items for c in opened) and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert all(c.items == [b"open"] for c in opened), "not every stream handed over its first item"
                assert not any(c.ended() for c in opened), "a held stream ended"
                grown = threading.active_count() - before
                # The server runs in this process too: a thread per stream, unless it defers streams natively.
                server_threads = 0 if self.capabilities.deferred_streams else self.held_streams
                assert grown < self.held_streams // 2 + server_threads, (
                    f"{self.held_streams} open streams added {grown} threads to this process: the channel "
                    f"holds a thread per stream, which async_streams says it does not"
                )
            finally:
                for writer in list(writers):
                    writer.close()
            for collected in opened:
                assert collected.end(self.call_timeout) is None
