"""Which instance runs which task, and when: warm reuse, instance caps, ordering, cancellation, restart.

Real processes throughout: a local server per test (``flame_env``, delay_release 2 s), services that
report their pid and the wall-clock interval of each task, so the tests see what ran where and when.
Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import sys
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from conftest import wait_for

import flamepy
from flamepy.service import Session
from flamepy_core.client.connection import reset_default_connection
from flamepy_core.client.local import live_server
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.wire.proto import types_pb2 as pb

DELAY_RELEASE = 2.0  # tests/conftest.py FAST_SETTINGS


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):  # reaped between the kill and the read (ESRCH)
        return True


def wait_gone(pids: Iterable[int], timeout: float = 15.0) -> None:
    pids = set(pids)
    wait_for(lambda: all(process_gone(p) for p in pids), timeout, f"instance processes {sorted(pids)} to exit")


PROBE_SERVICE = """
    import os
    import time
    from flamepy import service

    START = time.time()


    def log(*words):
        with open("events.log", "a") as fh:
            fh.write(" ".join(str(w) for w in (os.getpid(), *words)) + "\\n")


    log("start")


    class Probe(service.FlameInstance):
        def on_session_enter(self, context):
            super().on_session_enter(context)
            self.sid = context.session_id
            log("enter", context.session_id)

        def on_session_leave(self):
            log("leave", self.sid)
            super().on_session_leave()


    ins = Probe()


    @ins.entrypoint
    def probe(req):
        req = req or {}
        started = time.time()
        if "i" in req:
            log("task", req["i"])
        time.sleep(req.get("sleep", 0))
        return {"pid": os.getpid(), "i": req.get("i"), "start": started, "end": time.time()}


    if __name__ == "__main__":
        ins.run()
"""


def write_probe(flame_env, name: str, **spec: int) -> Path:
    """Write the probe service and register it, with extra application ``spec`` keys (max_instances...)."""
    folder = flame_env.home / "apps" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "service.py").write_text(textwrap.dedent(PROBE_SERVICE))
    lines = [
        f"metadata:\n  name: {name}\nspec:\n  working_directory: .\n  command: {sys.executable}\n",
        "  arguments: [service.py]\n",
        *(f"  {key}: {value}\n" for key, value in spec.items()),
    ]
    (folder / "app.yaml").write_text("".join(lines))
    flame_env.flmctl("register", "--file", str(folder / "app.yaml"))
    return folder


def read_events(folder: Path) -> list[tuple[int, str, str]]:
    path = folder / "events.log"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        pid, kind, *rest = line.split()
        rows.append((int(pid), kind, rest[0] if rest else ""))
    return rows


def stored_task_state(home: Path, session_id: str, task_id: int) -> int | None:
    """The state of a task as committed in the server's store (read-only), or None if it has no row."""
    with contextlib.closing(sqlite3.connect(f"file:{home / 'flame.db'}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT state FROM tasks WHERE session_id = ? AND id = ?", (session_id, task_id)).fetchone()
    return None if row is None else int(row[0])


def peak_concurrency(results: list[dict[str, Any]]) -> int:
    edges = sorted([(r["start"], 1) for r in results] + [(r["end"], -1) for r in results], key=lambda e: (e[0], e[1]))
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def assert_serial_per_pid(results: list[dict[str, Any]]) -> None:
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_pid.setdefault(r["pid"], []).append(r)
    for pid, runs in by_pid.items():
        runs.sort(key=lambda r: r["start"])
        for a, b in itertools.pairwise(runs):
            assert a["end"] <= b["start"], f"instance {pid} ran tasks {a['i']} and {b['i']} at the same time"


# -- warm instances ---------------------------------------------------------------------------------------


def test_each_session_gets_a_fresh_process_and_a_spare_is_started_ahead_for_the_next(flame_env):
    """One process per session binding, as Flame's executors do; spares keep new sessions fast."""
    folder = write_probe(flame_env, "warm")
    with Session("warm") as first:
        pid1 = first.invoke({})["pid"]
        sid1 = first.id()
    # The instance left and is stopped; a fresh process of the application is started ahead of need.
    wait_gone([pid1], timeout=10)
    spare = wait_for(
        lambda: [p for p, kind, _ in read_events(folder) if kind == "start" and p != pid1], 15, "a spare process"
    )[0]
    with Session("warm") as second:
        pid2 = second.invoke({})["pid"]
        sid2 = second.id()
    assert pid2 == spare, "the next session takes the spare"
    wait_gone([pid2], timeout=10)
    # Every process served exactly one session: started, entered once, left once.
    for pid, sid in ((pid1, sid1), (pid2, sid2)):
        assert [(k, s) for p, k, s in read_events(folder) if p == pid] == [
            ("start", ""),
            ("enter", sid),
            ("leave", sid),
        ]
    # A spare nobody takes is stopped after delay_release, not before.
    third = wait_for(
        lambda: [p for p, kind, _ in read_events(folder) if kind == "start" and p not in (pid1, pid2)],
        15,
        "a spare after the second session",
    )[0]
    started = time.monotonic()
    wait_gone([third], timeout=DELAY_RELEASE + 10)
    idle = time.monotonic() - started
    assert idle >= DELAY_RELEASE * 0.5, f"the spare was stopped after {idle:.2f} s"
    assert [k for p, k, _ in read_events(folder) if p == third] == ["start"]


TIMED_START_SERVICE = """
    import os
    import time

    with open("times.log", "a") as fh:
        fh.write(f"{os.getpid()} start {time.time()}\\n")
    time.sleep(float(os.environ.get("IMPORT_SECONDS", "0")))  # a heavy import
    with open("times.log", "a") as fh:
        fh.write(f"{os.getpid()} listening {time.time()}\\n")

    from flamepy import service

    ins = service.FlameInstance()


    @ins.entrypoint
    def pid(req):
        return os.getpid()


    if __name__ == "__main__":
        ins.run()
"""


def _times(folder: Path) -> list[tuple[int, str, float]]:
    path = folder / "times.log"
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [(int(pid), what, float(when)) for pid, what, when in rows]


def test_a_spare_gives_way_to_a_session_waiting_for_its_process_to_start(flame_env):
    """A session's process that is starting gets the CPU: the spare that replaces another session's process
    starts once it listens, not while it imports (a new application's first session would pay for it)."""
    import threading

    warm = flame_env.write_service("giveway", TIMED_START_SERVICE)
    slow = flame_env.write_service(
        "slowstart", TIMED_START_SERVICE, extra_spec="environments:\n  IMPORT_SECONDS: '2'\n"
    )
    with Session("giveway") as first:
        pid1 = first.invoke(None)
        results: list[Any] = []
        with Session("slowstart") as waiting:
            caller = threading.Thread(target=lambda: results.append(waiting.invoke(None)), daemon=True)
            caller.start()
            wait_for(lambda: _times(slow), 15, "the slow process to start")
            first.close()  # its process leaves now, while the slow one imports: a spare is due
            caller.join(timeout=30)
            assert len(results) == 1
    spare_started = wait_for(
        lambda: [when for pid, what, when in _times(warm) if what == "start" and pid != pid1], 15, "a spare"
    )[0]
    listening = next(when for _pid, what, when in _times(slow) if what == "listening")
    assert spare_started >= listening, f"the spare started {listening - spare_started:.2f} s before the other listened"


def test_a_service_counting_its_sessions_sees_one_per_process(flame_env):
    flame_env.write_service(
        "counter",
        """
        import os
        from flamepy import service


        class Counting(service.FlameInstance):
            entered = 0

            def on_session_enter(self, context):
                super().on_session_enter(context)
                Counting.entered += 1


        ins = Counting()


        @ins.entrypoint
        def count(req):
            return os.getpid(), Counting.entered


        if __name__ == "__main__":
            ins.run()
        """,
    )
    seen = []
    for _ in range(4):
        with Session("counter") as session:
            seen.append(session.invoke(None))
    assert [entered for _pid, entered in seen] == [1, 1, 1, 1]
    assert len({pid for pid, _entered in seen}) == 4


def test_application_with_delay_release_zero_is_not_kept_warm(flame_env):
    folder = write_probe(flame_env, "cold", delay_release=0)
    with Session("cold") as first:
        pid = first.invoke({})["pid"]
    wait_gone([pid], timeout=10)
    with Session("cold") as second:
        assert second.invoke({})["pid"] != pid
    assert [k for p, k, _ in read_events(folder) if p == pid] == ["start", "enter", "leave"]


# -- how many instances --------------------------------------------------------------------------------------


def test_session_max_instances_two_runs_eight_tasks_on_exactly_two_instances(flame_env):
    write_probe(flame_env, "pair")
    with Session("pair", max_instances=2) as session:
        futures = [session.run({"i": i, "sleep": 0.4}) for i in range(8)]
        results = [f.result(timeout=60) for f in futures]
    assert [r["i"] for r in results] == list(range(8))
    assert len({r["pid"] for r in results}) == 2
    assert peak_concurrency(results) == 2  # the two really ran at once
    assert_serial_per_pid(results)


def test_application_max_instances_one_caps_every_session(flame_env):
    folder = write_probe(flame_env, "single", max_instances=1)
    first = Session("single")
    second = Session("single")
    sids = [first.id(), second.id()]
    futures = [first.run({"i": i, "sleep": 0.2}) for i in range(4)]
    waiting = [second.run({"i": 10 + i}) for i in range(2)]
    results = [f.result(timeout=60) for f in futures]
    assert len({r["pid"] for r in results}) == 1
    assert peak_concurrency(results) == 1
    # The only instance the application may have stays with the first session while it is open.
    time.sleep(0.5)
    snapshot = flamepy.get_session(second.id())
    assert (snapshot.pending, snapshot.running, snapshot.succeed) == (2, 0, 0)
    assert not any(f.done() for f in waiting)
    first.close()
    later = [f.result(timeout=30) for f in waiting]
    # The second session gets the application's one instance once the first let it go: a fresh
    # process (one process per session binding), never two serving at once.
    assert len({r["pid"] for r in later}) == 1 and later[0]["pid"] != results[0]["pid"]
    wait_gone([results[0]["pid"]])
    second.close()
    entered = [(p, s) for p, kind, s in read_events(folder) if kind == "enter"]
    assert entered == [(results[0]["pid"], sids[0]), (later[0]["pid"], sids[1])]


def test_min_instances_starts_an_instance_before_any_task(flame_env):
    folder = write_probe(flame_env, "eager")
    with Session("eager", min_instances=1) as session:
        sid = session.id()
        entered = wait_for(
            lambda: [p for p, kind, s in read_events(folder) if kind == "enter" and s == sid], 20, "an eager instance"
        )
        assert flamepy.get_session(sid).succeed == 0  # no task was involved
        assert session.invoke({})["pid"] == entered[0]


def test_a_new_session_starts_a_process_before_its_first_task_which_then_runs_on_it(flame_env):
    """A first task usually follows a new session at once: its application's process starts with the session."""
    folder = write_probe(flame_env, "ahead")
    first = flamepy.create_session("ahead")
    try:
        started = wait_for(lambda: [p for p, kind, _ in read_events(folder) if kind == "start"], 20, "a process")
        second = flamepy.create_session("ahead")  # one started ahead is waiting: no other
        second.close()
        assert not [kind for _, kind, _ in read_events(folder) if kind == "enter"], "bound before any task"
        assert Session(session_id=first.id).invoke({})["pid"] == started[0]
        assert [p for p, kind, _ in read_events(folder) if kind == "start"] == started
    finally:
        first.close()


# -- order and throughput ------------------------------------------------------------------------------------


def test_tasks_on_one_instance_run_one_at_a_time_in_submission_order(flame_env):
    folder = write_probe(flame_env, "fifo")
    with Session("fifo", max_instances=1) as session:
        futures = [session.run({"i": i, "sleep": 0.02}) for i in range(15)]
        results = [f.result(timeout=60) for f in futures]
    assert len({r["pid"] for r in results}) == 1
    assert [r["i"] for r in sorted(results, key=lambda r: r["start"])] == list(range(15))
    assert_serial_per_pid(results)
    assert [int(s) for _, kind, s in read_events(folder) if kind == "task"] == list(range(15))


def test_two_hundred_quick_tasks_through_core_run(flame_env):
    flame_env.write_service(
        "quick",
        """
        import os

        import flamepy
        from flamepy.core import FlameService


        class Quick(FlameService):
            def on_task_invoke(self, context):
                return b"%d:%s:" % (os.getpid(), context.task_id.encode()) + context.input[::-1]


        if __name__ == "__main__":
            flamepy.run(Quick())
        """,
    )
    session = flamepy.create_session("quick", max_instances=2)
    inputs = [f"payload-{i:03d}".encode() for i in range(200)]
    futures = [session.run(data) for data in inputs]
    outputs = [f.result(timeout=60) for f in futures]
    pids = set()
    task_ids = []
    for data, out in zip(inputs, outputs, strict=True):
        pid, task_id, body = out.split(b":", 2)
        assert body == data[::-1]
        pids.add(pid)
        task_ids.append(int(task_id))
    assert task_ids == list(range(1, 201))
    assert 1 <= len(pids) <= 2
    snapshot = flamepy.get_session(session.id)
    assert (snapshot.succeed, snapshot.failed, snapshot.pending, snapshot.running) == (200, 0, 0, 0)
    watches = session.connection.watches
    assert watches.sessions() == [session.id]  # the connection owns the session's watcher while it is open
    session.close()
    # Its stream ends with the session: the watcher goes, it does not live as long as the process.
    wait_for(lambda: session.id not in watches.sessions(), 10, "the closed session's watcher to be dropped")


# -- closing -----------------------------------------------------------------------------------------------


def test_closing_a_session_cancels_its_pending_tasks(flame_env):
    folder = flame_env.write_service(
        "sluggish",
        """
        import os
        import time

        import flamepy
        from flamepy.core import FlameService

        time.sleep(1.5)  # a slow start: the tasks are still pending when the session closes


        class Sluggish(FlameService):
            def on_task_invoke(self, context):
                with open("ran.log", "a") as fh:
                    fh.write(context.task_id + "\\n")
                return b"ran"

            def on_session_leave(self):
                open("left", "w").close()


        if __name__ == "__main__":
            flamepy.run(Sluggish())
        """,
    )
    session = flamepy.create_session("sluggish")
    futures = [session.run(b"%d" % i) for i in range(3)]
    session.close()
    closed = flamepy.get_session(session.id)
    assert closed.state == flamepy.SessionState.CLOSED
    assert (closed.cancelled, closed.pending, closed.running) == (3, 0, 0)
    for future in futures:
        with pytest.raises(FlameError) as info:
            future.result(timeout=10)
        assert info.value.code == FlameErrorCode.INVALID_STATE
        assert "was cancelled" in info.value.message
    tasks = list(flamepy.get_session(session.id).list_tasks())
    assert [t.id for t in tasks] == ["1", "2", "3"]
    assert {t.state for t in tasks} == {flamepy.TaskState.CANCELLED}
    assert all(any("the session was closed" in (e.message or "") for e in t.events or []) for t in tasks)
    # The instance that was starting (1.5 s) never runs a cancelled task.
    time.sleep(2.5)
    assert not (folder / "ran.log").exists()


def test_closing_a_session_calls_on_session_leave_on_every_instance(flame_env):
    folder = write_probe(flame_env, "leaver")
    session = Session("leaver", max_instances=2)
    sid = session.id()
    results = [f.result(timeout=60) for f in [session.run({"i": i, "sleep": 0.5}) for i in range(4)]]
    pids = {r["pid"] for r in results}
    assert len(pids) == 2
    assert not [e for e in read_events(folder) if e[1] == "leave"]
    session.close()
    wait_for(
        lambda: {p for p, kind, s in read_events(folder) if kind == "leave" and s == sid} == pids,
        10,
        "OnSessionLeave on both instances",
    )


# -- the server stops ----------------------------------------------------------------------------------------


def test_server_restart_keeps_state_and_leaves_no_instance_behind(flame_env):
    write_probe(flame_env, "keeper")
    done = Session("keeper")
    first = done.invoke({"i": 1})
    done_id = done.id()
    done.close()
    kept = Session("keeper", ctx={"seed": 7})
    second = kept.invoke({"i": 2})
    kept_id = kept.id()
    ref = flamepy.put_object(f"keeper/{kept_id}", {"weights": [1, 2, 3]})
    pids = {first["pid"], second["pid"]}
    old_server = live_server(flame_env.home)
    assert old_server

    stopped = flame_env.flmctl("server", "stop")
    assert "stopped the flamepy server" in stopped.stdout
    assert flame_env.flmctl("server", "status", check=False).returncode == 3
    wait_gone(pids, timeout=10)  # no instance outlives its server

    # A new client (a fresh process) starts a new server that remembers everything.
    probe = flame_env.python(
        f"""
        import json
        import cloudpickle
        import flamepy
        from flamepy.service import Session

        done = flamepy.get_session({done_id!r})
        kept = flamepy.get_session({kept_id!r})
        task = done.get_task("1")
        reopened = Session(session_id={kept_id!r})
        print(json.dumps({{
            "apps": [a.name for a in flamepy.list_applications()],
            "states": [done.state.name, kept.state.name],
            "succeed": [done.succeed, kept.succeed],
            "task": [task.state.name, cloudpickle.loads(task.output)["i"]],
            "object": flamepy.get_object(flamepy.ObjectRef("", {ref.key!r}, {ref.version})),
            "context": reopened.context(),
            "again": reopened.invoke({{"i": 3}}),
        }}))
        """,
        timeout=60,
    )
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen["apps"] == ["flmexec", "flmping", "flmrun", "keeper"]  # the built-ins, and ours
    assert seen["states"] == ["CLOSED", "OPEN"]
    assert seen["succeed"] == [1, 1]
    assert seen["task"] == ["SUCCEED", 1]
    assert seen["object"] == {"weights": [1, 2, 3]}
    assert seen["context"] == {"seed": 7}
    assert seen["again"]["i"] == 3
    new_server = live_server(flame_env.home)
    assert new_server and new_server["pid"] != old_server["pid"]
    assert seen["again"]["pid"] not in pids

    # This process too, once it drops its connection to the old server.
    reset_default_connection()
    assert flamepy.get_session(done_id).state == flamepy.SessionState.CLOSED
    output = flamepy.open_session(kept_id).get_task("1").output
    assert cloudpickle.loads(output)["i"] == 2
    assert flamepy.get_object(ref) == {"weights": [1, 2, 3]}
    assert Session(session_id=kept_id).invoke({"i": 4})["i"] == 4

    flame_env.flmctl("server", "stop")
    wait_gone([seen["again"]["pid"]], timeout=10)


def test_task_running_when_the_server_stops_is_killed_and_requeued(flame_env):
    folder = flame_env.write_service(
        "longrun",
        """
        import os
        import time
        from flamepy import service

        ins = service.FlameInstance()


        @ins.entrypoint
        def handle(req):
            with open("running", "a") as fh:
                fh.write(f"{os.getpid()}\\n")
            deadline = time.monotonic() + 60
            while not os.path.exists("gate") and time.monotonic() < deadline:
                time.sleep(0.02)
            return os.getpid()


        if __name__ == "__main__":
            ins.run()
        """,
    )
    session = Session("longrun")
    sid = session.id()
    session.run(None)
    running = folder / "running"
    busy = int(wait_for(lambda: running.exists() and running.read_text().split(), 20, "the task to start")[0])
    started = time.monotonic()
    flame_env.flmctl("server", "stop")
    assert time.monotonic() - started < 30
    wait_gone([busy], timeout=10)

    # The next client brings the server back; the task that was running is run again, to completion.
    reset_default_connection()
    core = flamepy.open_session(sid)
    wait_for(lambda: len(running.read_text().split()) == 2, 20, "the requeued task to start again")
    (folder / "gate").touch()
    wait_for(lambda: core.get_task("1").state == flamepy.TaskState.SUCCEED, 20, "the requeued task to finish")
    task = core.get_task("1")
    again = int(running.read_text().split()[1])
    assert again != busy
    assert cloudpickle.loads(task.output) == again
    assert any("the server restarted while it ran" in (e.message or "") for e in task.events or [])


def test_killed_server_leaves_no_instance_behind_and_its_running_task_is_requeued(flame_env):
    folder = write_probe(flame_env, "orphan")
    warm = Session("orphan", max_instances=2)
    results = [f.result(timeout=60) for f in [warm.run({"i": i, "sleep": 0.4}) for i in range(4)]]
    pids = {r["pid"] for r in results}
    assert len(pids) == 2
    busy = Session("orphan")
    busy_id = busy.id()
    busy.run({"i": 99, "sleep": 3})
    wait_for(lambda: [p for p, kind, i in read_events(folder) if kind == "task" and i == "99"], 20, "task 99 to start")
    busy_pid = next(p for p, kind, i in read_events(folder) if kind == "task" and i == "99")
    # A task's RUNNING state is a lazy write (it goes out with the next commit, within the store's
    # LAZY_DELAY): the crash must come after it, or the next server finds the task PENDING, not running.
    running = int(pb.TaskState.Running)
    wait_for(lambda: stored_task_state(flame_env.home, busy_id, 1) == running, 10, "task 99 RUNNING in the store")
    server = live_server(flame_env.home)
    assert server
    os.kill(int(server["pid"]), signal.SIGKILL)
    # Nobody stops them: each instance notices its server is gone and exits on its own.
    wait_gone(pids | {busy_pid}, timeout=15)

    # A crashed server left a RUNNING task in its store: the next server starts anyway and runs it again.
    reset_default_connection()
    core = flamepy.open_session(busy_id)
    wait_for(lambda: core.get_task("1").state == flamepy.TaskState.SUCCEED, 30, "the requeued task to finish")
    task = core.get_task("1")
    output = cloudpickle.loads(task.output)
    assert output["i"] == 99 and output["pid"] != busy_pid
    assert any("the server restarted while it ran" in (e.message or "") for e in task.events or [])


# -- shims ------------------------------------------------------------------------------------------------


def test_a_wasm_application_is_accepted_and_its_tasks_wait_with_an_event_saying_why(flame_env):
    folder = write_probe(flame_env, "wasm-app", shim="Wasm")
    assert flamepy.get_application("wasm-app").shim == flamepy.Shim.WASM
    session = flamepy.create_session("wasm-app")
    future = session.run(b"x")
    event = wait_for(
        lambda: [e for e in flamepy.get_session(session.id).events or [] if e.code == 1003], 10, "the shim event"
    )[0]
    assert "no executor of shim Wasm" in event.message and "wasm-app" in event.message
    time.sleep(1.0)  # nothing starts, nothing fails: the task waits for an executor that may come
    snapshot = flamepy.get_session(session.id)
    assert (snapshot.state, snapshot.pending, snapshot.failed) == (flamepy.SessionState.OPEN, 1, 0)
    assert not future.done()
    assert not read_events(folder), "no process was started for it"
    assert len([e for e in snapshot.events or [] if e.code == 1003]) == 1, "said once"
    session.close()
    with pytest.raises(FlameError):
        future.result(timeout=10)
