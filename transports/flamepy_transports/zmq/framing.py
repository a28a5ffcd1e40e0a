"""The wire format of the zmq transport: two frames per message, no pickling.

Every message, either way, is exactly two ZeroMQ frames (the ROUTER adds the peer's routing id in front
on the server side, and strips it when replying): a small header and the payload, which travels as its
own frame so a large one is never copied into the header::

    0  header   36 bytes, big-endian, then the method:
                  b"FZ" + version (u8) + kind (u8)        4 bytes
                  correlation id (u64)                    8 bytes; chosen by the client, unique per channel
                  meta: flags (u32), a (u32), b (u64), c (u64)   24 bytes; meaning depends on the kind
                  method                                  UTF-8 gRPC path on requests, nothing otherwise
    1  payload  the opaque bytes (request, response, stream item) or a UTF-8 error message

Version 1 sent the same five fields as five frames; each extra frame costs a ZeroMQ send and receive on
both sides, which a small call notices (``benchmarks/bench_zmq.py``), so version 2 packs the small ones.

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
VERSION = 2
FRAME_COUNT = 2
MAX_ERROR_MESSAGE = 16 * 1024
"""Error messages are cut to this many bytes so an error always fits, whatever max_message_size is."""

FLAG_DEADLINE = 0x1
"""``meta.c`` carries the caller's timeout; without it the call has no deadline."""

ITEM_OVERHEAD = 64
"""Bytes charged per stream item against the byte window, so empty items are not free."""

_PREFIX = struct.Struct("!2sBB")
_CORR = struct.Struct("!Q")
_META = struct.Struct("!IIQQ")
_HEADER = struct.Struct("!2sBBQIIQQ")
HEADER_SIZE = _HEADER.size
_CORR_AT = _PREFIX.size
_META_AT = _CORR_AT + _CORR.size


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

_PREFIXES: dict[Kind, bytes] = {kind: _PREFIX.pack(MAGIC, VERSION, kind) for kind in Kind}
_KIND_OF: dict[bytes, Kind] = {prefix: kind for kind, prefix in _PREFIXES.items()}
_NO_META = _META.pack(0, 0, 0, 0)
_REPLY_PREFIX = _PREFIXES[Kind.REPLY]
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
        header = _HEADER.pack(MAGIC, VERSION, kind, corr, 0, window_items, window_bytes, 0)
    else:
        header = _HEADER.pack(
            MAGIC, VERSION, kind, corr, FLAG_DEADLINE, window_items, window_bytes, int(timeout * 1_000_000)
        )
    return [header + method, payload]


def cancel(corr: int) -> list[bytes]:
    return [_PREFIXES[Kind.CANCEL] + _CORR.pack(corr) + _NO_META, _EMPTY]


def credit(corr: int, items: int, nbytes: int) -> list[bytes]:
    return [_HEADER.pack(MAGIC, VERSION, Kind.CREDIT, corr, 0, items, nbytes, 0), _EMPTY]


def reply(kind: Kind, corr: bytes, payload: bytes = _EMPTY) -> list[bytes]:
    """A ``REPLY``, ``ITEM`` or ``END``; ``corr`` is the request's packed correlation id, echoed as is."""
    return [_PREFIXES[kind] + corr + _NO_META, payload]


PING_FRAMES = [_PREFIXES[Kind.PING] + _CORR.pack(0) + _NO_META, _EMPTY]


def error(corr: bytes, err: FlameError) -> list[bytes]:
    """An ``ERROR`` message carrying ``err``'s code and (UTF-8, bounded) message."""
    message = err.message.encode("utf-8", "replace")
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 3] + b"..."
    return [_PREFIXES[Kind.ERROR] + corr + _META.pack(0, int(err.code), 0, 0), message]


def decode(frames: list[Any]) -> Message:
    """Parse one message (without the ROUTER's routing id). Raises :class:`ProtocolError`."""
    header = bytes(frames[0]) if frames else b""
    kind = _KIND_OF.get(header[:_CORR_AT])
    if kind is None:
        corr = _try_corr(frames)
        if len(header) >= _PREFIX.size and header[:2] == MAGIC:
            raise ProtocolError(
                f"peer speaks flamepy-zmq protocol version {header[2]} (kind {header[3]}); "
                f"this side speaks version {VERSION}",
                corr,
            )
        raise ProtocolError(f"not a flamepy-zmq message (header {header[:8]!r})", corr)
    if len(frames) != FRAME_COUNT:
        raise ProtocolError(f"expected {FRAME_COUNT} frames, got {len(frames)}", _try_corr(frames))
    if len(header) < HEADER_SIZE:
        raise ProtocolError("malformed header frame")
    _magic, _version, _kind, corr, flags, a, b, c = _HEADER.unpack_from(header)
    return Message(kind, corr, header[HEADER_SIZE:], flags, a, b, c, frames[1])


def reply_payload(frames: list[Any], corr: int) -> Any:
    """The payload of ``frames`` when they are exactly the ``REPLY`` to call ``corr``, else None (read them
    with :func:`decode`). A synchronous caller's usual answer, read without building a :class:`Message`."""
    if len(frames) == FRAME_COUNT:
        header = frames[0]
        if (
            header[:_CORR_AT] == _REPLY_PREFIX
            and len(header) >= HEADER_SIZE
            and _CORR.unpack_from(header, _CORR_AT)[0] == corr
        ):
            return frames[1]
    return None


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
    """The correlation id of a message this side cannot read, if it has one where either version puts it."""
    if not frames:
        return None
    header = bytes(frames[0])
    if len(header) >= _META_AT and header[:2] == MAGIC and header[2] >= 2:
        value: int = _CORR.unpack_from(header, _CORR_AT)[0]
        return value
    if len(frames) >= 2:  # version 1: the correlation id was the second of five frames
        raw = bytes(frames[1])
        if len(raw) == _CORR.size:
            old: int = _CORR.unpack(raw)[0]
            return old
    return None
