"""The hand-encoded TaskContext and TaskResult are byte for byte what protobuf writes, for any values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flamepy_core.wire.payload_messages import create_task_request, task_context, task_result
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


def test_a_large_payload_keeps_its_length_prefix() -> None:
    """Lengths past one varint byte (here three bytes: 2**21 needs them) come out right."""
    payload = bytes(range(256)) * (1 << 13)
    assert pb.TaskResult.FromString(task_result(0, payload)).output == payload
    assert frontend_pb2.CreateTaskRequest.FromString(create_task_request("s", payload)).task.input == payload


def test_a_return_code_outside_int32_is_refused() -> None:
    with pytest.raises(ValueError, match="int32"):
        task_result(1 << 31)
