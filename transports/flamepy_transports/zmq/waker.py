"""Waking an I/O thread blocked in ``zmq.Poller.poll``, asking a socket whether more is waiting, and
sending and receiving a multipart message with the least Python work (every call's path runs them)."""

from __future__ import annotations

import _socket
import contextlib
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
_EVENTS = int(zmq.EVENTS)
_RCVMORE = int(zmq.RCVMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
"""Plain ints, as above: or-ing the ``Flag`` members builds a new one on each frame sent."""

# pyzmq's Socket methods as its compiled base class has them: the Python layer on top (``zmq.sugar``) only
# checks arguments that these callers never pass (routing ids, groups) and then calls them, at a cost of
# about 1 µs a frame (measured: 2.5 µs -> 0.6 µs to send a two-frame message).
_send = _BackendSocket.send
_recv = _BackendSocket.recv
_get = _BackendSocket.get


def readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether another message is waiting on ``sock`` (ZMQ_EVENTS: cheaper than a recv ending in EAGAIN)."""
    events = _get(sock, _EVENTS)
    return isinstance(events, int) and bool(events & _POLLIN)


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
    """``sock.recv_multipart(zmq.NOBLOCK)``: the frames of the next message; ``zmq.Again`` when none waits."""
    frames = [_recv(sock, _NOBLOCK)]
    while _get(sock, _RCVMORE):
        frames.append(_recv(sock, _NOBLOCK))
    return frames
