"""A service process served on gRPC runs each ``OnTaskInvoke`` on its main thread, with no pool thread between.

grpcio's synchronous server runs a call as one routine (wait for the request, run the handler, send the
reply) on a thread of its pool. The instance asks it (``run_calls_on``, followed through grpcio's
per-method ``experimental_thread_pool``) to submit that routine of a task's call to the serving loop
instead: the main thread runs it, so no pool thread waits for the main thread and is woken with the
result (two thread hand-offs fewer per task). What must hold, checked here:

* the task runs on the serving thread, through the server's submission (in-process), and, when grpcio
  ignores the request (simulated by turning its per-method pool off), on the pool path as before, with
  the same answers; once the loop is stopped (a signal), nothing queued before starts;
* in a real service process: the task runs on the main thread, sees what ``on_session_enter`` set in a
  context variable, a long task does not hold the process's other calls (``WithdrawTasks``), and SIGTERM
  interrupts the running task (its ``finally`` runs) and ends the process by that signal.

Every wait has a deadline.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import grpc._server
import pytest
from conftest import RecordingResponder, RecordingWriter, start_service_as_runtime
from flamepy_transports.grpc.plugin import GrpcTransport

from flamepy_core.contracts.transport import Channel, Server
from flamepy_core.engine.executor import class_path
from flamepy_core.instance.runtime import MainThreadServing, _serve
from flamepy_core.instance.service import FlameService, TaskContext
from flamepy_core.transport_kit import SimpleCallContext
from flamepy_core.wire.payload_messages import (
    ON_SESSION_ENTER,
    ON_SESSION_LEAVE,
    ON_TASK_INVOKE,
    RUN_TASKS,
    WITHDRAW_TASKS,
    read_task_result,
    read_withdrawn_tasks,
    task_batch,
    task_context,
)
from flamepy_core.wire.proto import shim_pb2

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _enter_request(session_id: str) -> bytes:
    context = shim_pb2.SessionContext(session_id=session_id)
    context.application.name = "main-thread"
    return bytes(context.SerializeToString())


# -- in-process: which thread runs the task, and how it got there ------------------------------------------


class _Threads(FlameService):
    """Answers each task with the name of the thread that ran it."""

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        return threading.current_thread().name.encode()


class _Ran(FlameService):
    """Records the tasks it runs."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        self.ran.append(context.task_id)
        return None


class _CountingServing(MainThreadServing):
    """The serving loop, counting the routines a server submitted to it."""

    def __init__(self, service: FlameService) -> None:
        super().__init__(service)
        self.submitted = 0

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[[], tuple[_CountingServing, Channel]]]:
    """Start a serving loop on a thread named ``serving`` behind a gRPC server, as ``run`` does."""
    started: list[tuple[_CountingServing, threading.Thread, Server, Channel]] = []
    transport = GrpcTransport(default_timeout=10.0)

    def start() -> tuple[_CountingServing, Channel]:
        serving = _CountingServing(_Threads())
        server = _serve(transport, f"unix://{tmp_path}/instance.sock", serving.handlers())
        thread = threading.Thread(target=serving.serve, name="serving", daemon=True)
        thread.start()
        channel = transport.connect(server.endpoint)
        started.append((serving, thread, server, channel))
        return serving, channel

    yield start
    for serving, thread, server, channel in started:
        channel.close()
        serving.stop()
        thread.join(10)
        server.stop(grace=1.0)
        assert not thread.is_alive(), "the serving loop did not stop"


def _task(channel: Channel, task_id: str) -> str:
    code, output, message, _size = read_task_result(channel.unary(ON_TASK_INVOKE, task_context(task_id, "s", b"")))
    assert code == 0, message
    return (output or b"").decode()


def test_grpc_submits_each_task_to_the_serving_thread_which_runs_it(
    served: Callable[[], tuple[_CountingServing, Channel]],
) -> None:
    serving, channel = served()
    channel.unary(ON_SESSION_ENTER, _enter_request("s"))
    assert serving.submitted == 0, "only OnTaskInvoke is run by the serving thread itself"
    assert [_task(channel, str(n)) for n in range(3)] == ["serving"] * 3
    assert serving.submitted == 3, "grpcio ran the task's routine on its own pool, not on the serving thread"
    channel.unary(ON_SESSION_LEAVE, b"")
    assert serving.submitted == 3


def test_without_grpcios_per_method_pool_a_task_takes_the_pool_path_with_the_same_answer(
    served: Callable[[], tuple[_CountingServing, Channel]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback: a grpcio without the ``experimental_thread_pool`` hook runs every routine on its pool."""
    monkeypatch.setattr(grpc._server, "_select_thread_pool_for_behavior", lambda _behavior, default: default)
    serving, channel = served()
    channel.unary(ON_SESSION_ENTER, _enter_request("s"))
    assert [_task(channel, str(n)) for n in range(3)] == ["serving"] * 3
    assert serving.submitted == 0


def test_once_stopped_no_queued_callback_or_batch_task_starts() -> None:
    """A signal stops the loop: what was queued before it (a task, a batch's tasks) does not start then."""
    service = _Ran()
    serving = MainThreadServing(service)
    handlers = serving.handlers()
    responder, writer = RecordingResponder(), RecordingWriter()

    context = SimpleCallContext(ON_TASK_INVOKE, 10.0)
    handlers[ON_TASK_INVOKE].fn(task_context("1", "s", b""), context, responder)
    handlers[RUN_TASKS].fn(task_batch([task_context("2", "s", b"")]), context, writer)
    serving.stop()  # what a signal handler does, with both queued ahead of it
    thread = threading.Thread(target=serving.serve, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the loop did not stop"
    assert service.ran == [] and responder.items == [] and writer.items == []


# -- a real service process ----------------------------------------------------------------------------------

SERVICE = """
import contextvars, os, sys, threading, time
import flamepy

session = contextvars.ContextVar("session", default="<unset>")


class Service(flamepy.FlameService):
    def on_session_enter(self, context):
        session.set(context.session_id)

    def on_task_invoke(self, context):
        if context.input == b"long":
            try:
                open(os.path.join(sys.argv[1], "started"), "w").close()
                time.sleep(600)
            finally:
                open(os.path.join(sys.argv[1], "interrupted"), "w").close()
        main = threading.current_thread() is threading.main_thread()
        return f"{main}|{session.get()}".encode()


if __name__ == "__main__":
    flamepy.run(Service())
"""


class _Process:
    """A service process started as flamepy's runtime starts one on a gRPC instance link."""

    def __init__(self, tmp_path: Path) -> None:
        transport = GrpcTransport(default_timeout=30.0)
        endpoint = f"unix://{tmp_path}/instance.sock"
        self.process = start_service_as_runtime(
            tmp_path, SERVICE, endpoint, class_path(transport), args=(str(tmp_path),)
        )
        self.channel: Any = transport.connect(endpoint)

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit status and what the process wrote on stderr."""
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _out, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _out, err = self.process.communicate(timeout=10)
        return self.process.returncode, err.decode(errors="replace")


def test_a_service_process_runs_its_tasks_on_the_main_thread_in_the_sessions_context(tmp_path: Path) -> None:
    process = _Process(tmp_path)
    try:
        process.channel.unary(ON_SESSION_ENTER, _enter_request("s-ctx"))
        answers = [_task(process.channel, str(n)) for n in range(3)]
    finally:
        code, err = process.stop()
    assert answers == ["True|s-ctx"] * 3, err
    assert code == -signal.SIGTERM, err


def test_a_long_task_holds_no_other_call_and_sigterm_interrupts_it(tmp_path: Path) -> None:
    process = _Process(tmp_path)
    try:
        process.channel.unary(ON_SESSION_ENTER, _enter_request("s-long"))
        running = process.channel.unary_async(ON_TASK_INVOKE, task_context("1", "s-long", b"long"), 120)
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline and not running.done(), "the long task did not start"
            time.sleep(0.02)
        # The main thread is in the task: another call is still answered, by a thread of the server's pool.
        assert read_withdrawn_tasks(process.channel.unary(WITHDRAW_TASKS, b"", 10)) == []
        assert not running.done()
        started = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        code = process.process.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        stop_code, err = process.stop()
    assert code == stop_code == -signal.SIGTERM, err
    assert (tmp_path / "interrupted").exists(), f"the task's sleep was not interrupted by SIGTERM: {err}"
    assert took < 30, took  # the sleep lasts 600 s: only an interruption ends it sooner
