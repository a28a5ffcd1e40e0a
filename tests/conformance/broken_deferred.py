"""Transports that get deferred streams wrong, each the way a real one might (see ``broken_transports.py``).

Each declares ``deferred_streams`` and serves the in-memory transport's streams underneath:

* ``broken-threadperstream`` - serves each deferred stream on a server thread that waits for the
  writer (the core's adapter), while claiming that an open stream holds no thread;
* ``broken-blockingsend`` - its writer hands responses over through a bounded queue of 64, so ``send``
  waits while the caller has not read: a producer that sends ahead of its reader blocks;
* ``broken-keepsending`` - its writer never looks at the call, so ``send`` says True long after the
  caller closed the stream or its deadline passed;
* ``broken-endtwice`` - its writer's ``close`` and ``fail`` always say True, so a producer cannot tell
  that the stream had already ended.

Two more declare ``async_streams`` (channels read streams into callbacks) and get it wrong:

* ``broken-readerthread`` - its ``stream_async`` reads each stream on a thread of its own;
* ``broken-asyncendtwice`` - its ``stream_async`` tells a failed stream's end twice.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator, Mapping

from broken_transports import InmemWithFlaw
from flamepy_transports.inmem.transport import DEFAULT_MAX_MESSAGE_SIZE, InMemoryTransport

from flamepy_core.contracts.errors import FlameError
from flamepy_core.contracts.transport import (
    DEFAULT_TIMEOUT,
    CallContext,
    Channel,
    DeferredStreamHandler,
    Handler,
    Server,
    StreamEndFn,
    StreamHandler,
    StreamItemFn,
    StreamWriter,
    Timeout,
    TransportCapabilities,
)
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT, blocking_stream

_CAPABILITIES = TransportCapabilities(
    max_message_size=DEFAULT_MAX_MESSAGE_SIZE, cross_process=False, deferred_streams=True
)


class _DeclaresDeferredStreams(InmemWithFlaw):
    spec_capabilities = _CAPABILITIES

    def __init__(
        self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, default_timeout: float | None = DEFAULT_CALL_TIMEOUT
    ) -> None:
        super().__init__(max_message_size, default_timeout)
        # Threads enough for the suite's 50 open streams, so a thread per stream shows as threads.
        self._inner = InMemoryTransport(max_message_size, default_timeout, max_workers=128)
        self.capabilities = TransportCapabilities(
            max_message_size=max_message_size, cross_process=False, deferred_streams=True
        )

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> Server:
        served = {p: self.deferred(h) if isinstance(h, DeferredStreamHandler) else h for p, h in handlers.items()}
        return self._inner.serve(endpoint, served)

    def deferred(self, handler: DeferredStreamHandler) -> Handler:
        return handler


class ThreadPerStream(_DeclaresDeferredStreams):
    """Serves each deferred stream on a thread that waits for its writer, and claims it holds none."""

    name = "broken-threadperstream"
    fault = (__doc__ or "").strip()

    def deferred(self, handler: DeferredStreamHandler) -> Handler:
        return blocking_stream(handler)


_END = object()


class _BoundedWriter:
    """Responses pass through a queue of 64: ``send`` waits while it is full."""

    def __init__(self) -> None:
        self.items: queue.Queue[object] = queue.Queue(maxsize=64)

    def send(self, response: bytes) -> bool:
        self.items.put(response)
        return True

    def close(self) -> bool:
        self.items.put(_END)
        return True

    def fail(self, error: BaseException) -> bool:
        self.items.put(error)
        return True


class BlockingSend(_DeclaresDeferredStreams):
    """Its writer's send waits while 64 responses are unread."""

    name = "broken-blockingsend"
    fault = (__doc__ or "").strip()

    def deferred(self, handler: DeferredStreamHandler) -> Handler:
        def call(request: bytes, ctx: CallContext) -> Iterator[bytes]:
            writer = _BoundedWriter()
            handler.fn(request, ctx, writer)
            while ctx.is_active():
                try:
                    item = writer.items.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item

        return StreamHandler(call)


class _Wrapper:
    def __init__(self, inner: StreamWriter) -> None:
        self.inner = inner

    def send(self, response: bytes) -> bool:
        return self.inner.send(response)

    def close(self) -> bool:
        return self.inner.close()

    def fail(self, error: BaseException) -> bool:
        return self.inner.fail(error)


class _DeafWriter(_Wrapper):
    """``send`` says True whatever happened to the stream (it never looks)."""

    def send(self, response: bytes) -> bool:
        self.inner.send(response)
        return True


class _AlwaysEnds(_Wrapper):
    """``close``/``fail`` say True, also the second time."""

    def close(self) -> bool:
        self.inner.close()
        return True

    def fail(self, error: BaseException) -> bool:
        self.inner.fail(error)
        return True


def _wrapping(wrapper: type[_Wrapper]) -> type[_DeclaresDeferredStreams]:
    class Wrapping(_DeclaresDeferredStreams):
        def deferred(self, handler: DeferredStreamHandler) -> Handler:
            return DeferredStreamHandler(lambda request, ctx, writer: handler.fn(request, ctx, wrapper(writer)))

    return Wrapping


class KeepSending(_wrapping(_DeafWriter)):  # type: ignore[misc]
    """Its writer's send says True after the caller has gone."""

    name = "broken-keepsending"
    fault = (__doc__ or "").strip()


class EndTwice(_wrapping(_AlwaysEnds)):  # type: ignore[misc]
    """Its writer's close and fail say True after the stream had ended."""

    name = "broken-endtwice"
    fault = (__doc__ or "").strip()


class _AsyncStreamChannel:
    """A channel with ``stream_async``: the in-memory channel underneath, read by a thread per stream."""

    def __init__(self, inner: Channel) -> None:
        self.inner = inner

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint

    def unary(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        return self.inner.unary(method, request, timeout)

    def stream(self, method: str, request: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> Iterator[bytes]:
        return self.inner.stream(method, request, timeout)

    def close(self) -> None:
        self.inner.close()

    def stream_async(
        self,
        method: str,
        request: bytes,
        on_item: StreamItemFn,
        on_end: StreamEndFn,
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        threading.Thread(target=self.read, args=(method, request, on_item, on_end, timeout), daemon=True).start()

    def read(self, method: str, request: bytes, on_item: StreamItemFn, on_end: StreamEndFn, timeout: Timeout) -> None:
        try:
            for item in self.inner.stream(method, request, timeout):
                on_item(item)
        except FlameError as exc:
            on_end(exc)
            return
        on_end(None)


class _EndsTwice(_AsyncStreamChannel):
    """Tells a failed stream's end twice: its error, then a normal end."""

    def read(self, method: str, request: bytes, on_item: StreamItemFn, on_end: StreamEndFn, timeout: Timeout) -> None:
        ends: list[FlameError | None] = []

        def end(error: FlameError | None) -> None:
            ends.append(error)
            on_end(error)

        super().read(method, request, on_item, end, timeout)
        if ends and ends[0] is not None:
            on_end(None)


class _DeclaresAsyncStreams(_DeclaresDeferredStreams):
    spec_capabilities = dataclasses.replace(_CAPABILITIES, async_streams=True)
    channel: type[_AsyncStreamChannel] = _AsyncStreamChannel

    def __init__(
        self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, default_timeout: float | None = DEFAULT_CALL_TIMEOUT
    ) -> None:
        super().__init__(max_message_size, default_timeout)
        self.capabilities = dataclasses.replace(self.capabilities, async_streams=True)

    def connect(self, endpoint: str) -> Channel:
        return self.channel(self._inner.connect(endpoint))  # type: ignore[return-value]


class ReaderThread(_DeclaresAsyncStreams):
    """Its stream_async reads each stream on a thread of its own, and claims an open stream holds none."""

    name = "broken-readerthread"
    fault = (__doc__ or "").strip()


class AsyncEndTwice(_DeclaresAsyncStreams):
    """Its stream_async calls on_end twice for a failed stream: the error, then a normal end."""

    name = "broken-asyncendtwice"
    fault = (__doc__ or "").strip()
    channel = _EndsTwice


BROKEN = [ThreadPerStream, BlockingSend, KeepSending, EndTwice, ReaderThread, AsyncEndTwice]
