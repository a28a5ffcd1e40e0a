"""``run()`` on lanes (:mod:`flamepy_core.client.lane_runs`): a session that has all the instances it may
have gets each of them lent for its ``run()`` tasks, sent in batches to the service processes themselves;
the server records them from the lanes' logs.

Nobody may be able to tell it from the server's path: every future gets its own task's output or error,
the server shows every task once (inputs, outputs, states, counters) as soon as it is asked, and nothing
is lost when a service process dies with a batch in flight, when the server takes an instance back, when
a task is cancelled (queued in the client, in flight, running) or the session is closed with force. Real
service processes on unix sockets, a real store, no mocks.
"""

from __future__ import annotations

import textwrap
import threading
from collections import Counter
from concurrent.futures import wait
from pathlib import Path

import pytest
from conftest import wait_for

import flamepy
from flamepy.testing import LocalRuntime
from flamepy_core.client.lane import LANES_ENV
from flamepy_core.client.lane_runs import LaneRuns
from flamepy_core.client.session import Session, TaskCancelledError, TaskFailedError, TaskFuture
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine import lanes as lanes_module
from flamepy_core.model import Task, TaskState

WAIT = 60.0
"""Seconds any one call or wait of these tests may take (an instance's start included)."""

SERVICE = """
import os
import time

import flamepy
from flamepy.core import FlameService


class Service(FlameService):
    def on_task_invoke(self, context):
        data = context.input
        if data.startswith(b"wait:"):  # says it started, then runs until the gate file exists
            gate = data[5:].decode()
            with open(gate + ".started", "a") as started:
                started.write("ran\\n")
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
            return b"done"
        if data == b"fail":
            raise ValueError("asked to fail")
        if data == b"die once" and not os.path.exists("died"):
            open("died", "w").close()
            os._exit(3)  # a crash in the middle of a batch: its instance is lost
        return data[::-1]


if __name__ == "__main__":
    flamepy.run(Service())
"""
"""Answers its input reversed; fails on ``b"fail"``; dies the first time it is given ``b"die once"``;
``b"wait:<path>"`` adds a line to ``<path>.started`` and runs until ``<path>`` exists."""


@pytest.fixture
def runtime(reverse_runtime: LocalRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalRuntime:
    monkeypatch.setenv(LANES_ENV, "1")
    service = tmp_path / "runs" / "runs_service.py"
    service.parent.mkdir()
    service.write_text(textwrap.dedent(SERVICE))
    reverse_runtime.register("runs", service)
    return reverse_runtime


def _capped(instances: int = 2) -> Session:
    """A session that has all the instances it may have, each lent to this client for its runs."""
    session = flamepy.create_session("runs", min_instances=instances, max_instances=instances)
    runs = session._runs
    assert runs is not None, f"{LANES_ENV}=1 did not give the session lanes for runs"
    # The first runs go through the server while its instances start (none is idle to lend yet).
    wait_for(
        lambda: session.run(b"warm").result(timeout=WAIT) == b"mraw" and len(runs._lanes) == instances,
        WAIT,
        f"{instances} lanes lent for runs",
    )
    return session


def _tasks(session: Session) -> list[Task]:
    return sorted(session.list_tasks(), key=lambda t: int(t.id))


def _run_all(session: Session, inputs: list[bytes]) -> list[TaskFuture]:
    futures = [session.run(data) for data in inputs]
    _done, pending = wait(futures, timeout=WAIT)
    assert not pending, f"{len(pending)} futures not done"
    return futures


def _reversed_each_once(session: Session, inputs: list[bytes], futures: list[TaskFuture]) -> None:
    """Every future has its own input reversed, and the server shows each task once, SUCCEED."""
    assert [f.result() for f in futures] == [data[::-1] for data in inputs]
    tasks = _tasks(session)
    done = [t for t in tasks if t.input in set(inputs)]
    assert Counter(t.input for t in done) == Counter(inputs), "not every task exactly once on the server"
    assert all(t.state == TaskState.SUCCEED and t.output == t.input[::-1] for t in done)
    assert sorted(int(f.task_id) for f in futures) == sorted(int(t.id) for t in done), "ids differ"


def test_runs_of_a_session_at_its_cap_go_on_lanes_and_the_server_shows_each_task_once(runtime: LocalRuntime) -> None:
    session = _capped(2)
    inputs = [f"task {n}".encode() for n in range(3000)]
    futures = _run_all(session, inputs)
    _reversed_each_once(session, inputs, futures)
    runs = session._runs
    assert runs is not None and len(runs._lanes) == 2, "not both instances were lent for runs"
    # Each as the server's path shows a task: created, running, then done, in that order.
    one = session.get_task(futures[1234].task_id)
    assert [e.code for e in one.events or []] == [0, int(TaskState.RUNNING), int(TaskState.SUCCEED)]
    assert one.completion_time is not None and one.creation_time <= one.completion_time
    assert runtime.server.scheduler.warm_runs == 0, "tasks went through the server's warm path"
    status = flamepy.get_session(session.id)
    assert (status.failed, status.running, status.pending) == (0, 0, 0)
    assert status.succeed == len(_tasks(session))
    session.close()
    assert flamepy.get_session(session.id).state.name == "CLOSED"


def test_a_session_that_may_grow_sends_its_runs_through_the_server(runtime: LocalRuntime) -> None:
    session = flamepy.create_session("runs", min_instances=1)  # no max: the server must see its queue
    inputs = [f"t{n}".encode() for n in range(200)]
    futures = _run_all(session, inputs)
    _reversed_each_once(session, inputs, futures)
    assert not any(lease.for_runs for lease in runtime.server.lanes.leases(session.id))
    with pytest.raises(FlameError) as refused:
        runtime.server.scheduler.open_lane(session.id, for_runs=True)
    assert refused.value.code == FlameErrorCode.INVALID_STATE
    assert "may get more instances" in refused.value.message
    session.close()


def test_a_failing_task_on_a_lane_fails_its_future_as_the_server_path_does(runtime: LocalRuntime) -> None:
    session = _capped(1)
    futures = _run_all(session, [b"ab", b"fail", b"cd"])
    assert futures[0].result() == b"ba" and futures[2].result() == b"dc"
    error = futures[1].exception()
    assert isinstance(error, TaskFailedError) and "asked to fail" in str(error), error
    failed = session.get_task(futures[1].task_id)
    assert failed.state == TaskState.FAILED
    assert "asked to fail" in (failed.events or [])[-1].message
    session.close()


def test_lanes_whose_ids_are_used_up_are_lent_again(runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes_module, "LANE_IDS", 16)  # (the server runs in this process)
    renewals: list[bytes] = []
    elsewhere: list[object] = []
    real_renew, real_elsewhere = LaneRuns._renew, LaneRuns._not_on_a_lane
    monkeypatch.setattr(LaneRuns, "_renew", lambda runs, lane: (renewals.append(lane.token), real_renew(runs, lane)))
    session = _capped(2)  # (its first runs go through the server, while no instance is idle to lend)
    monkeypatch.setattr(
        LaneRuns, "_not_on_a_lane", lambda runs, item: (elsewhere.append(item), real_elsewhere(runs, item))
    )
    inputs = [f"renewed {n}".encode() for n in range(500)]
    futures = _run_all(session, inputs)
    _reversed_each_once(session, inputs, futures)
    assert len({int(f.task_id) for f in futures}) == len(futures)
    assert len(renewals) >= 500 // 16 - 2, f"only {len(renewals)} renewals for 500 tasks in blocks of 16 ids"
    assert elsewhere == [], "tasks left the lanes for the server's path"
    session.close()


def test_a_service_process_that_dies_with_a_batch_in_flight_loses_no_task(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    session = _capped(2)
    inputs = [f"before {n}".encode() for n in range(300)] + [b"die once"] + [f"after {n}".encode() for n in range(300)]
    futures = _run_all(session, inputs)
    assert (tmp_path / "runs" / "died").exists(), "the service process did not die"
    _reversed_each_once(session, inputs, futures)
    status = flamepy.get_session(session.id)
    assert (status.running, status.pending) == (0, 0)
    # And the session serves on, on lanes again once it has its instances back.
    more = [f"later {n}".encode() for n in range(300)]
    _reversed_each_once(session, more, _run_all(session, more))
    session.close()


def test_the_server_taking_an_instance_back_sends_the_tasks_not_run_another_way(runtime: LocalRuntime) -> None:
    session = _capped(2)
    inputs = [f"x{n}".encode() for n in range(2000)]
    futures = [session.run(data) for data in inputs]
    other = flamepy.get_session(session.id)  # another client, whose invokes go through the server
    for n in range(20):
        assert other.invoke(f"o{n}".encode(), timeout=WAIT) == f"o{n}".encode()[::-1]
    _done, pending = wait(futures, timeout=WAIT)
    assert not pending
    _reversed_each_once(session, inputs, futures)
    session.close()


def _gate_started(gate: Path) -> bool:
    return Path(f"{gate}.started").exists()


def test_cancelling_runs_queued_in_the_client_in_flight_and_running_ends_each_cancelled(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    session = _capped(1)
    gate = tmp_path / "never"
    blocked = session.run(b"wait:" + str(gate).encode())
    behind = [session.run(f"b{n}".encode()) for n in range(50)]
    wait_for(lambda: _gate_started(gate), WAIT, "the blocking task to start")
    runs = session._runs
    assert runs is not None
    queued = [f for f in behind if any(item.future is f for item in runs._queue)]
    assert queued, "no task waited in the client's queue"
    assert queued[-1].cancel() is True and queued[-1].cancelled()
    # The running task: its instance is stopped; what was in flight behind it never began, and runs later.
    assert blocked.cancel() is True and blocked.cancelled()
    assert session.get_task(blocked.task_id).state == TaskState.CANCELLED
    _done, pending = wait(behind, timeout=WAIT)
    assert not pending
    for n, future in enumerate(behind):
        if future is not queued[-1]:
            assert future.result() == f"b{n}".encode()[::-1]
    inputs = Counter(t.input for t in _tasks(session))
    assert inputs[f"b{behind.index(queued[-1])}".encode()] == 0, "a task cancelled in the queue ran"
    assert all(count == 1 for data, count in inputs.items() if data != b"warm"), inputs
    session.close()


def test_closing_with_force_cancels_what_waits_for_a_lane(runtime: LocalRuntime, tmp_path: Path) -> None:
    session = _capped(1)
    gate = tmp_path / "never"
    blocked = session.run(b"wait:" + str(gate).encode())
    behind = [session.run(f"b{n}".encode()) for n in range(50)]
    wait_for(lambda: _gate_started(gate), WAIT, "the blocking task to start")
    closer = threading.Thread(target=session.close, kwargs={"force": True}, daemon=True)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive(), "the forced close did not return"
    _done, pending = wait([blocked, *behind], timeout=WAIT)
    assert not pending
    for future in [blocked, *behind]:
        assert future.cancelled() or isinstance(future.exception(), TaskCancelledError), future.exception()
    assert flamepy.get_session(session.id).state.name == "CLOSED"


def test_a_close_right_after_a_burst_waits_for_the_lanes_answers_when_no_task_runs(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lanes' answers to the close can come after ``LANE_CLOSE_WAIT`` when the server is busy recording
    what they ran: with no task running on them (their logs say so), that is no reason to refuse the close."""
    from flamepy_core.engine import frontend

    session = _capped(2)
    inputs = [f"t{n}".encode() for n in range(2000)]
    _reversed_each_once(session, inputs, _run_all(session, inputs))
    monkeypatch.setattr(frontend, "LANE_CLOSE_WAIT", 1e-6)  # (the server runs in this process)
    session.close()
    assert flamepy.get_session(session.id).state.name == "CLOSED"


FAN_SERVICE = """
import flamepy
from flamepy.core import FlameService


class Fan(FlameService):
    def on_task_invoke(self, context):
        depth = int(context.input)
        if depth == 0:
            return b"1"
        # Tasks of its own session, waited for while this one holds its instance (a recursive service).
        session = flamepy.get_session(context.session_id)
        futures = [session.run(b"%d" % (depth - 1)) for _ in range(2)]
        return b"%d" % (1 + sum(int(f.result(timeout=60)) for f in futures))


if __name__ == "__main__":
    flamepy.run(Fan())
"""


def test_a_recursive_service_in_a_session_at_its_cap_is_not_lent_its_own_busy_instance(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    """A task that runs tasks of its own session and waits for them: its client asks for lanes for runs,
    and must not be lent the instance that runs the waiting task (nor may the server queue a child behind
    it), or both wait for ever."""
    service = tmp_path / "fan" / "fan_service.py"
    service.parent.mkdir()
    service.write_text(textwrap.dedent(FAN_SERVICE))
    runtime.register("fan", service)
    session = flamepy.create_session("fan", min_instances=3, max_instances=3)
    wait_for(
        lambda: session.run(b"0").result(timeout=WAIT) == b"1" and len(_lent(runtime, session)) >= 1, WAIT, "a lane"
    )
    for _ in range(3):  # on the lane of its invokes, or through the server
        assert session.invoke(b"1", timeout=WAIT) == b"3"
    assert session.run(b"1").result(timeout=WAIT) == b"3"
    session.close()


def _lent(rt: LocalRuntime, session: Session) -> list[object]:
    return [lease for lease in rt.server.lanes.leases(session.id) if not lease.over]
