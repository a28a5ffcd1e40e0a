"""The core ``Session``: tasks of opaque bytes, with Flame's semantics, plus ``run()`` futures.

A ``Session`` object is a snapshot of the session when it was made (as in Flame); ``flamepy.get_session``
gives fresh counters. ``run()`` returns a real ``concurrent.futures.Future`` completed by a watcher on a
bounded pool shared by the connection, so thousands of outstanding tasks cost a few threads, not one each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.model import Event, SessionState, Task, event_from_proto, ms_to_datetime, task_from_proto
from flamepy_core.wire.proto import types_pb2 as pb

if TYPE_CHECKING:
    from flamepy_core.client.connection import Connection

WATCH_WORKERS = 32
_pools_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _watch_pool(connection: Connection) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(id(connection))
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=WATCH_WORKERS, thread_name_prefix="flame-watch")
            _pools[id(connection)] = pool
        return pool


class TaskFailedError(FlameError):
    """A task failed in the service. ``message`` holds the remote exception's type, text and traceback."""

    def __init__(self, task: Task, message: str) -> None:
        super().__init__(FlameErrorCode.INTERNAL, message)
        self.task = task


def task_failure(task: Task) -> FlameError:
    """The error a failed or cancelled task raises in the client."""
    if task.state.name == "CANCELLED":
        return FlameError(FlameErrorCode.INVALID_STATE, f"task {task.id} of session {task.session_id} was cancelled")
    message = next(
        (e.message for e in reversed(task.events or []) if e.code == int(pb.TaskState.Failed) and e.message),
        "Task failed without error message",
    )
    return TaskFailedError(task, message)


class TaskWatcher:
    """Iterator of task snapshots until the task completes. ``timeout`` bounds the whole watch."""

    def __init__(self, stream: Iterator[pb.Task], timeout: float | None = None) -> None:
        self._stream = stream
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout

    def __iter__(self) -> TaskWatcher:
        return self

    def __next__(self) -> Task:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise TimeoutError(f"watch_task timed out after {self._timeout} seconds")
        return task_from_proto(next(self._stream))


class Session:
    """A Flame session as the core API sees it: bytes in, bytes out."""

    def __init__(self, connection: Connection, message: pb.Session) -> None:
        self.connection = connection
        self.id: str = message.metadata.id
        self.application: str = message.spec.application
        status = message.status
        self.state = SessionState(status.state)
        self.creation_time = ms_to_datetime(status.creation_time)
        self.completion_time = ms_to_datetime(status.completion_time) if status.HasField("completion_time") else None
        self.pending: int = status.pending
        self.running: int = status.running
        self.succeed: int = status.succeed
        self.failed: int = status.failed
        self.cancelled: int = status.cancelled
        self.events: list[Event] = [event_from_proto(e) for e in status.events]
        self.min_instances: int = message.spec.min_instances
        self.max_instances: int | None = message.spec.max_instances if message.spec.HasField("max_instances") else None
        self._common_data = message.spec.common_data if message.spec.HasField("common_data") else None

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, application={self.application!r}, state={self.state.name})"

    def common_data(self) -> bytes | None:
        return self._common_data

    def create_task(self, input_data: bytes | None) -> Task:
        if input_data is not None and not isinstance(input_data, (bytes, bytearray, memoryview)):
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "input_data must be bytes in core API")
        data = bytes(input_data) if input_data is not None else None
        return task_from_proto(self.connection.create_task(self.id, data))

    def get_task(self, task_id: str) -> Task:
        return self.connection.get_task(self.id, task_id)

    def list_tasks(self) -> Iterator[Task]:
        return self.connection.list_tasks(self.id)

    def watch_task(self, task_id: str, timeout: float | None = None) -> TaskWatcher:
        return TaskWatcher(self.connection.watch_task(self.id, task_id), timeout)

    def _await(self, task_id: str) -> bytes | None:
        last: pb.Task | None = None
        for snapshot in self.connection.watch_task(self.id, task_id):
            last = snapshot
        if last is None:
            raise FlameError(FlameErrorCode.INTERNAL, f"the watch of task {task_id} ended without an answer")
        task = task_from_proto(last)
        if task.state.name == "SUCCEED":
            return task.output
        if task.is_completed():
            raise task_failure(task)
        raise FlameError(
            FlameErrorCode.UNAVAILABLE,
            f"the watch of task {task_id} ended while the task was {task.state.name}; the server may have stopped",
        )

    def run(self, input_data: bytes | None) -> Future[bytes | None]:
        """Create the task now (errors raise here), and return a future of its output."""
        task = self.create_task(input_data)
        future: Future[bytes | None] = Future()
        future.set_running_or_notify_cancel()

        def watch() -> None:
            try:
                future.set_result(self._await(task.id))
            except BaseException as exc:
                future.set_exception(exc)

        _watch_pool(self.connection).submit(watch)
        return future

    def invoke(self, input_data: bytes | None, timeout: float | None = None) -> bytes | None:
        """Run one task and wait for its output; ``timeout`` (seconds) bounds the wait, default none."""
        task = self.create_task(input_data)
        if timeout is None:
            return self._await(task.id)
        future = _watch_pool(self.connection).submit(self._await, task.id)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            raise FlameError(
                FlameErrorCode.DEADLINE_EXCEEDED,
                f"task {task.id} of session {self.id} did not finish within {timeout} s (it keeps running)",
            ) from None

    def close(self) -> None:
        closed = self.connection.close_session(self.id)
        self.state = closed.state
