"""A store that cannot write loses no acknowledged task, refuses new work clearly, and recovers by itself.

A real server, its file size limit shrunk from outside with ``prlimit`` (as a full disk would stop its
files from growing; the server ignores SIGXFSZ, so its writes fail with EFBIG), then raised again.
"""

from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path

import pytest
from conftest import wait_for

import flamepy
from flamepy_core.client.connection import reset_default_connection
from flamepy_core.client.local import live_server
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

SERVICE = """
import time
from pathlib import Path

import flamepy
from flamepy.core import FlameService


class Reverse(FlameService):
    def on_task_invoke(self, context):
        if context.input.startswith(b"sleep"):
            time.sleep(float(context.input[5:]))
            return context.input[::-1] * (1 << 18)  # 2 MiB: an output large enough for a file of its own
        return context.input[::-1]


if __name__ == "__main__":
    flamepy.run(Reverse())
"""

LONG_OUTPUT = b"5.1peels" * (1 << 18)
"""What the task that runs while the store cannot write returns: 2 MiB, written once space returns."""
SMALL = 1024
"""The file size limit while "the disk is full": no file of the server can be written past 1 KiB."""


def file_contents(folder: Path) -> list[bytes]:
    """What the files in ``folder`` hold (one renamed or removed while this reads is skipped)."""
    found = []
    for path in folder.glob("*") if folder.exists() else []:
        with contextlib.suppress(FileNotFoundError):
            found.append(path.read_bytes())
    return found


def set_file_limit(pid: int, soft: int) -> None:
    _old_soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))


def expect_store_error(call, what: str) -> FlameError:  # type: ignore[no-untyped-def]
    with pytest.raises(FlameError) as info:
        call()
    error = info.value
    assert error.code == FlameErrorCode.RESOURCE_EXHAUSTED, f"{what}: {error!r}"
    assert "flame.db" in error.message and "SQLITE_" in error.message, f"{what}: {error.message}"
    return error


@pytest.fixture
def server_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Invokes through the server (what its store's refusals are about), not on a client's lane past it."""
    monkeypatch.setenv("FLAMEPY_LANES", "0")


@pytest.mark.usefixtures("server_path")
def test_a_store_that_cannot_grow_loses_no_acknowledged_task_and_recovers_without_restart(flame_env):
    flame_env.write_service("rev", SERVICE)
    session = flamepy.create_session("rev")
    acknowledged = {}
    for i in range(5):
        data = b"before-%d" % i
        assert session.invoke(data) == data[::-1]
    acknowledged.update({str(i + 1): (b"before-%d" % i)[::-1] for i in range(5)})
    server = live_server(flame_env.home)
    assert server
    pid = int(server["pid"])

    # A task that runs while the store stops being writable: its result is kept and written later.
    running = session.run(b"sleep1.5")
    wait_for(lambda: flamepy.get_session(session.id).running == 1, 10, "the long task to start")
    set_file_limit(pid, SMALL)
    try:
        # New work is refused, naming the file and sqlite's error; nothing of it happens later.
        expect_store_error(lambda: session.invoke(b"refused-invoke"), "invoke")
        # A large input cannot have its file either: it is refused the same way, and leaves no file.
        expect_store_error(lambda: session.invoke(b"L" * (2 << 20)), "a 2 MiB invoke")
        # (The running task's service may write its 2 MiB output's file meanwhile: that file is its own.)
        assert b"L" * (2 << 20) not in file_contents(flame_env.home / "payloads"), "a refused input leaves no file"
        expect_store_error(lambda: session.create_task(b"refused-create"), "create_task")
        expect_store_error(lambda: flamepy.create_session("rev"), "create_session")
        expect_store_error(lambda: flamepy.put_object(f"rev/{session.id}", {"x": 1}), "put_object")
        # The task that was running finished meanwhile, but its result is not acknowledged yet.
        time.sleep(2.0)
        assert not running.done(), "a result was reported before it was stored"
    finally:
        set_file_limit(pid, resource.RLIM_INFINITY)

    # Space is back: the kept result is written and delivered, and new work succeeds, same server.
    assert running.result(timeout=20) == LONG_OUTPUT
    acknowledged["6"] = LONG_OUTPUT
    for i in range(3):
        data = b"after-%d" % i
        task = session.create_task(data)
        assert session.invoke(data) == data[::-1]
        acknowledged[task.id] = None  # created (acknowledged), then run by the scheduler
    assert int(live_server(flame_env.home)["pid"]) == pid
    ref = flamepy.put_object(f"rev/{session.id}", {"x": 2})
    assert flamepy.get_object(ref) == {"x": 2}

    # After a restart every acknowledged task is there with its result; the refused ones never ran.
    wait_for(lambda: flamepy.get_session(session.id).pending == 0, 20, "the created tasks to run")
    flame_env.flmctl("server", "stop")
    reset_default_connection()
    tasks = {t.id: t for t in flamepy.get_session(session.id).list_tasks()}
    for task_id, output in acknowledged.items():
        assert tasks[task_id].state == flamepy.TaskState.SUCCEED, task_id
        if output is not None:
            assert tasks[task_id].output == output
    inputs = {t.input for t in tasks.values()}
    assert not {b"refused-invoke", b"refused-create", b"L" * (2 << 20)} & inputs
    assert all(t.state == flamepy.TaskState.SUCCEED for t in tasks.values())
    assert flamepy.get_object(ref) == {"x": 2}


@pytest.mark.usefixtures("server_path")
def test_a_warm_invoke_the_store_refuses_is_withdrawn_and_never_stored(flame_env):
    """An idle instance takes a warm invoke at once (the scheduler's warm lane, before anything is written):
    a store that cannot write its creation and result must still refuse it, and keep nothing of it."""
    flame_env.write_service("rev", SERVICE)
    session = flamepy.create_session("rev")
    for data in (b"warm-1", b"warm-2"):  # the second runs on the instance the first left idle
        assert session.invoke(data) == data[::-1]
    server = live_server(flame_env.home)
    assert server
    pid = int(server["pid"])
    set_file_limit(pid, SMALL)
    try:
        expect_store_error(lambda: session.invoke(b"refused-warm"), "a warm invoke")
    finally:
        set_file_limit(pid, resource.RLIM_INFINITY)
    assert session.invoke(b"warm-3") == b"3-mraw"
    counts = flamepy.get_session(session.id)
    assert (counts.succeed, counts.running, counts.pending, counts.failed) == (3, 0, 0, 0)

    flame_env.flmctl("server", "stop")
    reset_default_connection()
    tasks = list(flamepy.get_session(session.id).list_tasks())
    assert sorted(t.input for t in tasks) == [b"warm-1", b"warm-2", b"warm-3"], "the refused task was stored"
    assert all(t.state == flamepy.TaskState.SUCCEED for t in tasks)


def test_a_lanes_tasks_while_the_store_cannot_grow_are_kept_and_recorded_once_it_can(flame_env, monkeypatch):
    """A lane's tasks do not pass through the server's store: the service process keeps each in the lane's
    log before it answers. While the server's store refuses to write, those results are not lost: the server
    records them once it writes again, on the same server (no restart), each once."""
    monkeypatch.setenv("FLAMEPY_LANES", "1")
    flame_env.write_service("rev", SERVICE)
    session = flamepy.create_session("rev")
    for i in range(4):  # the first starts the instance; a lane opens on the next ones
        assert session.invoke(b"warm-%d" % i) == (b"warm-%d" % i)[::-1]
    lane = session._lane
    assert lane is not None and lane._grant is not None, "no lane opened"
    server = live_server(flame_env.home)
    assert server
    pid = int(server["pid"])
    set_file_limit(pid, SMALL)
    try:
        for i in range(5):  # answered by the lane, kept in its log
            assert session.invoke(b"lane-%d" % i) == (b"lane-%d" % i)[::-1]
        # The server reads the log meanwhile, and its store refuses what it read for good once the refused
        # writes have been retried for store_retry_window (2 s).
        time.sleep(3.0)
        expect_store_error(lambda: session.create_task(b"refused-create"), "create_task")
    finally:
        set_file_limit(pid, resource.RLIM_INFINITY)
    expected = sorted([b"warm-%d" % i for i in range(4)] + [b"lane-%d" % i for i in range(5)])

    def recorded() -> list[bytes]:
        return sorted(t.input for t in session.list_tasks() if t.state == flamepy.TaskState.SUCCEED)

    wait_for(lambda: recorded() == expected, 20, "the lane's tasks recorded once the store writes again")
    assert int(live_server(flame_env.home)["pid"]) == pid, "the server restarted"
    flame_env.flmctl("server", "stop")
    reset_default_connection()
    tasks = list(flamepy.get_session(session.id).list_tasks())
    assert sorted(t.input for t in tasks) == expected, "a lane's task was lost or stored twice"
    assert all(t.output == t.input[::-1] for t in tasks)
