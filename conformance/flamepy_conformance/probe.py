"""The probe service the suite serves: method paths, handlers and the answers a caller must get.

Kept free of pytest and hypothesis on purpose: the cross-process test imports it in a child process
that serves these handlers, and the stateful machine uses the same answers. Every answer is a
*transformation* of the request (reversed, tagged with the method and the server's generation), so a
transport that hands the request back unchanged, routes to the wrong method or talks to an old server
cannot pass by accident.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import CallContext, Handler, StreamHandler, UnaryHandler

PROBE_SERVICE = "/flamepy.conformance.v1.Probe"
ECHO = f"{PROBE_SERVICE}/Echo"
"""Unary: answers :func:`echo_answer` of the request."""
REVERSE = f"{PROBE_SERVICE}/Reverse"
"""Unary: answers the request reversed, same length (the size-boundary tests need that)."""
FAIL = f"{PROBE_SERVICE}/Fail"
"""Unary: raises the ``FlameError`` packed by :func:`pack_failure`."""
CHUNKS = f"{PROBE_SERVICE}/Chunks"
"""Stream: yields :func:`chunk_answers` of the chunks packed by :func:`pack_chunks`."""
MISSING = f"{PROBE_SERVICE}/NoSuchMethod"
"""Never served: calling it must give ``UNIMPLEMENTED``."""

_LEN = struct.Struct(">I")


class ConformanceProbeError(RuntimeError):
    """A plain (non-Flame) exception a probe handler raises; its name must reach the caller."""


def echo_answer(request: bytes, method: str = ECHO, tag: str = "") -> bytes:
    """What :data:`ECHO` answers: the request reversed, then the method path and the server's tag."""
    answer = bytes(request)[::-1] + b"@" + method.encode("ascii")
    return answer + b"#" + tag.encode("utf-8") if tag else answer


def pack_chunks(chunks: Sequence[bytes]) -> bytes:
    """Frame a list of byte strings into one request (4-byte big-endian length before each)."""
    return b"".join(_LEN.pack(len(c)) + bytes(c) for c in chunks)


def unpack_chunks(data: bytes) -> list[bytes]:
    """The inverse of :func:`pack_chunks`."""
    chunks: list[bytes] = []
    offset = 0
    while offset < len(data):
        (size,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        chunks.append(bytes(data[offset : offset + size]))
        offset += size
    return chunks


def chunk_answer(index: int, chunk: bytes) -> bytes:
    """One streamed answer: its position, then the chunk reversed (so order and content both show)."""
    return _LEN.pack(index) + bytes(chunk)[::-1]


def chunk_answers(chunks: Sequence[bytes]) -> list[bytes]:
    """Everything :data:`CHUNKS` yields for ``chunks``, in order."""
    return [chunk_answer(i, c) for i, c in enumerate(chunks)]


def pack_failure(code: FlameErrorCode | int, message: str) -> bytes:
    """A request asking :data:`FAIL` to raise ``FlameError(code, message)``."""
    return _LEN.pack(int(code)) + message.encode("utf-8")


def unpack_failure(data: bytes) -> FlameError:
    """The error a :func:`pack_failure` request describes."""
    (code,) = _LEN.unpack_from(data, 0)
    return FlameError(FlameErrorCode(code), bytes(data[_LEN.size :]).decode("utf-8"))


def probe_handlers(tag: str = "") -> dict[str, Handler]:
    """The probe service. ``tag`` names the server (e.g. its generation) and shows in echo answers."""

    def echo(request: bytes, ctx: CallContext) -> bytes:
        return echo_answer(request, ECHO, tag)

    def reverse(request: bytes, ctx: CallContext) -> bytes:
        return bytes(request)[::-1]

    def fail(request: bytes, ctx: CallContext) -> bytes:
        raise unpack_failure(request)

    def chunks(request: bytes, ctx: CallContext) -> Iterator[bytes]:
        yield from chunk_answers(unpack_chunks(request))

    return {
        ECHO: UnaryHandler(echo),
        REVERSE: UnaryHandler(reverse),
        FAIL: UnaryHandler(fail),
        CHUNKS: StreamHandler(chunks),
    }
