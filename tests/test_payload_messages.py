"""The hand-encoded TaskContext and TaskResult are byte for byte what protobuf writes, for any values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flamepy_core.engine.state import reply_task
from flamepy_core.wire.payload_messages import create_task_request, task_context, task_reply, task_result
from flamepy_core.wire.proto import frontend_pb2, shim_pb2
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


def test_a_large_payload_keeps_its_length_prefix() -> None:
    """Lengths past one varint byte (here three bytes: 2**21 needs them) come out right."""
    payload = bytes(range(256)) * (1 << 13)
    assert pb.TaskResult.FromString(task_result(0, payload)).output == payload
    assert frontend_pb2.CreateTaskRequest.FromString(create_task_request("s", payload)).task.input == payload
    assert pb.Task.FromString(task_reply("1", "1", "s", payload, b"")).spec.output == payload


def test_a_return_code_outside_int32_is_refused() -> None:
    with pytest.raises(ValueError, match="int32"):
        task_result(1 << 31)
