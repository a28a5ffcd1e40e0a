"""Large payloads through the framed kit without copies more than needed: a request sent as its parts, a reply
read where the link read it (``unary_read``).

The link reads a large message into a buffer it keeps for the next one, so whatever is read out of a reply
must be copied before the link reads again: these tests hold many large answers, with distinct contents,
from calls made one after another and at once, and compare them at the end. A reader that kept a view of
the link's buffer, or a kit that ran it after the next message was read, would see another answer's bytes.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import ServedPair, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from flamepy_core.contracts import CallContext, FlameError, FlameErrorCode, UnaryHandler
from flamepy_core.kit.basics import borrows_request, request_borrowed, send_parts, unary_read
from flamepy_core.plugins import get_registry

TURN = "/test.Large/Turn"
"""Answers its request reversed: a reply that differs from the request it answers, and from every other."""


def turn(request: bytes, ctx: CallContext) -> bytes:
    return request[::-1]


class Served(ServedPair):
    def __init__(self, transport: str = "uds") -> None:
        self.dir = tempfile.mkdtemp(prefix="fl-large-", dir="/tmp")
        self.transport = get_registry().transport(transport)
        endpoint = f"uds://{self.dir}/s.sock" if transport == "uds" else f"inmem://large-{os.getpid()}-{id(self)}"
        self.server: Any = self.transport.serve(endpoint, {TURN: UnaryHandler(turn)})
        self.channel: Any = self.transport.connect(self.server.endpoint)


@pytest.fixture()
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.close()


def copied(view: memoryview) -> bytes:
    return bytes(view)


def test_a_uds_channel_reads_replies_where_they_arrived() -> None:
    """The uds channel has ``unary_read`` (the kit's helper then sends the parts as they are)."""
    channel = get_registry().transport("uds").connect("uds:///nowhere/s.sock")
    try:
        assert callable(getattr(channel, "unary_read", None))
    finally:
        channel.close()


@settings(max_examples=25, deadline=None)
@given(parts=st.lists(st.binary(max_size=300) | st.integers(60_000, 300_000).map(os.urandom), max_size=5))
def test_the_parts_of_a_request_arrive_as_one_message(parts: list[bytes]) -> None:
    """Parts of any sizes, empty ones included, small messages and large: the server gets their concatenation."""
    s = Served()
    try:
        joined = b"".join(parts)
        assert unary_read(s.channel, TURN, [*parts], copied, timeout=60) == joined[::-1]
        views: list[bytes | memoryview] = [memoryview(bytearray(p)) for p in parts]  # any buffers, not only bytes
        assert unary_read(s.channel, TURN, views, copied, timeout=60) == joined[::-1]
    finally:
        s.close()


def test_large_replies_read_one_after_another_each_keep_their_own_bytes(served: Served) -> None:
    """Replies of several MiB, each read into the link's kept buffer and copied out by the reader: every
    one kept is its own, after the link has read the others into the same buffer."""
    requests = [os.urandom((3 << 20) + i * 4097) for i in range(5)]
    kept = [unary_read(served.channel, TURN, [r[:10], r[10:]], copied, timeout=60) for r in requests]
    assert kept == [r[::-1] for r in requests]


def test_a_view_kept_past_the_reader_sees_the_next_reply(served: Served) -> None:
    """Why ``read`` must copy what it keeps: the buffer it gets is the link's, and the next large reply is
    read into it. (The test above would fail with a reader that kept views.)"""
    first, second = os.urandom(2 << 20), os.urandom(2 << 20)
    view = unary_read(served.channel, TURN, [first], lambda v: v, timeout=60)
    assert bytes(view) == first[::-1]
    unary_read(served.channel, TURN, [second], copied, timeout=60)
    assert bytes(view) == second[::-1]


def test_large_calls_at_once_each_get_their_own_reply(served: Served) -> None:
    """Calls from several threads at once: some replies are read by a caller for itself, others by the
    link's reader thread for their callers; each reader runs before the link reads again."""
    sizes = [(2 << 20) + 13 * i for i in range(12)]

    def call(size: int) -> tuple[bytes, bytes]:
        request = os.urandom(size)
        return request, unary_read(served.channel, TURN, [request[:1], request[1:]], copied, timeout=120)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, sizes))
    for request, reply in results:
        assert reply == request[::-1]


def test_what_the_reader_raises_is_raised_to_its_caller_and_the_channel_goes_on(served: Served) -> None:
    def broken(view: memoryview) -> bytes:
        raise ValueError(f"cannot read {len(view)} bytes")

    with pytest.raises(ValueError, match="cannot read 3145728 bytes"):
        unary_read(served.channel, TURN, [bytes(3 << 20)], broken, timeout=60)
    assert unary_read(served.channel, TURN, [b"ab", b"c"], copied, timeout=60) == b"cba"


def test_errors_are_unarys_and_the_reader_is_not_called(served: Served) -> None:
    called: list[memoryview] = []
    with pytest.raises(FlameError) as raised:
        unary_read(served.channel, "/test.Large/Missing", [b"x"], called.append, timeout=10)
    assert raised.value.code == FlameErrorCode.UNIMPLEMENTED and not called
    limit = served.channel.limit
    with pytest.raises(FlameError) as raised:
        unary_read(served.channel, TURN, [bytes(limit // 2), bytes(limit // 2 + 1)], called.append, timeout=10)
    assert raised.value.code == FlameErrorCode.MESSAGE_TOO_LARGE and not called


def test_a_channel_without_unary_read_gets_the_parts_joined_and_its_answer_read() -> None:
    """The helper's fallback, for a third party's channel that has only ``unary``."""

    class Plain:
        endpoint = "plain://x"

        def __init__(self) -> None:
            self.seen: list[bytes] = []

        def unary(self, method: str, request: bytes, timeout: object = None) -> bytes:
            assert type(request) is bytes
            self.seen.append(request)
            return request[::-1]

    plain = Plain()
    read: Callable[[memoryview], bytes] = copied
    assert unary_read(plain, TURN, [b"ab", memoryview(b"cd"), b""], read) == b"dcba"  # type: ignore[arg-type]
    one = os.urandom(100)
    assert unary_read(plain, TURN, [one], read) == one[::-1]  # type: ignore[arg-type]
    assert plain.seen == [b"abcd", one] and plain.seen[1] is one


def test_concurrent_callers_with_distinct_readers() -> None:
    """Readers are per call: two threads with different readers, interleaved, each get their own result."""
    s = Served()
    try:
        barrier = threading.Barrier(2)
        out: dict[str, list[object]] = {"len": [], "head": []}

        def run(kind: str, reader: Callable[[memoryview], object]) -> None:
            barrier.wait()
            for i in range(6):
                request = os.urandom((1 << 20) + i)
                out[kind].append((request, unary_read(s.channel, TURN, [request], reader, timeout=60)))

        threads = [
            threading.Thread(target=run, args=("len", len)),
            threading.Thread(target=run, args=("head", lambda v: bytes(v[:16]))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert [got for _, got in out["len"]] == [(1 << 20) + i for i in range(6)]  # type: ignore[misc]
        assert all(got == r[::-1][:16] for r, got in out["head"])  # type: ignore[index,misc]
    finally:
        s.close()


# -- the server side: a deferred handler that borrows its request, a reply sent as parts --------------------

HOLD = "/test.Large/Hold"
HOLD_COPY = "/test.Large/HoldCopy"
PARTS = "/test.Large/Parts"


class Holding(ServedPair):
    """A uds server whose deferred handlers record what they were given and answer later (from the test)."""

    def __init__(self) -> None:
        from flamepy_core.contracts.transport import DeferredHandler

        self.dir = tempfile.mkdtemp(prefix="fl-borrow-", dir="/tmp")
        self.given: list[tuple[object, Any]] = []
        self.lock = threading.Lock()
        transport = get_registry().transport("uds")

        @borrows_request
        def hold(request: bytes | memoryview, ctx: CallContext, responder: Any) -> None:
            with self.lock:  # keeps the request as it was given (a view): what the mark promises not to do
                self.given.append((request, responder))

        @borrows_request
        def hold_copy(request: bytes | memoryview, ctx: CallContext, responder: Any) -> None:
            with self.lock:
                self.given.append((bytes(request), responder))

        def parts(request: bytes, ctx: CallContext, responder: Any) -> None:
            cut = [request[i : i + 100_000] for i in range(0, len(request), 100_000)]
            send_parts(responder, [b"<", *cut, b">"])

        self.server: Any = transport.serve(
            f"uds://{self.dir}/s.sock",
            {HOLD: DeferredHandler(hold), HOLD_COPY: DeferredHandler(hold_copy), PARTS: DeferredHandler(parts)},
        )
        self.channel: Any = transport.connect(self.server.endpoint)

    def wait_for(self, count: int) -> list[tuple[object, Any]]:
        def received() -> list[tuple[object, Any]] | None:
            with self.lock:
                return list(self.given) if len(self.given) >= count else None

        return wait_for(received, 20, f"{count} calls to be received")  # type: ignore[no-any-return]


@pytest.fixture()
def holding() -> Iterator[Holding]:
    h = Holding()
    yield h
    h.close()


def test_a_borrowing_handler_gets_a_large_request_where_the_link_read_it(holding: Holding) -> None:
    """Marked ``borrows_request``, a deferred handler is given a view of the link's buffer (no copy into
    ``bytes``), valid while it runs: a view kept past that sees the next large request."""
    first, second = os.urandom(2 << 20), os.urandom(2 << 20)
    answers = [holding.channel.unary_async(HOLD, first, timeout=60)]
    ((view, _),) = holding.wait_for(1)
    assert isinstance(view, memoryview) and bytes(view) == first
    answers.append(holding.channel.unary_async(HOLD, second, timeout=60))
    holding.wait_for(2)
    assert bytes(view) == second  # kept past its call: why a borrowing handler must copy what it keeps
    for _, responder in holding.given:
        responder.send(b"ok")
    assert [a.result(timeout=60) for a in answers] == [b"ok", b"ok"]


def test_a_borrowing_handler_that_copies_keeps_each_large_request_whole(holding: Holding) -> None:
    """Large requests with distinct contents, held by the handler all at once after copying what it was
    given, while the link read each next one into the buffer it keeps: each is its own."""
    requests = [os.urandom((2 << 20) - i) for i in range(4)]
    answers = [holding.channel.unary_async(HOLD_COPY, r, timeout=60) for r in requests]
    given = holding.wait_for(len(requests))
    assert [request for request, _ in given] == requests
    for request, responder in given:
        assert isinstance(request, bytes)
        responder.send(request[::-1])
    assert [a.result(timeout=60) for a in answers] == [r[::-1] for r in requests]


def test_a_handler_not_marked_gets_bytes_of_its_own() -> None:
    """The kit copies the request for a handler that did not say it borrows it (``Hosted`` handlers keep
    theirs: ``test_large_requests_held_together_each_keep_their_own_bytes``)."""
    assert not request_borrowed(turn)
    assert request_borrowed(borrows_request(lambda request, ctx, responder: None))


@pytest.mark.parametrize("size", [0, 5, 70_000, 3 << 20])
def test_a_reply_sent_as_parts_arrives_as_their_concatenation(holding: Holding, size: int) -> None:
    request = os.urandom(size)
    assert holding.channel.unary(PARTS, request, timeout=60) == b"<" + request + b">"


def test_large_replies_sent_as_parts_at_once_each_arrive_whole(holding: Holding) -> None:
    """Replies of several MiB from parts, to callers waiting at once: what the socket does not take at once
    is written later by the link's sender thread, from the parts themselves."""
    requests = [os.urandom((3 << 20) + i) for i in range(6)]
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda r: holding.channel.unary(PARTS, r, timeout=120), requests))
    assert replies == [b"<" + r + b">" for r in requests]


def test_a_reply_from_parts_over_the_limit_is_refused_naming_both_sizes() -> None:
    from flamepy_core.kit.framed_server import _Responder

    class Call:
        ended = False
        method = "/m"
        call_id = 1
        ctx = type("Ctx", (), {"is_active": staticmethod(lambda: True)})()
        peer = type("Peer", (), {"server": type("Server", (), {"limit": 10, "endpoint": "uds:///x"})()})()
        outcome: list[object] = []

        def end(self, parts: object, *, posted: bool = False) -> bool:
            self.outcome.append(parts)
            return True

    call = Call()
    assert _Responder(call).send_parts([b"123456", b"78901"])  # type: ignore[arg-type]
    (sent,) = call.outcome
    assert isinstance(sent, list) and b"11 bytes" in bytes(sent[-1]) and b"10 bytes" in bytes(sent[-1])


def test_a_reply_from_parts_holds_read_only_ones_and_copies_writable_ones() -> None:
    """The link may hold a reply's parts until the client takes them: ``bytes`` and other read-only buffers
    (a payload file's mapping) are held as they are, a writable one is copied first (it could change)."""
    import mmap

    from flamepy_core.kit.framed_server import _Responder

    class Call:
        ended = False
        method = "/m"
        call_id = 1
        ctx = type("Ctx", (), {"is_active": staticmethod(lambda: True)})()
        peer = type("Peer", (), {"server": type("Server", (), {"limit": 1 << 30, "endpoint": "uds:///x"})()})()
        outcome: list[list[object]] = []

        def end(self, parts: list[object], *, posted: bool = False) -> bool:
            self.outcome.append(parts)
            return True

    mapped = mmap.mmap(-1, 4096)
    mapped.write(b"m" * 4096)
    read_only = memoryview(mapped).toreadonly()
    writable = bytearray(b"w" * 10)
    kept = b"k" * 10
    call = Call()
    assert _Responder(call).send_parts([kept, read_only, writable])  # type: ignore[arg-type]
    (sent,) = call.outcome
    _head, *parts = sent
    assert parts[0] is kept and isinstance(parts[1], memoryview) and parts[1].obj is mapped
    assert parts[2] == b"w" * 10 and parts[2] is not writable
    writable[:] = b"x" * 10
    assert parts[2] == b"w" * 10
    del parts, sent, read_only
    call.outcome.clear()
    mapped.close()


def test_send_parts_joins_them_for_a_responder_without_it() -> None:
    from flamepy_core.kit.basics import FutureResponder

    responder = FutureResponder()
    assert send_parts(responder, [b"ab", b"", b"cd"])
    assert responder.future.result(timeout=1) == b"abcd"


def test_the_servers_call_counter_keeps_what_its_handlers_can_do() -> None:
    """The server wraps every handler to count calls in flight: a wrapped handler that borrows its request
    still does, and a reply's parts go through the wrapped responder as parts."""
    from flamepy_core.contracts.transport import DeferredHandler
    from flamepy_core.engine.server import _Activity, _ExitOnReply
    from flamepy_core.kit.basics import FutureResponder

    borrowing = borrows_request(lambda request, ctx, responder: None)
    wrapped = _Activity().wrap({"/b": DeferredHandler(borrowing), "/n": DeferredHandler(lambda r, c, s: None)})
    assert request_borrowed(wrapped["/b"].fn) and not request_borrowed(wrapped["/n"].fn)

    class Parts(FutureResponder):
        def send_parts(self, parts: list[bytes]) -> bool:
            self.parts = parts
            return self.send(b"".join(parts))

    inner, settled = Parts(), []
    assert send_parts(_ExitOnReply(inner, lambda: settled.append(1)), [b"a", b"b"])
    assert inner.parts == [b"a", b"b"] and settled == [1]
