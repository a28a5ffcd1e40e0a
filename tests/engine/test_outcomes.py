"""WatchOutcomes' entries (``frontend.outcome``, ``outcome_messages``): what a ``run()`` future is settled from.

The reference below is the rule as the protocol states it (ext.proto, TaskOutcome), written plainly; the
server's version is written for speed (the usual case first, each outcome built in place in its message),
so both are compared on any task hypothesis makes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flamepy_core.engine import frontend
from flamepy_core.engine.frontend import outcome, outcome_messages
from flamepy_core.model import EVENT_PAYLOADS_PURGED
from flamepy_core.wire.payload_messages import task_outcome_entry
from flamepy_core.wire.proto import ext_pb2
from flamepy_core.wire.proto import types_pb2 as pb

FINAL = [pb.TaskState.Succeed, pb.TaskState.Failed, pb.TaskState.Cancelled]


def reference(task: pb.Task) -> ext_pb2.TaskOutcome:
    """TaskOutcome by ext.proto's words: the message of the final state's last event (of the last event if
    there is none), empty on success unless the output was purged, then the purge's message."""
    result = ext_pb2.TaskOutcome(task_id=int(task.metadata.id), state=task.status.state)
    if task.spec.HasField("output"):
        result.output = task.spec.output
    events = list(task.status.events)
    purges = [e for e in events if e.code == EVENT_PAYLOADS_PURGED]
    result.purged = bool(purges)
    if task.status.state == pb.TaskState.Succeed:
        if purges:
            result.message = purges[-1].message
    elif events:
        finals = [e for e in events if e.code == task.status.state]
        result.message = finals[-1].message if finals else events[-1].message
    return result


@st.composite
def tasks(draw: st.DrawFn) -> pb.Task:
    task = pb.Task()
    task.metadata.id = str(draw(st.integers(1, 2**40)))
    task.status.state = draw(st.sampled_from(FINAL))
    if draw(st.booleans()):
        task.spec.output = draw(st.binary(max_size=64))
    # A task's history as the engine writes it: pending and running (retries, requeues), its final state
    # (the server may have lost the early events of a task read back from a Flame store), and a purge of
    # its payloads after the retention, which only a final task gets.
    codes = draw(st.lists(st.sampled_from([pb.TaskState.Pending, pb.TaskState.Running]), max_size=4))
    if draw(st.booleans()):
        codes.append(task.status.state)
    if draw(st.booleans()):
        codes.append(EVENT_PAYLOADS_PURGED)
    for code in codes:
        task.status.events.add(code=int(code), message=draw(st.sampled_from(["", "why", "ValueError: no"])))
    return task


@settings(max_examples=300, deadline=None)
@given(tasks())
def test_an_outcome_says_what_the_protocol_says(task: pb.Task) -> None:
    assert outcome(task) == reference(task)


@settings(max_examples=100, deadline=None)
@given(st.lists(tasks(), max_size=30), st.integers(1, 200))
def test_outcome_messages_carry_every_task_in_order_and_split_by_size(task_list: list[pb.Task], limit: int) -> None:
    old = frontend.OUTCOMES_MESSAGE_BYTES
    frontend.OUTCOMES_MESSAGE_BYTES = limit  # small, so that the lists are split
    try:
        messages = [ext_pb2.TaskOutcomes.FromString(data) for data in outcome_messages(task_list)]
    finally:
        frontend.OUTCOMES_MESSAGE_BYTES = old
    assert [item for message in messages for item in message.tasks] == [reference(task) for task in task_list]
    for message in messages:
        assert message.tasks, "no empty message"
        outputs = [len(item.output) for item in message.tasks]
        # over the limit only by the output that started it being over (one output alone may exceed it)
        assert sum(outputs[:-1]) <= limit or len(outputs) == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(tasks(), max_size=20))
def test_outcome_messages_are_the_bytes_protobuf_writes(task_list: list[pb.Task]) -> None:
    # Written by hand for the usual case: the same bytes as protobuf's serializer gives (field order,
    # defaults left out), so any reader, ours or another language's, reads the same message.
    written = b"".join(outcome_messages(task_list))
    assert written == ext_pb2.TaskOutcomes(tasks=[reference(task) for task in task_list]).SerializeToString()


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 2**64 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.none() | st.binary(max_size=300),
    st.text(max_size=200),
)
def test_an_outcome_entry_is_protobufs_for_any_value(
    task_id: int, state: int, output: bytes | None, message: str
) -> None:
    # Lengths of one and two bytes, a task id of ten, an enum value outside the known ones (negative: ten
    # bytes, as protobuf writes an int32), an empty output that is still set, and text beyond ASCII.
    parts, size = task_outcome_entry(task_id, state, output, message)
    expected = ext_pb2.TaskOutcome(task_id=task_id, state=state, message=message)  # type: ignore[arg-type]
    if output is not None:
        expected.output = output
    assert size == expected.ByteSize()
    assert b"".join(parts) == ext_pb2.TaskOutcomes(tasks=[expected]).SerializeToString()
