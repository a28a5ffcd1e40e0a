"""Lanes under races and failures found in review: each test is a scenario that once broke (a client given
another task's output, a lane nobody read, a lane never ended, a long lane task killed as idle and run
twice, a result dropped at a restart). Real service processes and a real store; where a scenario needs
a moment held open, the test says what it injects."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import test_client_lanes as T  # the lanes tests' helpers
from conftest import wait_for

import flamepy
from flamepy.testing import LocalRuntime

WAIT = 60.0


@pytest.fixture
def runtime(reverse_runtime: LocalRuntime) -> LocalRuntime:
    return reverse_runtime


def _lane_instance(rt, session_id):
    return next(i for i in list(rt.server.scheduler._instances.values()) if i.session_id == session_id and i.process)


def test_a_lane_client_whose_instance_died_gets_its_own_tasks_output_not_anothers(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = T._warm_session(runtime, monkeypatch)
    lane = T._lane_of(session)
    assert session.invoke(b"on lane", timeout=WAIT) == b"enal no"
    assert lane._grant is not None
    inst = _lane_instance(runtime, session.id)
    os.kill(inst.pid, signal.SIGKILL)  # the lane's instance dies while idle
    wait_for(lambda: not runtime.server.lanes.leases(session.id), WAIT, "the lane finished on the server")
    other = T._without_lanes(monkeypatch, session.id)
    assert other.invoke(b"from B", timeout=WAIT) == b"B morf"
    got = session.invoke(b"from A", timeout=WAIT)
    assert got == b"A morf", f"the lane client got another task's output: {got!r}"


def test_a_server_call_racing_a_lane_grant_leaves_no_lane_unread(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What once happened:
    open_lane sets inst.lane under the scheduler's lock, then sends GrantLane outside it. A warm task of
    another client sent in between takes the lane back (and ends it when answered) before the grant even
    left; the instance then opens the grant (no server call after it), and the client uses a lane whose
    log the server never reads. The only thing injected: a pause of the OpenLane thread at that point,
    during which another client's invoke goes through the server."""
    import flamepy_core.engine.scheduler as sched

    session = T._warm_session(runtime, monkeypatch)
    sid = session.id
    other = T._without_lanes(monkeypatch, sid)
    real = sched.ext_pb2
    results: dict[str, object] = {}

    class Proxy:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def GrantLaneRequest(**kw):
            if kw.get("count") and "B" not in results:
                # (the OpenLane thread is preempted here, after the lock, before the grant is sent)
                def b() -> None:
                    results["B"] = other.invoke(b"from B", timeout=WAIT)

                t = threading.Thread(target=b)
                t.start()
                t.join(10)
                results["B joined"] = not t.is_alive()
            return real.GrantLaneRequest(**kw)

    monkeypatch.setattr(sched, "ext_pb2", Proxy())
    for i in range(5):
        assert session.invoke(b"A%d" % i, timeout=WAIT) == (b"A%d" % i)[::-1]
    time.sleep(0.5)
    tasks = T._tasks(session)
    inputs = [t.input for t in tasks]
    assert all(b"A%d" % i in inputs for i in range(5)), "tasks the client was answered are not recorded"


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_a_lane_taken_back_by_a_call_that_fails_because_the_instance_died_is_ended(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, delay: float
) -> None:
    """What once happened:
    A lane's task runs; another client's task through the server takes the lane back (OnTaskInvoke, queued
    in the instance behind the lane's task); the instance dies. The call fails -> _lanes_heard puts the lane
    in inst.lanes_closing; on_exit ends inst.lanes_closing. If on_exit runs first (delay: the channel's
    reader thread is slower than the supervisor's pidfd), the lane is never ended."""
    from flamepy_core.contracts.errors import FlameError
    from flamepy_core.engine.scheduler import Scheduler

    real = Scheduler._lanes_heard

    def slow(self, inst, lanes, answer):
        if isinstance(answer, FlameError):
            time.sleep(delay)
        return real(self, inst, lanes, answer)

    monkeypatch.setattr(Scheduler, "_lanes_heard", slow)
    session = T._waiting_session(runtime, monkeypatch, tmp_path)
    gate = tmp_path / "never"
    thread, _outcome, other, [_running] = T._task_running_on_the_lane(session, gate, monkeypatch)
    b_thread, _b_outcome = T._invoke_in_thread(other, b"from B")
    inst = _lane_instance(runtime, session.id)
    wait_for(lambda: inst.lane is None, WAIT, "the lane taken back by B's task")
    os.kill(inst.pid, signal.SIGKILL)
    b_thread.join(WAIT)
    ok = True
    try:
        wait_for(lambda: not runtime.server.lanes.leases(session.id), 10, "the lane ended on the server")
    except Exception:
        ok = False
    thread.join(15)
    assert ok


@pytest.fixture
def short_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """reverse_runtime's setup, with short timings: FLAME_INSTANCE_CALL_TIMEOUT=1, delay_release 1 s."""
    from flamepy.testing import local_runtime
    from flamepy_core.client.connection import reset_default_connection

    for key in [k for k in os.environ if k.startswith("FLAME_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FLAME_INSTANCE_CALL_TIMEOUT", "1")
    reset_default_connection()
    service = tmp_path / "waiting" / "waiting_service.py"
    service.parent.mkdir()
    import textwrap

    service.write_text(textwrap.dedent(T.WAITING_SERVICE))
    with local_runtime(tmp_path / "home", instances="process") as rt:
        rt.register("waiting", service, delay_release=1)
        yield rt
    reset_default_connection()


def test_a_lane_task_longer_than_delay_release_is_not_released_as_idle_nor_run_twice(
    short_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What once happened:
    Through the server a running task keeps its instance BUSY; on a lane the instance looks IDLE, so
    _release_idle sends OnSessionLeave (it takes the lane back, queued behind the lane's task); its deadline
    passes; _on_left stops the process; the task is lost and run again."""
    rt = short_runtime
    session = T._warm_session(rt, monkeypatch, "waiting")
    assert session.invoke(b"ab", timeout=WAIT) == b"ba"
    assert T._lane_of(session)._grant is not None
    gate = tmp_path / "gate"
    thread, _outcome = T._invoke_in_thread(session, b"wait:" + str(gate).encode())
    wait_for(lambda: Path(f"{gate}.started").exists(), WAIT, "the lane's task to start")
    time.sleep(6)  # a task of 6 s (the defaults: 60 s delay_release + 60 s instance_call_timeout)
    gate.touch()
    thread.join(WAIT)
    runs = Path(f"{gate}.started").read_text().count("ran")
    assert runs == 1, f"the lane's task ran {runs} times"


def test_a_task_begun_on_a_lane_when_the_server_stopped_is_run_again_at_the_next_start(runtime: LocalRuntime) -> None:
    from flamepy_core.client.connection import reset_default_connection
    from flamepy_core.engine.embedded import ensure_inprocess_server
    from flamepy_core.wire.lane_log import LaneLogWriter, LaneResult

    sid, lanes = T._stopped_after_one_task(runtime)
    now = time.time_ns() // 1_000_000
    with LaneLogWriter(str(lanes / "i1-0123456789ab.lane"), sid, b"t" * 16) as writer:
        writer.append(LaneResult(2, now, now, False, b"begun", None, None, started=True))
    reset_default_connection()
    runtime.server = ensure_inprocess_server(runtime.endpoint, runtime.home, instance_mode="process")
    wait_for(lambda: flamepy.get_session(sid).get_task("2").state.name == "SUCCEED", 20, "task 2 run again")
    assert flamepy.get_session(sid).get_task("2").output == b"nugeb"


def test_a_lane_result_read_only_at_the_next_start_of_a_task_stored_running_is_kept(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What once happened:
    START read and committed (RUNNING in the store); the task ends on the lane and its client is answered;
    the server stops before it reads the END (simulated: its reads stop). At the next start the engine
    requeues the RUNNING task, and recover's END finds it PENDING: dropped as 'final already'; the task
    runs a second time."""
    from flamepy_core.client.connection import reset_default_connection
    from flamepy_core.engine.embedded import ensure_inprocess_server, stop_inprocess_server

    session = T._waiting_session(runtime, monkeypatch, tmp_path)
    gate = tmp_path / "gate"
    thread, outcome, _other, [_running] = T._task_running_on_the_lane(session, gate, monkeypatch)
    monkeypatch.setattr(runtime.server.lanes, "_read", lambda lease: 0)  # the server reads no more
    gate.touch()
    thread.join(WAIT)
    assert outcome == {"output": b"done"}, outcome
    assert stop_inprocess_server(runtime.endpoint)
    reset_default_connection()
    runtime.server = ensure_inprocess_server(runtime.endpoint, runtime.home, instance_mode="process")
    time.sleep(3)  # (a task requeued at the start would have run again by now)
    runs = Path(f"{gate}.started").read_text().count("ran")
    assert runs == 1, f"a task whose lane result its client was given ran {runs} times"
