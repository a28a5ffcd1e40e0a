"""One message's frames onto a ZeroMQ socket and off it, without pyzmq's per-call conveniences.

``send_multipart``/``recv_multipart`` type-check every frame, turn each flag and option into an enum and,
with ``copy=False``, wrap every frame in a ``zmq.Frame`` even when it is small enough to be copied anyway:
about 6 us of a 15 us round of a five-frame message, paid several times per task on every hop. These
do the same sends and receives with plain ints, and copy a frame unless it is large (a large one is
handed to libzmq without a copy, as ``copy=False`` does). Semantics are pyzmq's: the frames of a message
are queued whole or not at all, so ``zmq.Again`` can only come from the first.
"""

from __future__ import annotations

from collections.abc import Sequence

import zmq

NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
ZERO_COPY_BYTES = 65536
"""From this size on a frame is sent without a copy (pyzmq's own ``copy_threshold``): below it, copying
is cheaper than tracking the buffer until libzmq is done with it."""


def send_frames(sock: zmq.Socket[bytes], frames: Sequence[bytes | memoryview]) -> None:
    """Send ``frames`` as one message, without blocking (``zmq.Again`` when the pipe is full)."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        sock.send(frame, _MORE if index < last else NOBLOCK, copy=len(frame) < ZERO_COPY_BYTES)


def receive_frames(sock: zmq.Socket[bytes]) -> list[bytes]:
    """The next message's frames, without blocking (``zmq.Again`` when none is waiting)."""
    parts: list[bytes] = [sock.recv(NOBLOCK)]
    while sock.getsockopt(_RCVMORE):
        parts.append(sock.recv(NOBLOCK))
    return parts
