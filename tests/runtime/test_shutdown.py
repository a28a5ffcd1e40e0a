"""Stopping the server with work in flight: nothing crashes, no instance is left behind, and every task
that was running or pending runs after the restart.

Real processes: several sessions stream short tasks (results arrive while the server stops) and one runs
a long task; ``flmctl server stop`` then comes in the middle. Every wait has a deadline.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import Future

from conftest import FlameEnv, wait_for

import flamepy
from flamepy.service import Session
from flamepy_core.client.connection import reset_default_connection
from flamepy_core.home import SERVER_LOG

SERVICE = """
import os
import time
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def handle(req):
    with open("pids.log", "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(req)
    return os.getpid()


if __name__ == "__main__":
    ins.run()
"""

SESSIONS = 4
TASKS = 25
PROBLEMS = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|store is closed|failed:")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stopping_the_server_with_work_in_flight_crashes_nothing_and_loses_nothing(flame_env: FlameEnv) -> None:
    folder = flame_env.write_service("flow", SERVICE)
    log_path = flame_env.home / "logs" / SERVER_LOG
    log_start = log_path.stat().st_size
    sessions = [Session("flow") for _ in range(SESSIONS)]
    ids = [s.id() or "" for s in sessions]
    futures: list[Future[object]] = [f for s in sessions for f in (s.run(0.05) for _ in range(TASKS))]
    long_one = Session("flow")
    ids.append(long_one.id() or "")
    long_one.run(3.0)
    # Stop once results are flowing in every session.
    pids_log = folder / "pids.log"
    wait_for(lambda: pids_log.exists() and len(pids_log.read_text().split()) >= 2 * SESSIONS, 60, "tasks to run")
    flame_env.flmctl("server", "stop")
    ran_before = {int(p) for p in pids_log.read_text().split()}
    wait_for(lambda: not [p for p in ran_before if alive(p)], 15, "every instance to exit with the server")
    for future in futures:  # each settled either way: a result, or the connection's error
        future.exception(timeout=30)

    log = log_path.read_text()[log_start:]
    assert not PROBLEMS.findall(log), f"the server's log during the stop:\n{log[-4000:]}"

    # The next client brings the server back: every task of every session ends SUCCEED, none lost.
    reset_default_connection()
    for sid in ids:
        wait_for(
            lambda sid=sid: (s := flamepy.get_session(sid)).pending == 0 and s.running == 0,
            120,
            f"the tasks of {sid} to finish after the restart",
        )
        session = flamepy.get_session(sid)
        assert session.failed == 0 and session.cancelled == 0, (sid, session)
        assert session.succeed == (TASKS if sid != ids[-1] else 1)
    restarted_log = log_path.read_text()[log_start:]
    assert not PROBLEMS.findall(restarted_log), restarted_log[-4000:]
    assert os.path.exists(folder / "pids.log")
