"""Lanes (the default; ``FLAMEPY_LANES=0`` turns them off): a client sends its session's warm tasks to the
session's idle service process itself, and the server records them afterwards from the lane's log.

A lane is only worth having if nobody can tell it from the server's path: the caller gets the same output
or the same error, and the server shows the same tasks (states, inputs, outputs, events, counters) as soon
as it is asked, whatever happens meanwhile: the server takes its instance back, the service process dies
in the middle of a task, the server stops before it read the log, the session closes. With lanes turned
off nothing may change. Real service processes on unix sockets, a real store, no mocks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import REVERSE_SERVICE, wait_for

import flamepy
from flamepy.testing import LocalRuntime
from flamepy_core.client import lane as lane_module
from flamepy_core.client.connection import default_connection, reset_default_connection
from flamepy_core.client.lane import LANES_ENV, Lane
from flamepy_core.client.local import live_server, stop_server
from flamepy_core.client.session import Session, TaskCancelledError, TaskFailedError
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine import lanes as lanes_module
from flamepy_core.engine.embedded import ensure_inprocess_server, stop_inprocess_server
from flamepy_core.engine.scheduler import State
from flamepy_core.model import Task, TaskState
from flamepy_core.wire.lane_log import LaneLogWriter, LaneResult, payload_path
from flamepy_core.wire.proto import types_pb2 as pb

WAIT = 60.0
"""Seconds any one call or wait of these tests may take (an instance's start included)."""

PICKY_SERVICE = """
import flamepy
from flamepy.core import FlameService


class Picky(FlameService):
    def on_task_invoke(self, context):
        if context.input == b"42":
            raise ValueError("bad input 42")
        return context.input[::-1]


if __name__ == "__main__":
    flamepy.run(Picky())
"""
"""Answers its input reversed, and fails with ``ValueError("bad input 42")`` on ``b"42"``."""


@pytest.fixture
def runtime(reverse_runtime: LocalRuntime) -> LocalRuntime:
    return reverse_runtime


def _lane_of(session: Session) -> Lane:
    lane = session._lane
    assert lane is not None, f"{LANES_ENV}=1 did not give the session a lane"
    return lane


def _without_lanes(monkeypatch: pytest.MonkeyPatch, session_id: str) -> Session:
    """Another client of the same session, whose invokes go through the server."""
    monkeypatch.setenv(LANES_ENV, "0")
    other = flamepy.get_session(session_id)
    assert other._lane is None, f"a session object made with {LANES_ENV}=0 has a lane"
    return other


def _wait_idle(rt: LocalRuntime, session_id: str) -> None:
    """Wait until the session has an idle instance (one the server can lend)."""
    scheduler = rt.server.scheduler
    wait_for(
        lambda: any(
            i.session_id == session_id and i.state == State.IDLE and i.process is not None
            for i in list(scheduler._instances.values())
        ),
        WAIT,
        f"an idle instance of session {session_id}",
    )


def _warm_session(rt: LocalRuntime, monkeypatch: pytest.MonkeyPatch, app: str = "rev") -> Session:
    """A session with lanes, its instance started by a task through the server (``run()``: the lane's
    first ``invoke`` would find no idle instance and not ask again for ``RETRY_AFTER`` calls), then idle."""
    monkeypatch.setenv(LANES_ENV, "1")
    session = flamepy.create_session(app)
    _lane_of(session)
    assert session.run(b"warm up").result(timeout=WAIT) == b"pu mraw"
    _wait_idle(rt, session.id)
    return session


def _tasks(session: Session) -> list[Task]:
    return sorted(session.list_tasks(), key=lambda t: int(t.id))


def _message(session_id: str, task_id: str) -> pb.Task:
    return default_connection().get_task_message(session_id, task_id)


def _lane_logs(rt: LocalRuntime) -> list[Path]:
    return sorted(Path(f"{rt.server.db_path}-lanes").glob("*.lane"))


def test_warm_invokes_go_on_the_lane_and_the_server_shows_them_at_once_as_its_own_tasks(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = runtime.server.scheduler
    session = _warm_session(runtime, monkeypatch)
    lane = _lane_of(session)
    before = scheduler.warm_runs
    inputs = [b"lane %d" % i for i in range(20)]
    for data in inputs:
        assert session.invoke(data, timeout=WAIT) == data[::-1]
    assert lane._grant is not None, "the session holds no lane after warm invokes"
    assert scheduler.warm_runs == before, "warm invokes with a lane went through the server"

    tasks = _tasks(session)  # right away: the read records what the lane ran first
    assert [int(t.id) for t in tasks] == list(range(1, 22)), f"ids not 1..21: {[t.id for t in tasks]}"
    assert [t.state.name for t in tasks] == ["SUCCEED"] * 21
    assert [t.input for t in tasks] == [b"warm up", *inputs]
    assert [t.output for t in tasks] == [b"pu mraw", *(d[::-1] for d in inputs)]
    counts = flamepy.get_session(session.id)
    assert (counts.succeed, counts.running, counts.pending, counts.failed) == (21, 0, 0, 0), (
        "the session's counters do not count the lane's tasks"
    )

    # The same session's warm task through the server (another client, without lanes), for comparison.
    plain = _without_lanes(monkeypatch, session.id)
    assert plain.invoke(b"server", timeout=WAIT) == b"revres"
    assert scheduler.warm_runs == before + 1, "the comparison task did not take the server's warm path"
    [through_server] = [t for t in _tasks(session) if t.input == b"server"]
    served = _message(session.id, through_server.id)
    codes = [e.code for e in served.status.events]
    for lane_task in tasks[1:]:
        assert [e.code for e in _message(session.id, lane_task.id).status.events] == codes, (
            f"lane task {lane_task.id}'s events are not those of the same task through the server"
        )
    on_lane = _message(session.id, tasks[1].id)
    for task in (on_lane, served):
        assert task.status.state == pb.TaskState.Succeed
        assert task.status.creation_time <= task.status.completion_time
    assert on_lane.spec.input == b"lane 0" and on_lane.spec.output == b"0 enal"
    session.close()


def test_a_service_failure_on_a_lane_raises_the_error_the_server_path_raises(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = tmp_path / "picky" / "picky_service.py"
    service.parent.mkdir()
    service.write_text(textwrap.dedent(PICKY_SERVICE))
    runtime.register("picky", service)
    session = _warm_session(runtime, monkeypatch, "picky")
    lane = _lane_of(session)
    assert session.invoke(b"ok", timeout=WAIT) == b"ko"
    assert lane._grant is not None, "the lane did not open"
    with pytest.raises(TaskFailedError) as on_lane:
        session.invoke(b"42", timeout=WAIT)
    assert lane._grant is not None, "a failing task closed the lane"

    plain = _without_lanes(monkeypatch, session.id)
    with pytest.raises(TaskFailedError) as through_server:
        plain.invoke(b"42", timeout=WAIT)
    assert type(on_lane.value) is type(through_server.value)
    assert "ValueError: bad input 42" in through_server.value.message
    assert on_lane.value.message == through_server.value.message, (
        f"the lane's failure text differs:\n--- lane\n{on_lane.value.message}\n--- server\n"
        f"{through_server.value.message}"
    )
    assert on_lane.value.code == through_server.value.code
    assert str(on_lane.value) == str(through_server.value)
    assert on_lane.value.task.state == through_server.value.task.state

    # The server records the lane's failure as it records its own.
    failed = [t for t in _tasks(session) if t.input == b"42"]
    assert [t.state.name for t in failed] == ["FAILED", "FAILED"]
    lane_task, server_task = (_message(session.id, t.id) for t in failed)
    assert [e.code for e in lane_task.status.events] == [e.code for e in server_task.status.events]
    assert lane_task.status.events[-1].message == server_task.status.events[-1].message
    counts = flamepy.get_session(session.id)
    assert (counts.succeed, counts.failed, counts.running) == (2, 2, 0)
    session.close()


@pytest.mark.parametrize("taker", ["another client's invoke", "this session's run()"])
def test_the_server_takes_the_instance_back_and_the_lane_client_carries_on(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, taker: str
) -> None:
    session = _warm_session(runtime, monkeypatch)
    lane = _lane_of(session)
    assert session.invoke(b"on lane", timeout=WAIT) == b"enal no"
    first_grant = lane._grant
    assert first_grant is not None, "the lane did not open"
    assert runtime.server.lanes.lent()

    if taker == "another client's invoke":
        plain = _without_lanes(monkeypatch, session.id)
        assert plain.invoke(b"taker", timeout=WAIT) == b"rekat"
    else:
        assert session.run(b"taker").result(timeout=WAIT) == b"rekat"
    wait_for(lambda: not runtime.server.lanes.lent(), WAIT, "the lane taken back")

    # The lane client does not know yet: its task is refused there, and goes through the server.
    assert session.invoke(b"after", timeout=WAIT) == b"retfa"
    assert lane._grant is None, "the lane client did not learn that the server took its lane back"
    assert session.invoke(b"again", timeout=WAIT) == b"niaga"
    assert lane._grant is not None and lane._grant.token != first_grant.token, "the lane client did not open a new lane"
    assert session.invoke(b"last", timeout=WAIT) == b"tsal"

    tasks = _tasks(session)
    inputs = Counter(t.input for t in tasks)
    expected = [b"warm up", b"on lane", b"taker", b"after", b"again", b"last"]
    assert inputs == Counter(expected), f"not every task exactly once: {inputs}"
    assert len({t.id for t in tasks}) == len(tasks), "a task id was given twice"
    assert all(t.state.name == "SUCCEED" for t in tasks), [(t.id, t.state.name) for t in tasks]
    counts = flamepy.get_session(session.id)
    assert (counts.succeed, counts.failed, counts.running, counts.pending) == (6, 0, 0, 0)
    session.close()
    wait_for(lambda: not _lane_logs(runtime), WAIT, "the lanes' logs removed once recorded")


def test_a_lane_task_whose_process_dies_is_sent_again_through_the_server(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The task's result never reached the lane's log, so the server has no such task: the client sends it
    through the server, which must run it on a new instance (at least once, as the server's own path does
    for a task whose instance dies), and the session serves on."""
    session = _warm_session(runtime, monkeypatch)
    lane = _lane_of(session)
    assert session.invoke(b"on lane", timeout=WAIT) == b"enal no"
    assert lane._grant is not None, "the lane did not open"

    assert session.invoke(b"die once", timeout=WAIT) == b"ecno eid"
    assert (tmp_path / "svc" / "died").exists(), "the service process did not die"
    assert lane._grant is None, "the broken lane is still held"
    wait_for(lambda: not runtime.server.lanes.lent(), WAIT, "the broken lane ended on the server")

    assert session.invoke(b"after", timeout=WAIT) == b"retfa"
    assert session.invoke(b"again", timeout=WAIT) == b"niaga"
    tasks = _tasks(session)
    inputs = Counter(t.input for t in tasks)
    assert inputs == Counter([b"warm up", b"on lane", b"die once", b"after", b"again"]), (
        f"not every task exactly once: {inputs}"
    )
    assert len({t.id for t in tasks}) == len(tasks), "a task id was given twice"
    assert all(t.state.name == "SUCCEED" for t in tasks), [(t.id, t.state.name) for t in tasks]
    counts = flamepy.get_session(session.id)
    assert (counts.succeed, counts.failed, counts.running) == (5, 0, 0)
    session.close()


def _stopped_after_one_task(runtime: LocalRuntime) -> tuple[str, Path]:
    """A session whose task 1 (``b"stored"``) went through the server, then the server stopped: the session's
    id and the lanes' folder (where a test leaves a log for the next start)."""
    session = flamepy.create_session("rev")
    assert session.invoke(b"stored", timeout=WAIT) == b"derots"
    lanes = Path(f"{runtime.server.db_path}-lanes")
    assert stop_inprocess_server(runtime.endpoint)
    return session.id, lanes


def test_a_lane_log_left_by_a_stopped_server_is_recorded_at_the_next_start_once(runtime: LocalRuntime) -> None:
    sid, lanes = _stopped_after_one_task(runtime)
    path = lanes / "i1-0123456789ab.lane"
    now = time.time_ns() // 1_000_000  # (times of long ago would have their payloads purged at once)
    with LaneLogWriter(str(path), sid, b"t" * 16) as writer:
        # Task 1 is in the store already (a log read before the stop, say): it must not be recorded again.
        writer.append(LaneResult(1, now, now + 1, True, b"stored", b"not this", None))
        writer.append(LaneResult(2, now + 2, now + 3, True, b"two", b"owt", None))
        writer.append(LaneResult(3, now + 4, now + 5, False, b"three", None, "ValueError: not three"))
        writer.append(LaneResult(4, now + 6, now + 7, True, b"four", b"ruof", None))

    reset_default_connection()
    runtime.server = ensure_inprocess_server(runtime.endpoint, runtime.home, instance_mode="process")
    tasks = _tasks(flamepy.get_session(sid))
    assert [(int(t.id), t.state.name, t.input, t.output) for t in tasks] == [
        (1, "SUCCEED", b"stored", b"derots"),
        (2, "SUCCEED", b"two", b"owt"),
        (3, "FAILED", b"three", None),
        (4, "SUCCEED", b"four", b"ruof"),
    ]
    failed = _message(sid, "3")
    assert failed.status.events[-1].message == "ValueError: not three"
    assert [e.code for e in _message(sid, "2").status.events] == [e.code for e in _message(sid, "1").status.events]
    counts = flamepy.get_session(sid)
    assert (counts.succeed, counts.failed, counts.running, counts.pending) == (3, 1, 0, 0)
    wait_for(lambda: not path.exists(), WAIT, "the recorded lane log removed")

    # The session goes on after them: the next task takes the next id.
    assert flamepy.get_session(sid).invoke(b"five", timeout=WAIT) == b"evif"
    assert [int(t.id) for t in _tasks(flamepy.get_session(sid))] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("closer", ["the session itself", "another client"])
def test_closing_a_session_after_lane_invokes_closes_it_with_the_lanes_tasks_counted(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, closer: str
) -> None:
    session = _warm_session(runtime, monkeypatch)
    lane = _lane_of(session)
    for i in range(5):
        assert session.invoke(b"%d" % i, timeout=WAIT) == b"%d" % i
    assert lane._grant is not None and runtime.server.lanes.lent(), "the lane did not open"
    if closer == "the session itself":
        session.close()
        assert session.state.name == "CLOSED"
        closed = flamepy.get_session(session.id)
    else:  # the close's own answer counts the lane's tasks: the server took the lane back first
        closed = flamepy.close_session(session.id)
    assert closed.state.name == "CLOSED"
    assert (closed.succeed, closed.failed, closed.running, closed.pending) == (6, 0, 0, 0), (
        "the closed session's counters miss the lane's tasks"
    )
    if closer == "another client":
        # The lane client still holds its grant: its next task must not run on the closed session's lane.
        with pytest.raises(flamepy.FlameError, match="closed"):
            session.invoke(b"late", timeout=WAIT)
        assert b"late" not in [t.input for t in _tasks(session)], "a task ran on a closed session's lane"
    wait_for(lambda: not runtime.server.lanes.lent(), WAIT, "the closed session's lane given back")
    wait_for(lambda: not _lane_logs(runtime), WAIT, "the closed lane's log removed")


def test_lanes_are_the_default(runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LANES_ENV, raising=False)
    session = flamepy.create_session("rev")
    assert session._lane is not None, f"a session made without {LANES_ENV} has no lane"
    for i in range(5):  # the first starts the instance; a refused lane is asked for again soon after
        assert session.invoke(b"w%d" % i, timeout=WAIT) == (b"w%d" % i)[::-1]
    assert session._lane._grant is not None, "warm invokes of a session made without the variable took no lane"
    session.close()


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_with_lanes_turned_off_nothing_changes(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(LANES_ENV, value)
    scheduler = runtime.server.scheduler
    session = flamepy.create_session("rev")
    assert session._lane is None, f"{LANES_ENV}={value!r} gave the session a lane"
    assert session.invoke(b"first", timeout=WAIT) == b"tsrif"
    before = scheduler.warm_runs
    for i in range(5):
        assert session.invoke(b"w%d" % i, timeout=WAIT) == (b"w%d" % i)[::-1]
        assert not runtime.server.lanes.lent(), "a lane was lent without lanes asked for"
    assert scheduler.warm_runs == before + 5, "warm invokes did not take the server's warm path"
    assert not _lane_logs(runtime), "a lane log was written without lanes"
    session.close()


WAITING_SERVICE = """
import os
import time

import flamepy
from flamepy.core import FlameService


class Waiting(FlameService):
    def on_task_invoke(self, context):
        if context.input.startswith(b"wait:"):  # says it started, then runs until the gate file exists
            gate = context.input[5:].decode()
            with open(gate + ".started", "a") as started:  # a line per run
                started.write("ran\\n")
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
            return b"done"
        return context.input[::-1]


if __name__ == "__main__":
    flamepy.run(Waiting())
"""
"""Answers its input reversed; ``b"wait:<path>"`` adds a line to ``<path>.started`` and runs until ``<path>``
exists."""


def _waiting_session(rt: LocalRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Session:
    service = tmp_path / "waiting" / "waiting_service.py"
    service.parent.mkdir()
    service.write_text(textwrap.dedent(WAITING_SERVICE))
    rt.register("waiting", service)
    session = _warm_session(rt, monkeypatch, "waiting")
    assert session.invoke(b"ab", timeout=WAIT) == b"ba"
    assert _lane_of(session)._grant is not None, "the lane did not open"
    return session


def _invoke_in_thread(session: Session, data: bytes) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["output"] = session.invoke(data, timeout=WAIT)
        except Exception as exc:  # the test reads it
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, outcome


def _task_running_on_the_lane(
    session: Session, gate: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Thread, dict[str, object], Session, list[Task]]:
    """Invoke ``b"wait:<gate>"`` in a thread, on the session's lane; once it runs: the thread, its outcome,
    another client of the session (no lane) and the tasks that client sees running."""
    thread, outcome = _invoke_in_thread(session, b"wait:" + str(gate).encode())
    wait_for(lambda: Path(f"{gate}.started").exists(), WAIT, "the lane's task to start")
    other = _without_lanes(monkeypatch, session.id)
    return thread, outcome, other, [t for t in other.list_tasks() if t.state == TaskState.RUNNING]


def test_a_task_running_on_a_lane_is_shown_running_to_everyone(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    session = _waiting_session(runtime, monkeypatch, tmp_path)
    gate = tmp_path / "gate"
    # Another client sees it running (the service process logged that it began, before it ran it).
    thread, outcome, other, running = _task_running_on_the_lane(session, gate, monkeypatch)
    assert [t.input for t in running] == [b"wait:" + str(gate).encode()], "the lane's task is not shown running"
    assert flamepy.get_session(session.id).running == 1
    gate.touch()
    thread.join(WAIT)
    assert outcome == {"output": b"done"}
    done = other.get_task(running[0].id)
    assert (done.state, done.output) == (TaskState.SUCCEED, b"done")
    assert flamepy.get_session(session.id).running == 0
    session.close()


def test_cancelling_a_task_running_on_a_lane_stops_it_and_its_caller_is_told(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    session = _waiting_session(runtime, monkeypatch, tmp_path)
    thread, outcome, other, [running] = _task_running_on_the_lane(session, tmp_path / "never", monkeypatch)
    cancelled = other.cancel_task(running.id)  # answered once the task is final: its instance is stopped
    assert cancelled.state == TaskState.CANCELLED, cancelled
    thread.join(WAIT)
    assert isinstance(outcome.get("error"), TaskCancelledError), outcome
    assert other.get_task(running.id).state == TaskState.CANCELLED
    # The session goes on: the next invoke gets a new instance (through the server, then a lane again).
    assert session.invoke(b"after", timeout=WAIT) == b"retfa"
    assert [t.id for t in _tasks(session) if t.state == TaskState.RUNNING] == []
    session.close()


def test_a_client_on_another_machine_than_its_server_asks_for_no_lane(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lane's endpoint is the server's machine's (a unix socket, a loopback port): a client that reads
    # another machine name must not connect to whatever answers at that address on its own machine.
    monkeypatch.setattr("flamepy_core.client.lane.this_machine", lambda: "boot:elsewhere")
    session = _warm_session(runtime, monkeypatch)
    for i in range(4):
        assert session.invoke(b"x%d" % i, timeout=WAIT) == (b"x%d" % i)[::-1]
    lane = _lane_of(session)
    assert lane._grant is None and lane._channel is None, "a client of another machine used a lane"
    assert lane._unsupported, "it keeps asking the server for lanes it cannot use"
    session.close()


def test_a_close_while_a_lane_task_runs_is_refused_and_the_task_finishes_once(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The close takes the lane back and waits a second for its task (LANE_CLOSE_WAIT), then is refused as
    # any close of a session with a running task. The lane is not over while its task runs: the task is
    # neither recorded lost (and run again) nor left Running once it ends.
    session = _waiting_session(runtime, monkeypatch, tmp_path)
    gate = tmp_path / "gate"
    thread, outcome, other, [running] = _task_running_on_the_lane(session, gate, monkeypatch)
    with pytest.raises(FlameError) as refused:
        other.close()
    assert refused.value.code == FlameErrorCode.INVALID_STATE and "running" in refused.value.message
    time.sleep(1.0)  # (the server's lane thread reads the log meanwhile)
    assert other.get_task(running.id).state == TaskState.RUNNING, "the lane's task was taken for lost"
    gate.touch()
    thread.join(WAIT)
    assert outcome == {"output": b"done"}
    wait_for(lambda: other.get_task(running.id).state == TaskState.SUCCEED, WAIT, "the lane's task recorded")
    inputs = [t.input for t in _tasks(session)]
    assert inputs.count(b"wait:" + str(gate).encode()) == 1, "the lane's task was recorded twice"
    time.sleep(0.5)  # (a second run, had the task been taken for lost, would have begun by now)
    assert Path(f"{gate}.started").read_text() == "ran\n", "the lane's task ran twice"
    other.close()
    assert flamepy.get_session(session.id).succeed == len(inputs)


def test_a_server_in_strict_durability_lends_no_lane(flame_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Strict durability fsyncs every result before its client is told; a lane's log is only written, so such
    # a server keeps every task on its own path (and recovers the logs a batched server left).
    monkeypatch.delenv(LANES_ENV, raising=False)
    argv = [sys.executable, "-m", "flamepy_core.engine", "--home", str(flame_env.home), "--durability", "strict"]
    strict = subprocess.Popen(argv, env=flame_env.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: live_server(flame_env.home), 30, "the strict server to start")
        flame_env.write_service("rev", REVERSE_SERVICE)
        session = flamepy.create_session("rev")
        for i in range(6):  # (a refused lane is asked for again after 1, 2, 4 calls through the server)
            assert session.invoke(b"s%d" % i, timeout=WAIT) == (b"s%d" % i)[::-1]
        assert _lane_of(session)._grant is None, "a server in strict durability lent a lane"
        assert not list((flame_env.home / "flame.db-lanes").glob("*.lane")), "a lane log was written"
        assert [t.state for t in _tasks(session)] == [TaskState.SUCCEED] * 6
        session.close()
    finally:
        reset_default_connection()
        stop_server(flame_env.home, timeout=20)
        if strict.poll() is None:
            strict.kill()
        strict.wait(timeout=30)


MIB = 1 << 20


def _payload_files(rt: LocalRuntime) -> dict[str, os.stat_result]:
    folder = rt.home / "payloads"
    return {p.name: p.stat() for p in folder.iterdir()} if folder.exists() else {}


def _lane_payload_files(rt: LocalRuntime) -> list[str]:
    return sorted(p.name.split(".lane.", 1)[1] for p in Path(f"{rt.server.db_path}-lanes").glob("*.lane.*"))


def test_large_payloads_on_a_lane_travel_as_files_that_the_server_takes_without_a_copy(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A large input is written by the client beside the lane's log, and a large output by the service
    # process: the messages carry their sizes, and the server links the very files into its payloads.
    scheduler = runtime.server.scheduler
    monkeypatch.setattr(lanes_module, "FILE_GRACE", 3600.0)  # (the lane's names kept, to be looked at)
    session = _warm_session(runtime, monkeypatch)
    before = scheduler.warm_runs
    large = os.urandom(2 * MIB)
    assert session.invoke(large, timeout=WAIT) == large[::-1]
    assert session.invoke(b"small", timeout=WAIT) == b"llams"
    assert scheduler.warm_runs == before, "the large invoke went through the server"
    lane = _lane_of(session)
    tid = lane._next - 2
    assert _lane_payload_files(runtime) == [f"{tid}.input", f"{tid}.output"], "not beside the lane's log"

    task = session.get_task(str(tid))
    assert (task.state, task.input, task.output) == (TaskState.SUCCEED, large, large[::-1])
    wait_for(lambda: len(_payload_files(runtime)) == 2, WAIT, "the lane's files taken as payload files")
    taken = _payload_files(runtime)
    assert sorted(f.st_size for f in taken.values()) == [2 * MIB, 2 * MIB]
    assert {f.st_nlink for f in taken.values()} == {2}, "the server copied a lane's file instead of linking it"

    # A lane held long keeps no payload file past FILE_GRACE after the server's link is committed: the
    # retention's purge of a payload must free its space while the lane goes on.
    monkeypatch.setattr(lanes_module, "FILE_GRACE", 0.0)
    other = os.urandom(MIB)
    assert session.invoke(other, timeout=WAIT) == other[::-1]
    wait_for(lambda: _lane_payload_files(runtime) == [f"{tid}.input", f"{tid}.output"], WAIT, "its names to go")
    assert lane._grant is not None and _lane_logs(runtime), "the lane ended"
    assert sorted(f.st_nlink for f in _payload_files(runtime).values()) == [1, 1, 2, 2]

    session.close()  # the lane ends: its log and files go, the store's links stay
    wait_for(lambda: not _lane_payload_files(runtime) and not _lane_logs(runtime), WAIT, "the lane's files removed")
    assert {f.st_nlink for f in _payload_files(runtime).values()} == {1}
    stored = {t.id: (t.input, t.output) for t in flamepy.get_session(session.id).list_tasks()}
    assert stored[str(tid)] == (large, large[::-1]) and stored[str(tid + 1)] == (b"small", b"llams")
    assert stored[str(tid + 2)] == (other, other[::-1])


def test_a_lane_output_whose_file_is_gone_before_its_client_reads_it_is_asked_of_the_server(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server may have taken the instance back, recorded the task and removed the lane's files between
    # the answer and the client's read of the output's file (a race): the server has the output.
    session = _warm_session(runtime, monkeypatch)
    large = os.urandom(MIB)
    real = lane_module.read_payload_file

    def gone_once(path: Path, size: int) -> bytes:
        monkeypatch.setattr(lane_module, "read_payload_file", real)
        runtime.server.lanes.catch_up(session.id)  # the server records the task (its own link to the file)
        Path(path).unlink()  # and the lane's name goes, as when its log is removed
        raise FileNotFoundError(2, "No such file or directory", str(path))

    monkeypatch.setattr(lane_module, "read_payload_file", gone_once)
    assert session.invoke(large, timeout=WAIT) == large[::-1]
    assert lane_module.read_payload_file is real, "the output was not read from its file"
    session.close()


def test_a_lane_log_with_payload_files_left_by_a_stopped_server_is_recorded_at_the_next_start(
    runtime: LocalRuntime,
) -> None:
    sid, lanes = _stopped_after_one_task(runtime)
    path = lanes / "i1-00000000000b.lane"
    now = time.time_ns() // 1_000_000
    large = os.urandom(MIB)
    with LaneLogWriter(str(path), sid, b"t" * 16) as writer:
        writer.append(LaneResult(2, now, now, False, large, None, None, started=True))
        writer.append(LaneResult(2, now, now + 1, True, None, large[::-1], None))
        writer.append(LaneResult(3, now + 2, now + 2, False, b"three", None, None, started=True))
        writer.append(LaneResult(3, now + 2, now + 3, True, None, b"x" * MIB, None))
    Path(payload_path(path, 3, "output")).unlink()  # removed outside flamepy: its task cannot be Succeed

    reset_default_connection()
    runtime.server = ensure_inprocess_server(runtime.endpoint, runtime.home, instance_mode="process")
    tasks = {t.id: t for t in flamepy.get_session(sid).list_tasks()}
    assert (tasks["2"].state, tasks["2"].input, tasks["2"].output) == (TaskState.SUCCEED, large, large[::-1])
    assert tasks["3"].state == TaskState.FAILED and tasks["3"].output is None
    assert payload_path(path, 3, "output") in _message(sid, "3").status.events[-1].message
    wait_for(lambda: not path.exists() and not list(lanes.glob("*.lane.*")), WAIT, "the recorded log removed")
    assert sorted(f.st_size for f in _payload_files(runtime).values()) == [MIB, MIB]


def test_a_client_that_cannot_use_the_lanes_folder_sends_large_payloads_in_the_messages(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client of another user (the folder is the server's user's, 0700) cannot write or read files
    # beside the lane's log: its large payloads travel in the lane's messages, and the lane still works.
    lanes_folder = f"{runtime.server.db_path}-lanes"
    real_access = os.access
    monkeypatch.setattr(
        lane_module.os, "access", lambda path, mode: False if str(path) == lanes_folder else real_access(path, mode)
    )

    def no_file(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the client used a file beside the lane's log it may not use")

    monkeypatch.setattr(lane_module, "write_payload_file", no_file)
    monkeypatch.setattr(lane_module, "read_payload_file", no_file)
    scheduler = runtime.server.scheduler
    session = _warm_session(runtime, monkeypatch)
    before = scheduler.warm_runs
    large = os.urandom(MIB)
    assert session.invoke(large, timeout=WAIT) == large[::-1]
    assert scheduler.warm_runs == before, "the large invoke did not take the lane"
    task = session.get_task(str(_lane_of(session)._next - 1))
    assert (task.input, task.output) == (large, large[::-1])
    session.close()


DIES_ON_LARGE_SERVICE = """
import os
import flamepy
from flamepy.core import FlameService


class DiesOnLarge(FlameService):
    def on_task_invoke(self, context):
        if len(context.input) >= 1 << 20 and not os.path.exists("died-large"):
            open("died-large", "w").close()
            os._exit(3)  # once, in the middle of a large task
        return context.input[::-1]


if __name__ == "__main__":
    flamepy.run(DiesOnLarge())
"""


def test_a_large_lane_task_whose_process_dies_runs_again_from_its_file_through_the_server(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The lane's log says the task began, naming the input's file (the client wrote it): the server takes
    # that file as the task's input, and runs the task again on a new instance from it.
    service = tmp_path / "dies" / "dies_service.py"
    service.parent.mkdir()
    service.write_text(DIES_ON_LARGE_SERVICE)
    runtime.register("dies", service)
    session = _warm_session(runtime, monkeypatch, app="dies")
    large = os.urandom(MIB)
    assert session.invoke(large, timeout=WAIT) == large[::-1]
    assert (service.parent / "died-large").exists(), "the service process did not die"
    tasks = _tasks(session)
    assert [(t.state, len(t.input or b"")) for t in tasks] == [(TaskState.SUCCEED, 7), (TaskState.SUCCEED, MIB)]
    assert (tasks[1].input, tasks[1].output) == (large, large[::-1])
    messages = [e.message for e in _message(session.id, tasks[1].id).status.events]
    assert any(m.startswith("retry 1/3: instance") for m in messages), f"not retried by the server: {messages}"
    session.close()


def test_a_lane_task_whose_input_file_is_refused_goes_through_the_server_and_no_lane_is_taken_for_broken(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service process refuses a task whose input's file is not there whole (INVALID_ARGUMENT: it did
    # not run). That is no broken link: the task goes through the server, once, and the client keeps its
    # link to the service process (a broken one would be closed, and count against lanes).
    session = _warm_session(runtime, monkeypatch)
    assert session.invoke(b"first", timeout=WAIT) == b"tsrif"
    lane = _lane_of(session)
    channel = lane._channel
    monkeypatch.setattr(lane_module, "write_payload_file", lambda *_args, **_kwargs: None)  # (it says it wrote)
    large = os.urandom(MIB)
    assert session.invoke(large, timeout=WAIT) == large[::-1]
    assert lane._channel is channel, "the refusal was taken for a broken link"
    assert [t.state for t in _tasks(session) if t.input == large] == [TaskState.SUCCEED], "not run exactly once"
    for i in range(4):  # (the server's call took the lane back: a new one is granted on the same link)
        assert session.invoke(b"n%d" % i, timeout=WAIT) == (b"n%d" % i)[::-1]
    assert lane._grant is not None and lane._channel is channel and lane._unreachable == 0
    session.close()
