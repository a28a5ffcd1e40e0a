"""Watch streams as subscriptions (engine.watches): no loss, no duplicate, order, ends, and the sweep.

A hypothesis state machine drives one session (tasks created, started, finished, retried, cancelled; the
session closed) while session and task watchers subscribe, vanish (their context goes inactive, found by
the sweep) or refuse a send (their stream ended under them). A plain model says what each watcher must
have received. The engine is real (sqlite store); watchers record what their feed was given.
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
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.state import WATCH_SWEEP, Engine
from flamepy_core.engine.store import Store
from flamepy_core.wire.proto import types_pb2 as pb

S = pb.TaskState
FINAL = {S.Succeed, S.Failed, S.Cancelled}
RETRY_LIMIT = 2


class Recorder:
    """A watch feed that records what it was given, and checks it is fed by one thread at a time."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int]] = []
        """(task id, state) in the order delivered."""
        self.ended: list[FlameError | None] = []
        self.active = True
        self.accept = True
        self._feeding = threading.Lock()

    def deliver(self, tasks: list[pb.Task]) -> bool:
        assert self._feeding.acquire(blocking=False), "a watch was fed by two threads at once"
        try:
            assert not self.ended, "delivered after its end"
            if not self.accept:
                return False
            self.items.extend((int(t.metadata.id), int(t.status.state)) for t in tasks)
            return True
        finally:
            self._feeding.release()

    def end(self, error: FlameError | None) -> None:
        self.ended.append(error)

    def is_active(self) -> bool:
        return self.active

    @property
    def ids(self) -> list[int]:
        return [tid for tid, _ in self.items]


@dataclass
class SessionWatcher:
    feed: Recorder
    after: int
    final_before: set[int]
    gone: bool = False


@dataclass
class TaskWatcher:
    feed: Recorder
    task_id: int
    expected: list[int] = field(default_factory=list)
    gone: bool = False


class WatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="fw-"))
        self.store = Store(self.dir / "flame.db")
        self.engine = Engine(self.store, task_retry_limit=RETRY_LIMIT)
        self.engine.register_application("app", pb.ApplicationSpec(command="python"))
        self.engine.create_session("s", pb.SessionSpec(application="app"))
        self.open = True
        self.states: dict[int, int] = {}
        self.queue: list[int] = []  # pending ids in the engine's order
        self.attempts: dict[int, int] = {}
        self.completed: list[int] = []  # ids in the order their final state was applied
        self.watchers: list[SessionWatcher] = []
        self.task_watchers: list[TaskWatcher] = []
        self.clock = 1e9

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the session's life -------------------------------------------------------------------------

    def _changed(self, tid: int, state: int) -> None:
        self.states[tid] = state
        for w in self.task_watchers:
            over = bool(w.expected) and w.expected[-1] in FINAL
            if w.task_id == tid and not w.gone and not over:
                w.expected.append(state)
        if state in FINAL:
            self.completed.append(tid)

    @precondition(lambda self: self.open)
    @rule(count=st.integers(1, 3))
    def create(self, count: int) -> None:
        for _ in range(count):
            tid = int(self.engine.create_task("s", b"x").metadata.id)
            self.states[tid] = S.Pending
            self.queue.append(tid)

    @precondition(lambda self: self.open and self.queue)
    @rule()
    def start(self) -> None:
        task = self.engine.take_task("s")
        assert task is not None and int(task.metadata.id) == self.queue[0]
        self._changed(self.queue.pop(0), S.Running)

    def _running(self) -> list[int]:
        return sorted(tid for tid, state in self.states.items() if state == S.Running)

    @precondition(lambda self: self.open and any(s == S.Running for s in self.states.values()))
    @rule(data=st.data(), succeed=st.booleans())
    def finish(self, data: st.DataObject, succeed: bool) -> None:
        tid = data.draw(st.sampled_from(self._running()))
        if succeed:
            self.engine.complete_task("s", str(tid), b"out")
        else:
            self.engine.fail_task("s", str(tid), "failed on purpose")
        self._changed(tid, S.Succeed if succeed else S.Failed)

    @precondition(lambda self: self.open and any(s == S.Running for s in self.states.values()))
    @rule(data=st.data())
    def lose_instance(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(self._running()))
        retried = self.engine.retry_task("s", str(tid), "its instance died")
        self.attempts[tid] = self.attempts.get(tid, 0) + 1
        assert retried == (self.attempts[tid] <= RETRY_LIMIT)
        if retried:
            self.queue.insert(0, tid)
            self._changed(tid, S.Pending)
        else:
            self._changed(tid, S.Failed)

    @precondition(lambda self: self.open and self.queue)
    @rule(data=st.data())
    def cancel_pending(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(self.queue))
        done: list[pb.Task] = []
        self.engine.cancel_task("s", str(tid), "the test", done.append)
        assert [t.status.state for t in done] == [S.Cancelled]
        self.queue.remove(tid)
        self._changed(tid, S.Cancelled)

    @precondition(lambda self: self.open)
    @rule()
    def close(self) -> None:
        if self._running():
            with pytest.raises(FlameError) as info:
                self.engine.close_session("s")
            assert info.value.code == FlameErrorCode.INVALID_STATE
            return
        self.engine.close_session("s")
        for tid in self.queue:
            self._changed(tid, S.Cancelled)
        self.queue.clear()
        self.open = False

    # -- watchers -------------------------------------------------------------------------------------

    @rule(data=st.data())
    def watch_session(self, data: st.DataObject) -> None:
        after = data.draw(st.integers(0, len(self.states)))
        feed = Recorder()
        final_before = {tid for tid, state in self.states.items() if state in FINAL}
        self.engine.watch_session("s", after, feed)
        self.watchers.append(SessionWatcher(feed, after, final_before))

    @precondition(lambda self: self.states)
    @rule(data=st.data())
    def watch_task(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(self.states)))
        feed = Recorder()
        watcher = TaskWatcher(feed, tid)
        if self.states[tid] in FINAL:  # complete already: its final state, alone
            watcher.expected.append(self.states[tid])
        self.engine.watch_task("s", str(tid), feed)
        self.task_watchers.append(watcher)

    def _live(self) -> list[SessionWatcher | TaskWatcher]:
        return [w for w in [*self.watchers, *self.task_watchers] if not w.feed.ended]

    @precondition(lambda self: self._live())
    @rule(data=st.data(), how=st.sampled_from(["inactive", "refuses"]))
    def caller_goes(self, data: st.DataObject, how: str) -> None:
        watcher = data.draw(st.sampled_from(self._live()))
        watcher.gone = True
        if how == "inactive":  # found by the sweep
            watcher.feed.active = False
            self.clock += WATCH_SWEEP
            assert self.engine.sweep_watches(self.clock) >= 1
            assert len(watcher.feed.ended) == 1
        else:  # found at its next send, if any comes
            watcher.feed.accept = False

    @rule()
    def sweep_too_soon(self) -> None:
        """Within WATCH_SWEEP of the last sweep nothing is checked (the tick runs 10 times a second)."""
        self.clock += WATCH_SWEEP
        self.engine.sweep_watches(self.clock)
        live = self._live()
        for watcher in live:
            watcher.feed.active = False
        assert self.engine.sweep_watches(self.clock + WATCH_SWEEP / 2) == 0
        for watcher in live:
            watcher.feed.active = True  # the live ones all were (a vanished one is ended at once)

    # -- what every watcher must have seen --------------------------------------------------------------

    @invariant()
    def session_watchers_got_each_completion_once(self) -> None:
        for w in self.watchers:
            ids = w.feed.ids
            assert len(ids) == len(set(ids)), f"a task was delivered twice: {ids}"
            due = {tid for tid in self.completed if tid > w.after}
            assert all(self.states[tid] in FINAL for tid in ids)
            if w.gone:
                assert set(ids) <= due
                if w.feed.accept is False and set(ids) != due:
                    assert [type(e) for e in w.feed.ended] == [FlameError]
                continue
            assert set(ids) == due, f"watch after {w.after}: got {sorted(ids)}, want {sorted(due)}"
            live = [tid for tid in ids if tid not in w.final_before]
            assert live == [tid for tid in self.completed if tid in set(live)], "not in completion order"
            assert w.feed.ended == ([] if self.open else [None])

    @invariant()
    def task_watchers_got_each_change(self) -> None:
        for w in self.task_watchers:
            states = [state for _tid, state in w.feed.items]
            assert {tid for tid, _ in w.feed.items} <= {w.task_id}
            if w.gone:
                assert states == w.expected[: len(states)]
                continue
            assert states == w.expected, f"task {w.task_id}: got {states}, want {w.expected}"
            over = self.states[w.task_id] in FINAL or not self.open
            assert w.feed.ended == ([None] if over else [])

    @invariant()
    def ended_watches_are_forgotten(self) -> None:
        for w in [*self.watchers, *self.task_watchers]:
            assert len(w.feed.ended) <= 1
            if w.gone and not w.feed.active:  # found by the sweep: ended at once, as abandoned
                assert len(w.feed.ended) == 1
                error = w.feed.ended[0]
                assert isinstance(error, FlameError) and error.code == FlameErrorCode.CANCELLED
        # A watcher that refuses sends stays open until its next send (or its end) says so.
        assert self.engine.open_watches() == len(self._live())
        entry = self.engine.session_entry("s")
        assert len(entry.watches) == sum(1 for w in self.watchers if not w.feed.ended)
        assert not entry.completions, "completions every watcher has read are kept"


TestWatchMachine = WatchMachine.TestCase
TestWatchMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def test_watch_of_unknown_session_or_task_is_refused_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "flame.db")
    try:
        engine = Engine(store)
        engine.register_application("app", pb.ApplicationSpec(command="python"))
        engine.create_session("s", pb.SessionSpec(application="app"))
        for call in (
            lambda: engine.watch_session("nope", 0, Recorder()),
            lambda: engine.watch_task("nope", "1", Recorder()),
            lambda: engine.watch_task("s", "7", Recorder()),
        ):
            with pytest.raises(FlameError) as info:
                call()
            assert info.value.code == FlameErrorCode.NOT_FOUND
        assert engine.open_watches() == 0
    finally:
        store.close()


def test_completions_from_many_threads_reach_a_watcher_once_each_in_order(tmp_path: Path) -> None:
    """Commit callbacks on several threads feed one watcher: never two at once, nothing lost or repeated."""
    store = Store(tmp_path / "flame.db")
    try:
        engine = Engine(store)
        engine.register_application("app", pb.ApplicationSpec(command="python"))
        engine.create_session("s", pb.SessionSpec(application="app"))
        count = 400
        engine.submit_tasks("s", [b"x"] * count, lambda tasks, error: None)
        store.flush()
        feeds = [Recorder() for _ in range(3)]
        for feed in feeds:
            engine.watch_session("s", 0, feed)

        def work() -> None:
            while (task := engine.take_task("s")) is not None:
                engine.complete_task("s", task.metadata.id, b"y")

        workers = [threading.Thread(target=work) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        engine.close_session("s")
        for feed in feeds:
            assert sorted(feed.ids) == list(range(1, count + 1))
            assert feed.ended == [None]
        assert feeds[0].ids == feeds[1].ids == feeds[2].ids, "watchers saw different completion orders"
        assert not engine.session_entry("s").completions
    finally:
        store.close()
