"""The core ``Session``: tasks of opaque bytes, with Flame's semantics, plus ``run()`` futures.

A ``Session`` object is a snapshot of the session when it was made (as in Flame); ``flamepy.get_session``
gives fresh counters. ``run()`` returns a real ``concurrent.futures.Future``.

Against flamepy's own server, ``run()`` submits in batches and completes its futures from one stream:

* submissions are coalesced (:class:`TaskSubmitter`): a lone ``run()`` is sent at once, and while one
  batch is in flight the next submissions queue and go together in one ``CreateTasks`` message, so a loop
  of ``run()`` calls pays a round trip per batch, not per task;
* completions arrive in batches on one ``WatchOutcomes`` stream per session (:class:`SessionWatcher`),
  each matched to its future through a dict: O(1) per task.

Against a Flame server (no ``flamepy.ext.v1``) every task is created with ``CreateTask`` before ``run()``
returns and watched with ``WatchTask`` on a bounded pool, so thousands of outstanding tasks cost a few
threads, not one each. Submitters, watchers and the pool belong to the connection (:class:`TaskWatches`,
``Connection.watches``): a watcher lives while its session has tasks in flight, and the pool goes with
the connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from flamepy_core.client.creation import TaskCreation
from flamepy_core.client.lane import NOT_TAKEN, Lane, lanes_wanted
from flamepy_core.client.lane_runs import LaneRuns
from flamepy_core.config import parse_task_timeout
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.failure_text import bound_failure_text
from flamepy_core.model import (
    EVENT_PAYLOADS_PURGED,
    Event,
    SessionState,
    Task,
    TaskState,
    event_from_proto,
    ms_to_datetime,
    task_from_proto,
)
from flamepy_core.progress import waiting
from flamepy_core.wire.lane_log import FILE_BYTES
from flamepy_core.wire.payload_messages import run_task_reply_parts
from flamepy_core.wire.proto import ext_pb2
from flamepy_core.wire.proto import frontend_pb2 as fe
from flamepy_core.wire.proto import types_pb2 as pb

_EVENT_BIND_FAILED = 1001
_EVENT_WAITING_FOR_CAPACITY = 1006
STARTING_NOTICE_DELAY = 1.0
"""Seconds ``invoke`` waits before it logs (at INFO) which instance it waits for."""
"""The session event an instance that could not start or enter leaves (see the engine's state module)."""

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from flamepy_core.client.connection import Connection

T = TypeVar("T")

WATCH_WORKERS = 32
BATCH_MAX_TASKS = 4096
BATCH_MAX_BYTES = 4 << 20
"""A CreateTasks message carries at most this many tasks / input bytes (the rest go in the next one)."""
RERUN_WAIT = 10.0
"""Seconds a client whose lane broke waits for the server to queue again the task that began there."""
CREATE_WAIT = 120.0
"""Seconds ``TaskFuture.cancel()`` waits for the server to create the task it is to cancel."""


class TaskFailedError(FlameError):
    """A task failed in the service. ``message`` holds the remote exception's type, text and traceback."""

    def __init__(self, task: Task, message: str) -> None:
        super().__init__(FlameErrorCode.INTERNAL, message)
        self.task = task

    def __reduce__(self) -> tuple[type[TaskFailedError], tuple[Task, str]]:  # type: ignore[override]
        return (type(self), (self.task, self.message))


class TaskCancelledError(FlameError):
    """A task was cancelled (``INVALID_STATE``, as before there was a class for it). ``task`` is its last state."""

    def __init__(self, task: Task) -> None:
        how = next((e.message for e in reversed(task.events or []) if e.code == int(pb.TaskState.Cancelled)), None)
        message = f"task {task.id} of session {task.session_id} was cancelled"
        super().__init__(FlameErrorCode.INVALID_STATE, f"{message} ({how})" if how else message)
        self.task = task

    def __reduce__(self) -> tuple[type[TaskCancelledError], tuple[Task]]:  # type: ignore[override]
        return (type(self), (self.task,))


def requester(what: str) -> str:
    """Who asks for a cancel, as the tasks' events name it: the call, this process and this host."""
    return f"{what} in process {os.getpid()} on {socket.gethostname()}"


class CancellableFuture(Future[T]):
    """A future whose ``cancel()`` means something beyond this process (see :class:`TaskFuture`)."""

    def __init__(self) -> None:
        super().__init__()
        self._ending = threading.Lock()

    def end_cancelled(self) -> None:
        """End cancelled, as ``Future.cancel`` does, and wake ``concurrent.futures.wait``/``as_completed``.

        ``Future.cancel`` alone leaves their waiters asleep until ``set_running_or_notify_cancel``,
        which an executor would call; these futures have no executor. The cancel call and the delivery
        of the CANCELLED task may both get here: the lock makes the second one a no-op.
        """
        with self._ending:
            if not self.cancelled() and Future.cancel(self):
                self.set_running_or_notify_cancel()


_warned_no_cancel = False


class TaskFuture(CancellableFuture["bytes | None"]):
    """The future of one task that ``run()`` submitted: its output, or the error it ended with.

    ``cancel()`` cancels the task on the server: a pending task at once, a running one by stopping its
    instance. It returns True once the task is CANCELLED (the future is then cancelled), False when the
    task finished first (its outcome arrives as usual). Until it is done the future stays pending, never
    "running": it can be cancelled all along.
    """

    def __init__(self, session: Session, created: TaskCreation | None) -> None:
        super().__init__()
        self.session = session
        self._created = created
        """The task's id once the server created it (run() submits in batches); set by :meth:`attach`
        before ``run()`` returns the future when the batch is still to be sent."""
        self._cancel_asked = False
        self._runs: LaneRuns | None = None
        """The session's lanes for runs, when the task was given to them (a cancel may find it queued)."""

    def attach(self, created: TaskCreation) -> None:
        """The creation of this future's task, given once, before ``run()`` returns the future."""
        self._created = created

    @property
    def task_id(self) -> str:
        """The task's id. ``run()`` submits in batches, so this waits for the server to create the task
        (at most ``CREATE_WAIT`` seconds) and raises the error that refused it, if one did."""
        return str(self._task_id())

    def _task_id(self) -> int:
        try:
            while True:
                created = self._created
                assert created is not None, "run() attaches the creation before returning the future"
                task_id = created.task_id(CREATE_WAIT)
                if not created._moved:  # (moved: from a lane's queue to the server's, which creates it)
                    return task_id
        except FutureTimeout:
            raise FlameError(
                FlameErrorCode.DEADLINE_EXCEEDED,
                f"a task of session {self.session.id} was not created by the server within {CREATE_WAIT:g} s",
            ) from None

    def cancel(self) -> bool:
        global _warned_no_cancel
        if self.done():
            return self.cancelled()
        runs = self._runs
        if runs is not None and runs.withdraw(self):  # still queued in this client for a lane: never ran
            self.end_cancelled()
            return True
        try:
            task_id = self.task_id  # submitted in a batch: its id first
        except FlameError as exc:
            if exc.code == FlameErrorCode.DEADLINE_EXCEEDED:
                raise
            return False  # it was never created: its future holds why
        self._cancel_asked = True
        deadline = time.monotonic() + CREATE_WAIT
        pause = 0.005
        while True:
            try:
                tasks = self.session.connection.cancel_tasks(
                    self.session.id, task_id, requested_by=requester("Future.cancel")
                )
                break
            except FlameError as exc:
                if exc.code == FlameErrorCode.NOT_FOUND and runs is not None and not self.done():
                    # Sent on a lane and not begun: the server learns of it when it begins (or the lane
                    # refuses it, and it ends cancelled here). Asked again until then.
                    if time.monotonic() < deadline:
                        self._wait_done(pause)
                        pause = min(2 * pause, 0.25)
                        task_id = self.task_id
                        continue
                    raise FlameError(
                        FlameErrorCode.DEADLINE_EXCEEDED,
                        f"task {task_id} of session {self.session.id} waits in its service process behind "
                        f"another task, which ran for more than {CREATE_WAIT:g} s: it is cancelled if it "
                        f"begins; cancel the task running there to stop both",
                    ) from None
                if self.done():
                    return self.cancelled()
                self._cancel_asked = False
                if exc.code != FlameErrorCode.UNIMPLEMENTED:
                    raise
                if not _warned_no_cancel:  # a Flame cluster: a future cannot be cancelled there
                    _warned_no_cancel = True
                    log.warning("%s", exc.message)
                return False
        if tasks[0].status.state != pb.TaskState.Cancelled:
            return False  # it finished before the cancel could take effect
        self.end_cancelled()
        return self.cancelled()

    def _wait_done(self, seconds: float) -> None:
        wait_futures([self], timeout=seconds)

    def set_result(self, result: bytes | None) -> None:
        try:  # (not contextlib.suppress: this runs for every task of run(), and a try costs nothing)
            super().set_result(result)
        except InvalidStateError:  # cancelled meanwhile: the late outcome is dropped
            return

    def set_exception(self, exception: BaseException | None) -> None:
        if self._cancel_asked and isinstance(exception, TaskCancelledError):
            self.end_cancelled()  # the cancel this future asked for: it ends cancelled, not with an error
            return
        with contextlib.suppress(InvalidStateError):
            super().set_exception(exception)


def task_failure(task: Task) -> FlameError:
    """The error a failed or cancelled task raises in the client."""
    if task.state.name == "CANCELLED":
        return TaskCancelledError(task)
    message = next(
        (e.message for e in reversed(task.events or []) if e.code == int(pb.TaskState.Failed) and e.message),
        "Task failed without error message",
    )
    return TaskFailedError(task, message)


def _purged(task_id: str, session_id: str, why: str) -> FlameError:
    """What asking for an output the server no longer keeps raises: never a None result."""
    return FlameError(
        FlameErrorCode.NOT_FOUND,
        f"the output of task {task_id} of session {session_id} is no longer kept: {why}; the server keeps "
        f"finished tasks' payloads for its payload_retention (FLAME_PAYLOAD_RETENTION)",
    )


def _outcome(task: Task) -> bytes | None:
    """A completed task's output, or the error it stands for."""
    if task.state.name == "SUCCEED":
        if task.is_purged():  # its output is gone
            why = next(e.message for e in reversed(task.events or []) if e.code == EVENT_PAYLOADS_PURGED)
            raise _purged(task.id, task.session_id, why or "purged")
        return task.output
    if task.is_completed():
        raise task_failure(task)
    raise FlameError(
        FlameErrorCode.UNAVAILABLE,
        f"the wait for task {task.id} ended while the task was {task.state.name}; the server may have stopped",
    )


LANE_INPUT_LIMIT = 64 << 20
"""Inputs up to this size go on a lane (one of 1 MiB or more as a file beside the lane's log, which this
client writes and the server then takes without a copy: ``flamepy_core.wire.lane_log``); a larger one goes
through the server, which hands it to the service process as a file rather than in a message, so that
neither holds two copies of it at once."""

_SUCCEED = int(pb.TaskState.Succeed)
"""A plain int: ``pb.TaskState.Succeed`` looks the name up in the enum's descriptor on every use."""
_STATUS = pb.TaskStatus.FromString


def _read_reply(reply: memoryview) -> tuple[bool, bytes | None]:
    """RunTask's answer (a serialized ``flame.v1.Task``) read where it arrived (``Connection.run_task``):
    ``(True, output)`` for a task that succeeded, the output copied out of the reply once, and the state
    read by protobuf from the status alone; ``(False, the whole reply)`` for any other, whose error
    carries the whole task (see :func:`_reply_outcome`)."""
    status, output = run_task_reply_parts(reply)
    if _STATUS(status).state == _SUCCEED:
        return True, output
    return False, bytes(reply)


def _reply_outcome(read: tuple[bool, bytes | None]) -> bytes | None:
    """The output of a task as :func:`_read_reply` read RunTask's answer, or its failure raised."""
    succeeded, data = read
    if succeeded:
        return data
    assert data is not None
    return _outcome(task_from_proto(pb.Task.FromString(data)))


def _settle_outcome(future: Future[bytes | None], outcome: ext_pb2.TaskOutcome, session_id: str) -> None:
    """Complete ``future`` from a WatchOutcomes entry."""
    state = outcome.state
    tid = str(outcome.task_id)
    if state == pb.TaskState.Succeed:
        if outcome.purged:  # read back from the store after the retention
            future.set_exception(_purged(tid, session_id, outcome.message or "purged"))
            return
        future.set_result(outcome.output if outcome.HasField("output") else None)
        return
    now = datetime.now(timezone.utc)
    if state == pb.TaskState.Cancelled:
        events = [Event(code=int(state), message=outcome.message or None, creation_time=now)]
        cancelled = Task(id=tid, session_id=session_id, state=TaskState.CANCELLED, creation_time=now, events=events)
        future.set_exception(TaskCancelledError(cancelled))
        return
    future.set_exception(_failed(tid, session_id, outcome.message, TaskState(int(state))))


def cancelled_unrun(session_id: str, why: str) -> TaskCancelledError:
    """The error of a ``run()`` future whose task was cancelled before the server ever had it (it waited
    in this client's queue for a lane: :mod:`flamepy_core.client.lane_runs`)."""
    now = datetime.now(timezone.utc)
    events = [Event(code=int(pb.TaskState.Cancelled), message=why, creation_time=now)]
    task = Task(id="", session_id=session_id, state=TaskState.CANCELLED, creation_time=now, events=events)
    return TaskCancelledError(task)


def _failed(task_id: str, session_id: str, message: str | None, state: TaskState = TaskState.FAILED) -> TaskFailedError:
    """The error of a task known by its outcome alone (a WatchOutcomes entry, a lane's answer): a ``Task``
    with the one event that says why, as the caller reads it."""
    message = message or "Task failed without error message"
    now = datetime.now(timezone.utc)
    task = Task(
        id=task_id,
        session_id=session_id,
        state=state,
        creation_time=now,
        completion_time=now,
        events=[Event(code=int(pb.TaskState.Failed), message=message, creation_time=now)],
    )
    return TaskFailedError(task, message)


_Submission = tuple["bytes | None", TaskCreation, "TaskFuture", "float | None"]
"""One ``run()`` waiting for its CreateTasks batch: its input, its creation, its future, its task timeout."""


def _no_task_timeout(connection: Connection) -> FlameError:
    return FlameError(
        FlameErrorCode.UNIMPLEMENTED,
        f"task_timeout is a flamepy extension (flamepy.ext.v1 CreateTasks), and the server at {connection.addr} "
        f"does not have it (a Flame cluster has no task timeout): leave task_timeout out, and bound the wait "
        f"with invoke(timeout=...) instead",
    )


def _checked_task_timeout(task_timeout: float | None) -> float | None:
    if task_timeout is None:
        return None
    return parse_task_timeout(task_timeout, "task_timeout")


class TaskSubmitter:
    """Coalesces one session's submissions into ``CreateTasks`` batches (see the module's docstring).

    ``submit`` returns the task's :class:`TaskCreation` at once. A submission made while nothing is in
    flight is sent at once (no added latency); those made while a batch is in flight wait for its answer
    and go together in the next one, in order. Once a batch is answered, each of its futures is handed on
    (:meth:`Session._created`) by the thread that received the answer.
    """

    def __init__(self, session: Session, watches: TaskWatches) -> None:
        self.session = session
        self._watches = watches
        self._lock = threading.Lock()
        self._answered_cond = threading.Condition(self._lock)
        """Notified when a batch's creations are settled (their waiters: ``TaskFuture.task_id``, flush)."""
        self._queue: list[_Submission] = []
        self._in_flight = False
        self._last: TaskCreation | None = None

    def submit(self, data: bytes | None, future: TaskFuture, task_timeout: float | None = None) -> TaskCreation:
        """Queue ``future``'s task; its creation (given to ``future`` by the caller before it is shared)."""
        creation = TaskCreation(self._answered_cond)
        future.attach(creation)
        with self._lock:
            self._queue.append((data, creation, future, task_timeout))
            self._last = creation
            if self._in_flight:
                return creation
            self._in_flight = True
            batch = self._take()
        self._send(batch)
        return creation

    def idle(self) -> bool:
        with self._lock:
            return not self._in_flight and not self._queue

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every submission made so far has its answer (created, or refused)."""
        with self._lock:
            last = self._last
        if last is not None:
            last.wait(timeout)

    def _take(self) -> list[_Submission]:
        """The next batch from the queue (called with the lock held)."""
        size = count = 0
        for data, _creation, _future, _timeout in self._queue:
            size += len(data) if data is not None else 0
            count += 1
            if count >= BATCH_MAX_TASKS or size >= BATCH_MAX_BYTES:
                break
        batch, self._queue = self._queue[:count], self._queue[count:]
        return batch

    def _send(self, batch: list[_Submission]) -> None:
        timeouts = [submission[3] for submission in batch]
        try:
            sent = self.session.connection.create_tasks_async(
                self.session.id,
                [submission[0] for submission in batch],
                timeouts if any(t is not None for t in timeouts) else None,
            )
        except FlameError as exc:
            sent = Future()
            sent.set_exception(exc)
        sent.add_done_callback(lambda done: self._answered(batch, done))

    def _settle(self, batch: list[_Submission], first_id: int, error: BaseException | None) -> None:
        """Record the batch's answer, wake its waiters, then hand each future on (outside the lock)."""
        with self._lock:
            for offset, (_data, creation, _future, _timeout) in enumerate(batch):
                creation._settle(first_id + offset, error)
            self._answered_cond.notify_all()
        session = self.session
        for _data, creation, future, _timeout in batch:
            session._created(creation, future)

    def _answered(self, batch: list[_Submission], done: Future[ext_pb2.CreateTasksResponse]) -> None:
        error = done.exception()
        if isinstance(error, FlameError) and error.code == FlameErrorCode.UNIMPLEMENTED:
            # An older or a Flame server: one CreateTask per task, off the channel's thread.
            self.session.connection.has_batches = False
            self._watches.pool().submit(self._create_one_by_one, batch)
        elif error is not None:
            self._settle(batch, 0, error)
        else:
            self._settle(batch, done.result().first_task_id, None)
        with self._lock:
            if not self._queue:
                self._in_flight = False
                return
            following = self._take()
        self._send(following)

    def _create_one_by_one(self, batch: list[_Submission]) -> None:
        for submission in batch:
            data, timeout = submission[0], submission[3]
            try:
                if timeout is not None:
                    raise _no_task_timeout(self.session.connection)
                task_id, error = int(self.session.connection.create_task(self.session.id, data).metadata.id), None
            except BaseException as exc:
                task_id, error = 0, exc
            self._settle([submission], task_id, error)


class SessionWatcher:
    """One WatchOutcomes stream completing the futures of every task ``run()`` submitted in a session.

    Results that arrive before their future is registered (the stream can be faster than the answer to
    CreateTasks) wait in ``_early``. If the stream breaks it is reopened after the lowest pending id; after
    ``RECONNECTS`` failed attempts the pending futures fail with the error.
    """

    RECONNECTS = 5
    EARLY_LIMIT = 100_000

    def __init__(self, session: Session, watches: TaskWatches) -> None:
        self.session = session
        self._watches = watches
        self._lock = threading.Lock()
        self._pending: dict[int, Future[bytes | None]] = {}
        self._early: dict[int, ext_pb2.TaskOutcome] = {}
        self._thread: threading.Thread | None = None
        self._unsupported = False

    def register(self, task_id: int, future: Future[bytes | None]) -> tuple[bool, ext_pb2.TaskOutcome | None]:
        """Take charge of ``future``: ``(False, None)`` when the server lacks WatchOutcomes (watch per task);
        ``(True, snapshot)`` when its result arrived already (the caller settles it, outside any lock)."""
        with self._lock:
            if self._unsupported:
                return False, None
            early = self._early.pop(task_id, None)
            if early is None:
                self._pending[task_id] = future
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, args=(task_id - 1,), name=f"flame-watch-{self.session.id}", daemon=True
                    )
                    self._thread.start()
            return True, early

    def idle(self) -> bool:
        """No task awaited and no stream open: the watcher can be dropped."""
        with self._lock:
            return self._thread is None and not self._pending

    def _run(self, after: int) -> None:
        try:
            self._watch(after)
        finally:
            self._watches.retire(self)

    def _watch(self, after: int) -> None:
        failures = 0
        while True:
            try:
                for batch in self.session.connection.watch_outcomes(self.session.id, after):
                    failures = 0
                    self._deliver(batch.tasks)
                error: FlameError | None = None
            except FlameError as exc:
                error = exc
            with self._lock:
                if error is not None and error.code == FlameErrorCode.UNIMPLEMENTED:
                    self._unsupported = True
                    self.session.connection.has_batches = False
                    pending, self._pending = self._pending, {}
                    self._thread = None
                elif not self._pending:
                    self._thread = None
                    return
                else:
                    pending = {}
                    after = min(self._pending) - 1
            if pending:  # the server has no WatchOutcomes: watch these one by one
                for tid, future in pending.items():
                    self._watches.pool().submit(_await_into, self.session, tid, future)
                return
            if error is None:
                # The stream ended (the session closed): settle what is left from the tasks' final state.
                self._settle_remaining()
                return
            failures += 1
            if failures > self.RECONNECTS:
                self._fail_all(error)
                return
            time.sleep(min(2.0, 0.1 * 2**failures))

    def _deliver(self, outcomes: Iterable[ext_pb2.TaskOutcome]) -> None:
        ready: list[tuple[Future[bytes | None], ext_pb2.TaskOutcome]] = []
        with self._lock:
            for outcome in outcomes:
                future = self._pending.pop(outcome.task_id, None)
                if future is None:
                    if len(self._early) < self.EARLY_LIMIT:
                        self._early[outcome.task_id] = outcome
                else:
                    ready.append((future, outcome))
        session_id = self.session.id
        for future, outcome in ready:
            _settle_outcome(future, outcome, session_id)

    def _settle_remaining(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._thread = None
        for tid, future in pending.items():
            try:
                _settle(future, self.session.connection.get_task_message(self.session.id, str(tid)))
            except FlameError as exc:
                future.set_exception(exc)

    def _fail_all(self, error: FlameError) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._thread = None
        for future in pending.values():
            future.set_exception(error)


def _settle(future: Future[bytes | None], snapshot: pb.Task) -> None:
    try:
        future.set_result(_outcome(task_from_proto(snapshot)))
    except BaseException as exc:
        future.set_exception(exc)


def _await_into(session: Session, task_id: int, future: Future[bytes | None]) -> None:
    try:
        future.set_result(session._await(str(task_id)))
    except BaseException as exc:
        future.set_exception(exc)


class TaskWatches:
    """What one connection uses to complete the futures of ``run()`` (and of a timed ``invoke()``).

    A bounded pool, made on first use, for per-task watches against a server without ``flamepy.ext.v1``;
    and one :class:`SessionWatcher` per session with tasks in flight, dropped as soon as it has nothing
    left to watch (its stream ends when the session closes), so a long-lived process that runs many
    sessions keeps only the watchers of live ones. Owned by :class:`Connection` (``connection.watches``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._watchers: dict[str, SessionWatcher] = {}
        self._submitters: dict[str, TaskSubmitter] = {}
        self._refused: dict[str, FlameError] = {}
        """Sessions the server said are closed or gone (newest last): run() raises at once for them."""

    REFUSED_KEPT = 10_000

    def refuse(self, session_id: str, error: FlameError) -> None:
        """Remember that ``session_id`` takes no more tasks (it was closed, or does not exist)."""
        with self._lock:
            self._refused.pop(session_id, None)
            self._refused[session_id] = error
            while len(self._refused) > self.REFUSED_KEPT:
                del self._refused[next(iter(self._refused))]

    def refusal(self, session_id: str) -> FlameError | None:
        """Why ``session_id`` takes no tasks, when this connection knows it; else None."""
        return self._refused.get(session_id)

    def submit(
        self, session: Session, data: bytes | None, future: TaskFuture, task_timeout: float | None = None
    ) -> TaskCreation:
        """Queue ``future``'s task for creation in the session's next CreateTasks batch; its creation."""
        with self._lock:
            submitter = self._submitters.get(session.id)
            if submitter is None:
                submitter = self._submitters[session.id] = TaskSubmitter(session, self)
            else:
                # Drop idle submitters of other sessions as we go: a process that runs many sessions
                # keeps only the live ones.
                for sid in [sid for sid, s in self._submitters.items() if sid != session.id and s.idle()]:
                    del self._submitters[sid]
        return submitter.submit(data, future, task_timeout)

    def flush(self, session_id: str) -> None:
        """Wait until the submissions made so far in ``session_id`` are answered."""
        with self._lock:
            submitter = self._submitters.get(session_id)
        if submitter is not None:
            submitter.flush()

    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=WATCH_WORKERS, thread_name_prefix="flame-watch")
            return self._pool

    def add(self, session: Session, task_id: int, future: Future[bytes | None]) -> bool:
        """Hand ``future`` to the session's watcher; False when the server lacks WatchOutcomes."""
        with self._lock:  # atomic with retire(): a future never lands on a watcher being dropped
            watcher = self._watchers.get(session.id)
            if watcher is None:
                watcher = self._watchers[session.id] = SessionWatcher(session, self)
            accepted, early = watcher.register(task_id, future)
        if early is not None:
            _settle_outcome(future, early, session.id)
        return accepted

    def retire(self, watcher: SessionWatcher) -> None:
        """Drop ``watcher`` if it has nothing left to watch (called as its thread ends)."""
        with self._lock:
            if self._watchers.get(watcher.session.id) is watcher and watcher.idle():
                del self._watchers[watcher.session.id]

    def sessions(self) -> list[str]:
        """Ids of the sessions that have a watcher now (diagnostics and tests)."""
        with self._lock:
            return list(self._watchers)

    def close(self) -> None:
        """Let the pool's threads go once their watches end (the connection is closing)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


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
        wanted = lanes_wanted()
        self._lane = Lane(connection, self.id) if wanted else None
        """The session's lane (:mod:`flamepy_core.client.lane`; none with ``FLAMEPY_LANES=0``): warm invokes
        sent to its service process directly."""
        self._runs = (
            LaneRuns(
                connection,
                self.id,
                self._through_server,
                self._lane_run_lost,
                lambda tid, message: _failed(str(tid), self.id, message),
                partial(cancelled_unrun, self.id),
            )
            if wanted
            else None
        )
        """Its lanes for ``run()`` (:mod:`flamepy_core.client.lane_runs`), while it has all its instances."""

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
        return _outcome(task_from_proto(last))

    def run(self, input_data: bytes | None, *, task_timeout: float | None = None) -> TaskFuture:
        """Submit a task and return a future of its output; ``future.cancel()`` cancels the task on the
        server (see :class:`TaskFuture`).

        ``task_timeout`` (seconds, flamepy's server only) bounds how long the task may run once an
        instance starts it, instead of the application's ``spec.task_timeout``: past it the task fails
        ("exceeded the task timeout of N s") and its instance is stopped and replaced.

        Against flamepy's server the task is created in a batch with the session's other submissions
        (see the module's docstring): an error creating it completes the future. Once this connection
        knows the session takes no tasks (it closed it, or the server refused a submission because the
        session is closed or gone), ``run()`` raises that error at once. Against Flame's, the task is
        created before this returns (errors raise here) and watched on a bounded pool shared by the
        connection.
        """
        if input_data is not None and not isinstance(input_data, (bytes, bytearray, memoryview)):
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "input_data must be bytes in core API")
        refused = self.connection.watches.refusal(self.id)
        if refused is not None:
            raise FlameError(refused.code, refused.message)
        data = bytes(input_data) if input_data is not None else None
        task_timeout = _checked_task_timeout(task_timeout)
        connection = self.connection
        if connection.has_extensions is not False and connection.has_batches is not False:
            future = TaskFuture(self, None)
            runs = self._runs
            on_lanes = runs is not None and task_timeout is None and (data is None or len(data) < FILE_BYTES)
            if on_lanes and runs is not None and runs.submit(data, future):
                future._runs = runs  # (set before the caller has the future: its cancel looks here)
                return future
            connection.watches.submit(self, data, future, task_timeout)
            return future
        if task_timeout is not None:
            raise _no_task_timeout(connection)
        task = self.create_task(data)
        future = TaskFuture(self, TaskCreation.known(int(task.id)))
        connection.watches.pool().submit(_await_into, self, int(task.id), future)
        return future

    def _through_server(self, data: bytes | None, future: TaskFuture) -> None:
        """A task of ``run()`` that will not run on a lane: created by the server, in a batch."""
        self.connection.watches.submit(self, data, future)

    def _lane_run_lost(self, tid: int, data: bytes | None, future: TaskFuture) -> bool:
        """A task of ``run()`` whose lane broke while it was in flight (on a pool thread): finished, its
        outcome; begun, the server runs it again, and the future waits for it there (on another of the
        pool's threads); True when the server never heard of it: it never began (the caller queues it
        again)."""
        try:
            try:
                task = self.connection.get_task(self.id, str(tid))
            except FlameError as exc:
                if exc.code != FlameErrorCode.NOT_FOUND:
                    raise
                task = None
            if task is None or task.input != data:  # (another task's id: ours never began)
                return True
            if task.is_completed():
                future.set_result(_outcome(task))
                return False
            began = len(task.events or [])
            # Queued again by the server once it learns the lane's instance died: wait until it has (a
            # new event), so that the tasks behind it, sent again by the caller, go after it, in order.
            deadline = time.monotonic() + RERUN_WAIT
            while time.monotonic() < deadline:
                now = self.connection.get_task(self.id, str(tid))
                if now.state != TaskState.RUNNING or len(now.events or []) > began:
                    break
                time.sleep(0.02)
            self.connection.watches.pool().submit(_await_into, self, tid, future)
        except BaseException as exc:
            future.set_exception(exc)
        return False

    def _created(self, created: TaskCreation, future: Future[bytes | None]) -> None:
        """The answer to the creation of ``future``'s task: the future fails with a refusal, or is watched."""
        error = created.exception()
        if error is not None:
            if isinstance(error, FlameError) and error.code in (FlameErrorCode.INVALID_STATE, FlameErrorCode.NOT_FOUND):
                self.connection.watches.refuse(self.id, error)
            future.set_exception(error)
            return
        tid = created.task_id(0)
        if not self.connection.watches.add(self, tid, future):
            self.connection.watches.pool().submit(_await_into, self, tid, future)

    def invoke(
        self, input_data: bytes | None, timeout: float | None = None, *, task_timeout: float | None = None
    ) -> bytes | None:
        """Run one task and wait for its output; ``timeout`` (seconds) bounds the wait, default none.

        Against flamepy's server this is one round trip (RunTask); against Flame's, CreateTask + WatchTask.
        ``task_timeout`` bounds the task itself, as in :meth:`run` (the wait then ends with its failure);
        ``timeout`` only bounds how long this call waits, and the task keeps running past it.
        """
        if input_data is not None and not isinstance(input_data, (bytes, bytearray, memoryview)):
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "input_data must be bytes in core API")
        if task_timeout is not None:  # RunTask carries Flame's CreateTaskRequest: the batched path has room
            submitted = self.run(input_data, task_timeout=task_timeout)
            try:
                with self._waiting():
                    return submitted.result(timeout=timeout)
            except FutureTimeout:
                raise FlameError(
                    FlameErrorCode.DEADLINE_EXCEEDED,
                    f"a task of session {self.id} did not finish within {timeout} s (it keeps running)",
                ) from None
        lane = self._lane
        if lane is not None and (input_data is None or len(input_data) <= LANE_INPUT_LIMIT):
            with self._waiting():
                answer = lane.invoke(None if input_data is None else bytes(input_data), timeout)
            if isinstance(answer, Task):  # the lane broke while it ran: the server has the task
                if answer.is_completed():
                    return _outcome(answer)
                return self._await_within(answer.id, timeout)  # run again by the server, as any task so lost
            if answer is not NOT_TAKEN:
                if answer.failure is not None:
                    raise _failed(str(answer.task_id), self.id, bound_failure_text(answer.failure))
                return answer.output
        if self.connection.has_extensions is not False:
            try:
                with self._waiting():
                    done = self.connection.run_task(
                        self.id, None if input_data is None else bytes(input_data), _read_reply, timeout
                    )
            except FlameError as exc:
                if exc.code != FlameErrorCode.UNIMPLEMENTED:
                    raise
                self.connection.has_extensions = False
            else:
                self.connection.has_extensions = True
                return _reply_outcome(done)
        task = self.create_task(input_data)
        return self._await_within(task.id, timeout)

    def _await_within(self, task_id: str, timeout: float | None) -> bytes | None:
        """The output of one of the session's tasks once it finishes (its failure raised); ``timeout`` bounds
        the wait."""
        if timeout is None:
            with self._waiting():
                return self._await(task_id)
        future = self.connection.watches.pool().submit(self._await, task_id)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            raise FlameError(
                FlameErrorCode.DEADLINE_EXCEEDED,
                f"task {task_id} of session {self.id} did not finish within {timeout} s (it keeps running)",
            ) from None

    def _waiting(self) -> contextlib.AbstractContextManager[object]:
        """While ``invoke`` waits: the progress line on a terminal, and, when this module logs at INFO, one
        line after ``STARTING_NOTICE_DELAY`` s saying which instance is being started (the application, its
        command, where its log is). Neither costs a thread otherwise."""
        shown = waiting(self._waiting_for_instance)
        if not log.isEnabledFor(logging.INFO):
            return shown
        stack = contextlib.ExitStack()
        stack.enter_context(shown)
        timer = threading.Timer(STARTING_NOTICE_DELAY, self._log_starting)
        timer.daemon = True
        timer.start()
        stack.callback(timer.cancel)
        return stack

    def _log_starting(self) -> None:
        """Log at INFO what this session waits for, when no task of it runs yet (never raises)."""
        try:
            notice = self._starting_notice()
        except Exception:  # a notice must never break what it describes
            log.debug("could not tell what session %s waits for", self.id, exc_info=True)
            return
        if notice:
            log.info("%s", notice)

    def _starting_notice(self) -> str | None:
        status = self.connection.call(
            "GetSession", fe.GetSessionRequest(session_id=self.id), "get session", timeout=5.0
        ).status
        if status.running or not status.pending:
            return None
        app = self.connection.get_application(self.application)
        command = " ".join([app.command or "", *(app.arguments or [])]).strip() if app else ""
        where = f" in {app.working_directory}" if app and app.working_directory else ""
        starting = [
            i
            for i in self.connection.list_instances()
            if i.session_id == self.id and i.state == pb.ExecutorState.ExecutorVoid
        ]
        text = f"session {self.id} waits for an instance of application {self.application}"
        if not starting:
            waits = [e.message for e in status.events if e.code in (_EVENT_WAITING_FOR_CAPACITY, _EVENT_BIND_FAILED)]
            return text + (f": {waits[-1].splitlines()[0]}" if waits else " (none is starting yet)")
        inst = starting[0]
        text += f": instance {inst.id}" + (f" (pid {inst.pid})" if inst.pid else "") + " is starting"
        text += f", command `{command}`{where}" if command else ""
        if self.connection.local_home is not None:
            logs = self.connection.local_home / "logs" / "instances" / f"{self.application}-{inst.id}"
            text += f"; its log: {logs}.err (stdout: {logs}.out)"
        else:
            text += f"; its log is on the server, logs/instances/{self.application}-{inst.id}.err under its FLAME_HOME"
        return text

    def _waiting_for_instance(self, elapsed: float) -> str | None:
        """The progress line while ``invoke`` waits: only while no task of the session runs yet."""
        status = self.connection.call(
            "GetSession", fe.GetSessionRequest(session_id=self.id), "get session", timeout=5.0
        ).status
        if status.running or not status.pending:
            return None
        line = f"flamepy: waiting for an instance of {self.application} to start ({elapsed:.0f} s)"
        failures = [e for e in status.events if e.code == _EVENT_BIND_FAILED]
        if failures:
            line += f"; {len(failures)} failed to start: {failures[-1].message.splitlines()[0][:80]}"
        return line

    def cancel_task(self, task_id: str) -> Task:
        """Cancel a task of this session; returns it once final (without its payloads).

        A pending task is cancelled at once; a running one by stopping its instance (SIGTERM, then
        SIGKILL after the server's ``shutdown_grace``; a fresh instance takes the session's other tasks).
        The task comes back CANCELLED, or in the state it reached first when it finished before the cancel
        could take effect. Needs flamepy's server (``UNIMPLEMENTED`` from a Flame cluster).
        """
        tasks = self.connection.cancel_tasks(self.id, str(task_id), requested_by=requester("Session.cancel_task"))
        return task_from_proto(tasks[0])

    def close(self, force: bool = False) -> None:
        """Close the session. Refused while a task runs, unless ``force``: its tasks are cancelled first."""
        what = requester("Session.close(force=True)")
        if self._lane is not None:
            self._lane.close()
        if self._runs is not None:
            self._runs.close(force=force)  # (what waits in its queue goes through the server, or is cancelled)
            self.connection.watches.flush(self.id)
        closed = self.connection.close_session(self.id, force=force, requested_by=what)
        self.state = closed.state
