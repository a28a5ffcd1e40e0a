"""The messages that carry a task's payload, encoded by hand.

``TaskContext`` (server -> instance) and ``TaskResult`` (instance -> server) are the hot messages of
every task; ``CreateTaskRequest`` carries an ``invoke``'s input from the client, and the ``Task`` that
answers it carries the output back. Their payload may be large. Through the protobuf runtime, a bytes
field is copied into the message when set and again when it is serialized: about 20 ms for 16 MiB.
Their wire format is simple (strings, a number, optional byte strings), so they are written here with
one join, in field-number order as protobuf's own serializer writes them: the bytes are the same (the
tests compare them with ``SerializeToString``). Decoding stays with protobuf.
"""

from __future__ import annotations

__all__ = ["create_task_request", "task_context", "task_reply", "task_result"]

_LEN = 2
"""Wire type of a length-delimited field (bytes, string)."""
_VARINT = 0


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(parts: list[bytes], number: int, data: bytes) -> None:
    parts.append(_varint(number << 3 | _LEN))
    parts.append(_varint(len(data)))
    parts.append(data)


def task_context(task_id: str, session_id: str, task_input: bytes | None) -> bytes:
    """``flame.v1.TaskContext`` (task_id = 1, session_id = 2, optional input = 4), serialized."""
    parts: list[bytes] = []
    if task_id:
        _length_delimited(parts, 1, task_id.encode())
    if session_id:
        _length_delimited(parts, 2, session_id.encode())
    if task_input is not None:
        _length_delimited(parts, 4, task_input)
    return b"".join(parts)


def task_result(return_code: int, output: bytes | None = None, message: str | None = None) -> bytes:
    """``flame.v1.TaskResult`` (int32 return_code = 1, optional output = 2, optional message = 3), serialized."""
    if not -(1 << 31) <= return_code < 1 << 31:
        raise ValueError(f"return_code {return_code} does not fit an int32")
    parts: list[bytes] = []
    if return_code:
        # A negative int32 is written as its 64-bit two's complement (ten bytes), as protobuf does.
        parts.append(_varint(1 << 3 | _VARINT))
        parts.append(_varint(return_code & 0xFFFFFFFFFFFFFFFF))
    if output is not None:
        _length_delimited(parts, 2, output)
    if message is not None:
        _length_delimited(parts, 3, message.encode())
    return b"".join(parts)


def create_task_request(session_id: str, task_input: bytes | None) -> bytes:
    """``flame.v1.CreateTaskRequest`` (task = 1: ``TaskSpec`` with session_id = 2, optional input = 3), serialized.

    The nested message's length is computed, not built, so the input is copied once, by the join.
    """
    inner: list[bytes] = []
    if session_id:
        _length_delimited(inner, 2, session_id.encode())
    if task_input is not None:
        inner.append(_varint(3 << 3 | _LEN))
        inner.append(_varint(len(task_input)))
    size = sum(len(part) for part in inner) + (0 if task_input is None else len(task_input))
    parts = [_varint(1 << 3 | _LEN), _varint(size), *inner]
    if task_input is not None:
        parts.append(task_input)
    return b"".join(parts)


def _small_message(fields: list[tuple[int, str]]) -> bytes:
    """A message of string fields (set ones only), serialized: small, so built then embedded."""
    parts: list[bytes] = []
    for number, value in fields:
        if value:
            _length_delimited(parts, number, value.encode())
    return b"".join(parts)


def task_reply(task_id: str, name: str, session_id: str, output: bytes | None, status: bytes) -> bytes:
    """A ``flame.v1.Task`` as RunTask answers it (metadata, spec without the input, and ``status`` already
    serialized), serialized with one copy of the output.

    metadata = 1 (id = 1, name = 2), spec = 2 (session_id = 2, optional output = 4), status = 3.
    """
    spec = _small_message([(2, session_id)])
    output_head = b"" if output is None else _varint(4 << 3 | _LEN) + _varint(len(output))
    spec_size = len(spec) + len(output_head) + (0 if output is None else len(output))
    parts: list[bytes] = []
    _length_delimited(parts, 1, _small_message([(1, task_id), (2, name)]))
    parts += [_varint(2 << 3 | _LEN), _varint(spec_size), spec, output_head]
    if output is not None:
        parts.append(output)
    _length_delimited(parts, 3, status)
    return b"".join(parts)
