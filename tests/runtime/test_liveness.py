"""Liveness: an instance that stops answering (frozen with SIGSTOP, or a callback holding the GIL) is
killed within ``liveness_timeout`` (plus a heartbeat interval and a tick) and handled as a crash: its task
is retried on a fresh instance, with the cause in the task's events. One that computes is left alone.

Real processes; the fixture's heartbeat interval is 0.2 s, and these tests set ``liveness_timeout`` to 2 s.
Every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import FlameEnv, wait_for

import flamepy
from flamepy.service import Session

LIVENESS = 2.0
BOUND = LIVENESS + 8.0  # + the heartbeat interval, the tick, and a loaded machine's delays

SERVICE = """
import os
import re
import time
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def handle(req):
    req = req or {}
    with open("attempts.log", "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    with open("attempts.log") as fh:
        first = len(fh.read().split()) == 1
    if first and req.get("sleep"):
        time.sleep(req["sleep"])  # frozen by the test meanwhile
    if first and req.get("hold_gil"):
        re.match(r"(a+)+$", "a" * 40 + "b")  # backtracks for hours in C, holding the GIL
    spin_until = time.monotonic() + req.get("spin", 0)
    while time.monotonic() < spin_until:  # computing in Python: heartbeats go on
        pass
    return os.getpid()


if __name__ == "__main__":
    ins.run()
"""


@pytest.fixture
def app(flame_env: FlameEnv, monkeypatch: pytest.MonkeyPatch) -> Path:
    for env in (flame_env.env, os.environ):  # the server flmctl (or this process) starts reads it
        monkeypatch.setitem(env, "FLAME_LIVENESS_TIMEOUT", str(LIVENESS))  # type: ignore[arg-type]
    return flame_env.write_service("live", SERVICE)


def attempts(folder: Path) -> list[int]:
    path = folder / "attempts.log"
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def retry_events(session_id: str, task_id: str) -> list[str]:
    task = flamepy.get_session(session_id).get_task(task_id)
    return [e.message or "" for e in task.events or [] if e.code == 0 and "retry" in (e.message or "")]


def test_an_instance_frozen_during_a_task_is_killed_and_the_task_retried(app: Path) -> None:
    with Session("live") as session:
        session_id = session.id() or ""
        future = session.run({"sleep": 600})
        frozen = wait_for(lambda: attempts(app), 30, "the task to start")[0]
        os.kill(frozen, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            wait_for(lambda: not alive(frozen), BOUND, f"the frozen instance {frozen} to be killed")
            assert time.monotonic() - stopped_at >= LIVENESS - 0.5  # not before the bound
            served_by = future.result(timeout=60)
        finally:
            if alive(frozen):
                os.kill(frozen, signal.SIGKILL)
        assert served_by != frozen and attempts(app) == [frozen, served_by]
        (event,) = retry_events(session_id, "1")
        assert "retry 1/2" in event and f"(pid {frozen})" in event, event
        assert "stopped answering: no sign of life" in event and "stopped by a signal (state T)" in event, event


def test_a_frozen_idle_instance_is_killed_and_the_session_gets_a_fresh_one(app: Path) -> None:
    with Session("live") as session:
        first = session.invoke({}, timeout=60)
        os.kill(first, signal.SIGSTOP)
        try:
            wait_for(lambda: not alive(first), BOUND, f"the frozen idle instance {first} to be killed")
        finally:
            if alive(first):
                os.kill(first, signal.SIGKILL)
        assert session.invoke({}, timeout=60) not in (first, None)


def test_a_task_holding_the_gil_is_handled_as_a_crash(app: Path) -> None:
    with Session("live") as session:
        session_id = session.id() or ""
        started = time.monotonic()
        served_by = session.invoke({"hold_gil": True}, timeout=60)
        assert time.monotonic() - started < BOUND + 15
        stuck = attempts(app)[0]
        assert served_by != stuck and not alive(stuck)
        (event,) = retry_events(session_id, "1")
        assert "stopped answering: no sign of life" in event and "the process in state R" in event, event


def test_an_instance_computing_in_python_is_alive(app: Path) -> None:
    with Session("live") as session:
        first = session.invoke({}, timeout=60)
        assert session.invoke({"spin": 2 * LIVENESS}, timeout=60) == first
