"""The in-memory transport's own edges, beyond what the conformance suite (tests/conformance) proves."""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
from flamepy_transports.inmem.transport import InMemoryServer, InMemoryTransport

from flamepy_core.contracts import UnaryHandler
from flamepy_core.kit import SimpleCallContext


class _FinishesAsTheWaitRunsOut(Future[bytes]):
    """A handler's future whose wait times out, then is found done: the order a busy machine can give."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer
        self.waits = 0

    def result(self, timeout: float | None = None) -> bytes:
        self.waits += 1
        if self.waits == 1:
            self.set_result(self.answer)
            raise FutureTimeout()
        return super().result(timeout)


def _server(transport: InMemoryTransport) -> InMemoryServer:
    return transport.serve("inmem://edges", {"/t/Echo": UnaryHandler(lambda request, ctx: request)})


def test_a_call_that_finishes_as_its_wait_runs_out_returns_its_answer() -> None:
    """Seen in CI: a call with a 1 ms deadline was answered, yet failed with the wait's own TimeoutError."""
    transport = InMemoryTransport()
    server = _server(transport)
    try:
        future = _FinishesAsTheWaitRunsOut(b"answered")
        ctx = SimpleCallContext("/t/Echo", 0.001)
        assert server._await(future, ctx, "/t/Echo", 0.001) == b"answered"
    finally:
        server.stop(grace=0)


def test_a_handlers_own_timeout_error_is_raised_as_the_handlers_error() -> None:
    transport = InMemoryTransport()
    server = _server(transport)
    try:
        future: Future[bytes] = Future()
        own = FutureTimeout("the handler's own")
        future.set_exception(own)
        with pytest.raises(FutureTimeout) as info:
            server._await(future, SimpleCallContext("/t/Echo", 5.0), "/t/Echo", 5.0)
        assert info.value is own
    finally:
        server.stop(grace=0)
