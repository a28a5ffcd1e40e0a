"""The framed kit's server never blocks a sending thread on its client (``SocketLink.send_nowait``).

A deferred reply is sent by whichever thread completes it; in flamepy's server that thread handles the
results of every instance. A client frozen (``SIGSTOP``) or slow while its reply is larger than the
socket buffer must not hold that thread: what the socket does not take at once goes to the client's own
sender thread, in order. These tests use real sockets (and, for the frozen client, a real process) over
the ``uds`` transport; every wait has a deadline, and they assert outcomes, never durations.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flamepy_core.contracts import CallContext, UnaryHandler
from flamepy_core.contracts.transport import DeferredHandler, DeferredStreamHandler, Responder, StreamWriter
from flamepy_core.kit import frames
from flamepy_core.kit.framed_server import FramedServer
from flamepy_core.kit.frames import Kind
from flamepy_core.kit.links import Link, Oversized, SocketLink, SocketListener, dial_unix, listen_unix
from flamepy_core.plugins import get_registry

ECHO = "/test.Nowait/Echo"
DEFER = "/test.Nowait/Defer"
WATCH = "/test.Nowait/Watch"
BIG = 16 * 1024 * 1024
DEADLINE = 10.0
"""Generous: a completing thread that returns at all returns in microseconds; a blocked one never does."""
PREAMBLE = b"FLMUDS1\n"


def echo(request: bytes, ctx: CallContext) -> bytes:
    return request


def payload(call_id: int, size: int) -> bytes:
    """The bytes the reply to ``call_id`` carries: distinct per call, so a torn or swapped reply shows."""
    return random.Random(call_id).randbytes(size)


class Server:
    """A uds server whose deferred calls queue their responders, and the path it listens on."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fl-nbs-", dir="/tmp")
        self.path = f"{self.dir}/s.sock"
        self.endpoint = f"uds://{self.path}"
        self.calls: queue.Queue[tuple[bytes, Responder]] = queue.Queue()
        self.streams: queue.Queue[StreamWriter] = queue.Queue()
        self.transport = get_registry().transport("uds")
        self.server: Any = self.transport.serve(
            self.endpoint,
            {ECHO: UnaryHandler(echo), DEFER: DeferredHandler(self._defer), WATCH: DeferredStreamHandler(self._watch)},
        )

    def _defer(self, request: bytes, ctx: CallContext, responder: Responder) -> None:
        self.calls.put((request, responder))

    def _watch(self, request: bytes, ctx: CallContext, writer: StreamWriter) -> None:
        self.streams.put(writer)

    def take(self) -> tuple[bytes, Responder]:
        try:
            return self.calls.get(timeout=DEADLINE * 3)
        except queue.Empty:
            raise AssertionError("the deferred call never reached the server") from None

    def peers(self) -> list[Any]:
        return list(self.server._peers)

    def close(self) -> None:
        self.server.stop(0.2)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture()
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def wait_until(condition: Any, what: str, deadline: float = DEADLINE * 3) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, what
        time.sleep(0.01)


def returns_within(fn: Any, deadline: float = DEADLINE) -> Any:
    """``fn()``'s result, run on a thread of its own; fails the test when it has not returned by ``deadline``."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    thread.join(deadline)
    assert not thread.is_alive(), f"the sending thread was still blocked after {deadline} s"
    return result[0]


class RawClient:
    """A client speaking the framed protocol over its own socket, reading only when the test says so."""

    def __init__(self, path: str) -> None:
        self.link = SocketLink(dial_unix(path, "raw", 10.0), 1 << 30, preamble=PREAMBLE, dialled=True)

    def call(self, call_id: int, method: str = DEFER, request: bytes = b"") -> None:
        self.link.send(frames.encode(Kind.UNARY, call_id, request, method=method.encode(), timeout=120.0))

    def watch(self, call_id: int) -> None:
        """A deferred stream with a window wide enough for the test's items."""
        self.link.send(frames.encode(Kind.STREAM, call_id, method=WATCH.encode(), timeout=120.0, a=1000, b=1 << 20))

    def answer(self) -> frames.Frame:
        message = self.link.recv()
        assert not isinstance(message, Oversized)
        return frames.decode(message)

    def close(self) -> None:
        self.link.close()
        with contextlib.suppress(OSError, EOFError):
            while True:
                self.link.recv()  # to the EOF, which releases the socket


CHILD = textwrap.dedent(
    """
    import hashlib, sys
    from flamepy_core.plugins import get_registry
    channel = get_registry().transport("uds").connect(sys.argv[1])
    reply = channel.unary("{method}", b"big please", timeout=120)
    print(len(reply), hashlib.sha256(reply).hexdigest(), flush=True)
    channel.close()
    """
).format(method=DEFER)


def stopped(pid: int) -> None:
    """Stop ``pid`` with SIGSTOP and return once it is stopped (its stop status is consumed here)."""
    os.kill(pid, signal.SIGSTOP)
    end = time.monotonic() + DEADLINE * 3
    while True:
        waited, status = os.waitpid(pid, os.WUNTRACED | os.WNOHANG)
        if waited == pid:
            assert os.WIFSTOPPED(status), f"the child ended instead of stopping (status {status})"
            return
        assert time.monotonic() < end, "the child did not stop"
        time.sleep(0.01)


def test_a_frozen_client_with_a_16_mib_reply_holds_no_thread_but_its_own(server: Server) -> None:
    """The thread completing a 16 MiB deferred reply to a client stopped with SIGSTOP returns at once, and
    goes on to answer another client meanwhile; once continued, the frozen client gets its reply whole."""
    big = payload(7, BIG)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, server.endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    other = server.transport.connect(server.endpoint)
    try:
        request, frozen_responder = server.take()
        assert request == b"big please"
        stopped(child.pid)

        # One completing thread, like the server's results thread: the frozen client's reply first.
        assert returns_within(lambda: frozen_responder.send(big)) is True

        # The other client is answered meanwhile: a unary call (a pool thread), and a deferred reply completed.
        assert other.unary(ECHO, b"meanwhile", timeout=DEADLINE * 3) == b"meanwhile"
        answer = other.unary_async(DEFER, b"small", timeout=DEADLINE * 3)
        small, responder = server.take()
        assert returns_within(lambda: responder.send(small + b" answered")) is True
        assert answer.result(DEADLINE * 3) == b"small answered"
        assert os.waitpid(child.pid, os.WNOHANG) == (0, 0), "the frozen child moved while it was stopped"

        os.kill(child.pid, signal.SIGCONT)
        out, err = child.communicate(timeout=DEADLINE * 6)
        assert child.returncode == 0, err.decode()
        assert out.decode().split() == [str(BIG), hashlib.sha256(big).hexdigest()]
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGCONT)
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.communicate(timeout=DEADLINE)
        other.close()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.sampled_from([0, 40, 70_000, 300_000, 1_000_000]), min_size=3, max_size=10),
    threads=st.integers(min_value=2, max_value=3),
    read_late=st.booleans(),
)
def test_replies_from_several_threads_arrive_whole_and_in_each_threads_order(
    server: Server, sizes: list[int], threads: int, read_late: bool
) -> None:
    """Replies of mixed sizes to one client, some larger than the socket takes at once (they go in part
    from the completing thread, the rest from the sender thread), completed by several threads at once:
    each arrives whole, and those of one thread in the order it sent them. With ``read_late`` the client
    reads only once every thread has returned (which they all do: none waits for it)."""
    client = RawClient(server.path)
    try:
        count = len(sizes) * threads
        for call_id in range(1, count + 1):
            client.call(call_id, request=b"%d" % call_id)
        responders: dict[int, Responder] = {}
        for _ in range(count):
            request, responder = server.take()
            responders[int(request)] = responder
        plan = [[1 + t + threads * k for k in range(len(sizes))] for t in range(threads)]
        size_of = {call_id: sizes[k] for t in range(threads) for k, call_id in enumerate(plan[t])}
        start = threading.Barrier(threads)
        refused: list[int] = []

        def complete(ids: Sequence[int]) -> None:
            start.wait(DEADLINE)
            for call_id in ids:
                if not responders[call_id].send(payload(call_id, size_of[call_id])):
                    refused.append(call_id)

        workers = [threading.Thread(target=complete, args=(ids,), daemon=True) for ids in plan]
        got: list[int] = []

        def read_all() -> None:
            for _ in range(count):
                frame = client.answer()
                assert frame.kind is Kind.REPLY
                assert bytes(frame.payload) == payload(frame.call_id, size_of[frame.call_id]), frame.call_id
                got.append(frame.call_id)

        reader = threading.Thread(target=read_all, daemon=True)
        if not read_late:
            reader.start()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(DEADLINE)
            assert not worker.is_alive(), "a completing thread waited for the client"
        assert not refused, refused
        if read_late:
            reader.start()
        reader.join(DEADLINE * 3)
        assert not reader.is_alive() and sorted(got) == list(range(1, count + 1)), got
        for ids in plan:
            assert [call_id for call_id in got if call_id in ids] == ids
    finally:
        client.close()


def test_an_answer_sent_behind_posted_stream_items_goes_after_them(server: Server) -> None:
    """A deferred stream's items go to the sender thread; a reply the same thread sends next queues behind
    them (it does not take the idle socket ahead of them): the client reads them in the order sent."""
    client = RawClient(server.path)
    try:
        client.watch(1)
        rounds = 30
        for call_id in range(2, rounds + 2):
            client.call(call_id, request=b"%d" % call_id)
        try:
            writer = server.streams.get(timeout=DEADLINE * 3)
        except queue.Empty:
            raise AssertionError("the stream never reached the server") from None
        responders = {int(request): responder for request, responder in (server.take() for _ in range(rounds))}
        for call_id in range(2, rounds + 2):
            assert writer.send(b"item before %d" % call_id)
            assert responders[call_id].send(b"reply %d" % call_id)
        order = []
        for _ in range(2 * rounds):
            frame = client.answer()
            order.append(bytes(frame.payload))
        expected = [answer for n in range(2, rounds + 2) for answer in (b"item before %d" % n, b"reply %d" % n)]
        assert order == expected
    finally:
        client.close()


def test_a_client_that_leaves_with_replies_pending_is_dropped_and_no_thread_hangs(server: Server) -> None:
    """A client that never reads leaves while 16 MiB replies wait for it: its reader and sender threads end,
    what waited is dropped (a later reply to it is refused or dropped, never blocking), and others are served."""
    client = RawClient(server.path)
    client.call(1)
    client.call(2)
    client.call(3)
    responders = [server.take()[1] for _ in range(3)]
    wait_until(lambda: len(server.peers()) == 1, "the server has no peer for the client")
    peer = server.peers()[0]
    assert returns_within(lambda: responders[0].send(payload(1, BIG))) is True
    assert returns_within(lambda: responders[1].send(payload(2, BIG))) is True
    sender = peer._sender
    assert sender is not None and sender.is_alive(), "nothing waited for the sender thread"

    client.close()
    peer.thread.join(DEADLINE * 3)
    assert not peer.thread.is_alive(), "the reader of a client that left did not end"
    sender.join(DEADLINE * 3)
    assert not sender.is_alive(), "the sender thread hangs on a client that left"
    wait_until(lambda: not server.peers(), "the server kept the peer of a client that left")
    assert returns_within(lambda: responders[2].send(payload(3, BIG))) is False  # its caller has gone

    other = server.transport.connect(server.endpoint)
    try:
        assert other.unary(ECHO, b"still", timeout=DEADLINE * 3) == b"still"
    finally:
        other.close()


def test_a_client_that_half_closes_and_stops_reading_frees_its_sender_thread(server: Server) -> None:
    """A client that shuts its sending side down (the server's reader sees the end) and never reads, while a
    16 MiB reply is being written to it: the reader's end of the link wakes the sender thread blocked on
    that client, which ends, and the server drops the peer."""
    import socket

    client = RawClient(server.path)
    client.call(1)
    responder = server.take()[1]
    wait_until(lambda: len(server.peers()) == 1, "the server has no peer for the client")
    peer = server.peers()[0]
    assert returns_within(lambda: responder.send(payload(1, BIG))) is True
    sender = peer._sender
    assert sender is not None and sender.is_alive(), "nothing waited for the sender thread"
    try:
        client.link.sock.shutdown(socket.SHUT_WR)  # the end of its requests; it reads nothing more
        peer.thread.join(DEADLINE * 3)
        assert not peer.thread.is_alive(), "the reader of a client that half-closed did not end"
        sender.join(DEADLINE * 3)
        assert not sender.is_alive(), "the sender thread stays blocked on a client that half-closed"
        wait_until(lambda: not server.peers(), "the server kept the peer of a client that half-closed")
    finally:
        client.link.sock.close()


class BlockingOnly:
    """A third-party link without ``send_nowait``: only the :class:`Link` protocol."""

    def __init__(self, link: Link) -> None:
        self._link = link

    def send(self, parts: Sequence[bytes | memoryview]) -> None:
        self._link.send(parts)

    def recv(self) -> bytes | bytearray | Oversized:
        return self._link.recv()

    def close(self) -> None:
        self._link.close()

    def abandon(self) -> None:
        self._link.abandon()


class BlockingOnlyListener(SocketListener):
    def accept(self) -> Link | None:
        link = super().accept()
        return None if link is None else BlockingOnly(link)


def test_a_link_without_send_nowait_is_sent_to_blocking_as_before() -> None:
    """The ability is optional: a server over links that only ``send`` answers small and large replies."""
    directory = tempfile.mkdtemp(prefix="fl-nbs-", dir="/tmp")
    path = f"{directory}/s.sock"
    listener = BlockingOnlyListener(listen_unix(path, "raw"), "raw", 1 << 30, preamble=PREAMBLE, path=path)
    server = FramedServer(listener, {ECHO: UnaryHandler(echo)}, 1 << 30, 4)
    client = RawClient(path)
    try:
        big = payload(5, 3 * 1024 * 1024)
        client.call(1, ECHO, b"small")
        client.call(2, ECHO, big)
        first, second = client.answer(), client.answer()
        assert {first.call_id: bytes(first.payload), second.call_id: bytes(second.payload)} == {1: b"small", 2: big}
        peers = list(server._peers)
        assert len(peers) == 1 and peers[0]._nowait is None and peers[0]._sender is None
    finally:
        client.close()
        server.stop(0.2)
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.rmdir(directory)


def test_a_socket_link_keeps_what_the_socket_did_not_take_and_writes_it_before_anything_else() -> None:
    """``send_nowait`` on a full socket: True for what went whole, None when it kept a rest, False (nothing
    written) while a rest is kept; ``flush``, or a blocking ``send``, writes the rest first: messages whole."""
    left, right = socket.socketpair()
    sender = SocketLink(left, 1 << 30, preamble=b"P\n", dialled=True)
    receiver = SocketLink(right, 1 << 30, preamble=b"P\n", dialled=False)
    try:
        big, small = payload(1, 4 * 1024 * 1024), b"small"
        assert sender.send_nowait([b"first"]) is True
        assert sender.send_nowait([big[:10], big[10:]]) is None  # far more than a socket buffer
        assert sender.send_nowait([small]) is False
        got: list[bytes] = []

        def read() -> None:
            for _ in range(4):
                message = receiver.recv()
                assert not isinstance(message, Oversized)
                got.append(bytes(message))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        flusher = threading.Thread(target=sender.flush, daemon=True)
        flusher.start()
        sender.send([b"after"])  # waits for the flush under way, then goes
        flusher.join(DEADLINE)
        assert sender.send_nowait([small]) is True
        reader.join(DEADLINE * 3)
        assert not flusher.is_alive() and not reader.is_alive()
        assert got == [b"first", big, b"after", small]
    finally:
        sender.close()
        receiver.close()
        left.close()
        right.close()
