"""Waking an I/O thread blocked in ``zmq.Poller.poll``, asking a socket whether more is waiting, and
sending and receiving a multipart message with the least Python work (every call's path runs them)."""

from __future__ import annotations

import _socket
from collections.abc import Sequence
from typing import Any

import zmq
from zmq.backend import Socket as _BackendSocket


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
        try:  # noqa: SIM105 (contextlib.suppress costs three Python calls more, on every hand-off)
            self._writer.send(b"\x00")
        except OSError:  # full (BlockingIOError): a wake-up is pending anyway
            pass

    def drain(self) -> None:
        # Usually one byte is waiting; a short read means the buffer is empty (no EAGAIN round).
        try:
            while len(self._reader.recv(4096)) == 4096:
                pass
        except OSError:  # BlockingIOError: nothing (more) to read
            pass
        self._signalled = False

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


_POLLIN = int(zmq.POLLIN)
"""A plain int: ``events & zmq.POLLIN`` would build a ``PollEvent`` flag on every call."""
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
"""Plain ints, as above: or-ing the ``Flag`` members builds a new one on each frame sent."""

# pyzmq's Socket methods as its compiled base class has them: the Python layer on top (``zmq.sugar``) only
# checks arguments that these callers never pass (routing ids, groups) and then calls them, at a cost of
# about 1 µs a frame (measured: 2.5 µs -> 0.6 µs to send a two-frame message).
_send = _BackendSocket.send
_recv = _BackendSocket.recv
_zmq_poll = zmq.zmq_poll


def readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether another message is waiting on ``sock``: ``ZMQ_EVENTS``, as ``zmq_poll`` without waiting
    reads it (cheaper than a recv ending in EAGAIN). Through ``zmq_poll`` rather than ``getsockopt``:
    pyzmq turns the option number of every ``getsockopt`` into its ``SocketOption`` member first, two
    Python calls that cost more than the poll's one system call (measured: 0.8 µs against 1.1 µs).

    A closed socket raises ``ENOTSOCK``, as ``getsockopt`` does: pyzmq's ``zmq_poll`` would poll file
    descriptor 0 in its place (a closed socket's handle is NULL)."""
    if sock.closed:
        raise zmq.ZMQError(zmq.ENOTSOCK)
    return bool(_zmq_poll([(sock, _POLLIN)], 0))


def send_frames(sock: zmq.Socket[bytes], frames: Sequence[Any], copy: bool = True) -> None:
    """``sock.send_multipart(frames, zmq.NOBLOCK, copy=copy)`` for frames that are ``bytes`` (or buffers).

    Raises ``zmq.Again`` when the message cannot be queued now: a multipart message is queued whole or
    not at all, so only the first frame can. With ``copy=False`` a frame under the socket's
    ``copy_threshold`` is still copied, as with ``send_multipart``.
    """
    for frame in frames[:-1]:
        _send(sock, frame, _NOBLOCK_MORE, copy)
    _send(sock, frames[-1], _NOBLOCK, copy)


def recv_frames(sock: zmq.Socket[bytes]) -> list[bytes]:
    """``sock.recv_multipart(zmq.NOBLOCK)``: the frames of the next message; ``zmq.Again`` when none waits.

    Each frame is received as a ``zmq.Frame`` and copied out once (as ``recv`` with ``copy=True`` would),
    and whether more follow is the frame's own ``more``: asking ``ZMQ_RCVMORE`` of the socket costs the
    option's ``SocketOption`` conversion (see :func:`readable`) on every frame.
    """
    frame = _recv(sock, _NOBLOCK, False)
    frames = [frame.bytes]
    while frame.more:
        frame = _recv(sock, _NOBLOCK, False)
        frames.append(frame.bytes)
    return frames
