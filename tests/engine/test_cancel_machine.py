"""Cancelling tasks and closing by force, against a plain model, driven by a hypothesis state machine.

One session of one application, so that every step is about its tasks: they are created, started,
finished (success or failure), cancelled in every state, cancelled all at once, and the session is
closed, plainly or by force; the server restarts in between. Each step is checked against the model:
states, counters, who cancelled (the events), the answers of the cancel calls, and error codes.

The machine plays the scheduler (:class:`PlayedScheduler`). Asked to stop the instance of a cancelled
running task, it has none (the engine cancels the task at once), stops it at once (it reports the lost
instance, as a real scheduler does: the task ends CANCELLED, never retried), or holds the request: a
later step answers it (the instance stopped, or the task's own result came first) or a restart does
(a task that was being cancelled is not run again).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.instances import InstanceInfo
from flamepy_core.engine.state import EVENT_CANCEL_REQUESTED, Engine
from flamepy_core.engine.store import Store
from flamepy_core.wire.proto import types_pb2 as pb

S = pb.TaskState
SID = "s1"
STOPS = st.sampled_from(["no-instance", "stop-now", "hold"])
"""What the played scheduler does when asked to stop a cancelled task's instance."""


class PlayedScheduler:
    """The scheduler as the machine plays it: only ``cancel_running`` does anything."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.mode = "no-instance"

    def tasks_pending(self, session_id: str) -> None:
        pass

    def session_opened(self, session_id: str) -> None:
        pass

    def session_closed(self, session_id: str) -> None:
        pass

    def application_removed(self, name: str) -> None:
        pass

    def instances(self) -> list[InstanceInfo]:
        return []

    def run_warm(self, session_id: str, data: object, waiter: object, on_created: object) -> bool:
        return False

    def cancel_running(self, session_id: str, task_id: int, reason: str) -> bool:
        assert reason.startswith("cancelled by ")
        if self.mode == "no-instance":
            return False
        if self.mode == "stop-now":  # gone at once, reported as any lost instance is
            assert self.engine is not None
            assert self.engine.retry_task(session_id, str(task_id), "instance i9 was killed by SIGTERM") is False
        return True


@dataclass
class Model:
    open: bool = True
    tasks: dict[int, int] = field(default_factory=dict)
    """Task id -> state."""
    held: set[int] = field(default_factory=set)
    """Running tasks whose cancel the played scheduler has not answered yet."""
    cancelled_by: dict[int, str] = field(default_factory=dict)

    def with_state(self, *states: int) -> list[int]:
        return sorted(tid for tid, state in self.tasks.items() if state in states)


def expect_error(code: FlameErrorCode, fn, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FlameError) as info:
        fn(*args)
    assert info.value.code == code, f"{fn.__name__}{args}: expected {code.name}, got {info.value!r}"


class CancelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="fc-"))
        self.store = Store(self.dir / "flame.db")
        self.played = PlayedScheduler()
        self.engine = self._engine()
        self.model = Model()

    def _engine(self) -> Engine:
        engine = Engine(self.store)
        engine.scheduler = self.played
        self.played.engine = engine
        return engine

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(running=st.integers(0, 2), pending=st.integers(0, 2))
    def a_session_at_work(self, running: int, pending: int) -> None:
        """Runs are short: begin each with tasks already running and waiting, so every step counts."""
        self.engine.register_application("app", pb.ApplicationSpec(command="python"))
        self.engine.create_session(SID, pb.SessionSpec(application="app"))
        for _ in range(running + pending):
            self.submit()
        for _ in range(running):
            self.start()

    # -- the life of tasks ---------------------------------------------------------------------------

    @rule()
    def submit(self) -> None:
        if not self.model.open:
            expect_error(FlameErrorCode.INVALID_STATE, self.engine.create_task, SID, b"in")
            return
        task = self.engine.create_task(SID, b"in")
        self.model.tasks[int(task.metadata.id)] = S.Pending

    @precondition(lambda self: self.model.open and bool(self.model.with_state(S.Pending)))
    @rule()
    def start(self) -> None:
        task = self.engine.take_task(SID, timeout=0)
        assert task is not None
        oldest = self.model.with_state(S.Pending)[0]
        assert int(task.metadata.id) == oldest, "tasks start in submission order"
        self.model.tasks[oldest] = S.Running

    @precondition(lambda self: bool(self.model.with_state(S.Running)))
    @rule(data=st.data(), succeed=st.booleans())
    def result_comes_back(self, data: st.DataObject, succeed: bool) -> None:
        """A success is kept even while the task is being cancelled (it came first); a failure of a task
        being cancelled is what stopping it caused: it ends CANCELLED."""
        running = self.model.with_state(S.Running)
        tid = data.draw(st.sampled_from(sorted(self.model.held) * 2 + running))  # the held ones more often
        if succeed:
            self.engine.complete_task(SID, str(tid), b"out")
            self.model.tasks[tid] = S.Succeed
        else:
            self.engine.fail_task(SID, str(tid), "killed by SIGTERM")
            self.model.tasks[tid] = S.Cancelled if tid in self.model.held else S.Failed
        self.model.held.discard(tid)

    @precondition(lambda self: bool(self.model.held))
    @rule(data=st.data())
    def held_instance_stops(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(self.model.held)))
        assert self.engine.retry_task(SID, str(tid), "instance i9 was killed by SIGKILL") is False, "never retried"
        self.model.tasks[tid] = S.Cancelled
        self.model.held.discard(tid)
        last = self.engine.get_task(SID, str(tid)).status.events[-1]
        assert last.code == S.Cancelled
        assert last.message.endswith("while it ran; its instance was stopped: instance i9 was killed by SIGKILL")

    # -- cancelling ------------------------------------------------------------------------------------

    @precondition(lambda self: bool(self.model.tasks))
    @rule(data=st.data(), stop=STOPS)
    def cancel(self, data: st.DataObject, stop: str) -> None:
        # Running tasks are the likeliest to go wrong: drawn three times as often as the others.
        tid = data.draw(st.sampled_from(self.model.with_state(S.Running) * 3 + sorted(self.model.tasks)))
        state = self.model.tasks[tid]
        self.played.mode = stop
        answered = threading.Event()
        replies: list[pb.Task] = []
        self.engine.cancel_task(SID, str(tid), f"cancel {tid}", lambda t: (replies.append(t), answered.set()))
        if state == S.Running and (stop == "hold" or tid in self.model.held):
            assert not answered.is_set(), "a cancel answers once the task is final"
            self.model.held.add(tid)
            self.model.cancelled_by.setdefault(tid, f"cancel {tid}")
            task = self.engine.get_task(SID, str(tid))
            assert task.status.state == S.Running
            assert task.status.events[-1].code == EVENT_CANCEL_REQUESTED
            return
        assert answered.wait(5)
        if state in (S.Pending, S.Running):
            self.model.tasks[tid] = S.Cancelled
            self.model.cancelled_by[tid] = f"cancel {tid}"
        (reply,) = replies
        assert reply.status.state == self.model.tasks[tid], "the answer is the task's final state"
        assert not reply.spec.HasField("input") and not reply.spec.HasField("output"), "without payloads"

    @rule(tid=st.integers(90, 92))
    def cancel_unknown(self, tid: int) -> None:
        expect_error(FlameErrorCode.NOT_FOUND, self.engine.cancel_task, SID, str(tid), "x", lambda _t: None)
        expect_error(FlameErrorCode.NOT_FOUND, self.engine.cancel_task, "nope", "1", "x", lambda _t: None)
        expect_error(FlameErrorCode.INVALID_ARGUMENT, self.engine.cancel_task, SID, "one", "x", lambda _t: None)

    @precondition(lambda self: not self.model.held)  # the answer would wait for the held instances
    @rule(stop=st.sampled_from(["no-instance", "stop-now"]))
    def cancel_all(self, stop: str) -> None:
        self.played.mode = stop
        answered = threading.Event()
        replies: list[list[pb.Task]] = []
        self.engine.cancel_session_tasks(SID, "cancel all", lambda ts: (replies.append(ts), answered.set()))
        assert answered.wait(5)
        expected = self.model.with_state(S.Pending, S.Running)
        assert [int(t.metadata.id) for t in replies[0]] == expected
        assert all(t.status.state == S.Cancelled for t in replies[0])
        for tid in expected:
            self.model.tasks[tid] = S.Cancelled
            self.model.cancelled_by[tid] = "cancel all"

    # -- closing ---------------------------------------------------------------------------------------

    @rule()
    def close(self) -> None:
        if self.model.open and self.model.with_state(S.Running):
            expect_error(FlameErrorCode.INVALID_STATE, self.engine.close_session, SID)
            return
        assert self.engine.close_session(SID).status.state == pb.SessionState.Closed
        for tid in self.model.with_state(S.Pending):
            self.model.tasks[tid] = S.Cancelled
        self.model.open = False

    @rule(stop=st.sampled_from(["no-instance", "stop-now"]))
    def close_by_force(self, stop: str) -> None:
        self.played.mode = stop
        if self.model.open and self.model.held:
            # Held instances do not stop: the forced close gives up at its deadline; the session stays open.
            expect_error(FlameErrorCode.DEADLINE_EXCEEDED, self.engine.force_close_session, SID, "force", 0.05)
            for tid in self.model.with_state(S.Pending, S.Running):
                if tid not in self.model.held:
                    self.model.tasks[tid] = S.Cancelled
                    self.model.cancelled_by[tid] = "a forced close of the session by force"
            return
        closed = self.engine.force_close_session(SID, "force", 5.0)
        assert closed.status.state == pb.SessionState.Closed
        for tid in self.model.with_state(S.Pending, S.Running):
            self.model.tasks[tid] = S.Cancelled
            self.model.cancelled_by[tid] = "a forced close of the session by force"
        self.model.open = False

    @precondition(lambda self: bool(self.model.with_state(S.Running)))
    @rule()
    def restart(self) -> None:
        """A restart requeues the running tasks, except those being cancelled: they end CANCELLED."""
        self.store.close()
        self.store = Store(self.dir / "flame.db")
        self.engine = self._engine()
        for tid in self.model.with_state(S.Running):
            self.model.tasks[tid] = S.Cancelled if tid in self.model.held else S.Pending
        self.model.held.clear()

    # -- what must always hold -------------------------------------------------------------------------

    @invariant()
    def the_engine_agrees_with_the_model(self) -> None:
        # What a step queued (a RUNNING state, a cancel's final state) may still be with the store's
        # writer thread when the step returns: compare once it is all committed.
        self.engine.store.flush()
        status = self.engine.get_session(SID).status
        counts = [len(self.model.with_state(s)) for s in (S.Pending, S.Running, S.Succeed, S.Failed, S.Cancelled)]
        assert [status.pending, status.running, status.succeed, status.failed, status.cancelled] == counts
        assert (status.state == pb.SessionState.Open) == self.model.open
        tasks = {int(t.metadata.id): t for t in self.engine.list_tasks(SID)}
        assert {tid: t.status.state for tid, t in tasks.items()} == self.model.tasks
        for tid, by in self.model.cancelled_by.items():
            if self.model.tasks[tid] != S.Cancelled:
                continue
            last = tasks[tid].status.events[-1]
            assert last.code == S.Cancelled
            assert last.message.startswith(f"cancelled by {by}") or "server restarted" in last.message, last.message


TestCancelMachine = CancelMachine.TestCase
TestCancelMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


# -- the machine's rarer paths, each as the shrunk run that finds a wrong implementation ----------------


class Driven:
    """Draws for the machine's rules when they are called by hand."""

    def __init__(self, value: object) -> None:
        self.value = value

    def draw(self, _strategy: object) -> object:
        return self.value


def _machine(running: int, pending: int = 0) -> CancelMachine:
    machine = CancelMachine()
    machine.a_session_at_work(running, pending)
    return machine


def _check(machine: CancelMachine, *steps: tuple[str, tuple[object, ...]]) -> None:
    try:
        for name, args in steps:
            getattr(machine, name)(*args)
            machine.the_engine_agrees_with_the_model()
    finally:
        machine.teardown()


def test_a_task_being_cancelled_when_the_server_stops_is_cancelled_at_restart_not_run_again() -> None:
    machine = _machine(running=1)
    _check(machine, ("cancel", (Driven(1), "hold")), ("restart", ()))


def test_a_failure_while_the_instance_is_being_stopped_ends_cancelled() -> None:
    machine = _machine(running=1)
    _check(machine, ("cancel", (Driven(1), "hold")), ("result_comes_back", (Driven(1), False)))


def test_a_success_before_the_cancel_took_effect_is_kept() -> None:
    machine = _machine(running=1)
    _check(machine, ("cancel", (Driven(1), "hold")), ("result_comes_back", (Driven(1), True)))


def test_a_held_cancel_ends_when_the_instance_is_gone_and_a_second_cancel_waits_for_the_same_end() -> None:
    machine = _machine(running=2, pending=1)
    _check(
        machine,
        ("cancel", (Driven(2), "hold")),
        ("cancel", (Driven(2), "stop-now")),
        ("held_instance_stops", (Driven(2),)),
        ("close_by_force", ("no-instance",)),
    )


def test_a_forced_close_gives_up_at_its_deadline_while_an_instance_does_not_stop() -> None:
    machine = _machine(running=2, pending=1)
    _check(
        machine,
        ("cancel", (Driven(1), "hold")),
        ("close_by_force", ("stop-now",)),
        ("held_instance_stops", (Driven(1),)),
    )


def test_without_an_instance_the_cancel_is_immediate_and_a_late_result_is_dropped() -> None:
    machine = _machine(running=1)
    try:
        machine.cancel(Driven(1), "no-instance")
        engine = machine.engine
        assert engine.finish_task(SID, 1, output=b"late") is False, "the task is no longer running"
        task = engine.get_task(SID, "1")
        assert task.status.state == S.Cancelled and not task.spec.HasField("output")
        machine.the_engine_agrees_with_the_model()
    finally:
        machine.teardown()
