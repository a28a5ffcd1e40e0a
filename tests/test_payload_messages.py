"""The hand-encoded TaskContext, TaskResult and RunTask's Task are what protobuf writes, for any values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flamepy_core.engine.state import reply_task
from flamepy_core.wire.payload_messages import task_context, task_reply, task_result
from flamepy_core.wire.proto import shim_pb2
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


_EVENTS = st.lists(
    st.builds(
        pb.Event,
        code=st.integers(min_value=0, max_value=2000),
        message=st.none() | st.text(),
        creation_time=st.integers(min_value=0, max_value=1 << 62),
    ),
    max_size=4,
)


@given(
    task_id=st.text(),
    session_id=st.text(),
    task_input=st.none() | st.binary(),
    output=st.none() | st.binary(),
    state=st.sampled_from(list(pb.TaskState.values())),
    completion_time=st.none() | st.integers(min_value=0, max_value=1 << 62),
    events=_EVENTS,
)
def test_task_reply_is_what_reply_task_serializes(
    task_id: str,
    session_id: str,
    task_input: bytes | None,
    output: bytes | None,
    state: int,
    completion_time: int | None,
    events: list[pb.Event],
) -> None:
    """RunTask's answer written by hand equals the message ``reply_task`` builds: no input back."""
    task = pb.Task()
    task.metadata.id = task.metadata.name = task_id
    task.spec.session_id = session_id
    if task_input is not None:
        task.spec.input = task_input
    if output is not None:
        task.spec.output = output
    task.status.state = state  # type: ignore[assignment]
    if completion_time is not None:
        task.status.completion_time = completion_time
    task.status.events.extend(events)
    encoded = task_reply(task_id, session_id, output, task.status.SerializeToString())
    expected = reply_task(task)
    assert encoded == expected.SerializeToString()
    decoded = pb.Task.FromString(encoded)
    assert decoded == expected and not decoded.spec.HasField("input")
    assert decoded.spec.HasField("output") == (output is not None)


def test_a_large_payload_keeps_its_length_prefix() -> None:
    """Lengths past one varint byte (here three bytes: 2**21 needs them) come out right."""
    payload = bytes(range(256)) * (1 << 13)
    assert pb.TaskResult.FromString(task_result(0, payload)).output == payload


def test_a_return_code_outside_int32_is_refused() -> None:
    with pytest.raises(ValueError, match="int32"):
        task_result(1 << 31)
