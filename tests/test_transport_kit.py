"""The kit's adapters: deferred handlers on a transport without native support, async calls on any channel."""

from __future__ import annotations

import threading
import time

import pytest

from flamepy_core.contracts import DeferredHandler, FlameError, FlameErrorCode, StreamHandler, UnaryHandler
from flamepy_core.contracts.transport import TransportCapabilities
from flamepy_core.transport_kit import (
    FutureResponder,
    SimpleCallContext,
    adapt_handlers,
    blocking_unary,
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
