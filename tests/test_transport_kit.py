"""The kit's adapters: deferred handlers and streams on a transport without native support, async calls on
any channel. (The conformance suite runs deferred streams through the adapter on gRPC; these tests cover
what a transport cannot show: the writer's own rules, and the adapter's generator left or cancelled.)"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flamepy_core.contracts import (
    DeferredHandler,
    DeferredStreamHandler,
    FlameError,
    FlameErrorCode,
    StreamHandler,
    StreamWriter,
    UnaryHandler,
)
from flamepy_core.contracts.transport import CallContext, Responder, TransportCapabilities
from flamepy_core.transport_kit import (
    WAIT_SLICE,
    FutureResponder,
    QueueWriter,
    SimpleCallContext,
    adapt_handlers,
    answering,
    blocking_stream,
    blocking_unary,
    calls_run_on,
    run_calls_on,
    unary_async,
)


def test_responder_completes_once() -> None:
    responder = FutureResponder()
    assert responder.send(b"first")
    assert not responder.send(b"second")
    assert not responder.fail(FlameError(FlameErrorCode.INTERNAL, "late"))
    assert responder.future.result() == b"first"


def test_blocking_unary_returns_a_reply_completed_on_another_thread() -> None:
    def start(request: bytes, ctx: object, responder: FutureResponder) -> None:
        threading.Timer(0.05, responder.send, args=(request[::-1],)).start()

    handler = blocking_unary(DeferredHandler(start))  # type: ignore[arg-type]
    assert handler.fn(b"abc", SimpleCallContext("/m", 5.0)) == b"cba"


def test_blocking_unary_raises_what_the_handler_failed_with() -> None:
    def start(request: bytes, ctx: object, responder: FutureResponder) -> None:
        responder.fail(FlameError(FlameErrorCode.NOT_FOUND, "nothing here"))

    handler = blocking_unary(DeferredHandler(start))  # type: ignore[arg-type]
    with pytest.raises(FlameError) as info:
        handler.fn(b"", SimpleCallContext("/m", 5.0))
    assert info.value.code == FlameErrorCode.NOT_FOUND


def test_blocking_unary_abandons_the_reply_when_the_caller_goes() -> None:
    kept: list[FutureResponder] = []

    def start(request: bytes, ctx: object, responder: FutureResponder) -> None:
        kept.append(responder)  # never completed by the handler

    ctx = SimpleCallContext("/m", None)
    threading.Timer(0.05, ctx.cancel).start()
    began = time.monotonic()
    with pytest.raises(FlameError) as info:
        blocking_unary(DeferredHandler(start)).fn(b"", ctx)  # type: ignore[arg-type]
    assert info.value.code == FlameErrorCode.CANCELLED
    assert time.monotonic() - began < 5
    assert not kept[0].send(b"too late")  # the late reply is dropped, not delivered


def test_blocking_unary_keeps_the_executor_its_handler_asked_to_run_calls_on() -> None:
    def start(request: bytes, ctx: object, responder: FutureResponder) -> None:
        responder.send(request)

    with ThreadPoolExecutor(max_workers=1) as executor:
        assert calls_run_on(start) is None
        assert calls_run_on(blocking_unary(DeferredHandler(start)).fn) is None  # type: ignore[arg-type]
        marked = run_calls_on(start, executor)
        assert marked is start and calls_run_on(start) is executor
        assert calls_run_on(blocking_unary(DeferredHandler(marked)).fn) is executor  # type: ignore[arg-type]
    setattr(start, "flamepy_calls_run_on", "not an executor")  # noqa: B010 - what a stray attribute looks like
    assert calls_run_on(start) is None


def test_adapt_handlers_only_touches_deferred_ones_and_only_when_needed() -> None:
    unary = UnaryHandler(lambda data, ctx: data)
    stream = StreamHandler(lambda data, ctx: iter([data]))
    deferred = DeferredHandler(lambda data, ctx, responder: None)
    table = {"/u": unary, "/s": stream, "/d": deferred}
    plain = adapt_handlers(table, TransportCapabilities(max_message_size=1))
    assert plain["/u"] is unary and plain["/s"] is stream
    assert isinstance(plain["/d"], UnaryHandler)
    native = adapt_handlers(table, TransportCapabilities(max_message_size=1, deferred_replies=True))
    assert native["/d"] is deferred


def test_adapt_handlers_makes_deferred_streams_blocking_only_without_the_capability() -> None:
    deferred = DeferredStreamHandler(lambda data, ctx, writer: None)
    plain = adapt_handlers({"/ds": deferred}, TransportCapabilities(max_message_size=1, deferred_replies=True))
    assert isinstance(plain["/ds"], StreamHandler)
    native = adapt_handlers({"/ds": deferred}, TransportCapabilities(max_message_size=1, deferred_streams=True))
    assert native["/ds"] is deferred


# -- QueueWriter: the writer's rules, as a model ------------------------------------------------------------

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.binary(max_size=8)),
        st.tuples(st.just("close"), st.none()),
        st.tuples(st.just("fail"), st.sampled_from([FlameErrorCode.NOT_FOUND, FlameErrorCode.INTERNAL])),
        st.tuples(st.just("abandon"), st.none()),
    ),
    max_size=20,
)


def _drain(writer: QueueWriter) -> tuple[list[bytes], FlameError | None]:
    """Everything the writer hands out, then how it ended; asserts that it did end."""
    items: list[bytes] = []
    while True:
        try:
            got, item = writer.next_event(0.0)
        except FlameError as err:
            return items, err
        assert got, "the stream has not ended, though the model says it has"
        if item is None:
            return items, None
        items.append(item)


@given(ops=_OPS)
def test_queue_writer_delivers_what_was_sent_before_the_first_end(ops: list[tuple[str, object]]) -> None:
    """Sends before the first end (close, fail, abandon) take effect and are handed out in order, then
    that end; every operation after it returns False; abandon (its caller gone) drops what was waiting."""
    writer = QueueWriter()
    expected: list[bytes] = []
    end: tuple[str, object] | None = None
    for op, arg in ops:
        if op == "send":
            assert isinstance(arg, bytes)
            assert writer.send(arg) is (end is None), (op, end)
            if end is None:
                expected.append(arg)
        elif op == "close":
            assert writer.close() is (end is None)
            end = end or ("close", None)
        elif op == "fail":
            assert isinstance(arg, FlameErrorCode)
            assert writer.fail(FlameError(arg, "failed")) is (end is None)
            end = end or ("fail", arg)
        else:
            writer.abandon()
            expected.clear()  # nobody will read them, even after the stream ended
            end = end or ("abandon", FlameErrorCode.CANCELLED)
    if end is None:
        assert not writer.ended
        if not expected:
            assert writer.next_event(0.0) == (False, None), "a stream that did not end yet handed out an end"
        assert writer.close()
        end = ("close", None)
    assert writer.ended
    items, error = _drain(writer)
    assert items == expected
    if end[0] == "close":
        assert error is None
    else:
        assert error is not None and error.code == end[1], (end, error)


def test_queue_writer_refuses_an_oversized_response_after_delivering_the_rest() -> None:
    writer = QueueWriter(max_message_size=4, method="/svc/Watch")
    assert writer.send(b"four")
    assert writer.send(b"fives") is False  # not taken: the stream failed
    assert writer.send(b"ok") is False
    items, error = _drain(writer)
    assert items == [b"four"]
    assert error is not None and error.code == FlameErrorCode.MESSAGE_TOO_LARGE
    assert "5 bytes" in error.message and "4 bytes" in error.message and "/svc/Watch" in error.message


def test_queue_writer_refuses_everything_once_its_call_is_no_longer_active() -> None:
    ctx = SimpleCallContext("/svc/Watch", None)
    writer = QueueWriter(ctx=ctx)
    assert writer.send(b"one")
    ctx.cancel()
    assert writer.send(b"two") is False
    assert writer.close() is False
    assert writer.fail(FlameError(FlameErrorCode.INTERNAL, "late")) is False
    _items, error = _drain(writer)  # what waited was dropped: its caller has gone
    assert _items == [] and error is not None and error.code == FlameErrorCode.CANCELLED


def test_queue_writer_waits_for_a_response_from_another_thread() -> None:
    writer = QueueWriter()
    assert writer.next_event(0.01) == (False, None)
    threading.Timer(0.05, writer.send, args=(b"later",)).start()
    assert writer.next_event(5.0) == (True, b"later")


# -- blocking_stream: the adapter's generator ------------------------------------------------------------


def _parked_stream() -> tuple[StreamHandler, list[tuple[CallContext, StreamWriter]]]:
    parked: list[tuple[CallContext, StreamWriter]] = []

    def start(request: bytes, ctx: CallContext, writer: StreamWriter) -> None:
        writer.send(request)
        parked.append((ctx, writer))

    return blocking_stream(DeferredStreamHandler(start), max_message_size=1024), parked


def test_blocking_stream_yields_what_another_thread_sends_then_ends() -> None:
    handler, parked = _parked_stream()
    items = iter(handler.fn(b"first", SimpleCallContext("/m", 5.0)))
    assert next(items) == b"first"
    _ctx, writer = parked[0]

    def feed() -> None:
        for i in range(3):
            writer.send(b"%d" % i)
        writer.close()

    threading.Timer(0.05, feed).start()
    assert list(items) == [b"0", b"1", b"2"]


def test_blocking_stream_raises_what_fn_raised_after_what_it_sent() -> None:
    def start(request: bytes, ctx: CallContext, writer: StreamWriter) -> None:
        writer.send(b"sent")
        raise LookupError("no such session")

    items = iter(blocking_stream(DeferredStreamHandler(start)).fn(b"", SimpleCallContext("/m", 5.0)))
    assert next(items) == b"sent"
    with pytest.raises(LookupError, match="no such session"):  # the transport maps it to INTERNAL
        next(items)


def test_blocking_stream_closed_by_the_transport_refuses_later_sends() -> None:
    """The transport closes the generator (the caller left): the writer says False from then on."""
    handler, parked = _parked_stream()
    items = handler.fn(b"first", SimpleCallContext("/m", 5.0))
    assert next(iter(items)) == b"first"
    items.close()  # type: ignore[attr-defined]
    _ctx, writer = parked[0]
    assert writer.send(b"anyone?") is False
    assert writer.close() is False


def test_blocking_stream_ends_soon_after_its_caller_goes_though_nothing_is_sent() -> None:
    handler, parked = _parked_stream()
    ctx = SimpleCallContext("/m", None)
    items = iter(handler.fn(b"first", ctx))
    assert next(items) == b"first"
    threading.Timer(0.05, ctx.cancel).start()
    began = time.monotonic()
    assert list(items) == []  # the thread lets go: a silent producer does not hold it until its deadline
    assert time.monotonic() - began < WAIT_SLICE + 2.0
    assert parked[0][1].send(b"late") is False


class _BlockingChannel:
    endpoint = "test://x"

    def unary(self, method: str, request: bytes, timeout: object = None) -> bytes:
        if method == "/fail":
            raise FlameError(FlameErrorCode.UNAVAILABLE, "gone")
        return method.encode() + request


def test_unary_async_falls_back_to_a_pool_for_a_blocking_channel() -> None:
    channel = _BlockingChannel()
    assert unary_async(channel, "/ok", b"!").result(timeout=5) == b"/ok!"  # type: ignore[arg-type]
    with pytest.raises(FlameError) as info:
        unary_async(channel, "/fail", b"").result(timeout=5)  # type: ignore[arg-type]
    assert info.value.code == FlameErrorCode.UNAVAILABLE


class _RecordingChannel:
    """A blocking channel that notes the thread of each call; ``/slow`` waits for ``release``, ``/fail`` fails."""

    endpoint = "test://recording"

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.release = threading.Event()

    def unary(self, method: str, request: bytes, timeout: object = None) -> bytes:
        self.threads.append(threading.current_thread().name)
        if method == "/fail":
            raise FlameError(FlameErrorCode.UNAVAILABLE, "gone")
        if method == "/slow" and not self.release.wait(10):
            raise FlameError(FlameErrorCode.DEADLINE_EXCEEDED, "/slow was never released")
        return b"answer:" + request


def _answered_by(channel: _RecordingChannel, method: str, key: object, call_key: object) -> DeferredHandler:
    """A deferred handler that, as the runtime's RunTask does, replies with the outcome of one call."""

    def start(request: bytes, ctx: CallContext, responder: Responder) -> None:
        with answering(key):
            future = unary_async(channel, method, request, answers=call_key)  # type: ignore[arg-type]
        future.add_done_callback(
            lambda f: responder.fail(f.exception()) if f.exception() else responder.send(f.result())  # type: ignore[arg-type]
        )

    return DeferredHandler(start)


def _serve_on(name: str, handler: UnaryHandler, request: bytes) -> tuple[bytes | BaseException, str]:
    """Run ``handler`` on a thread called ``name``, as a transport's server thread would."""
    out: list[bytes | BaseException] = []

    def run() -> None:
        try:
            out.append(handler.fn(request, SimpleCallContext("/m", 5.0)))
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and out, "the adapted handler did not return"
    return out[0], name


def test_the_waiting_thread_makes_the_call_its_reply_waits_for() -> None:
    channel = _RecordingChannel()
    handler = blocking_unary(_answered_by(channel, "/ok", ("s", 1), ("s", 1)))
    reply, name = _serve_on("server-thread", handler, b"x")
    assert reply == b"answer:x"
    assert channel.threads == [name], "the call went to another thread: two hand-offs the adapter's thread saves"


def test_a_failed_call_made_by_the_waiting_thread_fails_the_reply() -> None:
    channel = _RecordingChannel()
    reply, name = _serve_on("server-thread", blocking_unary(_answered_by(channel, "/fail", "k", "k")), b"")
    assert isinstance(reply, FlameError) and reply.code == FlameErrorCode.UNAVAILABLE, repr(reply)
    assert channel.threads == [name]


def test_only_the_named_call_waits_for_the_server_thread() -> None:
    """A call started under another key (another task) is not made by this thread: it must not wait for it."""
    channel = _RecordingChannel()
    reply, name = _serve_on("server-thread", blocking_unary(_answered_by(channel, "/ok", ("s", 1), ("s", 2))), b"y")
    assert reply == b"answer:y"
    assert channel.threads and name not in channel.threads


def test_a_reply_already_sent_is_not_held_by_a_call_started_for_it() -> None:
    channel = _RecordingChannel()
    finished = threading.Event()

    def start(request: bytes, ctx: CallContext, responder: Responder) -> None:
        with answering("k"):
            unary_async(channel, "/slow", request, answers="k").add_done_callback(  # type: ignore[arg-type]
                lambda f: finished.set()
            )
        responder.send(b"at once")

    reply, name = _serve_on("server-thread", blocking_unary(DeferredHandler(start)), b"")
    assert reply == b"at once"
    assert not finished.is_set(), "the reply waited for a call it did not need"
    channel.release.set()
    assert finished.wait(5) and channel.threads and name not in channel.threads


def test_answering_without_the_adapter_changes_nothing() -> None:
    """On a transport that defers natively there is no waiting thread: the call goes out as usual, at once."""
    channel = _RecordingChannel()
    with answering("k"):
        future = unary_async(channel, "/ok", b"z", answers="k")  # type: ignore[arg-type]
        assert future.result(timeout=5) == b"answer:z"
    assert channel.threads and channel.threads[0] != threading.current_thread().name


def test_a_handler_that_raises_fails_at_once_and_its_call_still_goes_out() -> None:
    channel = _RecordingChannel()
    finished = threading.Event()

    def start(request: bytes, ctx: CallContext, responder: Responder) -> None:
        with answering("k"):
            unary_async(channel, "/slow", request, answers="k").add_done_callback(  # type: ignore[arg-type]
                lambda f: finished.set()
            )
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "refused after starting")

    reply, name = _serve_on("server-thread", blocking_unary(DeferredHandler(start)), b"")
    assert isinstance(reply, FlameError) and reply.code == FlameErrorCode.INVALID_ARGUMENT, repr(reply)
    assert not finished.is_set(), "the error waited for the call"
    channel.release.set()
    assert finished.wait(5) and channel.threads and name not in channel.threads
