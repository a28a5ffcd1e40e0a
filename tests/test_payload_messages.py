"""The hand-written flame.v1.Instance messages: what protobuf writes, byte for byte, and read as protobuf
reads them, for any values."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from flamepy_core.engine.state import reply_task
from flamepy_core.wire import payload_handoff as handoff
from flamepy_core.wire.methods import INSTANCE
from flamepy_core.wire.payload_messages import (
    ON_SESSION_ENTER,
    ON_SESSION_LEAVE,
    ON_TASK_INVOKE,
    VIEW_BYTES,
    TaskCall,
    create_task_request,
    create_task_request_parts,
    lane_task,
    lane_task_batch,
    ran_task_status,
    read_create_task_request,
    read_enter_result,
    read_grant_lane,
    read_lane_task,
    read_session_context,
    read_task_batch,
    read_task_call,
    read_task_context,
    read_task_result,
    read_withdrawn_tasks,
    result,
    run_task_reply_parts,
    task_batch,
    task_context,
    task_reply,
    task_reply_parts,
    task_result,
    tasks_offered,
    withdrawn_tasks,
)
from flamepy_core.wire.proto import ext_pb2, frontend_pb2, shim_pb2
from flamepy_core.wire.proto import types_pb2 as pb

_INT32 = st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1)


@given(task_id=st.text(), session_id=st.text(), task_input=st.none() | st.binary())
def test_task_context_is_what_protobuf_writes(task_id: str, session_id: str, task_input: bytes | None) -> None:
    expected = shim_pb2.TaskContext(task_id=task_id, session_id=session_id)
    if task_input is not None:
        expected.input = task_input
    encoded = task_context(task_id, session_id, task_input)
    assert encoded == expected.SerializeToString()
    assert shim_pb2.TaskContext.FromString(encoded) == expected


@given(return_code=_INT32, output=st.none() | st.binary(), message=st.none() | st.text())
def test_task_result_is_what_protobuf_writes(return_code: int, output: bytes | None, message: str | None) -> None:
    expected = pb.TaskResult(return_code=return_code)
    if output is not None:
        expected.output = output
    if message is not None:
        expected.message = message
    encoded = task_result(return_code, output, message)
    assert encoded == expected.SerializeToString()
    decoded = pb.TaskResult.FromString(encoded)
    assert decoded == expected and decoded.HasField("output") == (output is not None)


@given(session_id=st.text(), task_input=st.none() | st.binary())
def test_create_task_request_is_what_protobuf_writes(session_id: str, task_input: bytes | None) -> None:
    expected = frontend_pb2.CreateTaskRequest()
    expected.task.session_id = session_id
    if task_input is not None:
        expected.task.input = task_input
    encoded = create_task_request(session_id, task_input)
    assert encoded == expected.SerializeToString()
    decoded = frontend_pb2.CreateTaskRequest.FromString(encoded)
    assert decoded == expected and decoded.task.HasField("input") == (task_input is not None)
    parts = create_task_request_parts(session_id, task_input)
    assert b"".join(parts) == encoded
    if task_input is not None:  # the input is sent as it is, never copied into the request
        assert parts[-1] is task_input


_IDS = st.text(min_size=1, max_size=40)


@given(
    task_id=_IDS,
    session_id=_IDS,
    task_input=st.none() | st.binary(),
    output=st.none() | st.binary(),
    state=st.sampled_from(list(pb.TaskState.values())),
    events=st.lists(st.tuples(st.integers(0, 100), st.text(max_size=30)), max_size=3),
)
def test_task_reply_is_what_protobuf_writes_for_the_reply(
    task_id: str,
    session_id: str,
    task_input: bytes | None,
    output: bytes | None,
    state: int,
    events: list[tuple[int, str]],
) -> None:
    """The hand-written RunTask answer equals ``reply_task(task).SerializeToString()``: no input echoed."""
    task = pb.Task()
    task.metadata.id = task.metadata.name = task_id
    task.spec.session_id = session_id
    if task_input is not None:
        task.spec.input = task_input
    if output is not None:
        task.spec.output = output
    task.status.state = state  # type: ignore[assignment]
    for code, message in events:
        task.status.events.add(code=code, message=message, creation_time=1)
    encoded = task_reply(task_id, task_id, session_id, output, task.status.SerializeToString())
    assert encoded == reply_task(task).SerializeToString()
    assert not pb.Task.FromString(encoded).spec.HasField("input")
    parts = task_reply_parts(task_id, task_id, session_id, output, task.status.SerializeToString())
    assert b"".join(parts) == encoded, "the reply as parts is not the reply"
    if output is not None:  # the output is sent as it is, never copied into the reply
        assert parts[1] is output and len(parts) == 3
    # Read where it arrived (a view of a buffer reused afterwards): the same, as bytes of their own.
    buffer = bytearray(encoded)
    read = run_task_reply_parts(memoryview(buffer))
    assert read == (task.status.SerializeToString(), output)
    assert all(part is None or type(part) is bytes for part in read)
    buffer[:] = bytes(len(buffer))
    assert read == (task.status.SerializeToString(), output)


def test_a_large_payload_keeps_its_length_prefix() -> None:
    """Lengths past one varint byte (here three bytes: 2**21 needs them) come out right."""
    payload = bytes(range(256)) * (1 << 13)
    assert pb.TaskResult.FromString(task_result(0, payload)).output == payload
    assert frontend_pb2.CreateTaskRequest.FromString(create_task_request("s", payload)).task.input == payload
    assert pb.Task.FromString(task_reply("1", "1", "s", payload, b"")).spec.output == payload


def test_a_return_code_outside_int32_is_refused() -> None:
    with pytest.raises(ValueError, match="int32"):
        task_result(1 << 31)


# -- the readers a service process uses instead of protobuf -----------------------------------------------

_OPTIONAL_APP_FIELDS = ("image", "command", "working_directory", "url", "installer")


@st.composite
def _session_contexts(draw: st.DrawFn) -> shim_pb2.SessionContext:
    message = shim_pb2.SessionContext(session_id=draw(st.text()))
    if draw(st.booleans()):
        app = message.application
        app.name = draw(st.text())
        app.shim = draw(st.sampled_from([pb.Shim.Host, pb.Shim.Wasm]))
        for name in _OPTIONAL_APP_FIELDS:
            value = draw(st.none() | st.text())
            if value is not None:
                setattr(app, name, value)
    common_data = draw(st.none() | st.binary())
    if common_data is not None:
        message.common_data = common_data
    return message


def _as_read(message: shim_pb2.SessionContext) -> tuple[str, bytes | None, dict[str, str]]:
    app = message.application
    fields = {"name": app.name, **{n: getattr(app, n) for n in _OPTIONAL_APP_FIELDS if app.HasField(n)}}
    return message.session_id, message.common_data if message.HasField("common_data") else None, fields


_UNKNOWN_FIELDS = st.lists(
    st.tuples(st.integers(min_value=8, max_value=2000), st.sampled_from([0, 1, 2, 3, 5]), st.binary(max_size=20))
)
_HANDOFF_FIELDS = {
    handoff.INPUT_FILE,
    handoff.INPUT_SIZE,
    handoff.OUTPUT_FILE,
    handoff.OUTPUT_MIN,
    handoff.OUTPUT_SYNC,
    handoff.OUTPUT_MAX,
}
_UNKNOWN_TO_TASK_CALL = st.lists(
    st.tuples(
        st.integers(min_value=8, max_value=2000).filter(lambda number: number not in _HANDOFF_FIELDS),
        st.sampled_from([0, 1, 2, 3, 5]),
        st.binary(max_size=20),
    )
)
"""Unknown to flame.v1, and to our reader of TaskContext too: the payload-file fields the server adds are
ours (read as :class:`TaskCall`'s files; their bytes are no field protobuf would skip for it)."""


def _unknown(fields: list[tuple[int, int, bytes]]) -> bytes:
    """Fields of numbers flame.v1 does not use, of every wire type, which protobuf skips (a group holds a
    varint field and a string field)."""
    from flamepy_core.wire.payload_messages import _varint

    out = bytearray()
    for number, wire, data in fields:
        out += _varint(number << 3 | wire)
        if wire == 0:
            out += _varint(int.from_bytes(data[:8], "little"))
        elif wire == 1:
            out += data[:8].ljust(8, b"\0")
        elif wire == 5:
            out += data[:4].ljust(4, b"\0")
        elif wire == 3:
            out += _varint(1 << 3) + _varint(len(data)) + _varint(2 << 3 | 2) + _varint(len(data)) + data
            out += _varint(number << 3 | 4)
        else:
            out += _varint(len(data)) + data
    return bytes(out)


@given(first=_session_contexts(), second=st.none() | _session_contexts(), unknown=_UNKNOWN_FIELDS)
def test_session_context_is_read_as_protobuf_reads_it(
    first: shim_pb2.SessionContext, second: shim_pb2.SessionContext | None, unknown: list[tuple[int, int, bytes]]
) -> None:
    """Any SessionContext, with unknown fields, and two concatenated (protobuf merges them: the last value
    of a field wins, the application messages merge field by field)."""
    data = first.SerializeToString() + _unknown(unknown)
    if second is not None:
        data += second.SerializeToString()
    assert read_session_context(data) == _as_read(shim_pb2.SessionContext.FromString(data))


@given(task_id=st.text(), session_id=st.text(), task_input=st.none() | st.binary(), unknown=_UNKNOWN_TO_TASK_CALL)
def test_task_context_is_read_as_protobuf_reads_it(
    task_id: str, session_id: str, task_input: bytes | None, unknown: list[tuple[int, int, bytes]]
) -> None:
    data = _unknown(unknown) + task_context(task_id, session_id, task_input)
    parsed = shim_pb2.TaskContext.FromString(data)
    expected = (parsed.task_id, parsed.session_id, parsed.input if parsed.HasField("input") else None)
    assert read_task_context(data) == expected == (task_id, session_id, task_input)
    assert read_task_context(memoryview(data)) == expected


@given(return_code=_INT32, message=st.none() | st.text())
def test_result_is_what_protobuf_writes(return_code: int, message: str | None) -> None:
    expected = pb.Result(return_code=return_code)
    if message is not None:
        expected.message = message
    assert result(return_code, message) == expected.SerializeToString()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x0a\x05abc", "truncated"),  # a 5-byte string with 3 bytes left
        (b"\x08", "truncated"),  # a varint field without its value
        (b"\x08" + b"\xff" * 11, "ten bytes"),
        (b"\x00\x01", "field number 0"),
        (b"\x0c", "wire type 4"),  # the end of a group that never started
        (b"\x0b\x14", "group 1 ends with the marker of 2"),
        (b"\x0b" * 101 + b"\x0c" * 101, "nested more than 100"),
        (b"\x0f", "wire type 7"),
        (b"\x0a\x02\xff\xfe", "decode"),  # a string that is not UTF-8
    ],
)
def test_a_malformed_message_is_refused(data: bytes, why: str) -> None:
    """What protobuf refuses (with its DecodeError) is a ValueError naming the problem, never a wrong read."""
    with pytest.raises(ValueError, match=why):
        read_task_context(data)
    with pytest.raises(ValueError, match=why):
        read_session_context(data)
    with pytest.raises(DecodeError):
        shim_pb2.TaskContext.FromString(data)


@st.composite
def _task_specs(draw: st.DrawFn) -> pb.TaskSpec:
    spec = pb.TaskSpec(session_id=draw(st.text()))
    for name in ("input", "output"):
        value = draw(st.none() | st.binary())
        if value is not None:
            setattr(spec, name, value)
    return spec


@given(specs=st.lists(_task_specs(), max_size=3), unknown=_UNKNOWN_FIELDS)
def test_a_create_task_request_is_read_as_protobuf_reads_it(
    specs: list[pb.TaskSpec], unknown: list[tuple[int, int, bytes]]
) -> None:
    """Any request, its task given in pieces (protobuf merges them: the last value of each field wins),
    with unknown fields; what the server's RunTask reads by hand instead of through protobuf."""
    data = _unknown(unknown) + b"".join(frontend_pb2.CreateTaskRequest(task=spec).SerializeToString() for spec in specs)
    task = frontend_pb2.CreateTaskRequest.FromString(data).task
    assert read_create_task_request(data) == (task.session_id, task.input if task.HasField("input") else None)


@given(size=st.sampled_from([VIEW_BYTES - 1, VIEW_BYTES, VIEW_BYTES + 1, 3 * VIEW_BYTES]))
def test_a_large_input_is_read_as_a_view_into_the_request_not_a_copy(size: int) -> None:
    task_input = bytes(range(256)) * (size // 256) + b"e" * (size % 256)
    data = frontend_pb2.CreateTaskRequest(task=pb.TaskSpec(session_id="s", input=task_input)).SerializeToString()
    session_id, read = read_create_task_request(data)
    assert session_id == "s" and read is not None and bytes(read) == task_input
    assert isinstance(read, memoryview) == (size >= VIEW_BYTES)
    if isinstance(read, memoryview):
        assert read.obj is data, "a view into the request it was read from"


_TIMES = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)


@given(
    first=_task_specs(),
    second=st.none() | _task_specs(),
    state=st.sampled_from(list(pb.TaskState.values())),
    times=st.tuples(_TIMES, _TIMES),
    unknown=_UNKNOWN_FIELDS,
    in_status=_UNKNOWN_FIELDS,
    later_state=st.none() | st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1),
)
def test_a_run_task_reply_is_read_as_protobuf_reads_it(
    first: pb.TaskSpec,
    second: pb.TaskSpec | None,
    state: int,
    times: tuple[int, int],
    unknown: list[tuple[int, int, bytes]],
    in_status: list[tuple[int, int, bytes]],
    later_state: int | None,
) -> None:
    """Any reply, its status with unknown fields, and given in pieces (the last value of each field wins,
    sub-messages merge): the status read from its parts is the one protobuf reads in the whole."""
    from flamepy_core.wire.payload_messages import _varint

    message = pb.Task(spec=first)
    message.metadata.id = "7"
    message.status.state = state  # type: ignore[assignment]
    message.status.creation_time, message.status.completion_time = times
    message.status.events.add(code=state, message="done")
    status = message.status.SerializeToString() + _unknown(in_status)
    message.ClearField("status")
    data = message.SerializeToString() + b"\x1a" + _varint(len(status)) + status + _unknown(unknown)
    if second is not None:
        data += pb.Task(spec=second).SerializeToString()
    if later_state is not None:
        later = pb.Task()
        later.status.state = later_state  # type: ignore[assignment]
        data += later.SerializeToString()
    parsed = pb.Task.FromString(data)
    status, output = run_task_reply_parts(data)
    assert pb.TaskStatus.FromString(status) == parsed.status
    assert output == (parsed.spec.output if parsed.spec.HasField("output") else None)
    buffer = bytearray(data)
    read = run_task_reply_parts(memoryview(buffer))  # a view of a buffer reused afterwards: bytes of their own
    buffer[:] = bytes(len(buffer))
    assert read == (status, output) and all(part is None or type(part) is bytes for part in read)


# -- the payload files handed to and from flamepy's own instances (wire.payload_handoff) ------------------

_PATHS = st.text(min_size=1)
_SIZES = st.integers(min_value=0, max_value=1 << 40)


@given(
    task_id=st.text(),
    session_id=st.text(),
    task_input=st.none() | st.binary(),
    input_file=st.none() | st.tuples(_PATHS, _SIZES),
    output_file=st.none() | st.tuples(_PATHS, _SIZES, _SIZES, st.booleans()),
)
def test_a_task_context_naming_payload_files_reads_back_and_is_a_task_context_to_protobuf(
    task_id: str,
    session_id: str,
    task_input: bytes | None,
    input_file: tuple[str, int] | None,
    output_file: tuple[str, int, int, bool] | None,
) -> None:
    encoded = task_context(task_id, session_id, task_input, input_file=input_file, output_file=output_file)
    assert read_task_call(encoded) == TaskCall(task_id, session_id, task_input, input_file, output_file)
    parsed = shim_pb2.TaskContext.FromString(encoded)  # the files are fields protobuf skips
    assert (parsed.task_id, parsed.session_id) == (task_id, session_id)
    assert parsed.HasField("input") == (task_input is not None)


@given(
    return_code=_INT32,
    output=st.none() | st.binary(),
    message=st.none() | st.text(),
    output_size=st.none() | _SIZES,
    unknown=_UNKNOWN_FIELDS,
)
def test_a_task_result_is_read_as_protobuf_reads_it_with_the_output_file_size(
    return_code: int,
    output: bytes | None,
    message: str | None,
    output_size: int | None,
    unknown: list[tuple[int, int, bytes]],
) -> None:
    data = _unknown(unknown) + task_result(return_code, output, message, output_size=output_size)
    parsed = pb.TaskResult.FromString(data)
    as_protobuf = (
        parsed.return_code,
        parsed.output if parsed.HasField("output") else None,
        parsed.message if parsed.HasField("message") else None,
    )
    read = read_task_result(data)
    assert read[:3] == as_protobuf == (return_code, output, message)
    if not any(number == 1001 for number, _wire, _data in unknown):
        assert read[3] == output_size


@given(return_code=_INT32, message=st.none() | st.text(), offered=st.booleans())
def test_an_instance_offers_payload_files_in_a_result_protobuf_reads_as_ever(
    return_code: int, message: str | None, offered: bool
) -> None:
    encoded = result(return_code, message, handoff_offered=offered)
    parsed = pb.Result.FromString(encoded)
    assert (parsed.return_code, parsed.message) == (return_code, message or "")
    assert read_enter_result(encoded) == (return_code, message or "", offered)
    # What Flame's SDK (protobuf) answers offers nothing.
    flame = pb.Result(return_code=return_code, message=message or "").SerializeToString()
    assert read_enter_result(flame) == (return_code, message or "", False)


def test_the_instance_paths_are_the_descriptors() -> None:
    assert tuple(INSTANCE[name].path for name in ("OnSessionEnter", "OnTaskInvoke", "OnSessionLeave")) == (
        ON_SESSION_ENTER,
        ON_TASK_INVOKE,
        ON_SESSION_LEAVE,
    )


@given(return_code=_INT32, message=st.none() | st.text(), handoff=st.booleans(), batches=st.booleans())
def test_an_instance_offers_batches_in_a_result_protobuf_reads_as_ever(
    return_code: int, message: str | None, handoff: bool, batches: bool
) -> None:
    encoded = result(return_code, message, handoff_offered=handoff, tasks_offered=batches)
    parsed = pb.Result.FromString(encoded)
    assert (parsed.return_code, parsed.message) == (return_code, message or "")
    assert read_enter_result(encoded) == (return_code, message or "", handoff)
    assert tasks_offered(encoded) is batches
    # What Flame's SDK (protobuf) answers offers no batches: such an instance gets one task per call.
    assert not tasks_offered(pb.Result(return_code=return_code, message=message or "").SerializeToString())


@given(tasks=st.lists(st.binary(max_size=64), max_size=8))
def test_a_task_batch_is_what_protobuf_writes_and_reads_back(tasks: list[bytes]) -> None:
    encoded = task_batch(tasks)
    assert encoded == ext_pb2.TaskBatch(tasks=tasks).SerializeToString()
    assert read_task_batch(encoded) == tasks


@given(ids=st.lists(st.text(max_size=12), max_size=8))
def test_withdrawn_tasks_are_what_protobuf_writes_and_read_back(ids: list[str]) -> None:
    encoded = withdrawn_tasks(ids)
    assert encoded == ext_pb2.WithdrawnTasks(task_ids=ids).SerializeToString()
    assert read_withdrawn_tasks(encoded) == ids


@given(
    task_id=st.text(),
    session_id=st.text(),
    task_input=st.none() | st.binary(),
    output_file=st.none() | st.tuples(_PATHS, _SIZES, _SIZES, st.booleans()),
    before=_UNKNOWN_TO_TASK_CALL,
    after=_UNKNOWN_TO_TASK_CALL,
    again=st.none() | st.text(),
)
def test_a_task_context_with_more_than_the_server_writes_is_read_by_protobufs_rules(
    task_id: str,
    session_id: str,
    task_input: bytes | None,
    output_file: tuple[str, int, int, bool] | None,
    before: list[tuple[int, int, bytes]],
    after: list[tuple[int, int, bytes]],
    again: str | None,
) -> None:
    """The reader takes the layout task_context writes straight through and remembers the sizes after an
    output file's path: anything around it (unknown fields before or after, a task id given again, which
    then wins) must still read as protobuf's rules say, through the general reader."""
    written = task_context(task_id, session_id, task_input, output_file=output_file)
    extra = b"" if again is None else shim_pb2.TaskContext(task_id=again).SerializeToString()
    data = _unknown(before) + written + _unknown(after) + extra
    parsed = shim_pb2.TaskContext.FromString(data)
    call = read_task_call(data)
    assert (call.task_id, call.session_id) == (parsed.task_id, parsed.session_id)
    assert call.input == (parsed.input if parsed.HasField("input") else None)
    assert call.output_file == output_file
    # The same bytes read twice (the second time, the sizes come from what the first remembered).
    assert read_task_call(data) == call


@given(
    token=st.binary(max_size=40),
    task_id=st.integers(0, 2**64 - 1),
    task_input=st.none() | st.binary(max_size=300),
    input_size=st.none() | st.integers(0, 2**64 - 1),
    output_file=st.booleans(),
)
def test_a_lane_task_reads_back_as_protobuf_wrote_it(
    token: bytes, task_id: int, task_input: bytes | None, input_size: int | None, output_file: bool
) -> None:
    # The service process reads LaneTask by hand (it starts without protobuf), and the client writes it by
    # hand: protobuf's bytes must read back the same, and the hand-written ones be protobuf's, an empty input
    # kept apart from no input, an input size of 0 from none.
    message = ext_pb2.LaneTask(token=token, task_id=task_id, output_file=output_file)
    if task_input is not None:
        message.input = task_input
    if input_size is not None:
        message.input_size = input_size
    read = read_lane_task(message.SerializeToString())
    assert read == (token, task_id, task_input, input_size, output_file)
    assert (read.input, read.input_size, read.output_file) == (task_input, input_size, output_file)
    written = lane_task(token, task_id, task_input, input_size=input_size, output_file=output_file)
    assert written == message.SerializeToString()


@given(
    token=st.binary(max_size=40),
    first=st.integers(0, 2**64 - 1),
    count=st.integers(0, 2**32 - 1),
    log_path=st.text(max_size=80),
)
def test_a_lane_grant_reads_back_as_protobuf_wrote_it(token: bytes, first: int, count: int, log_path: str) -> None:
    message = ext_pb2.GrantLaneRequest(token=token, first_task_id=first, count=count, log_path=log_path)
    assert read_grant_lane(message.SerializeToString()) == (token, first, count, log_path)


def test_a_truncated_lane_task_is_refused() -> None:
    data = ext_pb2.LaneTask(token=b"t" * 16, task_id=7, input=b"payload").SerializeToString()
    with pytest.raises(ValueError, match="truncated"):
        read_lane_task(data[:-3])


@given(
    token=st.binary(max_size=40),
    tasks=st.lists(st.tuples(st.integers(min_value=0, max_value=(1 << 64) - 1), st.none() | st.binary()), max_size=8),
)
def test_a_lane_task_batch_is_what_protobuf_writes(token: bytes, tasks: list[tuple[int, bytes | None]]) -> None:
    expected = ext_pb2.TaskBatch(
        tasks=[
            ext_pb2.LaneTask(token=token, task_id=tid, input=data).SerializeToString()
            if data is not None
            else ext_pb2.LaneTask(token=token, task_id=tid).SerializeToString()
            for tid, data in tasks
        ]
    ).SerializeToString()
    written = lane_task_batch(token, tasks)
    assert written == expected
    assert [read_lane_task(entry)[:3] for entry in read_task_batch(written)] == [(token, t, d) for t, d in tasks]


@given(
    state=st.sampled_from([2, 3, 4]),
    created=st.integers(min_value=0, max_value=(1 << 62)),
    took=st.integers(min_value=0, max_value=1 << 40),
    message=st.none() | st.text(),
)
def test_a_ran_task_status_is_what_protobuf_writes(state: int, created: int, took: int, message: str | None) -> None:
    expected = pb.TaskStatus(state=state, creation_time=created, completion_time=created + took)  # type: ignore[arg-type]
    expected.events.add(code=0, creation_time=created)
    expected.events.add(code=1, creation_time=created)
    last = expected.events.add(code=state, creation_time=created + took)
    if message is not None:
        last.message = message
    assert ran_task_status(state, created, created + took, message) == expected.SerializeToString()
