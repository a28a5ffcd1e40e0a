"""RunTask's warm lane: a task for a session with an idle instance goes to that instance from the thread
that received it (``Scheduler.run_warm``), without the queue and the event that the general path takes.

The lane is only worth having if nobody can tell it from the general path: the task it leaves behind
(states, events, counters, the stored row) must be the one the general path leaves, and everything
that can happen to a running task (its instance dies, the store refuses its creation) must be handled
as for any other. Real service processes, a real store.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from conftest import wait_for

import flamepy
from flamepy.testing import LocalRuntime
from flamepy_core.client.connection import default_connection
from flamepy_core.client.session import TaskFailedError
from flamepy_core.engine.scheduler import State
from flamepy_core.wire.proto import types_pb2 as pb


@pytest.fixture
def runtime(reverse_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch) -> LocalRuntime:
    monkeypatch.setenv("FLAMEPY_LANES", "0")  # the server's own warm path, not a client's lane past it
    return reverse_runtime


def _task(session_id: str, task_id: int) -> pb.Task:
    return default_connection().get_task_message(session_id, str(task_id))


def _stored(rt: LocalRuntime, session_id: str) -> list[tuple[object, ...]]:
    """Each task's id, state, input and output as committed (a payload in the task's row or in one of its own)."""
    store = rt.server.engine.store
    store.flush()
    return store.query(
        "SELECT t.id, t.state, COALESCE(i.data, t.input), COALESCE(o.data, t.output) FROM tasks t "
        "LEFT JOIN task_payloads i ON i.session_id = t.session_id AND i.id = t.id AND i.kind = 0 "
        "LEFT JOIN task_payloads o ON o.session_id = t.session_id AND o.id = t.id AND o.kind = 1 "
        "WHERE t.session_id = ? ORDER BY t.id",
        session_id,
    )


def test_a_warm_invoke_takes_the_lane_and_leaves_what_the_general_path_leaves(runtime: LocalRuntime) -> None:
    scheduler = runtime.server.scheduler
    session = flamepy.create_session("rev")
    before = scheduler.warm_runs
    assert session.invoke(b"first") == b"tsrif"  # no instance yet: the general path starts one
    assert scheduler.warm_runs == before, "a task with no idle instance took the warm lane"
    for i in range(5):
        assert session.invoke(b"warm %d" % i) == (b"warm %d" % i)[::-1]
    assert scheduler.warm_runs == before + 5, "warm invokes did not take the lane"
    medium = b"m" * 5000 + b"!"  # a payload row of its own, not the task's row (INLINE_PAYLOAD_BYTES)
    assert session.invoke(medium) == medium[::-1]
    assert scheduler.warm_runs == before + 6, "a medium input did not take the lane"

    general, warm = _task(session.id, 1), _task(session.id, 2)
    for task in (general, warm):
        assert task.status.state == pb.TaskState.Succeed
        assert [event.code for event in task.status.events] == [e.code for e in general.status.events]
        assert task.status.creation_time <= task.status.completion_time
    assert warm.spec.output == b"0 mraw" and warm.spec.input == b"warm 0"
    succeed = int(pb.TaskState.Succeed)
    assert _stored(runtime, session.id) == [
        (1, succeed, b"first", b"tsrif"),
        *[(2 + i, succeed, b"warm %d" % i, (b"warm %d" % i)[::-1]) for i in range(5)],
        (7, succeed, medium, medium[::-1]),
    ]
    counts = flamepy.get_session(session.id)
    assert (counts.succeed, counts.running, counts.pending, counts.failed) == (7, 0, 0, 0)
    session.close()


def test_a_lane_task_whose_instance_dies_is_retried_as_any_other(runtime: LocalRuntime) -> None:
    scheduler = runtime.server.scheduler
    session = flamepy.create_session("rev")
    assert session.invoke(b"warm up") == b"pu mraw"
    before = scheduler.warm_runs
    assert session.invoke(b"die once") == b"ecno eid", "the task was not retried on a new instance"
    assert scheduler.warm_runs == before + 1, "the task did not take the lane"
    task = _task(session.id, 2)
    codes = [event.code for event in task.status.events]
    assert task.status.state == pb.TaskState.Succeed
    assert codes.count(int(pb.TaskState.Running)) == 2, f"not run twice: {codes}"
    counts = flamepy.get_session(session.id)
    assert (counts.succeed, counts.running, counts.failed) == (2, 0, 0)
    assert session.invoke(b"after") == b"retfa"
    session.close()


def test_a_closed_session_refuses_a_warm_task(runtime: LocalRuntime) -> None:
    session = flamepy.create_session("rev")
    assert session.invoke(b"x") == b"x"
    sid = session.id
    flamepy.close_session(sid)
    with pytest.raises(flamepy.FlameError) as raised:
        default_connection().run_task(sid, b"late", bytes)
    assert "closed" in str(raised.value)


@pytest.mark.parametrize("broken", ["_task_context", "_call"])  # before the lock is released; the send, after
def test_a_lane_task_that_cannot_be_sent_fails_saying_why_and_the_instance_serves_on(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    scheduler = runtime.server.scheduler
    session = flamepy.create_session("rev")
    assert session.invoke(b"warm up") == b"pu mraw"
    real = getattr(scheduler, broken)
    calls = []

    def broken_once(*args: object, **kwargs: object) -> object:
        calls.append(args)
        if len(calls) == 1:
            raise OSError("the payload folder is gone")
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduler, broken, broken_once)
    with pytest.raises(TaskFailedError, match=r"sending the task to instance .* failed: OSError") as raised:
        session.invoke(b"lost")
    assert "the payload folder is gone" in str(raised.value)
    assert _task(session.id, 2).status.state == pb.TaskState.Failed
    before = scheduler.warm_runs
    assert session.invoke(b"next") == b"txen", "the instance did not serve on"
    assert scheduler.warm_runs == before + 1
    counts = flamepy.get_session(session.id)
    assert (counts.succeed, counts.failed, counts.running) == (2, 1, 0)


def test_a_lane_task_answered_before_its_call_returns_is_recorded_first(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane sends the task before the engine records it (the instance starts meanwhile); an answer that
    is complete before the call is armed (a fast instance, a channel that answers at once) is handled on
    the sending thread when it arms the call, after the record, and must find the task recorded, not be
    dropped."""
    from flamepy_core.engine import scheduler as scheduler_module

    session = flamepy.create_session("rev")
    assert session.invoke(b"warm up") == b"pu mraw"
    real = scheduler_module.unary_then
    waited: list[object] = []

    def answered_before_arming(*args: Any, **kwargs: Any) -> Callable[[], None]:
        arm: Callable[[], None] = real(*args, **kwargs)
        call = getattr(arm, "__self__", None)  # the kit's call (uds: the channel's own unary_then)
        assert call is not None and hasattr(call, "_tokens"), f"not the kit's call: {arm!r}"
        # The first of its answer and its arming takes the call's one token; the answer has, here.
        wait_for(lambda: not call._tokens, 10, "the instance's answer, before the call is armed")
        waited.append(call)
        return arm

    monkeypatch.setattr(scheduler_module, "unary_then", answered_before_arming)
    before = runtime.server.scheduler.warm_runs
    assert default_connection().run_task(session.id, b"quick", bytes, timeout=10)
    assert runtime.server.scheduler.warm_runs == before + 1 and waited, "the task did not take the lane"
    assert _task(session.id, 2).status.state == pb.TaskState.Succeed
    assert _task(session.id, 2).spec.output == b"kciuq"
    counts = flamepy.get_session(session.id)
    assert (counts.succeed, counts.failed, counts.running) == (2, 0, 0)


def test_an_instance_is_idle_again_once_its_warm_answer_has_left(runtime: LocalRuntime) -> None:
    """After a warm task's result with nothing queued behind it, its instance is made idle once the answer
    has left (``Instance.idle_after_answer``), on the thread that sent it: it must not stay BUSY with
    nothing in flight, and a RunTask that comes in between (the answer on its way) takes the lane."""
    scheduler = runtime.server.scheduler
    session = flamepy.create_session("rev")
    assert session.invoke(b"first") == b"tsrif"
    for i in range(3):
        assert session.invoke(b"w%d" % i) == (b"w%d" % i)[::-1]
    [inst] = [i for i in scheduler._instances.values() if i.session_id == session.id]
    wait_for(lambda: inst.state == State.IDLE and not inst.idle_after_answer, 10, "the instance idle again")

    # The moment between a result handled and its answer gone: BUSY, nothing in flight, the flag up.
    with scheduler._lock:
        inst.state, inst.idle_after_answer = State.BUSY, True
    before = scheduler.warm_runs
    assert session.invoke(b"between") == b"neewteb"
    assert scheduler.warm_runs == before + 1, "a task that came while the last answer left missed the lane"
    wait_for(lambda: inst.state == State.IDLE and not inst.idle_after_answer, 10, "the instance idle again")
    session.close()


def test_an_idle_instance_that_died_is_not_given_the_next_task(runtime: LocalRuntime) -> None:
    # Its exit is handled while it is the session's idle instance: the next RunTask must not be sent to it
    # (it failed "instance ... is not listening yet", and every later one with it), but run by a new one.
    scheduler = runtime.server.scheduler
    session = flamepy.create_session("rev")
    assert session.invoke(b"abc") == b"cba"
    [inst] = [i for i in scheduler._instances.values() if i.session_id == session.id]
    wait_for(lambda: inst.state == State.IDLE, 30, "the instance to be idle")
    assert inst.process is not None and inst.process.pid
    os.kill(inst.process.pid, signal.SIGKILL)
    wait_for(lambda: inst.id not in scheduler._instances, 30, "the instance's exit to be handled")
    assert session.invoke(b"xyz", timeout=60) == b"zyx"
    assert session.invoke(b"xyz2", timeout=60) == b"2zyx"
    session.close()
