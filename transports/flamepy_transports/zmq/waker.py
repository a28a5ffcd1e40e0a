"""Waking an I/O thread blocked in ``zmq.Poller.poll``, and asking a socket whether more is waiting."""

from __future__ import annotations

import _socket
import contextlib

import zmq


class Waker:
    """``signal()`` from any thread; the I/O thread polls ``fileno()`` and calls ``drain()``.

    At most one wake-up byte is usually outstanding: ``signal`` writes only when the flag is clear.
    ``drain`` reads the bytes first and clears the flag after, and the I/O thread looks at its queues
    only after ``drain``: a signaller that saw the flag set had queued its work before the flag was
    cleared, so that work is seen; one that saw it clear leaves a byte behind for the next poll. No
    wake-up is lost; a spurious one is harmless.
    """

    def __init__(self) -> None:
        # The C module's socket pair: the same sockets as ``socket.socketpair()``, without importing the
        # ``socket`` module (its enums and ``selectors``), which every service instance would load at start.
        self._reader, self._writer = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._signalled = False

    def fileno(self) -> int:
        return self._reader.fileno()

    def signal(self) -> None:
        if self._signalled:
            return
        self._signalled = True
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending anyway
            self._writer.send(b"\x00")

    def drain(self) -> None:
        # Usually one byte is waiting; a short read means the buffer is empty (no EAGAIN round).
        with contextlib.suppress(BlockingIOError, OSError):
            while len(self._reader.recv(4096)) == 4096:
                pass
        self._signalled = False

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


_POLLIN = int(zmq.POLLIN)
"""A plain int: ``events & zmq.POLLIN`` would build a ``PollEvent`` flag on every call."""
EVENTS_OPTION = int(zmq.EVENTS)
"""A plain int too: pyzmq reads an enum option's value on every call (0.4 us of a 1.8 us call); a warm
invoke asks about eight times in the server."""


def readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether another message is waiting on ``sock`` (ZMQ_EVENTS: cheaper than a recv ending in EAGAIN)."""
    events = sock.getsockopt(EVENTS_OPTION)
    return isinstance(events, int) and bool(events & _POLLIN)
