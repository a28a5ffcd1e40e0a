"""Watched sessions cost the server no thread, and a vanished watcher is let go (issue 12).

Real server process on the default transport, real service instances; the server's threads are read from
``/proc/<pid>/task``, never from its own counters. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from conftest import FlameEnv, wait_for
from test_capacity import server_pid, set_server_env, thread_count

import flamepy
from flamepy.service import Session
from flamepy_core.client.connection import default_connection
from flamepy_core.client.local import live_server
from flamepy_core.wire.methods import EXT
from flamepy_core.wire.proto import ext_pb2

BLOCKER = """
import os
import time
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def handle(release):
    deadline = time.monotonic() + 120  # a test that failed must not leave it waiting for ever
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.getpid()


if __name__ == "__main__":
    ins.run()
"""

CAP = 2
"""Instance processes: the first sessions' tasks run (and block), every later one waits at the cap."""
GROWTH_BOUND = 6
"""Threads the server may add between 10 and 150 watched sessions, none of them for a watch: workers of
the frontend's pool that a call happening to overlap another starts (the client opens sessions one after
another, but its watcher threads open their streams meanwhile, and pool workers, once started, stay), and
the supervisor's spawner threads (at most ``SPAWN_WORKERS``, 4, already started for the first sessions).
One thread per watch would add 140."""


def register_blocker(flame_env: FlameEnv) -> None:
    flame_env.write_service("blocker", BLOCKER)


def settled_threads(pid: int, seconds: float = 1.5) -> int:
    """The server's thread count, the highest seen over ``seconds`` (it must not be caught mid-change)."""
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, thread_count(pid))
        time.sleep(0.02)
    return peak


@pytest.mark.timeout(180)
def test_server_threads_do_not_grow_with_the_number_of_watched_sessions(
    flame_env: FlameEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 12 evidence ("server threads stay bounded whatever the number of sessions"): one client opens
    10, then 150 sessions, each with a task that blocks and a ``run()`` future watching it (one
    WatchOutcomes stream per session; at the cap of 2 instance processes most tasks are pending, their
    watches open). The server's thread count is the same within ``GROWTH_BOUND`` at 10 and at 150.

    Then every future completes through its watch: the running tasks are released and return their
    results, and the waiting sessions are closed by force (a fresh process per session, 148 of them at
    the cap, would take minutes here), which cancels their tasks: their futures fail saying so.
    """
    set_server_env(flame_env, monkeypatch, "FLAME_MAX_INSTANCE_PROCESSES", str(CAP))
    register_blocker(flame_env)
    release = tmp_path / "release"
    pid = server_pid(flame_env)
    sessions: list[Session] = []
    futures: list[Future[Any]] = []

    def open_watched(count: int) -> None:
        for _ in range(count):
            session = Session("blocker")
            sessions.append(session)
            futures.append(session.run(str(release)))

    def running() -> list[int]:
        return [i for i, s in enumerate(sessions) if flamepy.get_session(s.id() or "").running]

    try:
        open_watched(10)
        wait_for(lambda: len(running()) == CAP, 60, f"{CAP} tasks to run (the cap)")
        at_10 = settled_threads(pid)
        open_watched(140)
        time.sleep(0.5)  # the last watchers' streams are open (each client watcher opens its own at once)
        at_150 = settled_threads(pid)
        print(f"server threads: {at_10} with 10 watched sessions, {at_150} with 150")
        assert not any(f.done() for f in futures), "a task finished before its release"
        assert at_150 - at_10 <= GROWTH_BOUND, (
            f"the server went from {at_10} threads with 10 watched sessions to {at_150} with 150"
        )
        ran = running()
        assert len(ran) == CAP
        release.touch()
        for i in ran:
            assert isinstance(futures[i].result(timeout=60), int)
        for i, session in enumerate(sessions):
            if i not in ran:
                session.close(force=True)
        for i, future in enumerate(futures):
            error = future.exception(timeout=60)
            if error is not None:  # closed while pending (or, the release done, while starting)
                assert i not in ran and "cancelled" in str(error), error
    finally:
        release.touch()
        for session in sessions:
            with contextlib.suppress(Exception):  # the assertions above say what went wrong; this tidies up
                session.close(force=True)


WATCHING_CLIENT = """
import json
import sys
import time
from flamepy.service import Session

session = Session("blocker")
pid = session.run(sys.argv[1]).result(timeout=60)  # done; the session's WatchOutcomes stream stays open
print(json.dumps({"session": session.id(), "pid": pid}), flush=True)
time.sleep(600)  # killed here
"""


@pytest.mark.timeout(120)
def test_a_killed_clients_watch_is_dropped_and_the_server_can_idle_exit(
    flame_env: FlameEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A client killed (SIGKILL) with a watch open: the server notices its caller gone, ends the watch,
    and, the stream no longer counting as a call in flight, idle-exits as if nobody had watched.

    Only the watch keeps the server up: the client's task is done (its instance idles, which does not
    count), and the stream counts as a call in flight until the engine ends it.
    """
    idle_exit = 3
    set_server_env(flame_env, monkeypatch, "FLAME_IDLE_EXIT", str(idle_exit))
    register_blocker(flame_env)
    release = tmp_path / "release"
    release.touch()
    pid = server_pid(flame_env)
    client = subprocess.Popen(
        [sys.executable, "-c", WATCHING_CLIENT, str(release)], env=flame_env.env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert client.stdout is not None
        seen = json.loads(client.stdout.readline())
        assert isinstance(seen["pid"], int)
        time.sleep(3 * idle_exit)  # the open watch keeps the server up well past its idle exit
        assert live_server(flame_env.home), "the server exited while a client watched a session"
        assert flamepy.get_session(seen["session"]).state == flamepy.SessionState.OPEN
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=10)
    killed_at = time.monotonic()
    # Noticed within the transport's liveness bound (ZeroMQ: heartbeat 1 s + timeout 3 s), ended by the
    # engine's next sweep (1 s), then the idle exit's own delay and its 0.5 s poll; slack for a busy machine.
    wait_for(lambda: live_server(flame_env.home) is None, 4 + 1 + idle_exit + 20, "the server to idle-exit")
    took = time.monotonic() - killed_at
    assert took >= idle_exit - 0.5, f"the server exited {took:.1f} s after the kill, before its idle exit"
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 20, "the server process to end")


@pytest.mark.timeout(120)
def test_more_open_watches_than_the_transports_default_inbox_leave_room_for_calls(flame_env: FlameEnv) -> None:
    """An open watch holds no thread but a slot of the server's inbox (ZeroMQ's ``max_pending_calls``,
    1024 by default). 1100 watches open (more sessions than that, watched by ``run()``, are as many) and
    calls still get through; the session's close ends every one of them."""
    register_blocker(flame_env)
    session = Session("blocker")  # no task: nothing runs, only the watches are open
    sid = session.id() or ""
    channel = default_connection().channel
    request = ext_pb2.WatchSessionRequest(session_id=sid).SerializeToString()
    streams = [channel.stream(EXT["WatchOutcomes"].path, request, timeout=90) for _ in range(1100)]
    # Sent after the 1100 requests on the same socket, so served after them.
    assert flamepy.get_session(sid).state == flamepy.SessionState.OPEN
    session.close()
    assert all(list(stream) == [] for stream in streams), "a watch did not end with its session"
