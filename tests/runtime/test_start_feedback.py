"""Feedback while an instance starts: after a second the client logs (INFO) what it waits for, naming the
application, the command and where the instance's log is; a service that never listens fails after the
start timeout with the tail of its stderr.

Real processes: a service that takes seconds to import, and one that never listens. Every wait has a
deadline.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import pytest
from conftest import FlameEnv

import flamepy
from flamepy.service import Session
from flamepy_core.client.session import TaskFailedError

SLOW_IMPORT = """
import os
import sys
import time
from flamepy import service

print("loading the model", file=sys.stderr, flush=True)
time.sleep(2.5)  # a slow import: the client waits for this instance

ins = service.FlameInstance()


@ins.entrypoint
def handle(req):
    return os.getpid()


if __name__ == "__main__":
    ins.run()
"""


def test_a_client_waiting_for_a_starting_instance_logs_what_and_where(
    flame_env: FlameEnv, caplog: pytest.LogCaptureFixture
) -> None:
    flame_env.write_service("slowstart", SLOW_IMPORT)
    caplog.set_level(logging.INFO, logger="flamepy_core.client.session")
    with Session("slowstart") as session:
        started = time.monotonic()
        pid = session.invoke({}, timeout=60)
        assert time.monotonic() - started >= 2.0
    notices = [r.getMessage() for r in caplog.records if "waits for an instance" in r.getMessage()]
    assert len(notices) == 1, notices  # once, after a second
    notice = notices[0]
    assert "of application slowstart: instance i" in notice and "is starting" in notice, notice
    assert f"command `{sys.executable} service.py`" in notice, notice
    log_path = notice.split("its log: ")[1].split(" ")[0]
    assert log_path.startswith(str(flame_env.home / "logs" / "instances" / "slowstart-i"))
    with open(log_path) as fh:
        assert "loading the model" in fh.read()  # the instance's own stderr, where it says
    assert pid


def test_a_fast_invoke_logs_nothing(flame_env: FlameEnv, caplog: pytest.LogCaptureFixture) -> None:
    flame_env.write_service("quick", SLOW_IMPORT.replace("time.sleep(2.5)", "pass"))
    caplog.set_level(logging.INFO, logger="flamepy_core.client.session")
    with Session("quick") as session:
        session.invoke({}, timeout=60)  # starts its instance (which may take a second on a busy machine)
        caplog.clear()
        for _ in range(3):  # served by the bound instance at once
            session.invoke({}, timeout=60)
    time.sleep(1.2)  # past the notice's delay: a timer left running would log now
    assert not [r for r in caplog.records if "waits for an instance" in r.getMessage()]


NEVER_LISTENS = """
import sys
import time

print("warming up", file=sys.stderr, flush=True)
time.sleep(600)
"""


def test_a_service_that_never_listens_fails_after_the_start_timeout_with_its_stderr(
    flame_env: FlameEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_timeout = 2.0
    for env in (flame_env.env, os.environ):  # the server flmctl (or this process) starts reads them
        monkeypatch.setitem(env, "FLAME_INSTANCE_START_TIMEOUT", str(start_timeout))  # type: ignore[arg-type]
        monkeypatch.setitem(env, "FLAME_INSTANCE_START_RETRY_LIMIT", "0")  # type: ignore[arg-type]
    flame_env.write_service("deaf", NEVER_LISTENS)
    started = time.monotonic()  # before the session: its instance may be started as it is created
    session = flamepy.create_session("deaf")
    with pytest.raises(TaskFailedError) as info:
        session.invoke(b"", timeout=60)
    took = time.monotonic() - started
    assert start_timeout <= took < start_timeout + 15, took
    message = info.value.message
    assert "did not start listening on" in message and f"within {start_timeout} s" in message, message
    assert "last lines of its stderr:\nwarming up" in message, message
    session.close()
