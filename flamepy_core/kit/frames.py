"""The framed base's wire format: one header, the method path, the payload. No pickling.

A frame travels as one message of a :class:`~flamepy_core.kit.links.Link` (the link keeps message
boundaries; over a stream socket :class:`~flamepy_core.kit.links.SocketLink` length-prefixes them)::

    header (32 bytes, network byte order)                          then: method (method_len bytes, UTF-8)
    magic 2s | version u8 | kind u8 | code u8 | pad | method_len u16 |        payload (the rest)
    call_id u64 | timeout f64 | a u32 | b u32

``call_id`` ties every answer to its call: ids are never reused on a connection, so a late answer finds
no call and is dropped, never delivered to another one. ``timeout`` is the caller's remaining deadline in
seconds when the request left (negative: none), so the server knows it without synchronised clocks.
``code`` is the :class:`~flamepy_core.contracts.errors.FlameErrorCode` of an ``ERROR`` frame, whose
payload is the UTF-8 message. ``a``/``b`` carry a stream's window (items, KiB) on ``STREAM`` and the
credit given back (items, KiB) on ``CREDIT``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum
from typing import NamedTuple, TypeGuard

from flamepy_core.contracts.errors import FlameError, FlameErrorCode

MAGIC = b"FK"
VERSION = 1
HEADER = struct.Struct("!2sBBBxHQdII")
NO_TIMEOUT = -1.0
MAX_ERROR_MESSAGE = 16 * 1024
"""Error messages are cut to this many bytes, so an error always fits whatever the size limit."""


class Kind(IntEnum):
    """Requests, CANCEL and CREDIT flow client -> server; the rest server -> client."""

    UNARY = 1
    STREAM = 2
    CANCEL = 3
    """The caller gave up (deadline, a stream closed early): the handler should stop."""
    CREDIT = 4
    """The caller consumed ``a`` items / ``b`` KiB of a stream: the server may send that much more."""
    REPLY = 16
    ITEM = 17
    END = 18
    ERROR = 19
    """Ends the call with ``FlameError(code, payload as UTF-8)``."""


_KINDS: dict[int, Kind] = {int(kind): kind for kind in Kind}
"""Each kind by its number: a lookup, where ``Kind(number)`` runs the enum's Python code (0.3 µs of the
1.3 a frame's decode took, and every warm invoke decodes four frames)."""
REQUESTS = frozenset({Kind.UNARY, Kind.STREAM})
ANSWERS = frozenset({Kind.REPLY, Kind.ITEM, Kind.END, Kind.ERROR})


class ProtocolError(ConnectionError):
    """The peer sent something that is not this protocol; the connection is dropped."""


class Frame(NamedTuple):
    kind: Kind
    call_id: int
    method: str
    payload: bytes | memoryview
    code: int = 0
    timeout: float | None = None
    a: int = 0
    b: int = 0


def encode(
    kind: Kind,
    call_id: int,
    payload: bytes | memoryview = b"",
    *,
    method: bytes = b"",
    code: int = 0,
    timeout: float | None = None,
    a: int = 0,
    b: int = 0,
) -> list[bytes | memoryview]:
    """The parts of one frame: the header with the method, then the payload (sent without a copy)."""
    head = HEADER.pack(
        MAGIC, VERSION, kind, code, len(method), call_id, NO_TIMEOUT if timeout is None else timeout, a, b
    )
    return [head + method, payload] if len(payload) else [head + method]


_UNARY_HEAD = struct.Struct("!2sBBBxHQ")
_NO_DEADLINE_TAIL = struct.pack("!dII", NO_TIMEOUT, 0, 0)


def unary_head(call_id: int, method: bytes) -> bytes:
    """:func:`encode`'s first part for a ``UNARY`` request without a deadline (the header and the method),
    packed with no keyword arguments to work out: what a caller sends before anything else on a warm call."""
    return _UNARY_HEAD.pack(MAGIC, VERSION, _UNARY, 0, len(method), call_id) + _NO_DEADLINE_TAIL + method


def error(call_id: int, err: FlameError) -> list[bytes | memoryview]:
    message = err.message.encode("utf-8", "replace")
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 3] + b"..."
    return encode(Kind.ERROR, call_id, message, code=int(err.code))


def decode(message: bytes | bytearray | memoryview) -> Frame:
    """Parse one frame; :class:`ProtocolError` for anything else."""
    view = memoryview(message)
    if len(view) < HEADER.size:
        raise ProtocolError(f"a frame of {len(view)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, kind, code, method_len, call_id, timeout, a, b = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ProtocolError(f"not a flamepy frame (it starts {bytes(view[:8])!r})")
    if version != VERSION:
        raise ProtocolError(f"the peer speaks version {version} of the framed protocol; this side speaks {VERSION}")
    known = _KINDS.get(kind)
    if known is None:
        raise ProtocolError(f"unknown frame kind {kind}")
    end = HEADER.size + method_len
    if end > len(view):
        raise ProtocolError("a frame's method is cut short")
    method = bytes(view[HEADER.size : end]).decode("utf-8", "replace") if method_len else ""  # (answers: none)
    return Frame(known, call_id, method, view[end:], code, None if timeout < 0 else timeout, a, b)


AnswerOf = Callable[[bytes | bytearray | memoryview], "tuple[int, memoryview] | None"]


def _answer_of(wanted: Kind) -> AnswerOf:
    """A reader of one kind of answer: ``(call_id, payload)`` when a message is a frame of that kind of this
    protocol, else None (anything else, a malformed frame included, is for :func:`decode`); the header read
    in place, no :class:`Frame` built."""
    number = int(wanted)

    def answer_of(message: bytes | bytearray | memoryview) -> tuple[int, memoryview] | None:
        if len(message) < HEADER.size:
            return None
        magic, version, kind, _code, method_len, call_id, _t, _a, _b = HEADER.unpack_from(message)
        if kind != number or magic != MAGIC or version != VERSION or HEADER.size + method_len > len(message):
            return None
        return call_id, memoryview(message)[HEADER.size + method_len :]

    return answer_of


reply_of = _answer_of(Kind.REPLY)
"""``(call_id, payload)`` of a ``REPLY`` frame, else None (see :func:`_answer_of`): what a caller reading its
own answer asks of every message (``framed_client._Connection._take``)."""
item_of = _answer_of(Kind.ITEM)
"""``(call_id, payload)`` of an ``ITEM`` frame, else None: each item of a stream read by callbacks (every
result of a batch of tasks)."""


def is_item(message: object) -> TypeGuard[bytes | bytearray | memoryview]:
    """Whether ``message`` looks like an ``ITEM`` frame (its kind byte only: for a quick look before decoding)."""
    return isinstance(message, (bytes, bytearray, memoryview)) and len(message) > 3 and message[3] == _ITEM


_ITEM = int(Kind.ITEM)
_UNARY = int(Kind.UNARY)


def peek(head: bytes | memoryview) -> tuple[Kind, int, str] | None:
    """``(kind, call_id, method)`` from the first bytes of a frame too large to keep, or None when unreadable."""
    if len(head) < HEADER.size:
        return None
    magic, version, kind, _code, method_len, call_id, _t, _a, _b = HEADER.unpack_from(head)
    known = _KINDS.get(kind)
    if magic != MAGIC or version != VERSION or known is None:
        return None
    method = bytes(head[HEADER.size : HEADER.size + method_len]).decode("utf-8", "replace")
    return known, call_id, method


def error_of(frame: Frame) -> FlameError:
    """The :class:`FlameError` an ``ERROR`` frame carries (a code this side does not know reads as INTERNAL)."""
    message = bytes(frame.payload).decode("utf-8", "replace")
    try:
        code = FlameErrorCode(frame.code)
    except ValueError:
        return FlameError(FlameErrorCode.INTERNAL, f"{message} (unknown error code {frame.code} from the peer)")
    return FlameError(code, message)
