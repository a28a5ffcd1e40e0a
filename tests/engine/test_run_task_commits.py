"""A RunTask's creation is committed with its result: one transaction per task, never a lost result.

RunTask acknowledges nothing but the task's result, so the engine does not commit the creation before
the task runs (as it must for CreateTask, whose answer is the id). The rules tested here, on a real
sqlite store driven the way the scheduler drives it (``start_next``, then ``finish_task``):

* the result is reported only once committed, and the task's rows (created, input, output, final state)
  go in that same transaction when nothing else committed meanwhile;
* a creation the store refuses is withdrawn: the caller gets the store's error, the result that comes
  later is dropped, and nothing of the task is left in the store once space returns;
* CreateTask still commits the creation before answering.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine import state as state_module
from flamepy_core.engine import store as store_module
from flamepy_core.engine.payload_files import PayloadFile
from flamepy_core.engine.state import Engine
from flamepy_core.engine.store import Store
from flamepy_core.engine.watches import StreamFeed
from flamepy_core.wire.payload_handoff import write_payload_file
from flamepy_core.wire.proto import types_pb2 as pb

BIG = b"i" * 5000
"""More than a page (4 KiB): its row needs a new page, which a full store refuses."""


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setattr(store_module, "LAZY_DELAY", 60.0)  # the writer thread commits nothing by itself here
    store = Store(tmp_path / "flame.db", retry_window=0.0)
    engine = Engine(store)
    engine.register_application("app", pb.ApplicationSpec(command="python"))
    engine.create_session("s1", pb.SessionSpec(application="app"))
    try:
        yield engine
    finally:
        store._write.execute("PRAGMA max_page_count = 1000000000")
        store.close(timeout=5)


def stored(engine: Engine, tid: int) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The task's row (state) and its payloads (kind, data), as committed: in rows of their own, or in the
    task's row when small (``INLINE_PAYLOAD_BYTES``)."""
    rows = engine.store.query("SELECT state FROM tasks WHERE session_id = 's1' AND id = ?", tid)
    payloads = engine.store.query("SELECT kind, data FROM task_payloads WHERE session_id = 's1' AND id = ?", tid)
    for inline_input, inline_output in engine.store.query(
        "SELECT input, output FROM tasks WHERE session_id = 's1' AND id = ?", tid
    ):
        payloads += [(kind, data) for kind, data in ((0, inline_input), (1, inline_output)) if data is not None]
    return rows, sorted(payloads)


def fill_up(store: Store) -> None:
    pages = store.query("PRAGMA page_count")[0][0]
    store._write.execute(f"PRAGMA max_page_count = {pages}")


def test_a_run_tasks_creation_is_committed_with_its_result(engine: Engine) -> None:
    outcomes: list[tuple[pb.Task | None, bytes | None, FlameError | None]] = []
    statuses: list[bytes | None] = []
    before = engine.store.commits

    def done(task: pb.Task | None, output: bytes | None, status: bytes | None, error: FlameError | None) -> None:
        outcomes.append((task, output, error))
        statuses.append(status)

    engine.run_task("s1", b"in", done)
    assert engine.store.commits == before, "the creation of a RunTask got a transaction of its own"
    assert stored(engine, 1) == ([], []), "the task is in the store before anything was committed"

    started = engine.start_next("s1")
    assert started == (1, b"in", None), "a RunTask's task was not queued for an instance at once"
    engine.store.commit(lazy=False)  # what the scheduler does after sending it: lazy writes wait
    assert engine.store.commits == before and not outcomes

    assert engine.finish_task("s1", 1, output=b"out")
    assert engine.store.commits == before + 1, "creation and result were not one transaction"
    assert len(outcomes) == 1 and outcomes[0][2] is None
    task, output = outcomes[0][:2]
    assert task is not None and task.status.state == pb.TaskState.Succeed and output == b"out"
    # The answer is built from the final status given beside the task (sent before it is applied to the task).
    assert statuses[0] is not None and pb.TaskStatus.FromString(statuses[0]) == task.status
    assert stored(engine, 1) == ([(int(pb.TaskState.Succeed),)], [(0, b"in"), (1, b"out")])
    session = engine.get_session("s1").status
    assert (session.pending, session.running, session.succeed) == (0, 0, 1)


def test_create_task_still_commits_before_it_answers(engine: Engine) -> None:
    before = engine.store.commits
    task = engine.create_task("s1", b"in")
    assert engine.store.commits == before + 1
    assert stored(engine, int(task.metadata.id)) == ([(int(pb.TaskState.Pending),)], [(0, b"in")])


def test_a_refused_creation_withdraws_a_pending_run_task(engine: Engine) -> None:
    outcomes: list[tuple[pb.Task | None, FlameError | None]] = []
    engine.run_task("s1", BIG, lambda task, _output, _status, error: outcomes.append((task, error)))
    fill_up(engine.store)
    engine.store.commit()  # the creation is tried, refused and given up (no retry window here)
    wait_for(lambda: outcomes, 10, "the caller to hear that its task was withdrawn")
    assert len(outcomes) == 1 and outcomes[0][0] is None
    error = outcomes[0][1]
    assert error is not None and error.code == FlameErrorCode.RESOURCE_EXHAUSTED and "flame.db" in error.message
    assert engine.start_next("s1") is None, "a withdrawn task was still sent to an instance"
    session = engine.get_session("s1").status
    assert (session.pending, session.running) == (0, 0)


def test_a_refused_creation_withdraws_a_run_task_whose_result_is_queued(engine: Engine) -> None:
    outcomes: list[tuple[pb.Task | None, FlameError | None]] = []
    engine.run_task("s1", BIG, lambda task, _output, _status, error: outcomes.append((task, error)))
    assert engine.start_next("s1") == (1, BIG, None)
    fill_up(engine.store)
    # The result is durable: kept and retried; the creation it rides with is given up.
    assert engine.finish_task("s1", 1, output=b"o" * 5000)
    wait_for(lambda: outcomes, 10, "the caller to hear that its task was withdrawn")
    task, error = outcomes[0]
    assert task is None and error is not None and error.code == FlameErrorCode.RESOURCE_EXHAUSTED
    engine.store._write.execute("PRAGMA max_page_count = 1000000000")  # space returns
    engine.store.flush(timeout=10)
    assert stored(engine, 1) == ([], []), "a withdrawn task's result was left in the store"
    assert len(outcomes) == 1, "a withdrawn task's result was reported too"
    session = engine.get_session("s1").status
    assert (session.pending, session.running, session.succeed) == (0, 0, 0)


class Batches:
    """A watch feed that records what each delivery carried (the ids of its tasks)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def deliver(self, tasks: list[pb.Task]) -> bool:
        self.batches.append([int(t.metadata.id) for t in tasks])
        return True

    def end(self, error: FlameError | None) -> None:
        pass

    def is_active(self) -> bool:
        return True


def test_results_of_a_burst_share_one_commit_and_one_delivery(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """While more of the session's tasks are in flight, a result nobody waits on alone waits for company
    (here: for ever, so the test sees it); the last one of the burst is committed at once, with them."""
    monkeypatch.setattr(state_module, "RESULT_LINGER", 60.0)
    feed = Batches()
    engine.watch_session("s1", 0, feed)
    ids = [int(engine.create_task("s1", b"t%d" % i).metadata.id) for i in range(3)]
    before = engine.store.commits
    assert [engine.start_next("s1"), engine.start_next("s1")] == [(ids[0], b"t0", None), (ids[1], b"t1", None)]
    for tid, output in ((ids[0], b"r0"), (ids[1], b"r1")):
        assert engine.finish_task("s1", tid, output=output, commit=False)
        engine.store.commit(lazy=False)  # as the scheduler commits after each result
    assert engine.store.commits == before and feed.batches == [], "a result of a burst was committed alone"
    assert engine.start_next("s1") == (ids[2], b"t2", None)
    assert engine.finish_task("s1", ids[2], output=b"r2", commit=False)  # the last: nothing else in flight
    engine.store.commit(lazy=False)
    assert engine.store.commits == before + 1, "the last result of a burst waited, or went alone"
    assert feed.batches == [ids], "the session's watcher was not fed the burst's results in one delivery"
    assert [stored(engine, tid)[0] for tid in ids] == [[(int(pb.TaskState.Succeed),)]] * 3


def test_a_result_someone_waits_for_is_committed_at_once(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "RESULT_LINGER", 60.0)
    outcomes: list[tuple[pb.Task | None, bytes | None]] = []
    engine.create_task("s1", b"other")  # in flight too: a burst, but the RunTask's caller waits
    engine.run_task("s1", b"in", lambda task, output, _status, _error: outcomes.append((task, output)))
    assert engine.start_next("s1") is not None and engine.start_next("s1") == (2, b"in", None)
    assert engine.finish_task("s1", 2, output=b"out", commit=False)
    engine.store.commit(lazy=False)
    assert len(outcomes) == 1 and outcomes[0][0] is not None and outcomes[0][1] == b"out"


def test_a_withdrawn_task_whose_result_is_queued_loses_the_output_file_its_instance_wrote(engine: Engine) -> None:
    """A service process writes a large output into a file the server reserved (wire.payload_handoff);
    when the task's creation is refused after that result was queued, the file goes with the task."""
    outcomes: list[tuple[pb.Task | None, FlameError | None]] = []
    engine.run_task("s1", BIG, lambda task, _output, _status, error: outcomes.append((task, error)))
    assert engine.start_next("s1", input_as_file=True) == (1, BIG, None), "a small input stays in memory"
    files = engine.store.payloads
    name = files.reserve(for_instance=True)
    output = b"o" * (files.threshold + 1)
    write_payload_file(files.path(name), output, sync=False)  # as the service process does
    fill_up(engine.store)
    assert engine.finish_task("s1", 1, output=output, output_file=PayloadFile(name, len(output)))
    wait_for(lambda: outcomes, 10, "the caller to hear that its task was withdrawn")
    assert outcomes[0][0] is None
    assert not files.path(name).exists(), "the withdrawn task's output file was left behind"


def test_a_result_waiting_for_its_commit_needs_no_instance(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst's result that waits to share a commit keeps its task RUNNING until then: the session's
    demand must not count it, or the tail of a burst would start a process for a task already done."""
    monkeypatch.setattr(state_module, "RESULT_LINGER", 60.0)
    for i in range(3):
        engine.create_task("s1", b"t%d" % i)
    first, _second = engine.start_next("s1"), engine.start_next("s1")
    assert first is not None
    assert engine.demand("s1", cpu_share=False) == 3  # one pending, two running
    assert engine.finish_task("s1", first[0], output=b"r", commit=False)
    engine.store.commit(lazy=False)
    assert engine.demand("s1", cpu_share=False) == 2, "a result waiting for its commit was counted as work"


def running_rows(statements: list[str]) -> int:
    """How many statements set a task's row to RUNNING (state 1)."""
    return sum(1 for s in statements if s.startswith(f"UPDATE tasks SET state = {int(pb.TaskState.Running)},"))


def test_a_running_row_overwritten_in_the_same_commit_is_not_written(engine: Engine) -> None:
    statements: list[str] = []
    engine.store._write.set_trace_callback(statements.append)
    engine.run_task("s1", b"in", lambda _task, _output, _status, _error: None)
    assert engine.start_next("s1") is not None
    engine.store.commit(lazy=False)  # the scheduler's commit after sending it: lazy writes wait
    assert engine.finish_task("s1", 1, output=b"out")
    assert running_rows(statements) == 0, "the RUNNING row was written, then overwritten in the same commit"
    assert stored(engine, 1) == ([(int(pb.TaskState.Succeed),)], [(0, b"in"), (1, b"out")])


def test_a_running_row_committed_before_the_result_is_written(engine: Engine) -> None:
    statements: list[str] = []
    engine.store._write.set_trace_callback(statements.append)
    engine.run_task("s1", b"in", lambda _task, _output, _status, _error: None)
    assert engine.start_next("s1") is not None
    engine.store.commit()  # something else commits now: the task is RUNNING in the store
    assert stored(engine, 1)[0] == [(int(pb.TaskState.Running),)]
    assert engine.finish_task("s1", 1, output=b"out")
    assert running_rows(statements) > 0, "a RUNNING row a commit took was not written"
    assert stored(engine, 1)[0] == [(int(pb.TaskState.Succeed),)]


@pytest.mark.parametrize("watched", ["no one", "WatchSession", "WatchTask"])
def test_a_run_tasks_output_is_handed_over_and_kept_in_its_message_for_watchers(engine: Engine, watched: str) -> None:
    """Protobuf copies a bytes field in and out: with no watcher, a RunTask's output goes to its caller as
    it came, not through the task's message; a watcher still reads it there."""
    outcomes: list[tuple[pb.Task | None, bytes | None]] = []
    engine.run_task("s1", b"in", lambda task, output, _status, _error: outcomes.append((task, output)))
    delivered: list[pb.Task] = []
    feed = StreamFeed(lambda tasks: delivered.extend(tasks) or True, lambda _error: None, lambda: True)
    if watched == "WatchSession":
        engine.watch_session("s1", 0, feed)
    elif watched == "WatchTask":
        engine.watch_task("s1", "1", feed)
    assert engine.start_next("s1") == (1, b"in", None)
    output = b"o" * 5000
    assert engine.finish_task("s1", 1, output=output)
    ((task, given),) = outcomes
    assert given is output, "the caller gets the output as the instance gave it"
    assert task is not None and task.spec.HasField("output") == (watched != "no one")
    finals = [t for t in delivered if t.status.state == pb.TaskState.Succeed]
    assert [t.spec.output for t in finals] == ([] if watched == "no one" else [output])
    assert engine.get_task("s1", "1").spec.output == output, "the store has it"


class _Recorder:
    """What ``run_task`` callers hear: (task, output, error) per call."""

    def __init__(self) -> None:
        self.heard: list[tuple[pb.Task | None, bytes | None, FlameError | None]] = []

    def __call__(self, task: pb.Task | None, output: bytes | None, error: FlameError | None) -> None:
        self.heard.append((task, output, error))


def _start_warm(engine: Engine, data: bytes, recorder: _Recorder) -> int:
    """A warm lane task, as ``Scheduler.run_warm`` makes it (the engine's half of it)."""
    waiter = state_module.OutputWaiter(lambda task, output, _status: recorder(task, output, None))
    tid = engine.start_warm("s1", data, waiter, lambda _tasks, error: recorder(None, None, error))
    assert tid is not None
    return tid


def _statements(engine: Engine) -> list[str]:
    """Every statement the store's write connection runs from now on (sqlite's trace callback)."""
    seen: list[str] = []
    engine.store._write.set_trace_callback(seen.append)
    return seen


def _counts(engine: Engine) -> tuple[int, ...]:
    """The session's stored counts: pending, running, succeed, failed, cancelled."""
    rows = engine.store.query(
        "SELECT pending, running, succeed, failed, cancelled FROM task_counts WHERE session_id = 's1'"
    )
    return tuple(rows[0]) if rows else (0, 0, 0, 0, 0)


def test_a_warm_tasks_creation_and_result_are_one_statement_when_nothing_came_between(engine: Engine) -> None:
    recorder = _Recorder()
    tid = _start_warm(engine, b"in", recorder)
    seen = _statements(engine)
    assert engine.finish_task("s1", tid, output=b"out")
    # (sqlite traces a statement again for each trigger it fires: the same text)
    assert {s.split(" (")[0] for s in seen} == {"INSERT OR REPLACE INTO tasks"}, "not one statement, alone"
    assert stored(engine, tid) == ([(int(pb.TaskState.Succeed),)], [(0, b"in"), (1, b"out")])
    ((task, output, error),) = recorder.heard
    assert error is None and output == b"out" and task is not None
    assert [e.code for e in task.status.events] == [0, int(pb.TaskState.Running), int(pb.TaskState.Succeed)]
    assert _counts(engine) == (0, 0, 1, 0, 0), "the session's stored counts are off"


def test_a_warm_task_whose_creation_and_result_are_refused_is_withdrawn_and_its_caller_told(engine: Engine) -> None:
    """The creation, refilled with the final row, is still a creation nobody was told of: refused, the task
    is withdrawn as its creation alone would be (the caller hears the store's error, nothing is stored),
    never reported done."""
    recorder = _Recorder()
    tid = _start_warm(engine, b"in", recorder)
    fill_up(engine.store)
    with pytest.raises(sqlite3.OperationalError):  # the tasks' pages full too: a small row of its own fails
        for junk in range(100_000):
            engine.store._write.execute(
                "INSERT INTO tasks (session_id, id, state, status) VALUES ('s0', ?, 2, randomblob(64))", (junk,)
            )
    assert engine.finish_task("s1", tid, output=b"out")
    wait_for(lambda: recorder.heard, 10, "the caller to hear that its task was withdrawn")
    ((task, output, error),) = recorder.heard
    assert task is None and output is None
    assert error is not None and error.code == FlameErrorCode.RESOURCE_EXHAUSTED
    engine.store._write.execute("PRAGMA max_page_count = 1000000000")  # space returns
    engine.store.flush(timeout=10)
    assert stored(engine, tid) == ([], []), "a withdrawn task was stored after all"
    assert len(recorder.heard) == 1, "a withdrawn task was reported done too"
    assert _counts(engine) == (0, 0, 0, 0, 0)
    session = engine.get_session("s1").status
    assert (session.pending, session.running, session.succeed) == (0, 0, 0)


@pytest.mark.parametrize("between", ["another task created", "a commit", "a cancel", "a requeue"])
def test_a_warm_task_whose_creation_is_not_last_is_still_stored_right(engine: Engine, between: str) -> None:
    """Something written after the creation (of any task) or a commit that took it: the final state is its
    own statement, and the row, the counts and what the caller hears are as when nothing came between."""
    recorder = _Recorder()
    tid = _start_warm(engine, b"in", recorder)
    final = pb.TaskState.Succeed
    others = 0
    if between == "another task created":
        engine.create_task("s1", b"other")
        others = 1
    elif between == "a commit":
        engine.store.commit()  # the creation is taken: its row exists, Running
    elif between == "a requeue":  # its instance gave it back unstarted, then it ran again: writes queued after
        engine.return_tasks("s1", [tid], "withdrawn")
        assert engine.start_next("s1") == (tid, b"in", None)
    else:
        final = pb.TaskState.Cancelled  # no scheduler here runs it: the engine cancels it at once
        engine.cancel_task("s1", str(tid), "a test", lambda _task: None)
    assert engine.finish_task("s1", tid, output=b"out") == (between != "a cancel")
    engine.store.flush(timeout=10)
    rows, _payloads = stored(engine, tid)
    assert rows == [(int(final),)]
    expected = [0] * 5
    expected[int(final)] += 1
    expected[0] += others
    assert _counts(engine) == tuple(expected), "the session's stored counts are off"
    if between != "a cancel":
        ((task, output, error),) = recorder.heard
        assert error is None and output == b"out" and task is not None


@pytest.mark.parametrize("size", [100, 70_000, 2 << 20])
@pytest.mark.parametrize("file_fails", [False, True])
def test_a_run_task_input_given_as_a_view_of_a_reused_buffer_is_not_kept_as_one(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, size: int, file_fails: bool
) -> None:
    """The RunTask handler borrows its request (``kit.borrows_request``): the input may be a view of the
    buffer the transport reads its next message into. The engine keeps none: a small input is copied, a
    large one written to its file before ``run_task`` returns, or copied into its row when the file cannot
    be written. The buffer is overwritten afterwards, as the next message would: what runs and what is
    stored is still the input."""
    if file_fails:

        def refuse(*_args: object, **_kwargs: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("flamepy_core.engine.payload_files.write_payload_file", refuse)
    data = os.urandom(size)
    buffer = bytearray(data)
    outcomes: list[tuple[pb.Task | None, bytes | None, FlameError | None]] = []
    engine.run_task(
        "s1", memoryview(buffer)[:size], lambda task, output, _status, error: outcomes.append((task, output, error))
    )
    buffer[:] = bytes(size)  # the transport reads its next message into the same buffer
    started = engine.start_next("s1")
    assert started is not None and started[1] == data
    assert engine.finish_task("s1", started[0], output=b"out")
    wait_for(lambda: outcomes, 10, "the result")
    assert outcomes[0][2] is None
    engine.store.flush(timeout=10)
    assert engine.get_task("s1", str(started[0])).spec.input == data  # read from its row, or from its file
    if size < engine.store.payloads.threshold or file_fails:
        assert [p for kind, p in stored(engine, started[0])[1] if kind == 0] == [data]


def test_results_finished_together_leave_what_one_by_one_leaves_in_one_write(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``finish_tasks`` (a batch's results read together): each task ends as ``finish_task`` would end it
    (state, output, failure, counters, rows), a task no longer running is skipped, and they are queued as
    one write: one transaction, one callback run per task."""
    created: list[list[pb.Task] | None] = []
    engine.submit_tasks("s1", [b"a", b"b", b"c", b"d"], lambda tasks, error: created.append(tasks))
    wait_for(lambda: created, 10, "the tasks to be created")
    started = engine.start_many("s1", 4, 1, 1 << 20)
    assert [tid for tid, _input, _file in started] == [1, 2, 3, 4]
    assert engine.finish_task("s1", 4, output=b"first")  # finished already: skipped below
    engine.store.flush()
    queued: list[int] = []
    enqueue = engine.store.enqueue
    monkeypatch.setattr(engine.store, "enqueue", lambda ops, *a, **k: queued.append(len(ops)) or enqueue(ops, *a, **k))
    results = [(1, b"A", None, None), (2, None, None, "ValueError: no"), (3, b"C", None, None)]
    results.append((4, b"again", None, None))
    engine.finish_tasks("s1", results)
    engine.finish_tasks("s1", [(99, b"x", None, None)])  # no such task: nothing queued, nothing raised
    assert len(queued) == 1 and queued[0] >= 3, f"the group's final states were queued as {queued}"
    engine.store.flush()
    one = engine.get_task("s1", "1")
    assert one.status.state == pb.TaskState.Succeed and one.spec.output == b"A"
    two = engine.get_task("s1", "2")
    assert two.status.state == pb.TaskState.Failed and two.status.events[-1].message == "ValueError: no"
    assert engine.get_task("s1", "3").spec.output == b"C"
    assert stored(engine, 1) == ([(int(pb.TaskState.Succeed),)], [(0, b"a"), (1, b"A")])
    assert stored(engine, 2)[0] == [(int(pb.TaskState.Failed),)]
    assert engine.get_task("s1", "4").spec.output == b"first", "a task that had ended was finished again"
    status = engine.get_session("s1").status
    assert (status.succeed, status.failed, status.running) == (3, 1, 0), "a counter moved wrongly"
