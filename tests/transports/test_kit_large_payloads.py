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
from hypothesis import given, settings
from hypothesis import strategies as st

from flamepy_core.contracts import CallContext, FlameError, FlameErrorCode, UnaryHandler
from flamepy_core.kit.basics import unary_read
from flamepy_core.plugins import get_registry

TURN = "/test.Large/Turn"
"""Answers its request reversed: a reply that differs from the request it answers, and from every other."""


def turn(request: bytes, ctx: CallContext) -> bytes:
    return request[::-1]


class Served:
    def __init__(self, transport: str = "uds") -> None:
        self.dir = tempfile.mkdtemp(prefix="fl-large-", dir="/tmp")
        self.transport = get_registry().transport(transport)
        endpoint = f"uds://{self.dir}/s.sock" if transport == "uds" else f"inmem://large-{os.getpid()}-{id(self)}"
        self.server: Any = self.transport.serve(endpoint, {TURN: UnaryHandler(turn)})
        self.channel: Any = self.transport.connect(self.server.endpoint)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0.2)
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


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
