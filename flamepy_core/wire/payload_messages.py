"""The messages that carry a task's payload, and the rest of ``flame.v1.Instance``, by hand.

``TaskContext`` (server -> instance) and ``TaskResult`` (instance -> server) are the hot messages of
every task; ``CreateTaskRequest`` carries an ``invoke``'s input from the client, and the ``Task`` that
answers it carries the output back. Their payload may be large. Through the protobuf runtime, a bytes
field is copied into the message when set and again when it is serialized: about 20 ms for 16 MiB.
Their wire format is simple (strings, a number, optional byte strings), so they are written here with
one join, in field-number order as protobuf's own serializer writes them: the bytes are the same (the
tests compare them with ``SerializeToString``).

A service process also reads ``TaskContext`` and ``SessionContext`` and writes ``Result`` here, so its
start path imports no protobuf at all (protobuf's descriptor pool and message classes were a cold
start's largest import), and a task's input is read with one slice (protobuf's parse of a 16 MiB input
costs about 20 ms). The readers follow protobuf's parsing rules, which the tests check against
protobuf itself: the last value of a repeated scalar field wins, repeated sub-messages merge, unknown
fields (and fields of a known number with another wire type) are skipped, strings must be UTF-8,
truncated or malformed input is an error (a ``ValueError`` saying what is wrong, where protobuf raises
its ``DecodeError``).
"""

from __future__ import annotations

from typing import NamedTuple

from flamepy_core.wire import payload_handoff as handoff

__all__ = [
    "GRANT_LANE",
    "LANES_OFFERED",
    "ON_SESSION_ENTER",
    "ON_SESSION_LEAVE",
    "ON_TASK_INVOKE",
    "RUN_LANE_TASK",
    "RUN_LANE_TASKS",
    "RUN_TASKS",
    "TASKS_OFFERED",
    "VIEW_BYTES",
    "WITHDRAW_TASKS",
    "TaskCall",
    "create_task_request",
    "create_task_request_parts",
    "lane_task",
    "lanes_offered",
    "read_create_task_request",
    "read_enter_result",
    "read_grant_lane",
    "read_lane_task",
    "read_session_context",
    "read_task_batch",
    "read_task_call",
    "read_task_context",
    "read_task_result",
    "read_withdrawn_tasks",
    "result",
    "run_task_reply_parts",
    "task_batch",
    "task_context",
    "task_outcome_entry",
    "task_outcomes_entry",
    "task_reply",
    "task_reply_parts",
    "task_result",
    "tasks_offered",
    "withdrawn_tasks",
]

ON_SESSION_ENTER = "/flame.v1.Instance/OnSessionEnter"
ON_TASK_INVOKE = "/flame.v1.Instance/OnTaskInvoke"
ON_SESSION_LEAVE = "/flame.v1.Instance/OnSessionLeave"
"""The paths of the three ``flame.v1.Instance`` rpcs (``flamepy_core.wire.methods.INSTANCE`` reads them
from the descriptors; a test keeps these equal to those)."""

RUN_TASKS = "/flamepy.ext.v1.InstanceTasks/RunTasks"
WITHDRAW_TASKS = "/flamepy.ext.v1.InstanceTasks/WithdrawTasks"
"""Tasks in batches, between flamepy's server and its own instance runtime (``flamepy.ext.v1.InstanceTasks``;
a test keeps these equal to the descriptors' paths)."""
TASKS_OFFERED = 1002
"""``flame.v1.Result`` of OnSessionEnter, varint: 1 = this instance takes ``RunTasks`` (an unknown field to
Flame's executors, which never receive it: it travels instance -> server only)."""
GRANT_LANE = "/flamepy.ext.v1.InstanceTasks/GrantLane"
RUN_LANE_TASK = "/flamepy.ext.v1.InstanceTasks/RunLaneTask"
"""Lanes: the server opens one on its instance; the lane's client sends it tasks (see the ``Lane`` message)."""
RUN_LANE_TASKS = "/flamepy.ext.v1.InstanceTasks/RunLaneTasks"
"""Many of a lane's tasks in one call (``TaskBatch`` each way: ``LaneTask``s in, ``TaskResult``s out)."""
LANES_OFFERED = 1003
"""``flame.v1.Result`` of OnSessionEnter, varint: 1 = this instance opens lanes (``GrantLane``)."""

_LEN = 2
"""Wire type of a length-delimited field (bytes, string)."""
_VARINT = 0


_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))
"""Every varint of one byte: tags and most lengths are, and these run several times per message."""


_TASK_ID_KEY = bytes((1 << 3 | _LEN,))
_SESSION_ID_KEY = bytes((2 << 3 | _LEN,))
_INPUT_KEY = bytes((4 << 3 | _LEN,))
_CONTEXT_KEYS = (_TASK_ID_KEY[0], _SESSION_ID_KEY[0], _INPUT_KEY[0])
"""The keys of ``TaskContext``'s fields 1, 2 and 4 (length-delimited): the same bytes in ``TaskSpec``
(``session_id`` = 2) and, for fields 1 and 2, in ``Task`` and ``TaskMetadata``."""


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if 0 <= value < 0x4000:  # two bytes: the length of a payload of 128 bytes to 16 KiB
        return bytes((value & 0x7F | 0x80, value >> 7))
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


def _varint_field(parts: list[bytes], number: int, value: int) -> None:
    parts.append(_varint(number << 3 | _VARINT))
    parts.append(_varint(value))


def _strings(*fields: tuple[bytes, bytes]) -> list[bytes]:
    """The parts of length-delimited string fields, each given as (key, its bytes): key, length (a one-byte
    length looked up), bytes; an empty one is left out, as protobuf leaves out a string field not set."""
    parts: list[bytes] = []
    for key, data in fields:
        if data:
            size = len(data)
            parts += (key, _ONE_BYTE[size] if size < 0x80 else _varint(size), data)
    return parts


def task_context(
    task_id: str,
    session_id: str,
    task_input: bytes | None,
    *,
    input_file: tuple[str, int] | None = None,
    output_file: tuple[str, int, int, bool] | None = None,
) -> bytes:
    """``flame.v1.TaskContext`` (task_id = 1, session_id = 2, optional input = 4), serialized.

    For an instance that takes payload files (:mod:`.payload_handoff`): ``input_file`` is the path and
    size of the file holding the input (then ``task_input`` is None), ``output_file`` the path where an
    output of at least the first size and at most the second is to be written, and whether to fsync it.
    """
    # Keys written as constants, one-byte lengths looked up: this runs for every task the server sends.
    parts = _strings((_TASK_ID_KEY, task_id.encode()), (_SESSION_ID_KEY, session_id.encode()))
    if task_input is not None:
        size = len(task_input)
        parts += (_INPUT_KEY, _ONE_BYTE[size] if size < 0x80 else _varint(size), task_input)
    if input_file is not None:
        _length_delimited(parts, handoff.INPUT_FILE, input_file[0].encode())
        _varint_field(parts, handoff.INPUT_SIZE, input_file[1])
    if output_file is not None:  # (named for every task of an instance that takes payload files)
        path, least, most, sync = output_file
        name = path.encode()
        # The sizes and the fsync flag are the server's settings, the same for every task: written once.
        tail = _output_file_tails.get((least, most, sync))
        if tail is None:
            tail = _output_file_tail(least, most, sync)
        parts += (_OUTPUT_FILE_KEY, _varint(len(name)), name, tail)
    return b"".join(parts)


_output_file_tails: dict[tuple[int, int, bool], bytes] = {}
"""The fields after an output file's path (its least and most sizes, whether to fsync), serialized, by value."""


def _output_file_tail(least: int, most: int, sync: bool) -> bytes:
    parts: list[bytes] = []
    _varint_field(parts, handoff.OUTPUT_MIN, least)
    _varint_field(parts, handoff.OUTPUT_SYNC, int(sync))
    _varint_field(parts, handoff.OUTPUT_MAX, most)
    tail = b"".join(parts)
    if len(_output_file_tails) >= 64:  # settings do not change often; a test may try many
        _output_file_tails.clear()
    _output_file_tails[(least, most, sync)] = tail
    return tail


_OUTPUT_FILE_KEY = _varint(handoff.OUTPUT_FILE << 3 | _LEN)
"""The key of the output file's path in a ``TaskContext`` (:mod:`.payload_handoff`)."""


def _return_code(return_code: int) -> list[bytes]:
    """The parts of field 1, an int32 ``return_code`` (omitted when 0), to start a message with."""
    if not -(1 << 31) <= return_code < 1 << 31:
        raise ValueError(f"return_code {return_code} does not fit an int32")
    if not return_code:
        return []
    # A negative int32 is written as its 64-bit two's complement (ten bytes), as protobuf does.
    return [_varint(1 << 3 | _VARINT), _varint(return_code & 0xFFFFFFFFFFFFFFFF)]


_OUTPUT_KEY = _varint(2 << 3 | _LEN)


def task_result(
    return_code: int, output: bytes | None = None, message: str | None = None, *, output_size: int | None = None
) -> bytes:
    """``flame.v1.TaskResult`` (int32 return_code = 1, optional output = 2, optional message = 3), serialized.

    ``output_size``: the output was written to the file the server named instead (:mod:`.payload_handoff`).
    """
    if output is not None and not return_code and message is None and output_size is None:
        return b"".join((_OUTPUT_KEY, _varint(len(output)), output))  # every successful task's answer
    parts = _return_code(return_code)
    if output is not None:
        _length_delimited(parts, 2, output)
    if message is not None:
        _length_delimited(parts, 3, message.encode())
    if output_size is not None:
        _varint_field(parts, handoff.OUTPUT_SIZE, output_size)
    return b"".join(parts)


def create_task_request(session_id: str, task_input: bytes | None) -> bytes:
    """``flame.v1.CreateTaskRequest`` (task = 1: ``TaskSpec`` with session_id = 2, optional input = 3), serialized.

    The nested message's length is computed, not built, so the input is copied once, by the join.
    """
    return b"".join(create_task_request_parts(session_id, task_input))


def create_task_request_parts(session_id: str, task_input: bytes | None) -> list[bytes]:
    """:func:`create_task_request` as the parts it joins: what comes before the input, then the input itself
    (not copied), for a transport that sends a message's parts as they are (``kit.unary_read``)."""
    head = b"".join(_strings((_SESSION_ID_KEY, session_id.encode())))
    if task_input is None:
        return [b"".join((_SPEC_IN_REQUEST_KEY, _varint(len(head)), head))]
    head += _INPUT_IN_SPEC_KEY + _varint(len(task_input))
    return [b"".join((_SPEC_IN_REQUEST_KEY, _varint(len(head) + len(task_input)), head)), task_input]


_SPEC_IN_REQUEST_KEY = bytes((1 << 3 | _LEN,))
_INPUT_IN_SPEC_KEY = bytes((3 << 3 | _LEN,))
"""The keys of ``CreateTaskRequest``'s task (1) and of ``TaskSpec``'s input (3)."""


def task_reply(task_id: str, name: str, session_id: str, output: bytes | None, status: bytes) -> bytes:
    """A ``flame.v1.Task`` as RunTask answers it (metadata, spec without the input, and ``status`` already
    serialized), serialized with one copy of the output.

    metadata = 1 (id = 1, name = 2), spec = 2 (session_id = 2, optional output = 4), status = 3.
    """
    # As task_context: every RunTask's answer is built here (a large one by task_reply_parts).
    parts, after = _around_output(task_id, name, session_id, None if output is None else len(output), status)
    if output is not None:
        parts.append(output)
    parts += after
    return b"".join(parts)


def task_reply_parts(
    task_id: str, name: str, session_id: str, output: handoff.Mapped | None, status: bytes
) -> list[handoff.Mapped]:
    """:func:`task_reply` as three parts: what comes before the output, the output itself (not copied: bytes,
    or a payload file's mapping), and what follows it (only the first when there is no output), for a
    transport that sends a reply's parts as they are (``kit.send_parts``): a large RunTask answer."""
    head, tail = _around_output(task_id, name, session_id, None if output is None else len(output), status)
    if output is None:
        return [b"".join((*head, *tail))]
    return [b"".join(head), output, b"".join(tail)]


def _around_output(
    task_id: str, name: str, session_id: str, output_size: int | None, status: bytes
) -> tuple[list[bytes], tuple[bytes, bytes, bytes]]:
    """The parts of RunTask's answer before its output (metadata, the spec's start, the output's key and
    length) and after it (the status), for an output of ``output_size`` bytes (None: no output)."""
    tid, named, sid = task_id.encode(), name.encode(), session_id.encode()
    if 0 < len(tid) < 0x20 and 0 < len(named) < 0x20 and 0 < len(sid) < 0x7E and len(status) < 0x80:
        # Every answer's case (ids of a few digits, a session id, a status of a few events): each length one
        # byte, looked up here; six calls fewer on every warm invoke's way back than the general case below.
        metadata = b"".join((_TASK_ID_KEY, _ONE_BYTE[len(tid)], tid, _SESSION_ID_KEY, _ONE_BYTE[len(named)], named))
        spec = b"".join((_SESSION_ID_KEY, _ONE_BYTE[len(sid)], sid))
        metadata_head, status_head = _ONE_BYTE[len(metadata)], _ONE_BYTE[len(status)]
    else:
        metadata = b"".join(_strings((_TASK_ID_KEY, tid), (_SESSION_ID_KEY, named)))
        spec = b"".join(_strings((_SESSION_ID_KEY, sid)))
        metadata_head, status_head = _varint(len(metadata)), _varint(len(status))
    output_head = b"" if output_size is None else _OUTPUT_IN_SPEC_KEY + _varint(output_size)
    spec_size = len(spec) + len(output_head) + (output_size or 0)
    head = [_METADATA_KEY, metadata_head, metadata, _SPEC_KEY, _varint(spec_size), spec, output_head]
    return head, (_STATUS_KEY, status_head, status)


_METADATA_KEY = bytes((1 << 3 | _LEN,))
_SPEC_KEY = bytes((2 << 3 | _LEN,))
_STATUS_KEY = bytes((3 << 3 | _LEN,))
_OUTPUT_IN_SPEC_KEY = bytes((4 << 3 | _LEN,))
"""The keys of ``Task``'s metadata (1), spec (2) and status (3), and of ``TaskSpec``'s output (4)."""


def result(
    return_code: int,
    message: str | None = None,
    *,
    handoff_offered: bool = False,
    tasks_offered: bool = False,
    lanes_offered: bool = False,
) -> bytes:
    """``flame.v1.Result`` (int32 return_code = 1, optional message = 2), serialized.

    ``handoff_offered``: this instance takes payload files (:mod:`.payload_handoff`), said in OnSessionEnter's;
    ``tasks_offered``: it takes tasks in batches (``RunTasks``, :data:`TASKS_OFFERED`); ``lanes_offered``: it
    opens lanes (:data:`LANES_OFFERED`).
    """
    parts = _return_code(return_code)
    if message is not None:
        _length_delimited(parts, 2, message.encode())
    if handoff_offered:
        _varint_field(parts, handoff.HANDOFF, 1)
    if tasks_offered:
        _varint_field(parts, TASKS_OFFERED, 1)
    if lanes_offered:
        _varint_field(parts, LANES_OFFERED, 1)
    return b"".join(parts)


_BATCH_TASK_KEY = bytes((1 << 3 | _LEN,))
"""The key of ``TaskBatch``'s tasks (1)."""


def task_batch(contexts: list[bytes]) -> bytes:
    """``flamepy.ext.v1.TaskBatch`` (repeated bytes tasks = 1), each a serialized ``TaskContext`` (or, on a
    lane, a ``LaneTask`` one way and a ``TaskResult`` the other)."""
    parts: list[bytes] = []
    for context in contexts:  # (the key and a one- or two-byte length inline: three calls fewer per task)
        size = len(context)
        parts += (_BATCH_TASK_KEY, _ONE_BYTE[size] if size < 0x80 else _varint(size), context)
    return b"".join(parts)


_OUTCOMES_ENTRY_KEY = bytes((1 << 3 | _LEN,))
_OUTCOME_ID_KEY = bytes((1 << 3 | _VARINT,))
_OUTCOME_STATE_KEY = bytes((2 << 3 | _VARINT,))
_OUTCOME_OUTPUT_KEY = bytes((3 << 3 | _LEN,))
_OUTCOME_MESSAGE_KEY = bytes((4 << 3 | _LEN,))
"""The key of ``TaskOutcomes``' tasks (1), and of ``TaskOutcome``'s task_id (1), state (2), output (3) and
message (4)."""


def task_outcome_entry(task_id: int, state: int, output: bytes | None, message: str) -> tuple[list[bytes], int]:
    """One ``flamepy.ext.v1.TaskOutcome`` (task_id = 1, state = 2, optional output = 3, message = 4; purged =
    5 left unset) as an entry of ``TaskOutcomes.tasks`` (field 1): its parts, to be joined with the other
    entries of a message, and the outcome's size. The output is not copied until that join.

    Why by hand: the server writes one per task a ``run()`` watches, and protobuf's setters and serializer
    cost about twice this (7.0 against 3.7 µs a task for 64 outcomes, docs/benchmarks.md)."""
    # (One-byte varints looked up: a state always, a short output's length and a small task id too.)
    small = (
        (_OUTCOME_ID_KEY + (_ONE_BYTE[task_id] if task_id < 0x80 else _varint(task_id))) if task_id else b""
    )  # (a task id is never 0; protobuf leaves 0 out)
    if state:
        # An enum is an int32, written as protobuf writes one (a negative one in ten bytes).
        small += _OUTCOME_STATE_KEY + (_ONE_BYTE[state] if 0 < state < 0x80 else _varint(state & 0xFFFFFFFFFFFFFFFF))
    if output is None and not message:
        return [_OUTCOMES_ENTRY_KEY, _ONE_BYTE[len(small)], small], len(small)  # (at most 22 bytes)
    parts = [_OUTCOMES_ENTRY_KEY, b"", small]
    size = len(small)
    if output is not None:
        n = len(output)
        length = _ONE_BYTE[n] if n < 0x80 else _varint(n)
        parts += (_OUTCOME_OUTPUT_KEY, length, output)
        size += 1 + len(length) + n
    if message:
        text = message.encode()
        length = _varint(len(text))
        parts += (_OUTCOME_MESSAGE_KEY, length, text)
        size += 1 + len(length) + len(text)
    parts[1] = _ONE_BYTE[size] if size < 0x80 else _varint(size)
    return parts, size


def task_outcomes_entry(outcome: bytes) -> list[bytes]:
    """A ``TaskOutcome`` serialized elsewhere (by protobuf) as an entry of ``TaskOutcomes.tasks``: its parts."""
    return [_OUTCOMES_ENTRY_KEY, _varint(len(outcome)), outcome]


def withdrawn_tasks(task_ids: list[str]) -> bytes:
    """``flamepy.ext.v1.WithdrawnTasks`` (repeated string task_ids = 1), serialized."""
    parts: list[bytes] = []
    for task_id in task_ids:
        _length_delimited(parts, 1, task_id.encode())
    return b"".join(parts)


_I64 = 1
_I32 = 5


def _read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    if pos + 3 < len(data):  # up to four bytes unrolled: keys, lengths and sizes under 256 MiB
        byte = data[pos]
        if byte < 0x80:
            return byte, pos + 1
        value = byte & 0x7F
        byte = data[pos + 1]
        if byte < 0x80:
            return value | byte << 7, pos + 2
        value |= (byte & 0x7F) << 7
        byte = data[pos + 2]
        if byte < 0x80:
            return value | byte << 14, pos + 3
        value |= (byte & 0x7F) << 14
        byte = data[pos + 3]
        if byte < 0x80:
            return value | byte << 21, pos + 4
    elif pos < len(data) and data[pos] < 0x80:
        return data[pos], pos + 1
    value = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise ValueError("truncated message: it ends inside a varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise ValueError("malformed message: a varint longer than ten bytes")


def _length(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """The length (a varint) at ``pos`` and the position after it, a one-byte length read inline: the
    straight-through readers below take every field's length here."""
    if pos < end and data[pos] < 0x80:
        return data[pos], pos + 1
    return _read_varint(data, pos)


_START_GROUP = 3
_END_GROUP = 4


_MAX_GROUP_DEPTH = 100
"""Groups nested deeper are refused, as protobuf refuses them (its recursion limit)."""


def _skip(data: bytes | memoryview, pos: int, number: int, wire: int, depth: int = 0) -> int:
    """The position after the value of field ``number`` (of wire type ``wire``) that starts at ``pos``."""
    if number == 0:
        raise ValueError("malformed message: field number 0")
    if wire == _VARINT:
        return _read_varint(data, pos)[1]
    if wire == _LEN:
        length, pos = _read_varint(data, pos)
        if length > len(data) - pos:
            raise ValueError("truncated message: a field is longer than what is left")
        return pos + length
    if wire in (_I64, _I32):
        pos += 8 if wire == _I64 else 4
        if pos > len(data):
            raise ValueError("truncated message: it ends inside a fixed-size field")
        return pos
    if wire == _START_GROUP:  # a (deprecated) group: its fields, up to the end marker of the same number
        if depth >= _MAX_GROUP_DEPTH:
            raise ValueError(f"malformed message: groups nested more than {_MAX_GROUP_DEPTH} deep")
        while True:
            key, pos = _read_varint(data, pos)
            if key & 7 == _END_GROUP:
                if key >> 3 != number:
                    raise ValueError(f"malformed message: group {number} ends with the marker of {key >> 3}")
                return pos
            pos = _skip(data, pos, key >> 3, key & 7, depth + 1)
    raise ValueError(f"malformed message: wire type {wire} (field {number}) where a field starts")


def _fields(
    data: bytes | memoryview, varints: dict[int, int] | None = None, pos: int = 0, end: int = -1
) -> list[tuple[int, int, int]]:
    """The length-delimited fields of a serialized message, as ``(number, start, end)`` (the contents are
    ``data[start:end]``), in order. Fields of other wire types are skipped: flame.v1's readers here need
    strings, bytes and sub-messages, and (into ``varints`` when given, the last value of each number)
    integers. ``pos`` and ``end`` bound a message nested in ``data`` (positions stay ``data``'s: no
    slice is made)."""
    out: list[tuple[int, int, int]] = []
    if end < 0:
        end = len(data)
    while pos < end:
        # Keys of one byte (fields 1 to 15) and two (to 2047: the payload-file fields) read inline, and
        # so are one-byte numbers: this loop is on every call's path.
        key = data[pos]
        if key < 0x80:
            pos += 1
        elif pos + 1 < end and data[pos + 1] < 0x80:
            key = (key & 0x7F) | data[pos + 1] << 7
            pos += 2
        else:
            key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _LEN and number != 0:
            if pos < end and data[pos] < 0x80:
                length = data[pos]
                pos += 1
            else:
                length, pos = _read_varint(data, pos)
            if length > end - pos:
                raise ValueError("truncated message: a field is longer than what is left")
            out.append((number, pos, pos + length))
            pos += length
        elif wire == _VARINT and number != 0 and varints is not None:
            if pos < end and data[pos] < 0x80:
                varints[number] = data[pos]
                pos += 1
            else:
                varints[number], pos = _read_varint(data, pos)
        else:
            pos = _skip(data, pos, number, wire)
        if pos > end:
            raise ValueError("truncated message: it ends inside a field")
    return out


def _text(data: bytes | memoryview, start: int, end: int) -> str:
    return str(data[start:end], "utf-8")  # strict: protobuf refuses a string that is not UTF-8


def _sub_fields(data: bytes, number: int, varints: dict[int, int] | None = None) -> list[tuple[int, int, int]]:
    """The fields of every occurrence of sub-message ``number`` of ``data``, in order, as ``(number, start,
    end)`` into ``data``: read in order, the last value of each wins, which is protobuf's merge of repeated
    occurrences of a sub-message."""
    out: list[tuple[int, int, int]] = []
    for outer, start, end in _fields(data):
        if outer == number:
            view = memoryview(data)[start:end]  # no copy: positions are shifted back into ``data``
            out += [(n, start + s, start + e) for n, s, e in _fields(view, varints)]
    return out


VIEW_BYTES = 64 * 1024
"""An input this large is read as a view into its request, not copied out of it (see below)."""


def _create_task_request_as_written(data: bytes | memoryview) -> tuple[str, bytes | memoryview | None] | None:
    """:func:`read_create_task_request` of a request in the layout :func:`create_task_request` writes (one
    task: its session id, then its input), read straight through; None for any other layout (fields
    repeated, unknown, out of order), which the general reader then reads."""
    end = len(data)
    if end < 2 or data[0] != _SPEC_IN_REQUEST_KEY[0]:
        return None
    size, pos = _length(data, 1, end)
    if pos + size != end:
        return None
    session_id = ""
    if pos < end and data[pos] == _SESSION_ID_KEY[0]:
        size, pos = _length(data, pos + 1, end)
        if pos + size > end:
            return None
        session_id = _text(data, pos, pos + size)
        pos += size
    if pos == end:
        return session_id, None
    if data[pos] != _INPUT_IN_SPEC_KEY[0]:
        return None
    size, pos = _length(data, pos + 1, end)
    if pos + size != end:
        return None
    return session_id, bytes(data[pos:end]) if size < VIEW_BYTES else memoryview(data)[pos:end]


def read_create_task_request(data: bytes | memoryview) -> tuple[str, bytes | memoryview | None]:
    """``flame.v1.CreateTaskRequest`` -> ``(task.session_id, task.input or None)``.

    The input is one slice (protobuf's parse and then its accessor copied a 16 MiB input twice); one of
    ``VIEW_BYTES`` or more is a ``memoryview`` into ``data``, not a copy: the server writes a large input
    straight to its payload file and keeps no other copy of it. ``data`` may itself be a view (of the
    buffer the transport read the request into): it is not copied either, and a smaller input is ``bytes``.
    """
    read = _create_task_request_as_written(data)
    if read is not None:
        return read
    data = bytes(data)  # another layout (not this SDK's): read from a copy
    session_id = ""
    task_input: bytes | memoryview | None = None
    for number, start, end in _sub_fields(data, 1):
        if number == 2:
            session_id = _text(data, start, end)
        elif number == 3:
            task_input = data[start:end] if end - start < VIEW_BYTES else memoryview(data)[start:end]
    return session_id, task_input


def _run_task_reply_as_written(data: bytes | memoryview) -> tuple[bytes, bytes | None] | None:
    """:func:`run_task_reply_parts` of a reply in the layout :func:`task_reply` writes (metadata; a spec of
    session id and output; status), read straight through; None for any other layout. On a ``memoryview``
    the status and the output are each copied out once, into ``bytes``."""
    end = len(data)
    if end < 2 or data[0] != _METADATA_KEY[0]:
        return None
    size, pos = _length(data, 1, end)
    pos += size
    if pos >= end or data[pos] != _SPEC_KEY[0]:
        return None
    size, pos = _length(data, pos + 1, end)
    spec_end = pos + size
    if spec_end > end:
        return None
    if pos < spec_end and data[pos] == _SESSION_ID_KEY[0]:
        size, pos = _length(data, pos + 1, end)
        pos += size
    output = None
    if pos < spec_end and data[pos] == _OUTPUT_IN_SPEC_KEY[0]:
        size, pos = _length(data, pos + 1, end)
        output = bytes(data[pos : pos + size])  # (the slice itself for bytes)
        pos += size
    if pos != spec_end or pos >= end or data[pos] != _STATUS_KEY[0]:
        return None
    size, pos = _length(data, pos + 1, end)
    if pos + size != end:
        return None
    return bytes(data[pos:end]), output


def run_task_reply_parts(data: bytes | memoryview) -> tuple[bytes, bytes | None]:
    """A ``flame.v1.Task`` as RunTask answers it -> ``(status, spec.output or None)``: the serialized
    ``TaskStatus`` (every occurrence, joined: protobuf merges them as it would in the whole message) for
    the caller to parse, and the output as one slice (protobuf copies a large output twice). The status
    is small and holds 6-byte timestamps and the task's events, which protobuf's parser reads five times
    faster than Python can step over them.

    ``data`` may be a view of a buffer that is reused later (the link's, ``kit.unary_read``): what is
    returned is ``bytes``, the output copied out of it once."""
    read = _run_task_reply_as_written(data)
    if read is not None:
        return read
    data = bytes(data)  # another layout (not this server's): read from a copy
    output: bytes | None = None
    status: list[bytes] = []
    for outer, start, end in _fields(data):  # one pass; the last value of each wins, as in _sub_fields
        if outer == 2:
            for number, first, last in _fields(data, None, start, end):
                if number == 4:
                    output = data[first:last]
        elif outer == 3:
            status.append(data[start:end])
    return status[0] if len(status) == 1 else b"".join(status), output


class TaskCall(NamedTuple):
    """A ``flame.v1.TaskContext`` as read, with the payload files the server named (:mod:`.payload_handoff`)."""

    task_id: str
    session_id: str
    input: bytes | None
    input_file: tuple[str, int] | None = None
    """The path and size of the file holding the input (``input`` is then None)."""
    output_file: tuple[str, int, int, bool] | None = None
    """The path where an output of at least the first size and at most the second is written, and
    whether to fsync it."""


def read_task_call(data: bytes) -> TaskCall:
    """``flame.v1.TaskContext`` -> :class:`TaskCall`; the input is one slice."""
    data = bytes(data)  # a no-op for bytes; a buffer (memoryview, frame) is read as bytes
    call = _read_task_call_as_written(data)
    if call is not None:
        return call
    task_id = session_id = ""
    task_input: bytes | None = None
    input_path = output_path = None
    numbers: dict[int, int] = {}
    for number, start, end in _fields(data, numbers):
        if number == 1:
            task_id = _text(data, start, end)
        elif number == 2:
            session_id = _text(data, start, end)
        elif number == 4:
            task_input = data[start:end]
        elif number == handoff.INPUT_FILE:
            input_path = _text(data, start, end)
        elif number == handoff.OUTPUT_FILE:
            output_path = _text(data, start, end)
    input_file = None if input_path is None else (input_path, numbers.get(handoff.INPUT_SIZE, 0))
    output_file = None
    if output_path is not None:
        least, most = numbers.get(handoff.OUTPUT_MIN, 0), numbers.get(handoff.OUTPUT_MAX, 0)
        output_file = (output_path, least, most, bool(numbers.get(handoff.OUTPUT_SYNC)))
    return TaskCall(task_id, session_id, task_input, input_file, output_file)


_output_file_tail_values: dict[bytes, tuple[int, int, bool]] = {}
"""The least and most sizes and the fsync flag of an output file, by the serialized fields that follow its
path (the same in every task a server sends: see task_context)."""


def _read_task_call_as_written(data: bytes) -> TaskCall | None:
    """A ``TaskContext`` in the layout :func:`task_context` writes for a task whose input travels inline
    (task id, session id, input, then an output file's path and sizes), read straight through; None for
    any other layout, which the general reader then reads (protobuf's rules: fields repeated, out of
    order, unknown). The sizes after the path are the server's settings: read once, then looked up."""
    end = len(data)
    pos = 0
    fields: list[bytes | None] = [None, None, None]  # task id, session id, input: each at most once, in order
    for index, key in enumerate(_CONTEXT_KEYS):
        if pos < end and data[pos] == key:
            pos += 1
            size = data[pos] if pos < end else 0x80  # (a one-byte length read here: ids, and small inputs)
            if size < 0x80:
                pos += 1
            else:
                size, pos = _read_varint(data, pos)
            if pos + size > end:
                return None
            fields[index] = data[pos : pos + size]
            pos += size
    raw_id, raw_session, task_input = fields
    task_id = "" if raw_id is None else raw_id.decode()  # strict, as _text: a string must be UTF-8
    session_id = "" if raw_session is None else raw_session.decode()
    if pos == end:
        return TaskCall(task_id, session_id, task_input)
    if not data.startswith(_OUTPUT_FILE_KEY, pos):
        return None
    size, pos = _read_varint(data, pos + len(_OUTPUT_FILE_KEY))
    if pos + size > end:
        return None
    output_path = _text(data, pos, pos + size)
    tail = data[pos + size :]
    values = _output_file_tail_values.get(tail)
    if values is None:
        numbers: dict[int, int] = {}
        if _fields(tail, numbers):  # strings after the path (an input file's, unknown ones): not this layout
            return None
        least, most = numbers.get(handoff.OUTPUT_MIN, 0), numbers.get(handoff.OUTPUT_MAX, 0)
        values = (least, most, bool(numbers.get(handoff.OUTPUT_SYNC)))
        if len(_output_file_tail_values) >= 64:
            _output_file_tail_values.clear()
        _output_file_tail_values[tail] = values
    least, most, sync = values
    return TaskCall(task_id, session_id, task_input, None, (output_path, least, most, sync))


def read_task_context(data: bytes) -> tuple[str, str, bytes | None]:
    """``flame.v1.TaskContext`` -> ``(task_id, session_id, input or None)``; the input is one slice."""
    call = read_task_call(data)
    return call.task_id, call.session_id, call.input


def _int32(value: int) -> int:
    """A varint read as protobuf reads an int32: its low 32 bits, signed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def read_task_result(data: bytes) -> tuple[int, bytes | None, str | None, int | None]:
    """``flame.v1.TaskResult`` -> ``(return_code, output or None, message or None, output_size or None)``;
    the output is one slice (``output_size``: it is in the file the server named, :mod:`.payload_handoff`)."""
    data = bytes(data)
    # A success with its output, as task_result writes it (the output field alone): read straight through.
    end = len(data)
    if end > 1 and data[0] == _OUTPUT_KEY[0]:
        size, pos = _length(data, 1, end)
        if pos + size == end:
            return 0, data[pos:], None, None
    output: bytes | None = None
    message: str | None = None
    numbers: dict[int, int] = {}
    for number, start, end in _fields(data, numbers):
        if number == 2:
            output = data[start:end]
        elif number == 3:
            message = _text(data, start, end)
    return _int32(numbers.get(1, 0)), output, message, numbers.get(handoff.OUTPUT_SIZE)


def read_enter_result(data: bytes) -> tuple[int, str, bool]:
    """``flame.v1.Result`` -> ``(return_code, message, handoff offered)`` (:mod:`.payload_handoff`)."""
    data = bytes(data)
    message = ""
    numbers: dict[int, int] = {}
    for number, start, end in _fields(data, numbers):
        if number == 2:
            message = _text(data, start, end)
    return _int32(numbers.get(1, 0)), message, numbers.get(handoff.HANDOFF) == 1


def tasks_offered(data: bytes) -> bool:
    """Whether OnSessionEnter's ``flame.v1.Result`` says the instance takes ``RunTasks``."""
    numbers: dict[int, int] = {}
    _fields(bytes(data), numbers)
    return numbers.get(TASKS_OFFERED) == 1


def lanes_offered(data: bytes) -> bool:
    """Whether OnSessionEnter's ``flame.v1.Result`` says the instance opens lanes (``GrantLane``)."""
    numbers: dict[int, int] = {}
    _fields(bytes(data), numbers)
    return numbers.get(LANES_OFFERED) == 1


_LANE_INPUT_SIZE_KEY = _varint(4 << 3)
"""``LaneTask.input_size``'s key: written even for a size of 0 (the field is optional, 0 is not absent)."""


def lane_task(
    token: bytes, task_id: int, task_input: bytes | None, *, input_size: int | None = None, output_file: bool = False
) -> bytes:
    """``flamepy.ext.v1.LaneTask`` (bytes token = 1, uint64 task_id = 2, optional bytes input = 3, optional
    uint64 input_size = 4, bool output_file = 5), serialized by hand: every task on a lane is, on its
    client's path (the input copied once, by the join)."""
    parts: list[bytes] = []
    if token:
        _length_delimited(parts, 1, token)
    if task_id:
        _varint_field(parts, 2, task_id)
    if task_input is not None:
        _length_delimited(parts, 3, task_input)
    if input_size is not None:
        parts += (_LANE_INPUT_SIZE_KEY, _varint(input_size))  # (present even when 0: the field is optional)
    if output_file:
        _varint_field(parts, 5, 1)
    return b"".join(parts)


def _event(code: int, ts: int, message: bytes | None) -> bytes:
    """``flame.v1.Event`` (int32 code = 1, optional string message = 2, int64 creation_time = 3)."""
    parts: list[bytes] = []
    if code:
        _varint_field(parts, 1, code)
    if message is not None:
        _length_delimited(parts, 2, message)
    if ts:
        _varint_field(parts, 3, ts)
    return b"".join(parts)


def ran_task_status(state: int, created: int, ended: int, message: str | None) -> bytes:
    """``flame.v1.TaskStatus`` of a task that was created and began at ``created`` and ended at ``ended``
    (epoch ms; ``state`` its final one, non-zero): its three events, created, running (1) and ``state`` with
    ``message``. Serialized by hand, as protobuf writes it: what the server stores for each lane task it
    records whole (a protobuf message built and serialized per task cost it several microseconds)."""
    parts: list[bytes] = []
    _varint_field(parts, 1, state)
    if created:
        _varint_field(parts, 2, created)
    _varint_field(parts, 3, ended)
    for event in (
        _event(0, created, None),
        _event(1, created, None),
        _event(state, ended, None if message is None else message.encode()),
    ):
        _length_delimited(parts, 4, event)
    return b"".join(parts)


_LANE_TOKEN_KEY = bytes((1 << 3 | _LEN,))
_LANE_TASK_ID_KEY = bytes((2 << 3 | _VARINT,))
_LANE_INPUT_KEY = bytes((3 << 3 | _LEN,))


def lane_task_batch(token: bytes, tasks: list[tuple[int, bytes | None]]) -> bytes:
    """A ``TaskBatch`` of ``LaneTask``s of one lane (``token``), each ``(task id, input)``: what
    ``[lane_task(token, tid, data) ...]`` joined by :func:`task_batch` gives, built in one pass (``run()``'s
    batches: a few microseconds less per task on the client's one thread)."""
    head = _LANE_TOKEN_KEY + _varint(len(token)) + token if token else b""
    parts: list[bytes] = []
    append = parts.append
    for task_id, data in tasks:
        tid = _LANE_TASK_ID_KEY + _varint(task_id) if task_id else b""
        if data is None:
            size = len(head) + len(tid)
            parts += (_BATCH_TASK_KEY, _varint(size), head, tid)
            continue
        length = _varint(len(data))
        size = len(head) + len(tid) + 1 + len(length) + len(data)
        parts += (_BATCH_TASK_KEY, _varint(size), head, tid, _LANE_INPUT_KEY, length)
        append(data)
    return b"".join(parts)


class LaneTaskRequest(NamedTuple):
    """A ``flamepy.ext.v1.LaneTask`` as read (:func:`read_lane_task`)."""

    token: bytes
    task_id: int
    input: bytes | None
    input_size: int | None
    """Set: the input is in its payload file beside the lane's log, this many bytes (``input`` is None)."""
    output_file: bool
    """The client reads a large output from its payload file."""


def read_lane_task(data: bytes) -> LaneTaskRequest:
    """``flamepy.ext.v1.LaneTask``, read by hand, as on every lane task's path, and without protobuf in a
    service process (it starts without it)."""
    data = bytes(data)
    numbers: dict[int, int] = {}
    token = b""
    task_input: bytes | None = None
    for number, start, end in _fields(data, numbers):
        if number == 1:
            token = data[start:end]
        elif number == 3:
            task_input = data[start:end]
    return LaneTaskRequest(token, numbers.get(2, 0), task_input, numbers.get(4), numbers.get(5, 0) == 1)


def read_grant_lane(data: bytes) -> tuple[bytes, int, int, str]:
    """``flamepy.ext.v1.GrantLaneRequest`` -> ``(token, first_task_id, count, log_path)``."""
    data = bytes(data)
    numbers: dict[int, int] = {}
    token = b""
    log_path = ""
    for number, start, end in _fields(data, numbers):
        if number == 1:
            token = data[start:end]
        elif number == 4:
            log_path = _text(data, start, end)
    return token, numbers.get(2, 0), numbers.get(3, 0), log_path


def read_task_batch(data: bytes) -> list[bytes]:
    """``flamepy.ext.v1.TaskBatch`` -> its tasks (each a serialized ``TaskContext``), in order."""
    data = bytes(data)
    return [data[start:end] for number, start, end in _fields(data) if number == 1]


def read_withdrawn_tasks(data: bytes) -> list[str]:
    """``flamepy.ext.v1.WithdrawnTasks`` -> the task ids, in order."""
    data = bytes(data)
    return [_text(data, start, end) for number, start, end in _fields(data) if number == 1]


_APPLICATION_STRINGS = {1: "name", 3: "image", 4: "command", 5: "working_directory", 6: "url", 7: "installer"}
"""``flame.v1.ApplicationContext``'s string fields by number (2, ``shim``, is an enum, not read here)."""


def read_session_context(data: bytes) -> tuple[str, bytes | None, dict[str, str]]:
    """``flame.v1.SessionContext`` -> ``(session_id, common_data or None, application)``.

    ``application`` holds the string fields of ``ApplicationContext`` that are present, by name (``name``
    always, ``""`` when unset, as protobuf reads it; the optional ones only when set).
    """
    data = bytes(data)
    session_id = ""
    common_data: bytes | None = None
    application = {"name": ""}
    for number, start, end in _fields(data):
        if number == 1:
            session_id = _text(data, start, end)
        elif number == 2:  # a sub-message: repeated occurrences merge, field by field
            inner = data[start:end]
            for sub_number, sub_start, sub_end in _fields(inner):
                name = _APPLICATION_STRINGS.get(sub_number)
                if name is not None:
                    application[name] = _text(inner, sub_start, sub_end)
        elif number == 3:
            common_data = data[start:end]
    return session_id, common_data, application
