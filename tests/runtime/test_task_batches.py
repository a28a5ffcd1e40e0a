"""Tasks sent to flamepy's own instances in batches (``flamepy.ext.v1.InstanceTasks``), one at a time there.

The server sends an instance of this SDK many short tasks in one ``RunTasks`` message; the instance runs
them in order and streams each result back before it starts the next. What is queued on an instance but
not started is never lost and never run twice: it goes back to the queue when the instance dies (kill -9
mid-batch), and is withdrawn when the task ahead of it runs long (it may be the very task that one waits
for). A Flame-protocol instance still gets one ``OnTaskInvoke`` per task. The whole path runs on ZeroMQ and on
gRPC: on gRPC the server reads each batch's stream through the kit's ``stream_async`` (a thread per open
stream), and the instance's pool threads may read two batches' requests in either order, so the order
checks there hold the scheduler to sending a batch only behind batches that have answered.

The serving loop is tested in-process first (ordering, withdrawal, the stream's end), then the whole path
with real processes (``flame_env``). Every wait has a deadline.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import FlameEnv, RecordingResponder, RecordingWriter, wait_for
from test_instance_links import FLAME_STYLE_SERVICE

from flamepy.service import Session
from flamepy_core.client.connection import default_connection
from flamepy_core.contracts.transport import CallContext, DeferredHandler, DeferredStreamHandler, UnaryHandler
from flamepy_core.instance.runtime import MainThreadServing
from flamepy_core.instance.service import FlameService, TaskContext
from flamepy_core.plugins import get_registry
from flamepy_core.wire.payload_messages import (
    ON_SESSION_ENTER,
    ON_TASK_INVOKE,
    RUN_TASKS,
    WITHDRAW_TASKS,
    read_task_result,
    read_withdrawn_tasks,
    task_batch,
    task_context,
    tasks_offered,
)

# -- the serving loop, in-process -------------------------------------------------------------------------


class _Recorder(FlameService):
    """Records each task it runs; task ``block`` waits until released."""

    def __init__(self, block: str | None = None) -> None:
        self.ran: list[str] = []
        self.block = block
        self.blocked = threading.Event()
        self.release = threading.Event()

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        self.ran.append(context.task_id)
        if context.task_id == self.block:
            self.blocked.set()
            assert self.release.wait(10), "never released"
        return b"out-" + (context.input or b"")


class _Ctx:
    method = RUN_TASKS

    def time_remaining(self) -> float | None:
        return None

    def is_active(self) -> bool:
        return True


def _batch(ids: range) -> bytes:
    return task_batch([task_context(str(i), "s", str(i).encode()) for i in ids])


def _serving(service: FlameService) -> tuple[MainThreadServing, threading.Thread]:
    serving = MainThreadServing(service)
    thread = threading.Thread(target=serving.serve, daemon=True)
    thread.start()
    return serving, thread


def _outputs(writer: RecordingWriter) -> list[bytes | None]:
    return [read_task_result(item)[1] for item in writer.items]


def test_a_task_the_serving_thread_reads_runs_inline_and_a_batch_behind_it_is_withdrawn_meanwhile(
    tmp_path: Path,
) -> None:
    """Over a real kit server (uds), the serving thread runs an ``OnTaskInvoke`` it reads while it waits
    itself (``serve_inline``: the call's handler is not involved); while such a task runs long, the link's
    reader reads a batch sent behind it and its withdrawal, and answers the withdrawal at once."""
    service = _Recorder(block="long")
    serving = MainThreadServing(service)
    handlers = serving.handlers()
    by_handler: list[bytes] = []
    deferred = handlers[ON_TASK_INVOKE]
    assert isinstance(deferred, DeferredHandler)
    handlers[ON_TASK_INVOKE] = DeferredHandler(
        lambda data, ctx, responder: by_handler.append(data) or deferred.fn(data, ctx, responder)
    )
    transport = get_registry().transport("uds")
    server = transport.serve(f"uds://{tmp_path}/i.sock", handlers)
    serving.host_on(server)
    thread = threading.Thread(target=serving.serve, daemon=True)
    thread.start()
    channel = transport.connect(server.endpoint)
    try:
        for i in range(30):
            answer = channel.unary_async(ON_TASK_INVOKE, task_context(str(i), "s", b"%d" % i), timeout=None)
            assert read_task_result(answer.result(10))[1] == b"out-%d" % i
        assert len(by_handler) <= 5, f"{len(by_handler)} of 30 tasks went through the handler, not inline"
        assert service.ran == [str(i) for i in range(30)]

        long = channel.unary_async(ON_TASK_INVOKE, task_context("long", "s", b"l"), timeout=None)
        assert service.blocked.wait(10), "the long task never started"
        channel.stream_async(RUN_TASKS, _batch(range(100, 103)), lambda _item: None, lambda _error: None, None)
        time.sleep(0.1)  # past the reader's look (HOST_LOOK): it reads the link while the task runs
        withdrawn = channel.unary(WITHDRAW_TASKS, b"", timeout=10)
        assert sorted(read_withdrawn_tasks(withdrawn)) == ["100", "101", "102"], "the batch was not withdrawn"
        service.release.set()
        assert read_task_result(long.result(10))[1] == b"out-l"
        assert "100" not in service.ran
    finally:
        service.release.set()
        serving.stop()
        thread.join(10)
        channel.close()
        server.stop(grace=1.0)
    assert not thread.is_alive()


def test_an_instance_of_this_sdk_offers_batches_on_entering() -> None:
    serving = MainThreadServing(_Recorder())
    handlers = serving.handlers()
    assert isinstance(handlers[RUN_TASKS], DeferredStreamHandler)
    assert isinstance(handlers[WITHDRAW_TASKS], UnaryHandler)
    enter = handlers[ON_SESSION_ENTER]
    responder = RecordingResponder()

    thread = threading.Thread(target=serving.serve, daemon=True)
    thread.start()
    try:
        context: CallContext = _Ctx()
        enter.fn(b"", context, responder)
        wait_for(lambda: responder.items, 10, "the enter answer")
    finally:
        serving.stop()
        thread.join(10)
    assert tasks_offered(responder.items[0])


def test_batches_run_in_order_one_at_a_time_and_each_stream_ends_after_its_last_result() -> None:
    service = _Recorder()
    serving, thread = _serving(service)
    run = serving.handlers()[RUN_TASKS]
    first, second = RecordingWriter(), RecordingWriter()
    try:
        run.fn(_batch(range(0, 5)), _Ctx(), first)
        run.fn(_batch(range(5, 8)), _Ctx(), second)
        assert first.ended.wait(10) and second.ended.wait(10)
    finally:
        serving.stop()
        thread.join(10)
    assert service.ran == [str(i) for i in range(8)]
    assert _outputs(first) == [b"out-%d" % i for i in range(5)]
    assert _outputs(second) == [b"out-%d" % i for i in range(5, 8)]
    assert first.error is None and second.error is None


def test_a_withdrawal_takes_back_every_task_not_started_and_the_running_one_still_answers() -> None:
    service = _Recorder(block="2")
    serving, thread = _serving(service)
    handlers = serving.handlers()
    first, second = RecordingWriter(), RecordingWriter()
    try:
        handlers[RUN_TASKS].fn(_batch(range(0, 5)), _Ctx(), first)
        handlers[RUN_TASKS].fn(_batch(range(5, 7)), _Ctx(), second)
        assert service.blocked.wait(10)
        taken = read_withdrawn_tasks(handlers[WITHDRAW_TASKS].fn(b"", _Ctx()))
        # The second batch had not started: its stream ends now, empty.
        assert second.ended.wait(10) and second.items == []
        assert not first.ended.is_set(), "task 2 still runs: its result is still to come"
        service.release.set()
        assert first.ended.wait(10)
        # Nothing is left to withdraw.
        assert read_withdrawn_tasks(handlers[WITHDRAW_TASKS].fn(b"", _Ctx())) == []
    finally:
        service.release.set()
        serving.stop()
        thread.join(10)
    assert taken == ["3", "4", "5", "6"]
    assert service.ran == ["0", "1", "2"], "a withdrawn task never runs here"
    assert _outputs(first) == [b"out-0", b"out-1", b"out-2"]


# -- the whole path, real processes ------------------------------------------------------------------------

LOGGING_SERVICE = """
import os
import signal
import time
from flamepy import service

ins = service.FlameInstance()


@ins.entrypoint
def handle(req):
    i, action = req
    with open("runs.log", "a") as fh:
        fh.write(f"{os.getpid()} {i}\\n")
    if action == "die" and not os.path.exists("died"):
        open("died", "w").close()
        # Until the test has every result before this one (a result sent may still sit in the transport's
        # buffers of this process: killed with it, its task would rightly run again), then kill -9 in the
        # middle of a batch.
        deadline = time.monotonic() + 60
        while not os.path.exists("kill") and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "wait":  # until the task behind it has run (it signals with a file)
        deadline = time.monotonic() + 20
        while not os.path.exists("go") and time.monotonic() < deadline:
            time.sleep(0.005)
        return os.path.exists("go")
    if action == "go":
        open("go", "w").close()
    return i


if __name__ == "__main__":
    ins.run()
"""


def _runs(folder: Path) -> list[tuple[int, int]]:
    rows = (line.split() for line in (folder / "runs.log").read_text().splitlines())
    return [(int(pid), int(i)) for pid, i in rows]


@pytest.mark.parametrize("flame_env", ["zmq", "grpc"], indirect=True)
def test_kill_9_mid_batch_loses_no_task_and_reruns_only_the_one_running(flame_env: FlameEnv) -> None:
    folder = flame_env.write_service("batchkill", LOGGING_SERVICE, extra_spec="max_instances: 1\n")
    count, victim = 600, 300
    with Session("batchkill") as session:
        futures = [session.run((i, "die" if i == victim else "")) for i in range(count)]
        before = [f.result(timeout=120) for f in futures[:victim]]
        (folder / "kill").touch()  # the victim runs meanwhile, and now dies
        results = before + [f.result(timeout=120) for f in futures[victim:]]
        tasks = {t.id: t for t in default_connection().list_tasks(session.id())}
    assert results == list(range(count)), "every task succeeded, with its own result"
    runs = _runs(folder)
    order = [i for _pid, i in runs]
    # One instance: the order of submission; the killed task ran twice, nothing else did, and what was
    # queued behind it on the dead instance ran afterwards, in order.
    assert order == [*range(victim + 1), *range(victim, count)]
    assert len({pid for pid, _i in runs}) == 2
    # Tasks were queued behind the killed one (a batch), and went back without spending a retry.
    returned = [t for t in tasks.values() if any("not started" in (e.message or "") for e in t.events or [])]
    assert returned, "no task was queued behind the killed one: batches were not used"
    victim_events = [e.message or "" for e in tasks[str(victim + 1)].events or []]
    assert any("retry 1/" in m for m in victim_events), victim_events
    assert not any("retry" in (e.message or "") for t in returned for e in t.events or [])


@pytest.mark.parametrize("flame_env", ["zmq", "grpc"], indirect=True)
def test_a_task_queued_behind_a_long_one_is_withdrawn_and_runs_elsewhere(flame_env: FlameEnv) -> None:
    # Task "wait" waits for task "go", submitted right behind it: were "go" stuck behind "wait" on the
    # same instance, "wait" would time out (20 s) and answer False.
    folder = flame_env.write_service("batchwait", LOGGING_SERVICE, extra_spec="max_instances: 2\n")
    with Session("batchwait", max_instances=2) as session:
        before = [session.run((i, "")) for i in range(400)]
        waiting = session.run((400, "wait"))
        go = session.run((401, "go"))
        after = [session.run((i, "")) for i in range(402, 600)]
        assert [f.result(timeout=120) for f in before] == list(range(400))
        assert waiting.result(timeout=60) is True
        assert go.result(timeout=60) == 401
        assert [f.result(timeout=120) for f in after] == list(range(402, 600))
    order = [i for _pid, i in _runs(folder)]
    assert sorted(order) == list(range(600)), "each task ran once"


def test_ten_thousand_no_op_tasks_on_two_instances_none_failed(flame_env: FlameEnv) -> None:
    flame_env.write_service("batchmany", LOGGING_SERVICE.replace('with open("runs.log", "a") as fh:', "if 0:"))
    with Session("batchmany", max_instances=2) as session:
        futures = [session.run((i, "")) for i in range(10_000)]
        results = [f.result(timeout=300) for f in futures]
    assert results == list(range(10_000))


def test_a_flame_protocol_instance_still_gets_one_task_per_call(flame_env: FlameEnv) -> None:
    # It offers no batches (it knows nothing of RunTasks): a batch sent to it would fail every task.
    count = 300
    flame_env.write_service("rawgrpc", FLAME_STYLE_SERVICE)
    out = flame_env.python(
        f"""
        import flamepy
        s = flamepy.create_session("rawgrpc")
        futures = [s.run(b"%d" % i) for i in range({count})]
        print([f.result(timeout=120) for f in futures] == [b"raw:%d" % i for i in range({count})])
        s.close()
        """,
        timeout=180,
    )
    assert out.stdout.strip() == "True", out.stdout + out.stderr
