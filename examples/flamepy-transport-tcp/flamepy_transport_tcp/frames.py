"""The wire format and a socket that speaks it. No pickling: every field is a fixed-size number or raw bytes.

A connection opens with the client's :data:`PREAMBLE` (so a server never reads another protocol's bytes
as frames), then carries frames both ways. One frame::

    header, 24 bytes, network byte order                          then: method   (method_len bytes, UTF-8)
    kind u8 | code u8 | method_len u16 | call_id u64 |                  payload  (payload_len bytes)
    payload_len u32 | timeout f64

``call_id`` ties every reply to its call, which is what lets one connection carry many concurrent calls.
``timeout`` is the caller's remaining deadline in seconds when the request left (negative: none), so the
handler's ``CallContext`` knows its deadline without synchronised clocks. ``code`` is the
``FlameErrorCode`` of an ERROR frame, whose payload is the UTF-8 message.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from dataclasses import dataclass
from enum import IntEnum

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

PREAMBLE = b"FLMTCP1\n"
"""The first bytes a client sends: the protocol's name and version."""

HEADER = struct.Struct("!BBHQId")
NO_TIMEOUT = -1.0
MAX_METHOD = 0xFFFF
MAX_PAYLOAD = 0xFFFFFFFF
"""The length fields' limits: a method path of 64 KiB, a payload of 4 GiB - 1."""

_COALESCE = 64 * 1024
"""Payloads up to this size go out in one ``sendall`` with their header; larger ones are not copied."""
_DISCARD_CHUNK = 1024 * 1024


class Kind(IntEnum):
    """What a frame says. Requests and CANCEL flow client -> server; the rest server -> client."""

    UNARY = 1
    STREAM = 2
    CANCEL = 3
    """The caller gave up on ``call_id`` (deadline, or a stream closed early): the handler should stop."""
    REPLY = 4
    ITEM = 5
    END = 6
    ERROR = 7
    """Ends the call with ``FlameError(code, payload as UTF-8)``."""


_KINDS = frozenset(int(k) for k in Kind)


class PeerClosed(ConnectionError):
    """The peer closed the connection (or our own :meth:`FrameSocket.shutdown` woke the reader)."""


class ProtocolError(ConnectionError):
    """The peer sent something that is not this protocol; the connection is dropped."""


@dataclass(frozen=True)
class Frame:
    kind: Kind
    call_id: int
    method: str = ""
    payload: bytes = b""
    code: int = 0
    timeout: float | None = None
    oversized: int = 0
    """The payload's length when it was over the reader's limit: it was read and discarded, not kept."""


def error_of(frame: Frame) -> FlameError:
    """The FlameError an ERROR frame carries (a code this version does not know reads as INTERNAL)."""
    message = frame.payload.decode("utf-8", "replace")
    try:
        code = FlameErrorCode(frame.code)
    except ValueError:
        return FlameError(FlameErrorCode.INTERNAL, f"{message} (unknown error code {frame.code} from the peer)")
    return FlameError(code, message)


class FrameSocket:
    """One connected socket: whole frames out from any thread, whole frames in from one reader thread.

    Reads go through a buffered file so a small frame costs one ``recv``. Only the reader thread closes
    the socket (:meth:`release`); other threads call :meth:`shutdown`, which wakes the reader with EOF.
    That keeps a buffered read and a close from ever racing.
    """

    def __init__(self, sock: socket.socket, limit: int) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.limit = limit
        self.pid = os.getpid()
        self._reader = sock.makefile("rb", buffering=_COALESCE)
        self._send_lock = threading.Lock()

    def send(
        self,
        kind: Kind,
        call_id: int,
        payload: bytes = b"",
        *,
        method: str = "",
        code: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Send one frame atomically with respect to other senders. Raises OSError once the peer is gone."""
        name = method.encode("utf-8")
        size = len(payload)
        if len(name) > MAX_METHOD:
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"method path of {len(name)} bytes is too long")
        if size > MAX_PAYLOAD:  # only reachable with max_message_size above the frame's 4 GiB field
            raise FlameError(FlameErrorCode.MESSAGE_TOO_LARGE, f"{size} bytes do not fit a frame ({MAX_PAYLOAD})")
        header = HEADER.pack(kind, code, len(name), call_id, size, NO_TIMEOUT if timeout is None else timeout)
        with self._send_lock:
            if size <= _COALESCE:
                self.sock.sendall(header + name + payload)
            else:
                self.sock.sendall(header + name)
                self.sock.sendall(payload)

    def send_error(self, call_id: int, error: FlameError) -> None:
        self.send(Kind.ERROR, call_id, error.message.encode("utf-8", "replace"), code=int(error.code))

    def read_preamble(self) -> None:
        if self._read(len(PREAMBLE)) != PREAMBLE:
            raise ProtocolError("the peer does not speak the flamepy tcp protocol")

    def recv(self) -> Frame:
        """The next frame. Raises PeerClosed at EOF (including the one :meth:`shutdown` causes)."""
        kind, code, method_len, call_id, size, timeout = HEADER.unpack(self._read(HEADER.size))
        if kind not in _KINDS:
            raise ProtocolError(f"unknown frame kind {kind}")
        method = self._read(method_len).decode("utf-8", "replace")
        deadline = None if timeout < 0 else timeout
        if size > self.limit:
            for start in range(0, size, _DISCARD_CHUNK):
                self._read(min(_DISCARD_CHUNK, size - start))
            return Frame(Kind(kind), call_id, method, b"", code, deadline, oversized=size)
        return Frame(Kind(kind), call_id, method, self._read(size), code, deadline)

    def _read(self, size: int) -> bytes:
        data = self._reader.read(size) if size else b""
        if len(data) < size:
            raise PeerClosed("the peer closed the connection")
        return data

    def shutdown(self) -> None:
        """Wake the reader thread with EOF and tell the peer we are gone. Safe from any thread, idempotent."""
        with contextlib.suppress(OSError):  # already shut down, or never fully connected
            self.sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Close the socket; called by the reader thread as it exits."""
        self._reader.close()
        self.sock.close()

    def abandon(self) -> None:
        """In a forked child: drop this process's copy of the descriptor without touching the connection.

        ``shutdown`` would end the parent's connection too (the child shares it), and the buffered reader's
        lock may have been held by a parent thread at fork time, so neither is touched here.
        """
        with contextlib.suppress(OSError):
            os.close(self.sock.detach())
