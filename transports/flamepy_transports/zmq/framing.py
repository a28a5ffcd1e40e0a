"""The wire format of the zmq transport: five frames per message, no pickling.

Every message, either way, is exactly five ZeroMQ frames (the ROUTER adds the peer's routing id in front
on the server side, and strips it when replying)::

    0  header   b"FZ" + version (u8) + kind (u8)        4 bytes
    1  corr     correlation id (u64, big-endian)         8 bytes; chosen by the client, unique per channel
    2  method   UTF-8 gRPC path on requests, empty otherwise
    3  meta     flags (u32), a (u32), b (u64), c (u64)   24 bytes, big-endian; meaning depends on the kind
    4  payload  the opaque bytes (request, response, stream item) or a UTF-8 error message

Kinds and their ``meta``:

=================  =========  ==================================================================
kind               direction  meta
=================  =========  ==================================================================
``UNARY``          c -> s     flags: ``FLAG_DEADLINE``; c: the caller's timeout in microseconds
``STREAM``         c -> s     as ``UNARY``; a: window in items; b: window in bytes (flow control)
``CANCEL``         c -> s     -- (the caller gave up: deadline passed or the stream was closed)
``CREDIT``         c -> s     a: items consumed; b: bytes consumed (grants that much window back)
``REPLY``          s -> c     -- (payload is the unary response)
``ITEM``           s -> c     -- (payload is one stream item)
``END``            s -> c     -- (the stream finished normally)
``ERROR``          s -> c     a: :class:`FlameErrorCode`; payload: UTF-8 message (ends the call)
``PING``           s -> c     -- (corr 0; "are you still there?": ignored by the client, but a
                              ROUTER_MANDATORY send fails if the caller's connection is gone)
=================  =========  ==================================================================

A peer that sends anything else (wrong magic, another version, a wrong frame count) gets
:class:`ProtocolError`: the server answers ``INVALID_ARGUMENT`` when it can read a correlation id, the
client treats its socket as broken and recreates it.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, NamedTuple

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

MAGIC = b"FZ"
VERSION = 1
FRAME_COUNT = 5
MAX_ERROR_MESSAGE = 16 * 1024
"""Error messages are cut to this many bytes so an error always fits, whatever max_message_size is."""

FLAG_DEADLINE = 0x1
"""``meta.c`` carries the caller's timeout; without it the call has no deadline."""

ITEM_OVERHEAD = 64
"""Bytes charged per stream item against the byte window, so empty items are not free."""

_HEADER = struct.Struct("!2sBB")
_CORR = struct.Struct("!Q")
_META = struct.Struct("!IIQQ")


class Kind(IntEnum):
    UNARY = 1
    STREAM = 2
    CANCEL = 3
    CREDIT = 4
    REPLY = 16
    ITEM = 17
    END = 18
    ERROR = 19
    PING = 20


REQUEST_KINDS = frozenset({Kind.UNARY, Kind.STREAM, Kind.CANCEL, Kind.CREDIT})
RESPONSE_KINDS = frozenset({Kind.REPLY, Kind.ITEM, Kind.END, Kind.ERROR})

_HEADERS: dict[Kind, bytes] = {kind: _HEADER.pack(MAGIC, VERSION, kind) for kind in Kind}
_KIND_OF: dict[bytes, Kind] = {header: kind for kind, header in _HEADERS.items()}
_NO_META = _META.pack(0, 0, 0, 0)
_EMPTY = b""


class ProtocolError(Exception):
    """The peer sent frames that are not this protocol (or not this version of it)."""

    def __init__(self, message: str, corr: int | None = None) -> None:
        super().__init__(message)
        self.corr = corr


class Message(NamedTuple):
    kind: Kind
    corr: int
    method: bytes
    flags: int
    a: int
    b: int
    c: int
    payload: Any
    """``bytes`` (or a zmq Frame's buffer) as received."""


def pack_corr(corr: int) -> bytes:
    return _CORR.pack(corr)


def request(
    kind: Kind,
    corr: int,
    method: bytes,
    timeout: float | None,
    payload: bytes,
    window_items: int = 0,
    window_bytes: int = 0,
) -> list[bytes]:
    """The frames of a ``UNARY`` or ``STREAM`` request."""
    if timeout is None:
        meta = _META.pack(0, window_items, window_bytes, 0)
    else:
        meta = _META.pack(FLAG_DEADLINE, window_items, window_bytes, int(timeout * 1_000_000))
    return [_HEADERS[kind], _CORR.pack(corr), method, meta, payload]


def cancel(corr: int) -> list[bytes]:
    return [_HEADERS[Kind.CANCEL], _CORR.pack(corr), _EMPTY, _NO_META, _EMPTY]


def credit(corr: int, items: int, nbytes: int) -> list[bytes]:
    return [_HEADERS[Kind.CREDIT], _CORR.pack(corr), _EMPTY, _META.pack(0, items, nbytes, 0), _EMPTY]


def reply(kind: Kind, corr: bytes, payload: bytes = _EMPTY) -> list[bytes]:
    """A ``REPLY``, ``ITEM`` or ``END``; ``corr`` is the request's correlation frame, echoed as is."""
    return [_HEADERS[kind], corr, _EMPTY, _NO_META, payload]


PING_FRAMES = [_HEADERS[Kind.PING], _CORR.pack(0), _EMPTY, _NO_META, _EMPTY]


def error(corr: bytes, err: FlameError) -> list[bytes]:
    """An ``ERROR`` frame set carrying ``err``'s code and (UTF-8, bounded) message."""
    message = err.message.encode("utf-8", "replace")
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 3] + b"..."
    return [_HEADERS[Kind.ERROR], corr, _EMPTY, _META.pack(0, int(err.code), 0, 0), message]


def decode(frames: list[Any]) -> Message:
    """Parse one message (without the ROUTER's routing id). Raises :class:`ProtocolError`."""
    if len(frames) != FRAME_COUNT:
        corr = _try_corr(frames)
        raise ProtocolError(f"expected {FRAME_COUNT} frames, got {len(frames)}", corr)
    header = bytes(frames[0])
    kind = _KIND_OF.get(header)
    if kind is None:
        corr = _try_corr(frames)
        if len(header) == _HEADER.size and header[:2] == MAGIC:
            raise ProtocolError(
                f"peer speaks flamepy-zmq protocol version {header[2]} (kind {header[3]}); "
                f"this side speaks version {VERSION}",
                corr,
            )
        raise ProtocolError(f"not a flamepy-zmq message (header {header[:8]!r})", corr)
    corr_frame = bytes(frames[1])
    meta = bytes(frames[3])
    if len(corr_frame) != _CORR.size or len(meta) != _META.size:
        raise ProtocolError("malformed correlation or meta frame")
    (corr,) = _CORR.unpack(corr_frame)
    flags, a, b, c = _META.unpack(meta)
    return Message(kind, corr, bytes(frames[2]), flags, a, b, c, frames[4])


def timeout_of(msg: Message) -> float | None:
    """The caller's timeout carried by a request, in seconds (``None`` = no deadline)."""
    return msg.c / 1_000_000 if msg.flags & FLAG_DEADLINE else None


def error_of(msg: Message) -> FlameError:
    """The :class:`FlameError` an ``ERROR`` message carries (unknown codes become INTERNAL)."""
    text = bytes(msg.payload).decode("utf-8", "replace")
    try:
        code = FlameErrorCode(msg.a)
    except ValueError:
        return FlameError(FlameErrorCode.INTERNAL, f"{text} (the server sent unknown error code {msg.a})")
    return FlameError(code, text)


def _try_corr(frames: list[Any]) -> int | None:
    if len(frames) >= 2:
        raw = bytes(frames[1])
        if len(raw) == _CORR.size:
            value: int = _CORR.unpack(raw)[0]
            return value
    return None
