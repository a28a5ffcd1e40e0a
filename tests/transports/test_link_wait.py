"""How ``SocketLink.recv`` waits when nothing has come: in ``poll``, woken by readable news only.

A thread blocked in a read of a unix socket is woken each time the peer reads what this side sent (the
kernel tells the socket's waiters that it may write again; a blocked read does not ask what the news
is). The server's reader of a client's link was woken so by every reply the client read, an interrupt
to the other vCPU paid inside the client's ``recv``. These tests count the reading thread's voluntary
context switches (``/proc``), which a wrong wait makes grow with every message the peer reads, and check
that the wait still ends with a message, with the peer's close, and with our own ``close``.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flamepy_core.kit import links
from flamepy_core.kit.links import SocketLink

PREAMBLE = b"TEST"
LIMIT = 1 << 20
DEADLINE = 10.0

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/<pid>/task to count context switches")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, SocketLink]]:
    peer, ours = socket.socketpair()
    link = SocketLink(ours, LIMIT, preamble=PREAMBLE, dialled=True)  # (it greets: its reads are messages)
    assert peer.recv(len(PREAMBLE), socket.MSG_WAITALL) == PREAMBLE
    try:
        yield peer, link
    finally:
        peer.close()
        link.close()


def _switches(native_id: int) -> int:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("voluntary_ctxt_switches"))
    return int(line.split()[1])


class _Reader:
    """A thread in ``link.recv()``: what it got, or what it raised."""

    def __init__(self, link: SocketLink) -> None:
        self.got: list[object] = []
        self.started = threading.Event()
        self.native_id = 0
        self.thread = threading.Thread(target=self._run, args=(link,), daemon=True)
        self.thread.start()
        assert self.started.wait(DEADLINE)

    def _run(self, link: SocketLink) -> None:
        self.native_id = threading.get_native_id()
        self.started.set()
        try:
            self.got.append(bytes(link.recv()))  # type: ignore[arg-type]
        except BaseException as exc:  # what the wait ended with is the test's to read
            self.got.append(exc)

    def settled(self) -> object:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "recv did not return"
        return self.got[0]


def _asleep(reader: _Reader) -> None:
    """Until the reader thread sleeps (its wait has begun)."""
    deadline = time.monotonic() + DEADLINE
    while Path(f"/proc/self/task/{reader.native_id}/stat").read_text().split(")")[1].split()[0] != "S":
        assert time.monotonic() < deadline, "the reader never went to sleep"
        time.sleep(0.001)


def test_the_peer_reading_what_we_sent_does_not_wake_a_waiting_recv(pair: tuple[socket.socket, SocketLink]) -> None:
    peer, link = pair
    reader = _Reader(link)
    _asleep(reader)
    before = _switches(reader.native_id)
    count = 50
    for i in range(count):
        link.send([b"reply %d" % i])
        expected = links._LENGTH.size + len(b"reply %d" % i)
        got = b""
        while len(got) < expected:
            got += peer.recv(expected - len(got))
        time.sleep(0.0002)  # (each read its own wake-up, were the wait a blocked read)
    woken = _switches(reader.native_id) - before
    # A blocked read is woken once per message read (50); the poll is not woken at all.
    assert woken < count // 5, f"the waiting reader was woken {woken} times by {count} reads of the peer"
    peer.sendall(links._LENGTH.pack(5) + b"hello")
    assert reader.settled() == b"hello"


def test_a_waiting_recv_ends_with_eof_when_the_peer_closes(pair: tuple[socket.socket, SocketLink]) -> None:
    peer, link = pair
    reader = _Reader(link)
    _asleep(reader)
    peer.close()
    assert isinstance(reader.settled(), EOFError)


def test_close_from_another_thread_ends_a_waiting_recv(pair: tuple[socket.socket, SocketLink]) -> None:
    _peer, link = pair
    reader = _Reader(link)
    _asleep(reader)
    link.close()
    assert isinstance(reader.settled(), (EOFError, OSError))


def test_what_came_while_nobody_waited_is_read_without_waiting(pair: tuple[socket.socket, SocketLink]) -> None:
    peer, link = pair
    peer.sendall(links._LENGTH.pack(3) + b"one" + links._LENGTH.pack(3) + b"two")
    assert bytes(link.recv()) == b"one"  # type: ignore[arg-type]
    assert bytes(link.recv()) == b"two"  # type: ignore[arg-type]
