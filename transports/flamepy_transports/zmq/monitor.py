"""A channel's view of its connection: the libzmq socket monitor, read by the channel's I/O thread."""

from __future__ import annotations

import contextlib
import itertools
import os
import struct

import zmq

EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
"""What a channel needs to know: connected (handshake done), lost, refused, or rejected."""

MECHANISM_MISMATCH = int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)

_EVENT = struct.Struct("=HI")
_ids = itertools.count(1)


class Monitor:
    """A PAIR socket receiving the monitor events of one socket; owned by that socket's I/O thread."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes]) -> None:
        address = f"inproc://flamepy-zmq-monitor-{os.getpid()}-{id(ctx)}-{next(_ids)}"
        sock.monitor(address, EVENTS)
        self._watched = sock
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)

    def events(self) -> list[tuple[int, int]]:
        """Every pending (event, value) pair, oldest first."""
        out: list[tuple[int, int]] = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            if len(frames) == 2 and len(frames[0]) == _EVENT.size:
                event, value = _EVENT.unpack(frames[0])
                out.append((event, value))

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._watched.disable_monitor()
        self.socket.close(linger=0)
