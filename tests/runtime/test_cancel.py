"""Cancelling tasks and closing sessions by force, with real service processes.

A sleeping service stands for a task that would never end by itself. Cancelling it stops its instance
(the service cannot be asked: Flame's instance protocol has no cancel call), a fresh instance takes the
session's next task, the futures end cancelled, and the tasks' events say who cancelled them. A service
that blocks SIGTERM is killed after the grace (``FLAME_SHUTDOWN_GRACE``, 2 s in the fixture). Every
wait has a deadline; a cancel that did not work leaves a sleeping task, and the wait for it fails.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import wait

import pytest
from conftest import wait_for

import flamepy
from flamepy.service import Session
from flamepy_core.client.connection import default_connection
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

SLEEPY = """
import os
import signal
import time
from flamepy import service

if os.environ.get("BLOCK_SIGTERM"):  # every thread inherits the mask: SIGTERM stays pending, never handled
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

ins = service.FlameInstance()


@ins.entrypoint
def handle(req):
    if req == "sleep":
        time.sleep(3600)
    return req


if __name__ == "__main__":
    ins.run()
"""
CANCELLED_EVENT = 4
CANCEL_REQUESTED_EVENT = 1004
BOUND = 30.0


def sleepy(flame_env, name: str = "sleepy", *, block_sigterm: bool = False) -> None:
    spec = "environments:\n  BLOCK_SIGTERM: '1'\n" if block_sigterm else ""
    flame_env.write_service(name, SLEEPY, extra_spec=spec)


def running(session_id: str) -> int:
    return flamepy.get_session(session_id).running


def instance_pids(session_id: str) -> list[int]:
    return [i.pid for i in default_connection().list_instances() if i.session_id == session_id and i.pid]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def events(session_id: str, task_id: str) -> list[tuple[int, str]]:
    task = flamepy.open_session(session_id).get_task(task_id)
    return [(e.code, e.message or "") for e in task.events or []]


def test_cancel_a_pending_and_a_running_task_then_the_next_runs_on_a_fresh_instance(flame_env):
    sleepy(flame_env)
    session = Session("sleepy", max_instances=1)
    sid = session.id()
    first = session.run("sleep")
    wait_for(lambda: running(sid) == 1, BOUND, "the first task to run")
    (pid,) = wait_for(lambda: instance_pids(sid), BOUND, "the instance's pid")
    second = session.run("sleep")  # waits: one instance at most
    third = session.run("after")

    assert second.cancel() is True
    assert second.cancelled() and flamepy.open_session(sid).get_task("2").state == flamepy.TaskState.CANCELLED
    assert events(sid, "2")[-1][0] == CANCELLED_EVENT
    assert re.fullmatch(r"cancelled by Future\.cancel in process \d+ on .+", events(sid, "2")[-1][1])
    assert pid in instance_pids(sid), "cancelling a pending task leaves the running one alone"

    assert first.cancel() is True
    assert first.cancelled()
    assert flamepy.open_session(sid).get_task("1").state == flamepy.TaskState.CANCELLED
    wait_for(lambda: gone(pid), BOUND, "the instance of the cancelled task to be stopped")
    codes = [code for code, _ in events(sid, "1")]
    assert codes[-2:] == [CANCEL_REQUESTED_EVENT, CANCELLED_EVENT]
    last = events(sid, "1")[-1][1]
    assert last.startswith("cancelled by Future.cancel in process") and "while it ran; its instance was stopped" in last
    assert f"(pid {pid})" in last and "was killed by SIGTERM" in last

    # The session goes on: its next task runs on a fresh instance.
    assert third.result(timeout=BOUND) == "after"
    assert pid not in instance_pids(sid)
    done, not_done = wait([first, second, third], timeout=5)  # wait() sees cancelled futures as done
    assert not not_done and len(done) == 3
    with pytest.raises(Exception) as info:
        first.result(timeout=1)
    assert type(info.value).__name__ == "CancelledError"
    status = flamepy.get_session(sid)
    assert (status.cancelled, status.succeed, status.running, status.pending) == (2, 1, 0, 0)
    session.close()


def test_cancel_task_by_id_and_what_a_finished_or_unknown_task_gives(flame_env):
    sleepy(flame_env)
    with Session("sleepy") as session:
        sid = session.id()
        assert session.invoke("quick") == "quick"
        future = session.run("also quick")
        assert future.result(timeout=BOUND) == "also quick"
        assert future.cancel() is False, "a done future cannot be cancelled"
        # The task had finished: left as it was, and said so.
        task = session.cancel_task("1")
        assert task.state == flamepy.TaskState.SUCCEED and task.output is None  # no payloads in the answer
        with pytest.raises(FlameError) as info:
            session.cancel_task("9")
        assert info.value.code == FlameErrorCode.NOT_FOUND and "task 9 of session" in info.value.message
        slow = session.run("sleep")
        wait_for(lambda: running(sid) == 1, BOUND, "the task to run")
        cancelled = session.cancel_task(slow.task_id)
        assert cancelled.state == flamepy.TaskState.CANCELLED
        with pytest.raises(FlameError) as failed:
            slow.result(timeout=BOUND)  # cancelled by another call: the future ends with the error saying so
        assert failed.value.code == FlameErrorCode.INVALID_STATE
        assert f"task {slow.task_id} of session {sid} was cancelled (cancelled by Session.cancel_task" in str(
            failed.value
        )


def test_an_instance_that_ignores_sigterm_is_killed_after_the_grace(flame_env):
    sleepy(flame_env, "stubborn", block_sigterm=True)
    with Session("stubborn") as session:
        sid = session.id()
        future = session.run("sleep")
        wait_for(lambda: running(sid) == 1, BOUND, "the task to run")
        (pid,) = wait_for(lambda: instance_pids(sid), BOUND, "the instance's pid")
        assert future.cancel() is True
        wait_for(lambda: gone(pid), BOUND, "the instance to be killed")
        assert "was killed by SIGKILL" in events(sid, "1")[-1][1]


def test_close_by_force_cancels_what_runs_and_what_waits_then_closes(flame_env):
    sleepy(flame_env)
    session = Session("sleepy", max_instances=1)
    sid = session.id()
    futures = [session.run("sleep"), session.run("sleep")]
    wait_for(lambda: running(sid) == 1, BOUND, "the first task to run")
    (pid,) = wait_for(lambda: instance_pids(sid), BOUND, "the instance's pid")
    with pytest.raises(FlameError) as refused:
        session.close()
    assert refused.value.code == FlameErrorCode.INVALID_STATE
    session.close(force=True)
    closed = flamepy.get_session(sid)
    assert closed.state == flamepy.SessionState.CLOSED and closed.cancelled == 2 and closed.running == 0
    for future in futures:
        with pytest.raises(FlameError) as info:
            future.result(timeout=BOUND)
        assert "cancelled by a forced close of the session by Session.close(force=True)" in str(info.value)
    wait_for(lambda: gone(pid), BOUND, "the instance to be stopped")
    session.close()  # closed once: later calls do nothing


def test_flmctl_cancel_and_close_force(flame_env):
    """The issue's case: a hung task, a refused close; then flmctl cancels and closes by force."""
    sleepy(flame_env)
    with pytest.raises(FlameError) as timed_out, Session("sleepy", max_instances=1) as session:
        sid = session.id()
        session.run("sleep")
        session.run("sleep")
        # The first task must be running before the block is left (a slow instance start would otherwise
        # leave only pending tasks, which the block's close cancels, and nothing would be refused).
        wait_for(lambda: running(sid) == 1, BOUND, "the first task to run")
        session.invoke("sleep", timeout=1.0)
    assert timed_out.value.code == FlameErrorCode.DEADLINE_EXCEEDED
    (pid,) = wait_for(lambda: instance_pids(sid), BOUND, "the instance's pid")

    refused = flame_env.flmctl("close", "-s", sid, check=False)
    assert refused.returncode == 1 and "Cannot close session with running tasks" in refused.stderr
    bad = flame_env.flmctl("cancel", "-s", sid, "-t", "one", check=False)
    assert bad.returncode == 2 and "-t/--task must be a task id" in bad.stderr

    out = flame_env.flmctl("cancel", "-s", sid, "-t", "2").stdout
    assert out.strip() == f"Task 2 of session {sid} was cancelled."
    last = events(sid, "2")[-1][1]
    assert re.fullmatch(r"cancelled by flmctl cancel \(user .+ on .+\)", last), last
    assert pid in instance_pids(sid)

    out = flame_env.flmctl("cancel", "-s", sid).stdout  # tasks 1 (running) and 3 (pending)
    assert out.strip() == f"Cancelled 2 tasks of session {sid}; it stays open."
    wait_for(lambda: gone(pid), BOUND, "the instance to be stopped")
    assert flamepy.get_session(sid).state == flamepy.SessionState.OPEN
    again = flame_env.flmctl("cancel", "-s", sid, "-t", "1").stdout
    assert again.strip() == f"Task 1 of session {sid} was not cancelled." or "was cancelled" in again

    with Session(session_id=sid) as reopened:
        reopened.run("sleep")
        wait_for(lambda: running(sid) == 1, BOUND, "a new task to run")
        out = flame_env.flmctl("close", "--force", "-s", sid).stdout
        assert out.strip() == f"Session {sid} was closed (4 tasks cancelled in all)."
    assert flamepy.get_session(sid).state == flamepy.SessionState.CLOSED
