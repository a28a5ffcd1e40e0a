"""Each session's task counts, kept in the store by triggers, stay exact; a store from before gets them once.

The machine drives a real engine on a real sqlite store through every way a task changes state or leaves
the table (create, RunTask's lazily committed creation, run, finish, fail, cancel, retry, the retention's
purge, closing and deleting a session, a restart that requeues what ran), and after every step compares
three things: the ``task_counts`` rows, a ``COUNT(*)`` over ``tasks`` grouped by state, and the counters
the engine reports. A start reads the counts from ``task_counts`` only, so the restart rule also checks
that what a start loads is exact.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flamepy_core.engine.retention import Retention
from flamepy_core.engine.state import Engine
from flamepy_core.engine.store import TASK_COUNTS_COLUMNS, Store
from flamepy_core.wire.proto import types_pb2 as pb

SESSIONS = st.sampled_from(["s1", "s2", "s3"])
STATES = range(len(TASK_COUNTS_COLUMNS))  # Pending .. Cancelled, the columns' order


def counted(db: Path | str) -> dict[str, tuple[int, ...]]:
    """Each session's tasks by state, counted from the rows (what the triggers must agree with)."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT session_id, state, COUNT(*) FROM tasks GROUP BY session_id, state").fetchall()
    finally:
        conn.close()
    counts: dict[str, list[int]] = {}
    for sid, state, n in rows:
        counts.setdefault(sid, [0] * len(STATES))[state] = n
    return {sid: tuple(n) for sid, n in counts.items()}


def stored(store: Store) -> dict[str, tuple[int, ...]]:
    """The ``task_counts`` rows, sessions at zeros left out (a session without tasks may have none)."""
    return {sid: tuple(n) for sid, n in store.task_counts().items() if any(n)}


class TaskCountsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="fc-"))
        self.db = self.dir / "flame.db"
        self.open()
        self.engine.register_application("a", pb.ApplicationSpec(command="python"))
        self.sessions: set[str] = set()
        self.running: dict[str, list[str]] = {}
        """Tasks taken and not settled yet, by session (what an instance would be running)."""

    def open(self) -> None:
        self.store = Store(self.db)
        self.engine = Engine(self.store, task_retry_limit=1)
        self.retention = Retention(self.store, 0)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def is_open(self, sid: str) -> bool:
        return sid in self.sessions and self.engine.get_session(sid).status.state == pb.SessionState.Open

    @rule(sid=SESSIONS)
    def create_session(self, sid: str) -> None:
        if sid not in self.sessions:
            self.engine.create_session(sid, pb.SessionSpec(application="a"))
            self.sessions.add(sid)

    @rule(sid=SESSIONS, n=st.integers(1, 3))
    def create_tasks(self, sid: str, n: int) -> None:
        if self.is_open(sid):
            for _ in range(n):
                self.engine.create_task(sid, b"in")

    @rule(sid=SESSIONS)
    def run_task(self, sid: str) -> None:
        """A RunTask: its creation is committed lazily, with the next commit or its result's."""
        if self.is_open(sid):
            self.engine.run_task(sid, b"in", lambda _task, _output, _status, _error: None)

    @rule(sid=SESSIONS)
    def take(self, sid: str) -> None:
        if self.is_open(sid):
            task = self.engine.take_task(sid, timeout=0)
            if task is not None:
                self.running.setdefault(sid, []).append(task.metadata.id)

    @precondition(lambda self: any(self.running.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["succeed", "fail", "retry"]))
    def settle(self, data: st.DataObject, outcome: str) -> None:
        sid = data.draw(st.sampled_from(sorted(k for k, v in self.running.items() if v)))
        tid = self.running[sid].pop(data.draw(st.integers(0, len(self.running[sid]) - 1)))
        if outcome == "succeed":
            self.engine.complete_task(sid, tid, b"out")
        elif outcome == "fail":
            self.engine.fail_task(sid, tid, "boom")
        else:  # its instance died: back to pending, or failed once the retries are spent
            self.engine.retry_task(sid, tid, "the instance died")

    @rule(sid=SESSIONS, data=st.data())
    def cancel_pending(self, sid: str, data: st.DataObject) -> None:
        if not self.is_open(sid):
            return
        pending = [t.metadata.id for t in self.engine.list_tasks(sid) if t.status.state == pb.TaskState.Pending]
        if pending:
            done: list[pb.Task] = []
            self.engine.cancel_task(sid, data.draw(st.sampled_from(pending)), "a test", done.append)
            assert done and done[0].status.state == pb.TaskState.Cancelled

    @rule(sid=SESSIONS)
    def close(self, sid: str) -> None:
        if self.is_open(sid) and not self.running.get(sid):
            self.engine.close_session(sid)

    @rule(sid=SESSIONS)
    def delete(self, sid: str) -> None:
        if sid in self.sessions and not self.running.get(sid):
            self.engine.delete_session(sid)
            self.sessions.discard(sid)

    @rule()
    def purge(self) -> None:
        """The retention drops every finished task's payloads (the rows stay, so do the counts)."""
        self.retention.purge_step(int(time.time() * 1000) + 1000, "a test")

    @rule()
    def restart(self) -> None:
        """A new engine on the same file: it loads the counts, and requeues what was running."""
        self.store.close()
        self.running.clear()
        self.open()

    @invariant()
    def counts_are_exact(self) -> None:
        self.store.flush()  # lazy writes (a task becoming RUNNING) are committed too
        truth = counted(self.db)
        assert stored(self.store) == truth, "task_counts against COUNT(*)"
        assert set(self.store.task_counts()) <= self.sessions, "a deleted session leaves no counts behind"
        for sid in self.sessions:
            status = self.engine.get_session(sid).status
            reported = (status.pending, status.running, status.succeed, status.failed, status.cancelled)
            assert reported == truth.get(sid, (0,) * len(STATES)), f"the engine's counters of {sid}"


TestTaskCountsMachine = TaskCountsMachine.TestCase
TestTaskCountsMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def test_a_replaced_task_row_is_counted_once(tmp_path: Path) -> None:
    """``INSERT OR REPLACE`` over an existing task takes the old row's state out (recursive triggers)."""
    store = Store(tmp_path / "flame.db")
    insert = "INSERT OR REPLACE INTO tasks (session_id, id, state, status) VALUES ('s', 1, ?, X'')"
    store.write_wait([(insert, (0,))])
    store.write_wait([(insert, (2,))])
    assert stored(store) == counted(tmp_path / "flame.db") == {"s": (0, 0, 1, 0, 0)}
    store.close()


def drop_task_counts(db: Path) -> None:
    """Make ``db`` a store from before stored counts: no ``task_counts`` table, no triggers."""
    conn = sqlite3.connect(db)
    for name in ("task_counts_insert", "task_counts_update", "task_counts_delete"):
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DROP TABLE task_counts")
    conn.commit()
    conn.close()


def test_a_store_from_before_is_counted_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "flame.db"
    store = Store(db)
    engine = Engine(store)
    engine.register_application("a", pb.ApplicationSpec(command="python"))
    for sid in ("s1", "s2"):
        engine.create_session(sid, pb.SessionSpec(application="a"))
    for _ in range(3):
        engine.create_task("s1", b"x")
    engine.create_task("s2", b"x")
    task = engine.take_task("s1")
    assert task is not None
    engine.complete_task("s1", task.metadata.id, b"y")
    store.close()
    drop_task_counts(db)
    assert counted(db) == {"s1": (2, 0, 1, 0, 0), "s2": (1, 0, 0, 0, 0)}

    with caplog.at_level(logging.INFO, logger="flamepy_core.engine.store"):
        store = Store(db)
    migrated = [r.getMessage() for r in caplog.records if "task counts" in r.getMessage()]
    assert len(migrated) == 1 and "counted 4 tasks of 2 sessions once" in migrated[0], caplog.text
    assert str(db) in migrated[0]
    assert stored(store) == counted(db)
    engine = Engine(store)  # loads the counts from the table
    assert engine.get_session("s1").status.pending == 2 and engine.get_session("s1").status.succeed == 1
    engine.create_task("s2", b"x")  # the triggers count from now on
    store.close()
    assert stored_after(db) == counted(db) == {"s1": (2, 0, 1, 0, 0), "s2": (2, 0, 0, 0, 0)}

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flamepy_core.engine.store"):
        Store(db).close()
    assert "task counts" not in caplog.text, "counted once, not at every start"


def stored_after(db: Path) -> dict[str, tuple[int, ...]]:
    store = Store(db)
    try:
        return stored(store)
    finally:
        store.close()


def test_a_start_takes_the_counters_from_the_table(tmp_path: Path) -> None:
    """A start reads one ``task_counts`` row per session and counts no task rows: shown by a row edited
    by hand, which the loaded counters then follow (a start that counted the tasks would not)."""
    db = tmp_path / "flame.db"
    store = Store(db)
    engine = Engine(store)
    engine.register_application("a", pb.ApplicationSpec(command="python"))
    engine.create_session("s", pb.SessionSpec(application="a"))
    task = engine.create_task("s", b"x")
    assert engine.take_task("s") is not None
    engine.complete_task("s", task.metadata.id, b"y")
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE task_counts SET succeed = 7 WHERE session_id = 's'")
    conn.commit()
    conn.close()
    store = Store(db)
    try:
        status = Engine(store).get_session("s").status
        assert (status.pending, status.running, status.succeed) == (0, 0, 7)
    finally:
        store.close()
