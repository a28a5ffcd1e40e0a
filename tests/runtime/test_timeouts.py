"""Task, enter and leave timeouts: a task past its timeout fails and its instance is killed and replaced;
an instance that does not leave in time is killed, never reused.

Real processes throughout (a sleeping, a looping and a leave-hanging service); what runs is read from
``/proc``. The fixture's ``shutdown_grace`` is 2 s. Every wait has a deadline.
"""

from __future__ import annotations

import os
import time

import pytest
from conftest import FlameEnv, wait_for

import flamepy
from flamepy.service import Session
from flamepy_core.client.local import live_server
from flamepy_core.client.session import TaskFailedError
from flamepy_core.contracts.errors import FlameError

SERVICE = """
import os
import time
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def handle(req):
    req = req or {}
    if req.get("sleep"):
        time.sleep(req["sleep"])  # blocked in a call: SIGTERM interrupts it
    spin_until = time.monotonic() + req.get("spin", 0)
    while time.monotonic() < spin_until:  # looping: computing flat out
        pass
    return os.getpid()


if __name__ == "__main__":
    ins.run()
"""

GRACE = 2.0  # tests/conftest.py: FLAME_SHUTDOWN_GRACE


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["sleep", "spin"])
def test_a_task_past_the_applications_timeout_fails_and_the_next_runs_on_a_fresh_instance(
    flame_env: FlameEnv, how: str
) -> None:
    flame_env.write_service("slow", SERVICE, extra_spec="task_timeout: 1.5\n")
    with Session("slow") as session:
        session_id = session.id() or ""
        first = session.invoke({}, timeout=60)
        started = time.monotonic()
        with pytest.raises(TaskFailedError) as info:
            session.invoke({how: 600}, timeout=60)
        took = time.monotonic() - started
        assert "exceeded the task timeout of 1.5 s" in info.value.message, info.value.message
        assert f"(pid {first})" in info.value.message  # the instance it ran on, named
        assert 1.5 <= took < 1.5 + 10, took  # the timeout, plus the scheduler's tick and a commit
        # The instance that ran it is stopped (SIGTERM now, SIGKILL after the grace), never reused.
        wait_for(lambda: not alive(first), GRACE + 10, f"instance {first} to be killed")
        again = session.invoke({}, timeout=60)
        assert again != first and alive(again)
        # Tasks within the timeout are unaffected.
        assert session.invoke({"sleep": 0.2}, timeout=60) == again
    task = flamepy.get_session(session_id).get_task("2")
    assert task.state == flamepy.TaskState.FAILED


def test_without_a_timeout_a_task_runs_as_long_as_it_takes(flame_env: FlameEnv) -> None:
    flame_env.write_service("patient", SERVICE)
    with Session("patient") as session:
        first = session.invoke({}, timeout=60)
        assert session.invoke({"sleep": 3}, timeout=60) == first


def test_a_bad_task_timeout_is_refused_at_registration(flame_env: FlameEnv) -> None:
    folder = flame_env.home / "apps" / "bad"
    folder.mkdir(parents=True)
    (folder / "app.yaml").write_text("metadata:\n  name: bad\nspec:\n  command: /bin/true\n  task_timeout: -3\n")
    proc = flame_env.flmctl("register", "--file", str(folder / "app.yaml"), check=False)
    assert proc.returncode != 0
    assert "line 5: spec.task_timeout: -3" in proc.stderr and "a number of seconds above 0" in proc.stderr
    with pytest.raises(FlameError) as info:
        flamepy.register_application(
            "bad", flamepy.ApplicationAttributes(command="/bin/true", environments={"FLAMEPY_TASK_TIMEOUT": "soon"})
        )
    assert "FLAMEPY_TASK_TIMEOUT: task timeout 'soon' is not a number of seconds" in info.value.message


LEAVE_HANGS = """
import os
import time

import flamepy
from flamepy.core import FlameService


class Hangs(FlameService):
    def on_session_enter(self, context):
        pass

    def on_task_invoke(self, context):
        return str(os.getpid()).encode()

    def on_session_leave(self):
        time.sleep(600)


if __name__ == "__main__":
    flamepy.run(Hangs())
"""


def test_an_instance_that_does_not_leave_in_time_is_killed_never_reused(
    flame_env: FlameEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    call_timeout = 1.0
    for env in (flame_env.env, os.environ):  # the server flmctl (or this process) starts reads it
        monkeypatch.setitem(env, "FLAME_INSTANCE_CALL_TIMEOUT", str(call_timeout))  # type: ignore[arg-type]
    flame_env.write_service("hangs", LEAVE_HANGS)
    assert live_server(flame_env.home)
    first = flamepy.create_session("hangs")
    pid = int(first.invoke(b"") or b"0")
    closed_at = time.monotonic()
    first.close()
    # OnSessionLeave gets call_timeout, then SIGTERM, then SIGKILL after the grace.
    wait_for(lambda: not alive(pid), call_timeout + GRACE + 10, f"instance {pid}, hung in leave, to be killed")
    assert time.monotonic() - closed_at >= call_timeout
    second = flamepy.create_session("hangs")
    started = time.monotonic()
    assert int(second.invoke(b"", timeout=30) or b"0") != pid
    assert time.monotonic() - started < 15  # no enter timeout waited out on a parked instance
    second.close()


def test_a_calls_own_task_timeout_overrides_the_applications(flame_env: FlameEnv) -> None:
    flame_env.write_service("percall", SERVICE, extra_spec="task_timeout: 1\n")
    with Session("percall") as session:
        first = session.invoke({}, timeout=60)
        # Longer than the application's: the task runs to its end on the same instance.
        assert session.invoke({"sleep": 2}, timeout=60, task_timeout=30) == first
        # Shorter, through run(): it fails, and its instance is replaced.
        future = session.run({"sleep": 600}, task_timeout=0.5)
        with pytest.raises(TaskFailedError) as info:
            future.result(timeout=60)
        assert "exceeded the task timeout of 0.5 s" in info.value.message, info.value.message
        wait_for(lambda: not alive(first), GRACE + 10, f"instance {first} to be killed")
        # Other tasks keep the application's timeout.
        with pytest.raises(TaskFailedError) as info:
            session.invoke({"sleep": 600}, timeout=60)
        assert "exceeded the task timeout of 1 s" in info.value.message, info.value.message


def test_a_bad_task_timeout_of_a_call_is_refused_before_anything_is_sent(flame_env: FlameEnv) -> None:
    flame_env.write_service("refuse", SERVICE)
    with Session("refuse") as session:
        for bad in (0, -1, float("nan"), "soon"):
            with pytest.raises(FlameError) as info:
                session.invoke({}, timeout=60, task_timeout=bad)  # type: ignore[arg-type]
            assert "task_timeout: task timeout" in info.value.message and "above 0" in info.value.message
        session_id = session.id() or ""
        assert flamepy.get_session(session_id).succeed == 0 and not list(flamepy.get_session(session_id).list_tasks())
