"""``after_reading``: a stream's items that the link brought together can be handled together.

The server handles a batch's results as one event (``Scheduler._send_batch``): ``on_item`` leaves a
callback with the kit's channel, which runs it on the reader thread once the messages it has read are
handled. The rules checked here, on the kit's uds channel with a real server: the callback runs on the
thread that read the items, after them and before it waits for more; before the stream's end (or any
answer that is not an item) is handled; once per request; and another thread is told no (it then runs
the callback itself). Items held up by a slow ``on_item`` arrive together, so they are handled in a
group or two.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flamepy_core.contracts import CallContext, DeferredStreamHandler, FlameError, StreamWriter
from flamepy_core.kit.framed_client import STREAM_WINDOW_ITEMS
from flamepy_core.plugins import get_registry

BURST = "/test.After/Burst"


@pytest.fixture
def served() -> Iterator[tuple[Any, Any]]:
    transport = get_registry().transport("uds")
    folder = tempfile.mkdtemp(prefix="fl-after-", dir="/tmp")

    def burst(request: bytes, _ctx: CallContext, writer: StreamWriter) -> None:
        def feed() -> None:
            for n in range(int(request)):
                writer.send(b"item %d" % n)
            writer.close()

        threading.Thread(target=feed, daemon=True).start()

    server = transport.serve(f"uds://{folder}/s.sock", {BURST: DeferredStreamHandler(burst)})
    channel = transport.connect(server.endpoint)
    try:
        yield server, channel
    finally:
        channel.close()
        server.stop(1.0)


class Grouping:
    """What the scheduler does: the first item of a group leaves ``deliver`` for after the reading."""

    def __init__(self, channel: Any, slow_first: float = 0.0) -> None:
        self.channel = channel
        self.slow_first = slow_first
        self.arrived: list[bytes] = []
        self.groups: list[list[bytes]] = []
        self.threads: set[int] = set()
        self.events: list[str] = []
        self.ended = threading.Event()
        self.error: FlameError | None = None

    def deliver(self) -> None:
        self.threads.add(threading.get_ident())
        if self.arrived:
            self.groups.append(self.arrived[:])
            self.arrived.clear()
            self.events.append("group")

    def on_item(self, item: bytes) -> None:
        self.threads.add(threading.get_ident())
        self.arrived.append(item)
        self.events.append("item")
        if len(self.arrived) == 1 and not self.channel.after_reading(self.deliver):
            self.deliver()
        if self.slow_first and len(self.events) == 1:
            time.sleep(self.slow_first)  # the rest of the burst piles up in the socket meanwhile

    def on_end(self, error: FlameError | None) -> None:
        self.error = error
        self.events.append("end")
        self.ended.set()


def test_items_read_together_are_delivered_together_on_the_reader_thread_before_the_end(
    served: tuple[Any, Any],
) -> None:
    _server, channel = served
    # Fewer items than the stream's window: the server sends them all while the first on_item sleeps, so the
    # rest are read at once (beyond the window, they would come as the credit returns, a few at a time).
    count = STREAM_WINDOW_ITEMS - 56
    grouping = Grouping(channel, slow_first=0.2)
    channel.stream_async(BURST, b"%d" % count, grouping.on_item, grouping.on_end, 30)
    assert grouping.ended.wait(30)
    assert grouping.error is None
    assert [item for group in grouping.groups for item in group] == [b"item %d" % n for n in range(count)]
    assert grouping.events[-1] == "end" and grouping.events[-2] == "group", "the end came before the last group"
    assert len(grouping.threads) == 1, "the callback ran on another thread than the one reading the items"
    # The first item alone (nothing else read yet), then the rest, read together while it slept.
    assert len(grouping.groups) <= 3, f"{len(grouping.groups)} groups for {count} items read together"


def test_a_thread_that_is_not_reading_is_told_no_and_runs_it_itself(served: tuple[Any, Any]) -> None:
    _server, channel = served
    ran: list[int] = []
    assert channel.after_reading(lambda: ran.append(1)) is False
    assert ran == [], "after_reading ran the callback itself instead of saying no"
    grouping = Grouping(channel)
    channel.stream_async(BURST, b"3", grouping.on_item, grouping.on_end, 30)  # a connection now exists
    assert grouping.ended.wait(30)
    assert channel.after_reading(lambda: ran.append(1)) is False, "a caller's thread was given the reader's turn"
    assert [item for group in grouping.groups for item in group] == [b"item 0", b"item 1", b"item 2"]
