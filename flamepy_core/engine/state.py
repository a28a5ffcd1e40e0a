"""Applications, sessions and tasks: the engine's live state, with Flame's rules and error texts.

Live state is held as flame.v1 protobuf messages (the wire format), so answering a call is a
``SerializeToString`` away and the store writes the same bytes. One lock guards everything; each session
has its own condition so callers waiting on one session (``take_task``, a close) do not wake for
another's news. Watch streams wait on nothing: they are subscriptions, fed by whoever changes what they
watch (see :mod:`.watches`), so an open watch holds no thread. Closed sessions keep their summary in
memory but their tasks only in the store.

What a client is told is committed first (see :mod:`.store`):

* a task created with ``CreateTask`` or ``CreateTasks`` exists for everyone (its id answered, queued for
  an instance) only once its row is committed; a creation the store refuses is withdrawn and the caller
  gets the store's error;
* a task created by ``RunTask`` acknowledges nothing but its result, so its creation is not committed
  before it runs: it is queued lazily and rides with the commit of its result (one transaction per
  task), or with any commit before. A creation the store refuses is withdrawn all the same (the caller
  gets the store's error, a result that comes later is dropped); a crash before the commit loses a task
  nobody was told of, and its caller gets an error;
* a task's final state (SUCCEED, FAILED, CANCELLED) is applied in memory, delivered to waiters and
  session watchers, only from the commit callback of its row. Until then the task stays RUNNING in
  memory; its result is written durably (retried until the store accepts it). In a burst, a result
  nobody waits on alone may wait ``RESULT_LINGER`` for the results behind it, to share their commit;
* sessions, applications, closing: the change is written, then applied (a refused write changes
  nothing).

A task becoming RUNNING, a retry and an event are written lazily: they are nobody's acknowledgement, and
they share the next group commit.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from flamepy_core import validation
from flamepy_core.config import ENV_TASK_TIMEOUT, parse_task_timeout
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.instances import InstanceInfo
from flamepy_core.engine.lanes import LaneBook, LaneLease, LaneRecord
from flamepy_core.engine.payload_files import PayloadFile, PayloadFiles
from flamepy_core.engine.store import OnDone, Op, QueuedWrite, Store, session_deletion
from flamepy_core.engine.watches import TERMINAL, SessionWatch, TaskWatch, Watch, WatchFeed, claim
from flamepy_core.failure_text import bound_failure_text
from flamepy_core.transport_kit import answering
from flamepy_core.wire.lane_log import LaneResult
from flamepy_core.wire.payload_handoff import Mapped
from flamepy_core.wire.payload_messages import ran_task_status
from flamepy_core.wire.proto import types_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_MAX_INSTANCES = 1_000_000
EVENT_TASK_PENDING = 0
EVENT_TASK_RUNNING = 1
EVENT_TASK_SUCCEED = 2
EVENT_TASK_FAILED = 3
EVENT_TASK_CANCELLED = 4
EVENT_BIND_FAILED = 1001
EVENT_RETRY_LIMIT = 1002
EVENT_NO_EXECUTOR = 1003
"""flamepy's session event: no executor of the application's shim exists here, so its tasks wait."""
EVENT_CANCEL_REQUESTED = 1004
"""Task event: someone asked to cancel the task while it ran; its instance is being stopped."""
EVENT_WAITING_FOR_CAPACITY = 1006
"""flamepy's session event: the machine-wide cap on instance processes is reached, so its tasks wait."""
RESULT_LINGER = 0.002
"""Seconds a task's result may wait to be committed with the results behind it, when more of its
session's tasks are in flight and no caller waits for this one alone (``run()`` bursts; never
``invoke``): the transaction and the watchers' message are then shared by many results."""
FORCE_CLOSE_ROUNDS = 3
WATCH_SWEEP = 1.0
"""Seconds between checks that the callers of open watch streams are still there (see sweep_watches)."""
"""Rounds of cancel-then-close a forced close tries while new tasks keep starting in the session."""

OPEN = pb.SessionState.Open
CLOSED = pb.SessionState.Closed
PENDING, RUNNING, SUCCEED, FAILED, CANCELLED = (
    pb.TaskState.Pending,
    pb.TaskState.Running,
    pb.TaskState.Succeed,
    pb.TaskState.Failed,
    pb.TaskState.Cancelled,
)
_COUNTER: dict[int, str] = {
    PENDING: "pending",
    RUNNING: "running",
    SUCCEED: "succeed",
    FAILED: "failed",
    CANCELLED: "cancelled",
}

_INSERT_TASK = "INSERT OR REPLACE INTO tasks (session_id, id, state, input, output, status) VALUES (?,?,?,NULL,NULL,?)"
_INSERT_TASK_WITH_INPUT = (
    "INSERT OR REPLACE INTO tasks (session_id, id, state, input, output, status) VALUES (?,?,?,?,NULL,?)"
)
_INSERT_FINAL_TASK = (
    "INSERT OR REPLACE INTO tasks (session_id, id, state, input, output, status, finished) VALUES (?,?,?,?,?,?,?)"
)
"""A warm lane task's one row when its creation was not committed yet: created and final at once."""
_UPDATE_TASK = "UPDATE tasks SET state = ?, status = ?, finished = ? WHERE session_id = ? AND id = ?"
_UPDATE_TASK_WITH_OUTPUT = (
    "UPDATE tasks SET state = ?, status = ?, finished = ?, output = ? WHERE session_id = ? AND id = ?"
)
INLINE_PAYLOAD_BYTES = 256
"""A payload this size or smaller is kept in its task's own row (``tasks.input``/``output``) rather than
a ``task_payloads`` row: a warm invoke's commit then writes three pages instead of five (the task's, the
session's counts, the retention index), 39 -> 28 µs of CPU alone, and a ``run()`` task's share of a group
commit 15 -> 11 µs. Larger ones keep rows of their own, so that a change of state does not rewrite them
(sqlite rewrites a whole row on every update) and the task rows stay small for scans."""
_SAVE_PAYLOAD = "INSERT OR REPLACE INTO task_payloads (session_id, id, kind, data) VALUES (?, ?, ?, ?)"
_SAVE_PAYLOAD_FILE = (
    "INSERT OR REPLACE INTO task_payloads (session_id, id, kind, file, file_size, data) VALUES (?, ?, ?, ?, ?, X'')"
)
"""A large payload: its row names the file that holds it (see engine.payload_files)."""
INPUT, OUTPUT = 0, 1
"""``task_payloads.kind``: a task's input and output are rows of their own, each written once, so a change
of state rewrites a small row, not the payloads (sqlite rewrites a whole row on every update)."""
_SELECT_TASKS = (
    "SELECT t.id, COALESCE(i.data, t.input), i.file, i.file_size, COALESCE(o.data, t.output), o.file, o.file_size, "
    "t.status FROM tasks t "
    "LEFT JOIN task_payloads i ON i.session_id = t.session_id AND i.id = t.id AND i.kind = 0 "
    "LEFT JOIN task_payloads o ON o.session_id = t.session_id AND o.id = t.id AND o.kind = 1 "
    "WHERE t.session_id = ?"
)
"""Tasks with their payloads, each as its bytes or as a file and its size (stores written before the split
keep them in ``tasks.input``/``output``): rows for :func:`_task_from_row`."""
_DELETE_TASK = "DELETE FROM tasks WHERE session_id = ? AND id = ?"
_DELETE_PAYLOADS = "DELETE FROM task_payloads WHERE session_id = ? AND id = ?"
_DROP_INPUT = f"DELETE FROM task_payloads WHERE session_id = ? AND id = ? AND kind = {INPUT}"
_PAYLOAD_FILES_OF_SESSION = "SELECT file FROM task_payloads WHERE session_id = ? AND file IS NOT NULL"
_SAVE_SESSION = "INSERT OR REPLACE INTO sessions (id, application, state, data) VALUES (?, ?, ?, ?)"

T = TypeVar("T")
TaskWaiter = Callable[[pb.Task], None]
"""Called, outside the engine lock, with a task once its final state is committed."""


EARLY_ANSWER_BYTES = 64 << 10
"""A RunTask answer this small (its output) is sent before the rest of its task's final state is applied,
with the engine lock held (``Engine._finished``)."""


class OutputWaiter(NamedTuple):
    """A waiter given the task's output itself, beside the task (RunTask's answer is built from both).

    Why: protobuf copies a bytes field in when it is set and out again each time it is read, two copies
    of a 16 MiB output that nobody else reads when the session has no watcher. With only such waiters,
    the engine leaves the output out of the task's message."""

    call: Callable[[pb.Task, Mapped | None, bytes], None]
    """Given the output as it came: ``bytes``, or the mapping of the payload file its service process wrote
    (``payload_handoff.map_payload_file``), for a reply written from it; and the task's final status,
    serialized, which its message may not show yet (RunTask's answer leaves before the task's final state
    is applied to it: see ``Engine._finished``)."""


Waiter = TaskWaiter | OutputWaiter
Created = Callable[[list[pb.Task] | None, FlameError | None], None]
"""Called, outside the engine lock, with the created tasks once committed, or with why they were not."""


def _created_then_finished(withdraw: OnDone | None, finished: OnDone, error: FlameError | None) -> None:
    """The callback of a warm task's creation refilled with its final row (``Engine._finalize``): refused,
    the task is withdrawn, as its creation alone would have been; committed, its final state is applied."""
    if error is None:
        finished(None)
    elif withdraw is not None:
        withdraw(error)


def _task_from_row(files: PayloadFiles, session_id: str, row: tuple[Any, ...]) -> pb.Task:
    """A task as the store keeps it (a row of ``_SELECT_TASKS``): the id, the input and output (inline or
    in a file), and the status message. A payload file that is missing or short raises a FlameError
    naming the file."""
    tid, inp, inp_file, inp_size, out, out_file, out_size, status = row
    task = pb.Task()
    task.metadata.id = str(tid)
    task.metadata.name = str(tid)
    task.spec.session_id = session_id
    if inp_file is not None:
        inp = files.read(inp_file, inp_size, f"the input of task {tid} of session {session_id}")
    if inp is not None:
        task.spec.input = inp
    if out_file is not None:
        out = files.read(out_file, out_size, f"the output of task {tid} of session {session_id}")
    if out is not None:
        task.spec.output = out
    task.status.CopyFrom(pb.TaskStatus.FromString(status))
    return task


def echo_input(task: pb.Task, task_input: bytes | None) -> pb.Task:
    """A copy of a task just created from ``task_input``, with that input: CreateTask echoes it, as Flame's
    does, though a large input lives in its payload file only (``SessionEntry.input_files``)."""
    copy = pb.Task()
    copy.CopyFrom(task)
    if task_input is not None and not copy.spec.HasField("input"):
        copy.spec.input = task_input
    return copy


def reply_task(task: pb.Task) -> pb.Task:
    """What a caller waiting for a task reads: its id, state, output and events; not its input back."""
    reply = pb.Task()
    reply.metadata.id = task.metadata.id
    reply.metadata.name = task.metadata.name
    reply.spec.session_id = task.spec.session_id
    if task.spec.HasField("output"):
        reply.spec.output = task.spec.output
    reply.status.CopyFrom(task.status)
    return reply


def _trim_completions(entry: SessionEntry) -> None:
    """Drop the completions every watcher has read (all of them when nobody watches)."""
    low = min((w.position for w in entry.watches.values()), default=entry.completions_offset + len(entry.completions))
    drop = low - entry.completions_offset
    if drop > 0:
        del entry.completions[:drop]
        entry.completions_offset = low


def task_key(session_id: str, task_id: int) -> tuple[str, int]:
    """What names a task's call to its instance, to :func:`flamepy_core.transport_kit.answering`."""
    return (session_id, task_id)


def now_ms() -> int:
    return int(time.time() * 1000)


class SchedulerHooks(Protocol):
    """What the engine tells the scheduler. Called without the engine lock held."""

    def tasks_pending(self, session_id: str) -> None: ...

    def session_opened(self, session_id: str) -> None:
        """A session was created without ``min_instances``: its first task is likely to follow."""
        ...

    def session_closed(self, session_id: str) -> None: ...

    def application_removed(self, name: str) -> None: ...

    def instances(self) -> list[InstanceInfo]:
        """Every instance process at this moment (cheap: for listings and live views)."""
        ...

    def run_warm(self, session_id: str, data: bytes | None, waiter: OutputWaiter, on_created: Created) -> bool:
        """RunTask on a session with an idle instance: send the task to that instance now, and create it
        meanwhile (:meth:`Engine.start_warm`); False (nothing done) when the general path must take it."""
        ...

    def cancel_running(self, session_id: str, task_id: int, reason: str) -> bool:
        """Stop the instance running this task, because the task was cancelled; False if none runs it.

        Must not block. When the instance is gone, report the task as for any lost instance
        (``retry_task``): the engine records it CANCELLED instead of retrying it. A result that comes
        back first is kept (the task finished before it could be cancelled). On False the engine records
        the task CANCELLED at once and drops whatever result comes later.
        """
        ...

    def open_lane(self, session_id: str, *, for_runs: bool = False, renew: bytes = b"") -> LaneLease:
        """Lend the session's idle instance to the caller (``OpenLane``, :mod:`.lanes`), or raise
        INVALID_STATE saying why not."""
        ...

    def take_lanes_back(self, session_id: str, timeout: float) -> bool:
        """Close the session's lanes and record what they ran; False when a lane's task still ran after
        ``timeout`` s."""
        ...


class _NoScheduler:
    def tasks_pending(self, session_id: str) -> None:
        pass

    def session_opened(self, session_id: str) -> None:
        pass

    def session_closed(self, session_id: str) -> None:
        pass

    def application_removed(self, name: str) -> None:
        pass

    def instances(self) -> list[InstanceInfo]:
        return []

    def run_warm(self, session_id: str, data: bytes | None, waiter: OutputWaiter, on_created: Created) -> bool:
        return False

    def cancel_running(self, session_id: str, task_id: int, reason: str) -> bool:
        return False

    def open_lane(self, session_id: str, *, for_runs: bool = False, renew: bytes = b"") -> LaneLease:
        raise FlameError(FlameErrorCode.INVALID_STATE, f"no lane for session {session_id}: no scheduler")

    def take_lanes_back(self, session_id: str, timeout: float) -> bool:
        return True


@dataclass
class Capacity:
    """What this machine can give one instance; a session asking for more is refused up front."""

    cpu: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory: int = field(
        default_factory=lambda: (
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 1 << 34
        )
    )
    gpu: int = 0


class RunningRows:
    """The RUNNING rows of the tasks one batch started (:meth:`Engine.start_many`), queued as one write whose
    statements are made when a commit takes it (``Store.enqueue_rows``): a task whose final row is queued
    before then is left out (:meth:`discard`), as the final row overwrites it anyway. A write per task cost
    a queued write, and a ``Store.drop`` once its result came, for nearly every task of a ``run()``."""

    __slots__ = ("_lock", "_rows")

    def __init__(self) -> None:
        self._rows: dict[int, Op] = {}
        self._lock = threading.Lock()  # (a commit takes the rows on its own thread)

    def add(self, tid: int, op: Op) -> None:
        self._rows[tid] = op

    def __bool__(self) -> bool:
        return bool(self._rows)

    def discard(self, tid: int) -> None:
        """Leave task ``tid``'s row out, unless a commit took the rows already."""
        with self._lock:
            self._rows.pop(tid, None)

    def take(self) -> list[Op]:
        """The rows left, for the commit that takes the write (once)."""
        with self._lock:
            rows, self._rows = list(self._rows.values()), {}
        return rows


@dataclass(eq=False)
class SessionEntry:
    """A live session: its message, its tasks in flight and its queue of pending task ids."""

    message: pb.Session
    cond: threading.Condition
    tasks: dict[int, pb.Task] = field(default_factory=dict)
    """Pending and running tasks (committed), and finished ones until their final state is committed."""
    pending: deque[int] = field(default_factory=deque)
    attempts: dict[int, int] = field(default_factory=dict)
    next_id: int = 1
    finishing: set[int] = field(default_factory=set)
    """Tasks whose final state is being committed: no longer retried or cancelled."""
    cancelling: dict[int, str] = field(default_factory=dict)
    """Running tasks being cancelled, and by whom: their instances are being stopped; they end CANCELLED
    unless they succeed first."""
    timeouts: dict[int, float] = field(default_factory=dict)
    """Pending and running tasks created with a task timeout of their own (seconds), by id."""
    waiters: dict[int, list[Waiter]] = field(default_factory=dict)
    sleepers: int = 0
    """Threads in :meth:`sleep` now (``close_session``, ``take_task``): :meth:`wake` notifies only when there
    are some, since ``notify_all`` runs Python code even when nobody waits, and several changes of every
    task wake."""
    closing: bool = False
    """A close is being committed: no new tasks, no dispatch."""
    completions: list[pb.Task] = field(default_factory=list)
    """Tasks in the order they completed, kept only while a session watcher has not read them yet."""
    completions_offset: int = 0
    """How many completions were dropped from the front of ``completions`` (positions are absolute)."""
    watches: dict[int, SessionWatch] = field(default_factory=dict)
    """The session's watchers (WatchOutcomes, WatchSession), by token; each knows the absolute position in
    ``completions`` it has read up to (see :mod:`.watches`)."""
    task_watches: dict[int, list[TaskWatch]] = field(default_factory=dict)
    """Watchers of one task each (WatchTask), by task id."""
    running_writes: dict[int, QueuedWrite | RunningRows] = field(default_factory=dict)
    """The queued write of each running task's RUNNING row (or the rows of the batch it started with):
    dropped when its final state is queued before a commit took it (the final row overwrites it in the same
    transaction)."""
    creations: dict[int, tuple[QueuedWrite, bytes | None]] = field(default_factory=dict)
    """The queued creation (and the input in its row) of each warm lane task (``Engine.start_warm``) whose
    input is in its row: its final state is written into that same row, one statement instead of two,
    when no commit has taken the creation yet and nothing was queued after it (``Store.refill``)."""
    input_files: dict[int, PayloadFile] = field(default_factory=dict)
    """The payload files of the large inputs of pending and running tasks, by id. Such an input lives there
    only: the task's message in memory has no ``spec.input`` (a thousand queued 16 MiB inputs would
    otherwise hold 16 GiB of the server's memory, on top of their files). An instance that takes payload
    files reads it there (``wire.payload_handoff``); everything else that hands the input out reads the
    file (:meth:`Engine._with_input`)."""
    output_files: dict[int, PayloadFile] = field(default_factory=dict)
    """The payload files of the large outputs of finishing tasks (result queued, not committed), by id:
    removed if the task is withdrawn meanwhile."""

    def __post_init__(self) -> None:
        self.id: str = self.message.metadata.id
        """The session's id, kept: it never changes, and reading it from the message makes a new string each
        time (a task's rows name it, so a ``run()`` read it several times per task)."""

    @property
    def is_open(self) -> bool:
        return self.message.status.state == OPEN

    def sleep(self, timeout: float, until: Callable[[], bool] | None = None) -> None:
        """Wait on ``cond`` (the engine's lock held) up to ``timeout`` seconds, or until ``until()`` holds;
        counted in ``sleepers`` meanwhile, so that :meth:`wake` wakes this thread."""
        self.sleepers += 1
        try:
            if until is None:
                self.cond.wait(timeout)
            else:
                self.cond.wait_for(until, timeout)
        finally:
            self.sleepers -= 1

    def wake(self) -> None:
        """The session changed (called with the engine's lock held): wake the threads in :meth:`sleep`."""
        if self.sleepers:
            self.cond.notify_all()


def _not_found(kind: str, name: str) -> FlameError:
    return FlameError(FlameErrorCode.NOT_FOUND, f"{kind} {name} not found")


def _task_ops(entry: SessionEntry, task: pb.Task) -> list[Op]:
    """The statements that store a change of ``task``'s state: its row, plus its output when it is final
    (each payload is written once; a new task's rows are written by ``submit_tasks``, a result's by
    ``_finalize``)."""
    tid = int(task.metadata.id)
    status = task.status.SerializeToString()
    # ``finished``: when the payload retention counts from (see engine.retention); NULL until final.
    finished = task.status.completion_time if task.status.state in TERMINAL else None
    ops: list[Op] = [(_UPDATE_TASK, (int(task.status.state), status, finished, entry.id, tid))]
    if task.status.state in TERMINAL and task.spec.HasField("output"):
        ops.append(_output_op(entry.id, tid, task))
    return ops


Finished = tuple[int, Mapped | None, PayloadFile | None, str | None]
"""A task's result for :meth:`Engine.finish_tasks`: its id, its output (and the file holding it, if any), and
why it failed (None: it succeeded)."""


def _each_done(callbacks: list[OnDone], error: FlameError | None) -> None:
    """The callbacks of writes queued as one (:meth:`Engine.finish_tasks`), each given the outcome, in order;
    one that raises does not keep the others from running."""
    for callback in callbacks:
        try:
            callback(error)
        except Exception:
            log.exception("a commit callback of a task's final state failed")


def _finishable(entry: SessionEntry, tid: int) -> pb.Task | None:
    """Task ``tid`` if it is running and its result not queued yet (called with the lock held), else None."""
    task = entry.tasks.get(tid)
    if task is None or task.status.state != RUNNING or tid in entry.finishing:
        return None
    return task


def _may_linger(entry: SessionEntry, tid: int) -> bool:
    """Whether task ``tid``'s final state may wait ``RESULT_LINGER`` for the results behind it (one
    transaction and one delivery to the session's watchers for all of them, instead of one each): in a burst
    (more of the session's tasks in flight), when nobody waits on this one by itself."""
    return tid not in entry.waiters and (bool(entry.pending) or entry.message.status.running - len(entry.finishing) > 1)


def _running_op(session_id: str, tid: int, task: pb.Task) -> Op:
    """The row of task ``tid`` that just became RUNNING (:func:`_task_ops`' one statement, for that state)."""
    return (_UPDATE_TASK, (int(RUNNING), task.status.SerializeToString(), None, session_id, tid))


def _creation_ops(
    session_id: str, tid: int, state: int, data: bytes | None, status: bytes, input_file: PayloadFile | None = None
) -> list[Op]:
    """The rows of a new task whose input (if any) is kept in the store: in the task's own row when small
    (``INLINE_PAYLOAD_BYTES``), else in a ``task_payloads`` row of its own, which names ``input_file`` when
    the input is there (``data`` is then None)."""
    if input_file is not None:
        return [(_INSERT_TASK, (session_id, tid, state, status)), _file_row(session_id, tid, INPUT, input_file)]
    if data is None or len(data) <= INLINE_PAYLOAD_BYTES:
        return [(_INSERT_TASK_WITH_INPUT, (session_id, tid, state, data, status))]
    return [(_INSERT_TASK, (session_id, tid, state, status)), _payload_row(session_id, tid, INPUT, data, None)]


def _record_files(records: Sequence[LaneRecord]) -> list[PayloadFile | None]:
    """The payload files adopted for lane records (to settle where they are not recorded)."""
    return [file for record in records for file in (record.input_file, record.output_file)]


def _payload_row(session_id: str, tid: int, kind: int, data: Mapped, file: PayloadFile | None) -> Op:
    """The row of a task's input or output given as bytes: the bytes, or the file that holds them."""
    if file is not None:
        return _file_row(session_id, tid, kind, file)
    return (_SAVE_PAYLOAD, (session_id, tid, kind, data if type(data) is bytes else bytes(data)))


def _file_row(session_id: str, tid: int, kind: int, file: PayloadFile) -> Op:
    """The row of a task's input or output that lives in a payload file: the file's name and size."""
    return (_SAVE_PAYLOAD_FILE, (session_id, tid, kind, file.name, file.size))


def _output_op(session_id: str, tid: int, task: pb.Task) -> Op:
    """The row of an output the task's message holds (a result given with a file is stored by
    ``_payload_row``, and its bytes are not asked for: protobuf copies a field's bytes each time)."""
    return (_SAVE_PAYLOAD, (session_id, tid, OUTPUT, task.spec.output))


def _session_op(message: pb.Session) -> Op:
    return (
        _SAVE_SESSION,
        (message.metadata.id, message.spec.application, int(message.status.state), message.SerializeToString()),
    )


def _cancelled_while_running(by: str, how: str | None) -> str:
    """The CANCELLED event's text for a task that ran when it was cancelled: who, and how it ended."""
    text = f"cancelled by {by} while it ran"
    detail = (how or "").strip().splitlines()
    return f"{text}; its instance was stopped: {detail[0]}" if detail else text


def _cancel_requested(task: pb.Task) -> bool:
    """Whether a cancel was asked for since the task last started running (its latest events say so)."""
    for event in reversed(task.status.events):
        if event.code == EVENT_CANCEL_REQUESTED:
            return True
        if event.code in (EVENT_TASK_PENDING, EVENT_TASK_RUNNING):
            return False
    return False


def _set_when_settled(event: threading.Event, _tasks: list[pb.Task]) -> None:
    event.set()


def _status_reply(task: pb.Task) -> pb.Task:
    """A task without its payloads: what a cancel answers (ids, state, times, events)."""
    reply = pb.Task()
    reply.metadata.CopyFrom(task.metadata)
    reply.spec.session_id = task.spec.session_id
    reply.status.CopyFrom(task.status)
    return reply


class _Gather:
    """Collects the final states of ``count`` tasks, from any thread; calls ``on_done`` once with all."""

    def __init__(self, count: int, on_done: Callable[[list[pb.Task]], None]) -> None:
        self._lock = threading.Lock()
        self._left = count
        self._tasks: dict[int, pb.Task] = {}
        self._on_done = on_done
        if count == 0:
            on_done([])

    def add(self, task: pb.Task) -> None:
        with self._lock:
            tid = int(task.metadata.id)
            if tid in self._tasks:
                return
            self._tasks[tid] = _status_reply(task)
            self._left -= 1
            if self._left:
                return
        self._on_done([self._tasks[tid] for tid in sorted(self._tasks)])


def _mark(task: pb.Task, state: int, message: str | None, ts: int) -> None:
    """Set ``task``'s state and add the event for it (the counters are the caller's business)."""
    task.status.state = state  # type: ignore[assignment]
    if state in TERMINAL:
        task.status.completion_time = ts
    event = task.status.events.add(code=int(state), creation_time=ts)
    if message is not None:
        event.message = bound_failure_text(message)  # a service's text: bounded, controls escaped


class Engine:
    """The state machine of applications, sessions and tasks. Thread-safe.

    Methods that change what a client is told wait for the store (or take a callback): never call them
    with the engine lock held.
    """

    def __init__(
        self,
        store: Store,
        *,
        task_retry_limit: int = 3,
        delay_release: int = 60,
        capacity: Capacity | None = None,
        default_resreq: pb.ResourceRequirement | None = None,
    ) -> None:
        self.store = store
        self.task_retry_limit = task_retry_limit
        self.delay_release = delay_release
        self.capacity = capacity or Capacity()
        self.default_resreq = default_resreq or pb.ResourceRequirement(cpu=1, memory=1 << 30, gpu=0)
        self.lock = threading.RLock()
        self.scheduler: SchedulerHooks = _NoScheduler()
        self.lanes: LaneBook | None = None
        """The lanes lent (:mod:`.lanes`), on a server that lends them."""
        self._apps: dict[str, pb.Application] = {}
        self._sessions: dict[str, SessionEntry] = {}
        self._reserved: set[str] = set()
        """Application and session names whose creation or removal is being committed."""
        self._creating: dict[str, str] = {}
        """Sessions being created (committed right now) and their application."""
        self._watch_ids = itertools.count(1)
        self._open_watches: dict[Watch, SessionEntry] = {}
        """Every open watch stream and its session (for the sweep)."""
        self._due: deque[tuple[SessionEntry, Watch]] = deque()
        """Watches claimed under the lock, to be pumped once it is released (see :meth:`_run_due`)."""
        self._next_sweep = 0.0
        store.after_callbacks = self._after_commit
        with self.lock:
            self._load()
        self.store.commit()

    # -- recovery ------------------------------------------------------------------------------------

    def _load(self) -> None:
        for (data,) in self.store.query("SELECT data FROM applications"):
            app = pb.Application.FromString(data)
            self._apps[app.metadata.name] = app
        requeued = 0
        all_counts = self.store.task_counts()  # kept by the store: a start never counts the tasks
        for (data,) in self.store.query("SELECT data FROM sessions"):
            session = pb.Session.FromString(data)
            entry = SessionEntry(message=session, cond=threading.Condition(self.lock))
            self._sessions[entry.id] = entry
            max_id = self.store.query("SELECT MAX(id) FROM tasks WHERE session_id = ?", entry.id)[0][0]
            entry.next_id = (max_id or 0) + 1
            status = session.status
            counts = all_counts.get(entry.id, (0,) * len(_COUNTER))
            for state, name in _COUNTER.items():
                setattr(status, name, int(counts[int(state)]))
            if not entry.is_open or not (status.pending or status.running):
                continue  # nothing in flight: its tasks' rows are not read
            for row in self.store.query(
                f"{_SELECT_TASKS} AND t.state IN (?, ?) ORDER BY t.id",
                entry.id,
                int(PENDING),
                int(RUNNING),
            ):
                tid = row[0]
                try:
                    task = self._restored_task(entry, row)
                except FlameError as exc:  # its input's file is gone: it cannot run, and says why
                    log.error("%s", exc.message)
                    task = _task_from_row(self.store.payloads, entry.id, (tid, *[None] * 6, row[-1]))
                    entry.tasks[tid] = task
                    if task.status.state == PENDING:
                        entry.pending.append(tid)
                    self._finalize(entry, task, FAILED, exc.message)
                    self.store.execute(_DROP_INPUT, entry.id, tid)  # the row named what is gone
                    continue
                entry.tasks[tid] = task
                if task.status.state == RUNNING and _cancel_requested(task):  # it was being cancelled
                    self._finalize(
                        entry, task, CANCELLED, "cancelled: the server restarted while it was being cancelled"
                    )
                elif task.status.state == RUNNING:  # its instance died with the previous server
                    self._requeue(entry, task, "requeued: the server restarted while it ran")
                    requeued += 1
                else:
                    entry.pending.append(tid)
        if requeued:
            log.info("requeued %d tasks that were running when the server stopped", requeued)

    def pending_sessions(self, application: str | None = None) -> list[str]:
        """Open sessions with work waiting, of one application or all (no copies: the scheduler asks often).

        Used after a restart to start instances again, and when an instance frees up.
        """
        with self.lock:
            return [
                s.id
                for s in self._sessions.values()
                if s.is_open
                and (s.pending or s.message.spec.min_instances)
                and (application is None or s.message.spec.application == application)
            ]

    # -- applications --------------------------------------------------------------------------------

    def _validate_app_spec(self, name: str, spec: pb.ApplicationSpec) -> None:
        validation.check_application(name, spec)  # names, command, arguments, environment, directory
        for env in spec.environments:
            if env.name == ENV_TASK_TIMEOUT:
                parse_task_timeout(env.value, f"application {name}, environments {ENV_TASK_TIMEOUT}")
        if spec.HasField("schema"):
            for part in ("input", "output", "common_data"):
                if spec.schema.HasField(part) and getattr(spec.schema, part).strip():
                    try:
                        json.loads(getattr(spec.schema, part))
                    except ValueError as exc:
                        raise FlameError(
                            FlameErrorCode.INVALID_ARGUMENT,
                            f"schema.{part} of application {name} is not valid JSON Schema: {exc}",
                        ) from exc

    def _app_message(self, name: str, spec: pb.ApplicationSpec, creation_time: int) -> pb.Application:
        app = pb.Application()
        app.metadata.id = name
        app.metadata.name = name
        app.spec.CopyFrom(spec)
        if not app.spec.HasField("max_instances"):
            app.spec.max_instances = DEFAULT_MAX_INSTANCES
        if not app.spec.HasField("delay_release"):
            app.spec.delay_release = self.delay_release
        app.status.state = pb.ApplicationState.Enabled
        app.status.creation_time = creation_time
        return app

    @staticmethod
    def _app_op(app: pb.Application) -> Op:
        return (
            "INSERT OR REPLACE INTO applications (name, data) VALUES (?, ?)",
            (app.metadata.name, app.SerializeToString()),
        )

    def _reserve(self, key: str) -> None:
        """Claim a name while its change is committed (called with the lock held)."""
        if key in self._reserved:
            raise FlameError(
                FlameErrorCode.INVALID_STATE, f"{key.partition(':')[2]} is being changed by another call; try again"
            )
        self._reserved.add(key)

    def _commit_then(self, key: str, ops: list[Op], apply: Callable[[], None]) -> None:
        """Write ``ops``; once committed, ``apply`` under the lock. A refused write changes nothing."""
        try:
            self.store.write_wait(ops, durable=False)
        except BaseException:
            with self.lock:
                self._reserved.discard(key)
            raise
        with self.lock:
            self._reserved.discard(key)
            apply()

    def register_application(self, name: str, spec: pb.ApplicationSpec) -> pb.Application:
        self._validate_app_spec(name, spec)
        key = f"app:{name}"
        with self.lock:
            if name in self._apps:
                raise FlameError(
                    FlameErrorCode.ALREADY_EXISTS,
                    f"application {name} already exists; unregister it first or use update",
                )
            self._reserve(key)
            app = self._app_message(name, spec, now_ms())
        self._commit_then(key, [self._app_op(app)], lambda: self._apps.__setitem__(name, app))
        return app

    def _open_sessions_of(self, name: str) -> list[SessionEntry]:
        return [s for s in self._sessions.values() if s.message.spec.application == name and s.is_open]

    def _refuse_open_sessions(self, name: str, doing: str) -> None:
        count = len(self._open_sessions_of(name)) + sum(app == name for app in self._creating.values())
        if count:
            raise FlameError(
                FlameErrorCode.INVALID_STATE,
                f"{count} open sessions in the application {name}; close them before {doing}",
            )

    def update_application(self, name: str, spec: pb.ApplicationSpec) -> pb.Application:
        self._validate_app_spec(name, spec)
        key = f"app:{name}"
        with self.lock:
            old = self.get_application(name)
            self._refuse_open_sessions(name, "updating it")
            self._reserve(key)
            app = self._app_message(name, spec, old.status.creation_time)
        self._commit_then(key, [self._app_op(app)], lambda: self._apps.__setitem__(name, app))
        self.scheduler.application_removed(name)  # idle and spare instances run the old spec
        return app

    def unregister_application(self, name: str) -> None:
        key = f"app:{name}"
        with self.lock:
            self.get_application(name)
            self._refuse_open_sessions(name, "unregistering")
            self._reserve(key)
            closed = [s.id for s in self._sessions.values() if s.message.spec.application == name]
        ops: list[Op] = [("DELETE FROM applications WHERE name = ?", (name,))]
        for sid in closed:
            ops.extend(session_deletion(sid))
        ops.append(("DELETE FROM sessions WHERE application = ?", (name,)))
        files = self._payload_files_of(closed)

        def apply() -> None:
            self._apps.pop(name, None)
            for sid in closed:
                self._sessions.pop(sid, None)

        self._commit_then(key, ops, apply)
        self.store.payloads.remove(files)  # after the commit: a row never names a removed file
        self.scheduler.application_removed(name)

    def get_application(self, name: str) -> pb.Application:
        with self.lock:
            app = self._apps.get(name)
            if app is None:
                raise _not_found("application", name)
            return app

    def list_applications(self) -> list[pb.Application]:
        with self.lock:
            return list(self._apps.values())

    # -- sessions ------------------------------------------------------------------------------------

    def _check_resreq(self, session_id: str, req: pb.ResourceRequirement) -> None:
        cap = self.capacity
        too_big = [
            f"{name}={want} (this machine has {have})"
            for name, want, have in (
                ("cpu", req.cpu, cap.cpu),
                ("memory", req.memory, cap.memory),
                ("gpu", req.gpu, cap.gpu),
            )
            if want > have
        ]
        if too_big:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"session {session_id} asks for more than any machine here can give one instance: "
                f"{', '.join(too_big)}. Ask for less, or connect to a Flame cluster (FLAME_ENDPOINT).",
            )

    def create_session(self, session_id: str, spec: pb.SessionSpec) -> pb.Session:
        validation.check_session_id(session_id)
        key = f"session:{session_id}"
        with self.lock:
            app = self.get_application(spec.application)
            if app.status.state != pb.ApplicationState.Enabled:
                raise FlameError(FlameErrorCode.INVALID_STATE, f"application {spec.application} is disabled")
            if f"app:{spec.application}" in self._reserved:
                raise FlameError(
                    FlameErrorCode.INVALID_STATE,
                    f"application {spec.application} is being changed by another call; try again",
                )
            if session_id in self._sessions or key in self._reserved:
                raise FlameError(FlameErrorCode.ALREADY_EXISTS, f"session {session_id} already exists")
            session = pb.Session()
            session.metadata.id = session_id
            session.metadata.name = session_id
            session.spec.CopyFrom(spec)
            if not session.spec.HasField("resreq"):
                session.spec.resreq.CopyFrom(self.default_resreq)
            self._check_resreq(session_id, session.spec.resreq)
            if session.spec.batch_size == 0:
                session.spec.batch_size = 1
            if session.spec.HasField("max_instances") and session.spec.max_instances < session.spec.min_instances:
                raise FlameError(
                    FlameErrorCode.INVALID_ARGUMENT,
                    f"session {session_id}: max_instances ({session.spec.max_instances}) is below "
                    f"min_instances ({session.spec.min_instances})",
                )
            session.status.state = OPEN
            session.status.creation_time = now_ms()
            self._reserve(key)
            self._creating[session_id] = spec.application
            entry = SessionEntry(message=session, cond=threading.Condition(self.lock))

        def apply() -> None:
            self._sessions[session_id] = entry

        try:
            self._commit_then(key, [_session_op(session)], apply)
        finally:
            with self.lock:
                self._creating.pop(session_id, None)
        if spec.min_instances:
            self.scheduler.tasks_pending(session_id)
        else:
            self.scheduler.session_opened(session_id)
        return self.snapshot(entry)

    def _save_session(self, entry: SessionEntry) -> None:
        """Write the session's message as it is now, with the next group commit (called with the lock held).

        While a close is being committed nothing is written: the close writes the message last.
        """
        if entry.closing:
            return
        self.store.enqueue([_session_op(entry.message)], durable=True, lazy=True)

    def snapshot(self, entry: SessionEntry) -> pb.Session:
        with self.lock:
            copy = pb.Session()
            copy.CopyFrom(entry.message)
            return copy

    def _entry(self, session_id: str) -> SessionEntry:
        entry = self._sessions.get(session_id)
        if entry is None:
            raise _not_found("session", session_id)
        return entry

    def open_session(self, session_id: str, spec: pb.SessionSpec | None) -> pb.Session:
        """Get-or-create (Flame's semantics): an open session is returned, its spec checked if one is given."""
        for _ in range(3):
            with self.lock:
                entry = self._sessions.get(session_id)
                if entry is not None:
                    if not entry.is_open:
                        raise FlameError(FlameErrorCode.INVALID_STATE, f"session {session_id} is not open")
                    if spec is not None:
                        self._check_spec_matches(entry, spec)
                    return self.snapshot(entry)
                if spec is None:
                    raise _not_found("session", session_id)
            try:
                # Outside the lock: creating waits for the store and may call the scheduler.
                return self.create_session(session_id, spec)
            except FlameError as exc:
                if exc.code != FlameErrorCode.ALREADY_EXISTS:
                    raise  # created concurrently: loop and open the one that won
                time.sleep(0.01)
        raise FlameError(FlameErrorCode.INTERNAL, f"session {session_id} could not be opened; try again")

    def _check_spec_matches(self, entry: SessionEntry, spec: pb.SessionSpec) -> None:
        have = entry.message.spec
        want_resreq = spec.resreq if spec.HasField("resreq") else self.default_resreq

        def text(r: pb.ResourceRequirement) -> str:
            return f"cpu={r.cpu},memory={r.memory},gpu={r.gpu}"

        checks = [
            ("application", have.application, spec.application),
            ("resreq", text(have.resreq), text(want_resreq)),
            ("min_instances", have.min_instances, spec.min_instances),
            (
                "max_instances",
                have.max_instances if have.HasField("max_instances") else None,
                spec.max_instances if spec.HasField("max_instances") else None,
            ),
            ("priority", have.priority, spec.priority),
        ]
        for name, expected, got in checks:
            if expected != got:
                raise FlameError(
                    FlameErrorCode.INVALID_ARGUMENT,
                    f"session {entry.id} spec mismatch: {name} differs (expected {expected}, got {got})",
                )

    def close_session(self, session_id: str) -> pb.Session:
        """Cancel the pending tasks and close; refused while a task runs. Returns once committed."""
        with self.lock:
            entry = self._entry(session_id)
            while entry.closing:  # another call is closing it: its outcome is ours
                entry.sleep(1.0)
            if not entry.is_open:
                return self.snapshot(entry)
            if entry.message.status.running:
                raise FlameError(
                    FlameErrorCode.INVALID_STATE,
                    f"Cannot close session with running tasks: session {session_id} has "
                    f"{entry.message.status.running} running; wait for them to finish, then close it",
                )
            entry.closing = True
            ts = now_ms()
            cancelled: list[pb.Task] = []
            ops: list[Op] = []
            for tid in entry.pending:
                final = pb.Task()
                final.CopyFrom(entry.tasks[tid])
                _mark(final, CANCELLED, "cancelled: the session was closed", ts)
                cancelled.append(final)
                ops.extend(_task_ops(entry, final))
            closed = self.snapshot(entry)
            closed.status.state = CLOSED
            closed.status.completion_time = ts
            closed.status.pending -= len(cancelled)
            closed.status.cancelled += len(cancelled)
            ops.append(_session_op(closed))
        try:
            self.store.write_wait(ops, durable=False)
        except BaseException:
            with self.lock:
                entry.closing = False
                entry.wake()
            raise
        waiting: list[tuple[list[Waiter], pb.Task]] = []
        with self.lock:
            for final in cancelled:
                tid = int(final.metadata.id)
                task = entry.tasks.pop(tid)
                task.CopyFrom(final)
                if entry.watches:
                    entry.completions.append(task)
                waiting.append((entry.waiters.pop(tid, []), task))
            entry.pending.clear()
            for tid in [tid for tid in entry.timeouts if tid not in entry.tasks]:
                del entry.timeouts[tid]
            for tid in [tid for tid in entry.input_files if tid not in entry.tasks]:
                del entry.input_files[tid]
            status = entry.message.status
            status.state = CLOSED
            status.completion_time = ts
            status.pending -= len(cancelled)
            status.cancelled += len(cancelled)
            entry.attempts.clear()
            entry.closing = False
            self._save_session(entry)  # with the events added while the close was written
            self._claim_all_watches(entry)  # the cancelled tasks, then the end of the stream
            entry.wake()
            snapshot = self.snapshot(entry)
        self._notify_waiters(waiting)
        self._run_due()
        self.scheduler.session_closed(session_id)
        return snapshot

    def delete_session(self, session_id: str) -> pb.Session:
        snapshot = self.close_session(session_id)
        files = self._payload_files_of([session_id])
        self.store.write_wait(session_deletion(session_id))
        self.store.payloads.remove(files)  # after the commit: a row never names a removed file
        with self.lock:
            self._sessions.pop(session_id, None)
        return snapshot

    def _payload_files_of(self, session_ids: list[str]) -> list[str]:
        """The payload files of closed sessions' tasks (what deleting them leaves to remove)."""
        return [name for sid in session_ids for (name,) in self.store.query(_PAYLOAD_FILES_OF_SESSION, sid)]

    def get_session(self, session_id: str) -> pb.Session:
        with self.lock:
            return self.snapshot(self._entry(session_id))

    def list_sessions(self) -> list[pb.Session]:
        with self.lock:
            return [self.snapshot(e) for e in self._sessions.values()]

    def session_entry(self, session_id: str) -> SessionEntry:
        with self.lock:
            return self._entry(session_id)

    def add_session_event(self, session_id: str, code: int, message: str) -> None:
        with self.lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                return
            entry.message.status.events.add(code=code, message=bound_failure_text(message), creation_time=now_ms())
            del entry.message.status.events[:-50]  # keep the newest; a flapping instance must not grow it forever
            self._save_session(entry)

    # -- creating tasks ------------------------------------------------------------------------------

    def submit_tasks(
        self,
        session_id: str,
        inputs: Sequence[bytes | memoryview | None],
        on_created: Created,
        waiter: Waiter | None = None,
        timeouts: Sequence[float | None] | None = None,
        *,
        acknowledged: bool = True,
    ) -> None:
        """Create tasks; ``on_created`` gets them once committed (or the store's error, nothing created).

        ``waiter``, when given, is called with each task once its final state is committed. ``timeouts``,
        when given, holds each task's own task timeout (seconds, or None for the application's). Raises at
        once (nothing queued) for an unknown or closed session.

        ``acknowledged=False``: nobody is told that the tasks exist before their results (RunTask), so
        they are queued for instances at once and their creation is committed with the first commit
        that comes (their results' at the latest); ``on_created`` then hears only of a refused creation
        (``None`` and the store's error: the tasks are withdrawn, their waiters never called). While the
        store is failing they are created as acknowledged ones, so a refusal comes before they run.
        """
        files = self.store.payloads
        # Large inputs are written to their files here, before the lock: not while everyone waits.
        spilled = [files.spill(task_input) for task_input in inputs]
        early = not acknowledged and self.store.failure is None
        try:
            first = self._submit(session_id, inputs, spilled, on_created, waiter, timeouts, early)
        except BaseException:
            files.settled(spilled, "not submitted")
            raise
        if early and len(inputs) == 1:
            # RunTask: its reply is this task's result. On a server thread that waits for the reply anyway
            # (a transport without deferred replies), the scheduler's call to the instance is made by
            # that thread itself (see flamepy_core.kit.answering).
            with answering(task_key(session_id, first)):
                self.scheduler.tasks_pending(session_id)
        elif early:
            self.scheduler.tasks_pending(session_id)
        else:
            self.store.commit()
        if any(spilled):
            files.drop_due()  # earlier payload files let go of while the instance runs this task

    def _submit(
        self,
        session_id: str,
        inputs: Sequence[bytes | memoryview | None],
        spilled: list[PayloadFile | None],
        on_created: Created,
        waiter: Waiter | None,
        timeouts: Sequence[float | None] | None,
        early: bool,
    ) -> int:
        """Queue the tasks (see :meth:`submit_tasks`); returns the first one's id."""
        if timeouts is not None and len(timeouts) != len(inputs):
            raise ValueError(f"{len(inputs)} task inputs but {len(timeouts)} task timeouts")
        with self.lock:
            entry = self._entry(session_id)
            if not entry.is_open or entry.closing:
                raise FlameError(
                    FlameErrorCode.INVALID_STATE,
                    f"Cannot create task in closed session {session_id}; open a new session",
                )
            ts = now_ms()
            tasks: list[pb.Task] = []
            ops: list[Op] = []
            # Every task of the batch starts with the same status: built and serialized once.
            pending = pb.TaskStatus(state=PENDING, creation_time=ts)
            pending.events.add(code=EVENT_TASK_PENDING, creation_time=ts)
            status = pending.SerializeToString()
            for task_input, input_file in zip(inputs, spilled, strict=True):
                tid = entry.next_id
                entry.next_id += 1
                task = pb.Task()
                task.metadata.id = task.metadata.name = str(tid)
                task.spec.session_id = session_id
                task.status.CopyFrom(pending)
                if input_file is not None:  # a large input lives in its file only (see SessionEntry.input_files)
                    ops += _creation_ops(session_id, tid, int(PENDING), None, status, input_file)
                    entry.input_files[tid] = input_file
                else:
                    # (the same object when bytes; a view into a RunTask request whose file failed: copied)
                    data = None if task_input is None else bytes(task_input)
                    if data is not None:
                        task.spec.input = data
                    ops += _creation_ops(session_id, tid, int(PENDING), data, status)
                tasks.append(task)
            first = entry.next_id - len(tasks)
            own = (
                {}
                if timeouts is None
                else {first + i: seconds for i, seconds in enumerate(timeouts) if seconds is not None}
            )
            if early:
                self._queue_created(entry, tasks, waiter, own)
                withdraw = partial(self._withdraw_unacknowledged, entry, tasks, on_created)
                self.store.enqueue(ops, self.store.payloads.on_settled(spilled, withdraw), durable=False, lazy=True)
                return first
            created = partial(self._created, entry, tasks, on_created, waiter, own)
            self.store.enqueue(ops, self.store.payloads.on_settled(spilled, created), durable=False)
            return first

    @staticmethod
    def _queue_created(
        entry: SessionEntry, tasks: list[pb.Task], waiter: Waiter | None, timeouts: dict[int, float]
    ) -> None:
        """Make new tasks pending in an open session (called with the lock held)."""
        entry.timeouts.update(timeouts)
        for task in tasks:
            tid = int(task.metadata.id)
            entry.tasks[tid] = task
            entry.pending.append(tid)
            if waiter is not None:
                entry.waiters.setdefault(tid, []).append(waiter)
        entry.message.status.pending += len(tasks)
        entry.wake()

    def _withdraw_unacknowledged(
        self, entry: SessionEntry, tasks: list[pb.Task], on_created: Created, error: FlameError | None
    ) -> None:
        """The commit callback of an unacknowledged creation: on a refusal, the tasks are withdrawn.

        Pending ones leave the queue; a running one's result will find no task and be dropped; one whose
        result is queued already has that write undone by a write queued after it. Their waiters are
        never called: ``on_created`` gets the store's error instead.
        """
        if error is None:
            return
        with self.lock:
            status = entry.message.status
            for task in tasks:
                tid = int(task.metadata.id)
                if entry.tasks.pop(tid, None) is None:
                    continue
                state = task.status.state
                if state == PENDING:
                    entry.pending.remove(tid)
                name = _COUNTER[state]
                setattr(status, name, getattr(status, name) - 1)
                if tid in entry.finishing:  # its result's rows are queued (committed after this): undo them
                    entry.finishing.discard(tid)
                    self.store.execute(_DELETE_TASK, entry.id, tid)
                    self.store.execute(_DELETE_PAYLOADS, entry.id, tid)
                    output_file = entry.output_files.pop(tid, None)  # (written by an instance, say)
                    if output_file is not None:  # nobody was told of this task: its file goes now
                        self.store.payloads.remove([output_file.name])
                entry.attempts.pop(tid, None)
                entry.timeouts.pop(tid, None)
                entry.cancelling.pop(tid, None)
                entry.waiters.pop(tid, None)
                entry.input_files.pop(tid, None)
                entry.running_writes.pop(tid, None)
                entry.creations.pop(tid, None)
            entry.wake()
        on_created(None, error)

    def _created(
        self,
        entry: SessionEntry,
        tasks: list[pb.Task],
        on_created: Created,
        waiter: Waiter | None,
        timeouts: dict[int, float],
        error: FlameError | None,
    ) -> None:
        if error is not None:
            on_created(None, error)  # withdrawn: no task exists, ids are not reused
            return
        late: list[tuple[list[Waiter], pb.Task]] = []
        with self.lock:
            status = entry.message.status
            if entry.is_open and not entry.closing:
                self._queue_created(entry, tasks, waiter, timeouts)
            else:
                # The session closed while these were being written: they are cancelled, as its other
                # pending tasks were.
                ts = now_ms()
                for task in tasks:
                    _mark(task, CANCELLED, "cancelled: the session was closed", ts)
                    self.store.enqueue(_task_ops(entry, task), durable=True, lazy=True)
                    if waiter is not None:
                        late.append(([waiter], task))
                status.cancelled += len(tasks)
            entry.wake()
            is_open = entry.is_open
        on_created(tasks, None)
        self._notify_waiters(late)
        if is_open:
            self.scheduler.tasks_pending(entry.id)

    def create_task(self, session_id: str, task_input: bytes | None) -> pb.Task:
        """Create one task and return it once committed (flame.v1 CreateTask)."""
        done = _Outcome[list[pb.Task]]()
        self.submit_tasks(session_id, [task_input], done.settle)
        return echo_input(done.wait()[0], task_input)

    def run_task(
        self,
        session_id: str,
        task_input: bytes | memoryview | None,
        on_done: Callable[[pb.Task | None, Mapped | None, bytes | None, FlameError | None], None],
    ) -> None:
        """Create a task and call ``on_done(task, output, status, None)`` once its final state is committed
        (flamepy's RunTask), or ``on_done(None, None, None, error)``.

        The task given is the engine's own: read it, do not change it. Its message may lack the output (see
        :class:`OutputWaiter`) and, while ``on_done`` runs, its final status, which is applied once the
        answer has left: read the output and the final status (serialized) given beside it.
        """

        def created(tasks: list[pb.Task] | None, error: FlameError | None) -> None:
            if error is not None:
                on_done(None, None, None, error)

        done = OutputWaiter(lambda task, output, status: on_done(task, output, status, None))
        # The warm lane (Scheduler.run_warm) takes an input kept in the store, not one for a payload file.
        if task_input is None or len(task_input) < self.store.payloads.threshold:
            data = task_input if task_input is None or type(task_input) is bytes else bytes(task_input)
            if self.scheduler.run_warm(session_id, data, done, created):
                return
            task_input = data  # (copied once, if it was a view)
        self.submit_tasks(session_id, [task_input], created, waiter=done, acknowledged=False)

    def start_warm(
        self,
        session_id: str,
        data: bytes | None,
        waiter: OutputWaiter,
        on_created: Created,
        send: Callable[[int, Callable[[], None]], None] | None = None,
    ) -> int | None:
        """For the scheduler's warm lane (:meth:`Scheduler.run_warm`): create RunTask's task already RUNNING,
        for the idle instance the scheduler holds; its id, or None when the general path must take it.

        The task is what :meth:`submit_tasks` (unacknowledged) and :meth:`start_next` together make of it,
        without passing through the queue: the same events (PENDING, then RUNNING, at one time), the same
        counters, the same waiter, and its creation queued for the next commit (its result's at the
        latest) with the same withdrawal should the store refuse it. Only a task not queued behind others
        of an open session, on a store that writes, takes this lane; ``data`` is small enough to be kept
        in the store (``run_task`` sees to it).

        ``send(task_id, record)``, when given, sends the task to its instance once it is admitted, and calls
        ``record()`` (which records it) as soon as the call is on its way, before anything may handle its
        answer: the instance starts on the task while the server records it (about a fifth of the server's
        work on a warm invoke's way in). All of it under the engine's lock, and the scheduler's caller
        holds its own: nobody sees the task sent and not recorded, and its answer, handled under the
        scheduler's lock, comes after. Should ``send`` return or raise without calling ``record``, the task
        is recorded then (the caller fails it, saying why).
        """
        with self.lock:
            entry = self._takes_now(session_id)
            if entry is None:
                return None
            tid = entry.next_id
            entry.next_id = tid + 1
            recorded = False

            def record() -> None:
                # Once (``send`` calls it, then the ``finally`` below). Not told by ``entry.tasks``: an answer
                # handled on this thread as ``send`` returns may have finished the task, and taken it out.
                nonlocal recorded
                if not recorded:
                    recorded = True
                    self._record_warm(entry, tid, data, waiter, on_created)

            try:
                if send is not None:
                    send(tid, record)
            finally:
                record()
        if self._due:
            self._run_due()
        return tid

    def _record_warm(
        self,
        entry: SessionEntry,
        tid: int,
        data: bytes | None,
        waiter: OutputWaiter | None,
        on_created: Created,
        ts: int | None = None,
        input_file: PayloadFile | None = None,
    ) -> pb.Task:
        """The warm lane's task ``tid``, recorded RUNNING (:meth:`start_warm`, with the lock held); a lane's
        (:meth:`record_lane_results`) has no waiter and its own start time ``ts``, and a large input in the
        payload file ``input_file`` (``data`` None) rather than in memory."""
        if ts is None:
            ts = now_ms()
        task = pb.Task()
        task.metadata.id = task.metadata.name = str(tid)
        task.spec.session_id = entry.id
        if data is not None:
            task.spec.input = data
        task.status.creation_time = ts
        task.status.events.add(code=EVENT_TASK_PENDING, creation_time=ts)
        _mark(task, RUNNING, None, ts)
        ops = _creation_ops(entry.id, tid, int(RUNNING), data, task.status.SerializeToString(), input_file)
        if input_file is not None:  # a large input lives in its file only (see SessionEntry.input_files)
            entry.input_files[tid] = input_file
        entry.tasks[tid] = task
        if waiter is not None:
            entry.waiters[tid] = [waiter]
        entry.message.status.running += 1
        withdraw = partial(self._withdraw_unacknowledged, entry, [task], on_created)
        on_done = self.store.payloads.on_settled([input_file], withdraw)
        creation = self.store.enqueue(ops, on_done, durable=False, lazy=True)
        if len(ops) == 1:  # the input in the task's row: the result may be written into it (_finalize)
            entry.creations[tid] = (creation, data)
        if entry.task_watches:  # (a call less per task where nobody watches one)
            self._claim_task_watches(entry, tid)
        entry.wake()
        return task

    # -- lanes (flamepy_core.engine.lanes) -----------------------------------------------------------

    def lend_task_ids(self, session_id: str, count: int) -> int | None:
        """Reserve ``count`` consecutive task ids of an open session for a lane: the first, or None when the
        session cannot lend any now (unknown, closing, a failing store, or tasks queued: those go first)."""
        with self.lock:
            entry = self._takes_now(session_id)
            if entry is None:
                return None
            first = entry.next_id
            entry.next_id = first + count
            return first

    def _takes_now(self, session_id: str) -> SessionEntry | None:
        """The session, if a task of it may start at once (with the lock held): open, nothing queued before
        it, on a store that writes (the warm path's task, a lane's)."""
        entry = self._sessions.get(session_id)
        if entry is None or entry.pending or entry.closing or not entry.is_open or self.store.failure is not None:
            return None
        return entry

    def record_lane_results(
        self,
        session_id: str,
        records: Sequence[LaneRecord],
        on_committed: Callable[[FlameError | None], None],
        on_refused: Callable[[FlameError], None],
    ) -> None:
        """Record what a lane's log says (:mod:`.lanes`), as the warm lane records its own tasks: the same
        rows, events (PENDING and RUNNING at its start, then its end), counters and watchers. A start record
        makes the task RUNNING (seen, and cancellable, while it runs); its result finalizes it (a task
        already final, cancelled meanwhile, keeps that). ``on_committed(None)`` once the results are
        committed, or ``on_committed(error)`` if the store refused them; ``on_refused(error)`` when it refused
        a start (the log must then be read again). A result also finalizes a task requeued meanwhile (a
        server that restarted after it had the start and not the result): its client was told it. A record's
        payload files (adopted, :class:`LaneRecord`) are named by its rows, or released where it is skipped.
        """
        pending = len(records) + 1
        refused: list[FlameError] = []
        gate = threading.Lock()

        def one_done(error: FlameError | None = None) -> None:
            nonlocal pending
            with gate:
                if error is not None:
                    refused.append(error)
                pending -= 1
                last = pending == 0
            if last:
                on_committed(refused[0] if refused else None)

        def created(_tasks: list[pb.Task] | None, error: FlameError | None) -> None:
            if error is not None:
                one_done(error)

        def start_created(_tasks: list[pb.Task] | None, error: FlameError | None) -> None:
            if error is not None:  # (a start is not counted in ``pending``: its result is, or the lane's end)
                on_refused(error)

        files = self.store.payloads
        # A task whose start and result are both read now, unknown so far, is recorded in one row, final,
        # without ever being RUNNING in memory (a batch of run()'s tasks: nearly all of them).
        ended_now = {r.result.task_id for r in records if not r.result.started and r.output_file is None}
        began: dict[int, LaneResult] = {}
        done: list[tuple[LaneResult, LaneRecord]] = []
        with self.lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                log.warning("%d lane tasks of session %s, which is gone, were dropped", len(records), session_id)
                files.settled(_record_files(records), "the session is gone")
                records = []
            for record in records:
                assert entry is not None
                lane_result = record.result
                tid = lane_result.task_id
                if tid in ended_now:
                    if lane_result.started and record.input_file is None and tid not in entry.tasks:
                        if not entry.task_watches.get(tid):
                            began[tid] = lane_result
                            one_done()
                            continue
                    elif not lane_result.started and tid in began:
                        done.append((began.pop(tid), record))
                        continue
                task = entry.tasks.get(tid)
                if lane_result.started or task is None:
                    if task is not None:  # (recovery read it twice)
                        files.settled(_record_files([record]), "recorded already")
                        one_done()
                        continue
                    if tid >= entry.next_id:
                        entry.next_id = tid + 1
                    made = start_created if lane_result.started else created
                    task = self._record_warm(
                        entry, tid, lane_result.input, None, made, ts=lane_result.start_ms, input_file=record.input_file
                    )
                    if lane_result.started:  # its result comes in a later record (or its instance's end)
                        one_done()
                        continue
                elif task.status.state not in (RUNNING, PENDING) or tid in entry.finishing:
                    files.settled(_record_files([record]), "the task is final already")
                    one_done()  # final already (cancelled while it ran): the result comes too late
                    continue
                state = SUCCEED if lane_result.succeeded else FAILED
                self._finalize(
                    entry,
                    task,
                    state,
                    lane_result.message,
                    record.output,
                    lambda: one_done(None),
                    output_file=record.output_file,
                    ts=max(lane_result.end_ms, lane_result.start_ms),
                )
            if done:
                assert entry is not None
                self._record_lane_done(entry, done, one_done)
        self.store.commit()
        if self._due:
            self._run_due()
        one_done()

    def _record_lane_done(
        self,
        entry: SessionEntry,
        done: list[tuple[LaneResult, LaneRecord]],
        one_done: Callable[[FlameError | None], None],
    ) -> None:
        """Lane tasks read whole at once (their start, their result), recorded final in one write (with the
        lock held): the rows and events the two records would have given, and the counters and watchers once
        committed (``one_done`` then, once per task)."""
        sid = entry.id
        ops: list[Op] = []
        finals: list[tuple[int, int, bytes, bytes | None, Mapped | None]] = []
        succeed, failed = int(SUCCEED), int(FAILED)
        for start, record in done:
            result = record.result
            tid = result.task_id
            if tid >= entry.next_id:
                entry.next_id = tid + 1
            begun, ended = start.start_ms, max(result.end_ms, start.start_ms)
            state = succeed if result.succeeded else failed
            message = None if result.message is None else bound_failure_text(result.message)
            final = ran_task_status(state, begun, ended, message)  # (created and running at its start)
            data, output = start.input, record.output
            small_input = data is None or len(data) <= INLINE_PAYLOAD_BYTES
            small_output = output is None or len(output) <= INLINE_PAYLOAD_BYTES
            row = (sid, tid, state, data if small_input else None, output if small_output else None)
            ops.append((_INSERT_FINAL_TASK, (*row, final, ended)))
            if not small_input:
                assert data is not None
                ops.append(_payload_row(sid, tid, INPUT, data, None))
            if not small_output:
                assert output is not None
                ops.append(_payload_row(sid, tid, OUTPUT, output, None))
            finals.append((tid, state, final, data, output))

        def committed(error: FlameError | None) -> None:
            if error is None:
                with self.lock:
                    self._apply_lane_done(entry, finals)
            for _ in finals:
                one_done(error)

        # Durable: kept and retried while the store refuses (a full disk), never given up: its log was read
        # past, and the retry is what tells the store writes again.
        self.store.enqueue(ops, committed)

    def _apply_lane_done(
        self, entry: SessionEntry, finals: list[tuple[int, int, bytes, bytes | None, Mapped | None]]
    ) -> None:
        """Lane tasks recorded final are committed: counted, and their session's watchers told (lock held)."""
        status = entry.message.status
        succeeded = sum(1 for _tid, state, _final, _data, _output in finals if state == SUCCEED)
        status.succeed += succeeded
        status.failed += len(finals) - succeeded
        if entry.watches:
            for tid, _state, final, data, output in finals:
                task = pb.Task(status=pb.TaskStatus.FromString(final))
                task.metadata.id = task.metadata.name = str(tid)
                task.spec.session_id = entry.id
                if data is not None:
                    task.spec.input = data
                if output is not None:
                    task.spec.output = output if type(output) is bytes else bytes(output)
                entry.completions.append(task)
            for watch in entry.watches.values():
                claim(watch, self._due, entry)
        entry.wake()

    # -- reading tasks -------------------------------------------------------------------------------

    def _load_task(self, session_id: str, task_id: int, *, payloads: bool = True) -> pb.Task | None:
        """A task from the store; with ``payloads=False`` without its payload files (nor their reading)."""
        rows = self.store.query(f"{_SELECT_TASKS} AND t.id = ?", session_id, task_id)
        if not rows:
            return None
        row = rows[0] if payloads else (*rows[0][:2], None, None, rows[0][4], None, None, rows[0][7])
        return _task_from_row(self.store.payloads, session_id, row)

    @staticmethod
    def _task_id(task_id: str) -> int:
        try:
            return int(task_id)
        except ValueError:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT, f"task id must be a decimal number, got {task_id!r}"
            ) from None

    def get_task(self, session_id: str, task_id: str) -> pb.Task:
        tid = self._task_id(task_id)
        with self.lock:
            entry = self._entry(session_id)
            task = entry.tasks.get(tid)
            if task is not None:
                return self._with_input(entry, task)
        loaded = self._load_task(session_id, tid)
        if loaded is None:
            raise _not_found("task", f"{task_id} of session {session_id}")
        return loaded

    def list_tasks(self, session_id: str) -> Iterator[pb.Task]:
        with self.lock:
            self._entry(session_id)  # NOT_FOUND for an unknown session
        return self._iter_stored_tasks(session_id)

    def _iter_stored_tasks(self, session_id: str, after: int = 0) -> Iterator[pb.Task]:
        for row in self.store.iter_query(f"{_SELECT_TASKS} AND t.id > ? ORDER BY t.id", session_id, after):
            yield _task_from_row(self.store.payloads, session_id, row)

    def _replay(self, entry: SessionEntry, after: int) -> list[pb.Task]:
        """The session's tasks with an id above ``after`` whose final state is in the store, oldest
        completion first (called with the lock held).

        The store is not read when every id above ``after`` is a task in flight (a watcher opened right
        after its first task, as ``run()``'s is): nothing there can be final.
        """
        above = entry.next_id - 1 - after
        if above <= 0 or (len(entry.tasks) >= above and sum(1 for tid in entry.tasks if tid > after) == above):
            return []
        replay = [t for t in self._iter_stored_tasks(entry.id, after) if t.status.state in TERMINAL]
        return sorted(replay, key=lambda t: t.status.completion_time)

    def watch_session(self, session_id: str, after_task_id: int, feed: WatchFeed) -> None:
        """Feed ``feed`` the completed tasks of the session with id > ``after_task_id``, in batches, in
        completion order, each once; then end it when the session closes (after its last completions).

        Returns at once: the watch holds no thread (see :mod:`.watches`). Raises NOT_FOUND for an unknown
        session. The tasks delivered are the engine's own (final, never changed again): read them, do
        not change them.

        Tasks that completed before the watcher came are read from the store first; later ones come from
        ``completions``, which keeps each task only until every watcher has read it. Under the lock no
        final state is applied, so store + live list miss nothing; a task committed just before the read
        may show in both, and is sent once (the replayed ids are skipped).
        """
        with self.lock:
            entry = self._entry(session_id)
            replay = self._replay(entry, after_task_id)
            position = entry.completions_offset + len(entry.completions)
            watch = SessionWatch(
                next(self._watch_ids), feed, after_task_id, {int(t.metadata.id) for t in replay}, position
            )
            watch.busy = True  # ours until the replay is sent: news meanwhile only marks it
            if entry.is_open:
                watch.registered = True
                entry.watches[watch.token] = watch
                self._open_watches[watch] = entry
        if replay and not self._deliver(watch, replay):
            with self.lock:
                watch.gone = True
        self._pump(entry, watch)

    def watch_task(self, session_id: str, task_id: str, feed: WatchFeed) -> None:
        """Feed ``feed`` the task (a copy) each time its state changes; end it after a final state.

        As in Flame, the initial state is not sent unless the task is already complete (then it is sent
        alone, from the store). Returns at once; raises NOT_FOUND for an unknown session or task.
        """
        tid = self._task_id(task_id)
        with self.lock:
            entry = self._entry(session_id)
            task = entry.tasks.get(tid)
            if task is not None:
                input_file = entry.input_files.get(tid)  # (dropped from there when the task ends)
                add_input = None if input_file is None else partial(self._add_input, entry.id, tid, input_file)
                watch = TaskWatch(feed, task, add_input)
                watch.busy = True
                entry.task_watches.setdefault(tid, []).append(watch)
                self._open_watches[watch] = entry
        if task is not None:
            self._pump(entry, watch)
            return
        # Finished: its final state was committed before it left ``entry.tasks``.
        stored = self._load_task(session_id, tid)
        if stored is None:
            raise _not_found("task", f"{task_id} of session {session_id}")
        done = TaskWatch(feed, stored)
        done.gone = not self._deliver(done, [stored])
        self._finish_watch(done)

    def sweep_watches(self, now: float | None = None) -> int:
        """End the watches whose caller has gone (its context inactive); at most once per
        ``WATCH_SWEEP`` seconds. Returns how many were found gone.

        A send to a vanished caller says so too, but a watch may wait long for news (a task that runs
        for hours): the scheduler's tick calls this, so such a watch does not pin its session's memory,
        its stream, or the server's idle exit. Each ``is_active`` is asked without the engine lock.
        """
        now = time.monotonic() if now is None else now
        with self.lock:
            if now < self._next_sweep:
                return 0
            self._next_sweep = now + WATCH_SWEEP
            watches = list(self._open_watches.items())
        gone = [(watch, entry) for watch, entry in watches if not self._active(watch)]
        if gone:
            with self.lock:
                for watch, entry in gone:
                    if watch in self._open_watches:
                        watch.gone = True
                        claim(watch, self._due, entry)
            self._run_due()
        return len(gone)

    def open_watches(self) -> int:
        """How many watch streams are open (for tests and diagnostics)."""
        with self.lock:
            return len(self._open_watches)

    @staticmethod
    def _active(watch: Watch) -> bool:
        try:
            return watch.feed.is_active()
        except Exception:  # a context that cannot say: its caller is as good as gone
            log.exception("a watch's caller could not be checked; the watch is ended")
            return False

    @staticmethod
    def _deliver(watch: Watch, batch: list[pb.Task]) -> bool:
        try:
            return watch.feed.deliver(batch)
        except Exception:  # a bug in encoding: end this stream, never the caller's thread
            log.exception("a watch stream could not be fed; it is ended")
            return False

    @staticmethod
    def _finish_watch(watch: Watch) -> None:
        try:
            watch.finish()
        except Exception:
            log.exception("a watch stream could not be ended")

    def _after_commit(self) -> None:
        """After a commit's callbacks: feed the watches they claimed (read without the lock: a hint)."""
        if self._due:
            self._run_due()

    def _run_due(self) -> None:
        """Pump the watches claimed so far (call without the lock held, after changing what they watch)."""
        while True:
            with self.lock:
                if not self._due:
                    return
                entry, watch = self._due.popleft()
            self._pump(entry, watch)

    def _pump(self, entry: SessionEntry, watch: Watch) -> None:
        """Feed a claimed watch until nothing new is left; end it when it is over (see :mod:`.watches`)."""
        while True:
            with self.lock:
                watch.again = False
                batch, end = watch.take(entry)
                if end:
                    watch.detach(entry)
                    self._open_watches.pop(watch, None)
                _trim_completions(entry)
            if batch and not self._deliver(watch, batch):
                with self.lock:
                    watch.gone = True
                if not end:
                    continue  # the next round ends it
            if end:
                self._finish_watch(watch)
                return
            with self.lock:
                if not watch.again and not watch.gone:
                    watch.busy = False
                    return

    def _claim_task_watches(self, entry: SessionEntry, tid: int) -> None:
        """The task changed state: its watchers have news (called with the lock held)."""
        for watch in entry.task_watches.get(tid, ()):
            claim(watch, self._due, entry)

    def _claim_all_watches(self, entry: SessionEntry) -> None:
        """Every watcher of the session has news (called with the lock held)."""
        for watch in entry.watches.values():
            claim(watch, self._due, entry)
        for watches in entry.task_watches.values():
            for task_watch in watches:
                claim(task_watch, self._due, entry)

    # -- what instances report -------------------------------------------------------------------------

    def take_task(self, session_id: str, timeout: float = 0.0) -> pb.Task | None:
        """The next pending task of an open session, now RUNNING; None when none came within ``timeout``.

        Raises FlameError(INVALID_STATE) once the session is closed, so the caller leaves it.
        """
        with self.lock:
            entry = self._entry(session_id)
            if not entry.pending and entry.is_open and timeout > 0:
                entry.sleep(timeout, lambda: bool(entry.pending) or not entry.is_open)
            if not entry.is_open:
                raise FlameError(FlameErrorCode.INVALID_STATE, f"session {session_id} is closed")
            copy = None
            while copy is None:
                task = self._start_next(entry)
                if task is None:
                    break
                copy = self._with_input_or_fail(entry, task)
        self.store.commit()  # RUNNING is stored before the task can have done anything
        if self._due:
            self._run_due()
        return copy

    def start_next(
        self, session_id: str, *, input_as_file: bool = False
    ) -> tuple[int, bytes | None, PayloadFile | None] | None:
        """For the scheduler: the oldest pending task of an open session, now RUNNING; None if none.

        Returns the task's id, input and input file. With ``input_as_file``, a task whose input is in a
        payload file has that file and no input bytes (not copied out of the task); otherwise the file
        is None. The RUNNING state is queued for the next group commit (the caller commits once it has
        sent the task).
        """
        with self.lock:
            entry = self._sessions.get(session_id)
            if entry is None or not entry.is_open:
                return None
            started = None
            while started is None:
                task = self._start_next(entry)
                if task is None:
                    return None
                started = self._started(entry, task, input_as_file)
        if self._due:  # WatchTask streams of this task (read without the lock: a hint; the pump locks)
            self._run_due()
        return started

    def start_many(
        self,
        session_id: str,
        limit: int,
        share: int,
        max_bytes: int,
        *,
        input_as_file: bool = False,
        least: int = 1,
    ) -> list[tuple[int, bytes | None, PayloadFile | None]]:
        """For the scheduler's batches: up to ``limit`` pending tasks, now RUNNING, as :meth:`start_next`'s.

        At most this instance's share of the queue (``len(pending) / share``, rounded up: the other
        ``share - 1`` instances of the session get theirs), and no more input than ``max_bytes`` beyond
        the first task: a batch is one message. None when fewer than ``least`` would go.
        """
        started: list[tuple[int, bytes | None, PayloadFile | None]] = []
        with self.lock:
            entry = self._sessions.get(session_id)
            if entry is None or not entry.is_open:
                return started
            limit = min(limit, -(-len(entry.pending) // max(1, share)))
            if limit < least or entry.closing:
                return started
            size = 0
            rows = RunningRows()
            ts = now_ms()
            while len(started) < limit and size <= max_bytes:
                task = self._start_next(entry, rows, ts)
                if task is None:
                    break
                one = self._started(entry, task, input_as_file)
                if one is not None:
                    size += len(one[1] or b"")
                    started.append(one)
            if rows:  # (queued once all are in: a commit may take it at once)
                self.store.enqueue_rows(rows.take)
        if started and self._due:
            self._run_due()
        return started

    def return_tasks(self, session_id: str, task_ids: list[int], message: str) -> None:
        """Put tasks sent to an instance that never started them back at the head of the queue, in their
        order, without spending a retry (a cancelled one is CANCELLED). The caller commits."""
        returned = False
        with self.lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                return
            for tid in reversed(task_ids):
                task = entry.tasks.get(tid)
                if task is None or task.status.state != RUNNING or tid in entry.finishing:
                    continue
                by = entry.cancelling.pop(tid, None)
                if by is not None:  # cancelled before it started
                    self._finalize(entry, task, CANCELLED, f"cancelled by {by}")
                    continue
                self._requeue(entry, task, message, front=True)
                returned = True
        self._run_due()
        if returned:
            self.scheduler.tasks_pending(session_id)

    def _restored_task(self, entry: SessionEntry, row: tuple[Any, ...]) -> pb.Task:
        """A pending or running task read back at a start: an input in a file stays there (checked, not
        read: see ``SessionEntry.input_files``). Raises the file's FlameError when it is missing or short."""
        tid, _inp, inp_file, inp_size = row[:4]
        if inp_file is None:
            return _task_from_row(self.store.payloads, entry.id, row)
        self.store.payloads.check(inp_file, inp_size, f"the input of task {tid} of session {entry.id}")
        task = _task_from_row(self.store.payloads, entry.id, (tid, None, None, None, *row[4:]))
        entry.input_files[tid] = PayloadFile(inp_file, inp_size)
        return task

    def _spilled_input(self, entry: SessionEntry, tid: int) -> bytes | None:
        """The input of a task that lives in its payload file only (None if it has none there); raises
        the file's FlameError (which names it) when it cannot be read."""
        input_file = entry.input_files.get(tid)
        return None if input_file is None else self._read_input(entry.id, tid, input_file)

    def _read_input(self, session_id: str, tid: int, input_file: PayloadFile) -> bytes:
        """The task's input from its payload file; the file's FlameError (which names it) if it is unreadable."""
        what = f"the input of task {tid} of session {session_id}"
        return self.store.payloads.read(input_file.name, input_file.size, what)

    def _add_input(self, session_id: str, tid: int, input_file: PayloadFile, snapshot: pb.Task) -> None:
        """Give a WatchTask snapshot its input, which lives in ``input_file`` (called with the lock held):
        every snapshot, the final one too, carries the input, as Flame's do.

        A file that cannot be read leaves the snapshot without it: the watch is about the task's state,
        and the task itself fails, saying why, when it is started."""
        try:
            snapshot.spec.input = self._read_input(session_id, tid, input_file)
        except FlameError as exc:
            log.warning("%s", exc.message)

    def _with_input(self, entry: SessionEntry, task: pb.Task) -> pb.Task:
        """A copy of ``task`` to hand out, with its input (read from its file when it lives there)."""
        copy = pb.Task()
        copy.CopyFrom(task)
        if not copy.spec.HasField("input"):
            spilled = self._spilled_input(entry, int(task.metadata.id))
            if spilled is not None:
                copy.spec.input = spilled
        return copy

    def _with_input_or_fail(self, entry: SessionEntry, task: pb.Task) -> pb.Task | None:
        """:meth:`_with_input` for a task just started; None when its input's file cannot be read: the
        task then fails, saying so (it cannot run), as one found so at a restart does."""
        try:
            return self._with_input(entry, task)
        except FlameError as exc:
            self._input_lost(entry, task, exc)
            return None

    def _started(
        self, entry: SessionEntry, task: pb.Task, input_as_file: bool
    ) -> tuple[int, bytes | None, PayloadFile | None] | None:
        """A task just started as :meth:`start_next` returns it; None when its input is lost (it failed)."""
        tid = int(task.metadata.id)
        input_file = entry.input_files.get(tid) if input_as_file else None
        if input_file is not None:
            return tid, None, input_file
        if task.spec.HasField("input"):
            return tid, task.spec.input, None
        try:
            return tid, self._spilled_input(entry, tid), None
        except FlameError as exc:
            self._input_lost(entry, task, exc)
            return None

    def _input_lost(self, entry: SessionEntry, task: pb.Task, error: FlameError) -> None:
        log.error("%s", error.message)
        self._finalize(entry, task, FAILED, error.message)
        self.store.execute(_DROP_INPUT, entry.id, int(task.metadata.id))  # the row named what is gone

    def _start_next(
        self, entry: SessionEntry, rows: RunningRows | None = None, ts: int | None = None
    ) -> pb.Task | None:
        """Pop the oldest pending task and mark it RUNNING (called with the lock held); None if none. Its
        RUNNING row is queued, or added to ``rows`` when given (the caller queues them). ``ts``: the time it
        starts at (epoch ms; now when not given: a batch's tasks start at one time, taken once)."""
        if not entry.pending or entry.closing:
            return None
        tid = entry.pending.popleft()
        task = entry.tasks[tid]
        status = entry.message.status
        status.pending -= 1
        status.running += 1
        _mark(task, RUNNING, None, now_ms() if ts is None else ts)
        if rows is None:
            entry.running_writes[tid] = self.store.enqueue(_task_ops(entry, task), durable=True, lazy=True)
        else:
            rows.add(tid, _running_op(entry.id, tid, task))
            entry.running_writes[tid] = rows
        if entry.task_watches:  # (a call less per task where nobody watches one)
            self._claim_task_watches(entry, tid)
        entry.wake()
        return task

    def task_timeout(self, session_id: str, task_id: int) -> float | None:
        """The task timeout the task was created with (seconds), or None when it has none of its own."""
        with self.lock:
            entry = self._sessions.get(session_id)
            return entry.timeouts.get(task_id) if entry is not None else None

    def pending_hint(self, session_id: str) -> int:
        """How many tasks of the session are queued, read without the lock: a hint for the scheduler to skip
        asking for tasks when there are none (a task queued right after is announced by ``tasks_pending``,
        which dispatches again)."""
        entry = self._sessions.get(session_id)
        return len(entry.pending) if entry is not None else 0

    def has_pending(self, session_id: str) -> bool:
        with self.lock:
            entry = self._sessions.get(session_id)
            return bool(entry and entry.is_open and entry.pending)

    def covered(self, session_id: str, instances: int) -> bool:
        """Whether ``instances`` serving the session are all it can use now (``demand`` <= ``instances``),
        answered cheaply for the common case: nothing pending, no more running tasks and no higher
        ``min_instances`` than that. False means "maybe not": ask :meth:`demand`."""
        with self.lock:
            entry = self._sessions.get(session_id)
            if entry is None or not entry.is_open:
                return True
            if entry.pending:
                return False
            s = entry.message
            return s.status.running <= instances and s.spec.min_instances <= instances

    def demand(self, session_id: str, *, cpu_share: bool = True) -> int:
        """How many instances the session could use now.

        Pending + running tasks, at least ``min_instances``; at most ``max_instances`` (the session's and
        the application's), and, with ``cpu_share``, at most as many instances as this machine has room
        for at the session's resource request (``cpu // resreq.cpu``): a burst of short tasks must not
        start a process each. That share is soft: the scheduler goes beyond it (``cpu_share=False``) when
        every instance of the session is blocked, so tasks that wait for tasks of their own session
        (recursion) cannot deadlock.
        """
        with self.lock:
            entry = self._sessions.get(session_id)
            if entry is None or not entry.is_open:
                return 0
            s = entry.message
            running = s.status.running
            if entry.finishing:  # results being committed (a burst's may wait a moment): no instance needed
                tasks = entry.tasks
                running -= sum(1 for tid in entry.finishing if tid in tasks and tasks[tid].status.state == RUNNING)
            want = max(len(entry.pending) + running, s.spec.min_instances)
            if cpu_share and s.spec.resreq.cpu:
                want = min(want, max(1, self.capacity.cpu // s.spec.resreq.cpu, s.spec.min_instances))
            if s.spec.HasField("max_instances"):
                want = min(want, s.spec.max_instances)
            app = self._apps.get(s.spec.application)
            if app is not None and app.spec.HasField("max_instances"):
                want = min(want, app.spec.max_instances)
            return want

    def instance_cap(self, session_id: str) -> int | None:
        """The most instances the session may ever have: its ``max_instances`` or its application's, the
        lower (None for a session that is not open, or when neither has one)."""
        with self.lock:
            entry = self._sessions.get(session_id)
            if entry is None or not entry.is_open:
                return None
            spec = entry.message.spec
            cap = spec.max_instances if spec.HasField("max_instances") else None
            app = self._apps.get(spec.application)
            if app is not None and app.spec.HasField("max_instances"):
                cap = app.spec.max_instances if cap is None else min(cap, app.spec.max_instances)
            return cap

    def finish_task(
        self,
        session_id: str,
        task_id: int,
        *,
        output: Mapped | None = None,
        failure: str | None = None,
        on_committed: Callable[[], None] | None = None,
        commit: bool = True,
        output_file: PayloadFile | None = None,
        spilled: bool = False,
    ) -> bool:
        """Record a running task's result: SUCCEED with ``output``, or FAILED with ``failure``.

        The final state is written durably and applied (waiters and watchers told) once committed;
        ``on_committed`` runs then. False when the task is not running (settled or cancelled meanwhile).
        With ``commit=False`` the caller commits (with other writes of its own, in one group).
        ``output_file``: a large output is already in that payload file (:meth:`PayloadFiles.spill`
        before a lock, or written by the instance and adopted), which is settled with the row.
        ``spilled``: the caller spilled the output already (``Scheduler._task_outcome``: a large one is in
        ``output_file``), so it is not looked at again here.
        """
        if output_file is None and not spilled:
            output_file = self.store.payloads.spill(output)  # a large output's file, written before the lock
        if not self._finish(session_id, task_id, output, output_file, failure, on_committed):
            self.store.payloads.settled([output_file], "the task is not running")
            return False
        if commit:
            self.store.commit()
        return True

    def finish_tasks(self, session_id: str, results: Sequence[Finished]) -> None:
        """:meth:`finish_task` with ``commit=False`` for several running tasks of one session (the results of a
        batch read together): under one lock, and queued as one write whose callback applies each in order;
        it may wait ``RESULT_LINGER`` only if each of them may (:func:`_may_linger`). A task that is not
        running (settled or cancelled meanwhile) is skipped, its output's file dropped.

        A large output must be in its file already (``output_file``), as the scheduler's results are
        (``Scheduler._task_outcome`` spills them on the thread that read them): an output given alone is
        stored as it is."""
        files = self.store.payloads
        queued: list[tuple[list[Op], OnDone]] = []
        linger = True
        ts = now_ms()  # (results read together: one time for all)
        with self.lock:
            entry = self._sessions.get(session_id)
            for tid, output, output_file, failure in results:
                task = _finishable(entry, tid) if entry is not None else None
                if entry is None or task is None:
                    files.settled([output_file], "the task is not running")
                    continue
                linger = linger and _may_linger(entry, tid)
                state = SUCCEED if failure is None else FAILED
                self._finalize(entry, task, state, failure, output, output_file=output_file, into=queued, ts=ts)
        if not queued:
            return
        if len(queued) == 1:
            ops, on_done = queued[0]
        else:
            ops = [op for one, _done in queued for op in one]
            on_done = partial(_each_done, [done for _ops, done in queued])
        self.store.enqueue(ops, on_done, lazy=linger, within=RESULT_LINGER if linger else None)

    def _finish(
        self,
        session_id: str,
        task_id: int,
        output: Mapped | None,
        output_file: PayloadFile | None,
        failure: str | None,
        on_committed: Callable[[], None] | None,
    ) -> bool:
        with self.lock:
            entry = self._sessions.get(session_id)
            task = _finishable(entry, task_id) if entry is not None else None
            if entry is None or task is None:
                return False
            linger = on_committed is None and _may_linger(entry, task_id)
            state = SUCCEED if failure is None else FAILED
            self._finalize(entry, task, state, failure, output, on_committed, output_file=output_file, linger=linger)
        return True

    def _finalize(
        self,
        entry: SessionEntry,
        task: pb.Task,
        state: int,
        message: str | None,
        output: Mapped | None = None,
        on_committed: Callable[[], None] | None = None,
        *,
        output_file: PayloadFile | None = None,
        linger: bool = False,
        into: list[tuple[list[Op], OnDone]] | None = None,
        ts: int | None = None,
    ) -> None:
        """Queue a task's final state; it is applied when committed (called with the lock held).

        ``output_file``: the output is already in that file (:meth:`PayloadFiles.spill`). ``linger``: the
        commit may wait up to ``RESULT_LINGER`` for other writes (or come with the next commit). ``into``:
        the statements and their callback are added there, for the caller to queue with others', instead
        (:meth:`finish_tasks`). ``ts``: when it ended (epoch ms; now when not given)."""
        tid = int(task.metadata.id)
        entry.finishing.add(tid)
        if task.status.state == PENDING:
            entry.pending.remove(tid)
        cancelled_by = entry.cancelling.pop(tid, None)
        if cancelled_by is not None and state != SUCCEED:  # stopping it for the cancel is what ended it
            state, message = CANCELLED, _cancelled_while_running(cancelled_by, message)
        # The final status alone is built apart from the task (which stays as it is until the commit):
        # copying the whole task would copy its input, however large.
        final = pb.TaskStatus()
        final.CopyFrom(task.status)
        if ts is None:
            ts = now_ms()
        final.state = state  # type: ignore[assignment]
        final.completion_time = ts
        event = final.events.add(code=int(state), creation_time=ts)
        if message is not None:
            event.message = bound_failure_text(message)  # a service's text: bounded, controls escaped
        ops: list[Op] | None
        row = final.SerializeToString()
        finished = partial(self._finished, entry, tid, final, row, output, on_committed)
        creation = entry.creations.pop(tid, None) if entry.creations else None
        if (
            creation is not None
            and output_file is None
            and (output is None or len(output) <= INLINE_PAYLOAD_BYTES)
            and into is None  # (a caller queueing several results as one write: each its own statements)
            and not linger  # (a final row that may wait: the refilled creation is committed at once)
            and self.store.refill(
                creation[0],
                [(_INSERT_FINAL_TASK, (entry.id, tid, int(state), creation[1], output, row, ts))],
                partial(_created_then_finished, creation[0].on_done, finished),
            )
        ):
            # The creation, not committed yet, now writes the final row, and its commit applies it (see
            # SessionEntry.creations): nothing more to queue.
            ops = None
        elif output is not None and output_file is None and len(output) <= INLINE_PAYLOAD_BYTES:
            ops = [(_UPDATE_TASK_WITH_OUTPUT, (int(state), row, ts, output, entry.id, tid))]
        elif output is not None:
            ops = [(_UPDATE_TASK, (int(state), row, ts, entry.id, tid))]
            ops.append(_payload_row(entry.id, tid, OUTPUT, output, output_file))
        else:
            ops = [(_UPDATE_TASK, (int(state), row, ts, entry.id, tid))]
            if task.spec.HasField("output"):  # (a task finished twice over a restart keeps its output)
                ops.append(_output_op(entry.id, tid, task))
        if ops is not None:
            if output_file is not None:
                entry.output_files[tid] = output_file
            on_done = self.store.payloads.on_settled([output_file], finished)
            if into is None:
                self.store.enqueue(ops, on_done, lazy=linger, within=RESULT_LINGER if linger else None)
            else:
                into.append((ops, on_done))
        running = entry.running_writes.pop(tid, None)
        if isinstance(running, RunningRows):
            running.discard(tid)
        elif running is not None:  # queued before the final row, so taken by the same commit or an earlier one
            self.store.drop(running)

    def _finished(
        self,
        entry: SessionEntry,
        tid: int,
        final: pb.TaskStatus,
        row: bytes,
        output: Mapped | None,
        on_committed: Callable[[], None] | None,
        error: FlameError | None,
    ) -> None:
        """The task's final state is committed (``final``, ``row`` serialized): apply it, and tell its waiters."""
        if error is not None:  # only a bug can make a durable write fail for good
            log.error("the final state of task %s of %s was not stored: %s", tid, entry.id, error)
        with self.lock:
            entry.finishing.discard(tid)
            entry.output_files.pop(tid, None)
            task = entry.tasks.pop(tid, None)
            if task is None:
                return
            waiters = entry.waiters.pop(tid, [])
            lone = len(waiters) == 1 and isinstance(waiters[0], OutputWaiter)  # (RunTask's)
            if lone and len(output or b"") <= EARLY_ANSWER_BYTES:
                # RunTask's answer leaves first, the lock held, built from the final status as committed
                # (``row``): all the rest, the task's own message too, is applied while it travels, and
                # whoever asks meanwhile (its caller, told, asking at once) waits for the lock, so nothing
                # is seen before it is applied. A small answer only: a transport takes it without waiting
                # for its client. 3 µs of a warm invoke, and 4 more for the status not copied and
                # serialized again before it (docs/benchmarks.md).
                self._notify_waiters([(waiters, task)], output, row)
                waiters = []
            old = _COUNTER[task.status.state]
            # In place: watch_task holds this object.
            task.status.CopyFrom(final)
            watched = bool(entry.watches) or tid in entry.task_watches
            # Only OutputWaiters wanting it, they get it as it came (see OutputWaiter).
            if output is not None and (watched or not (lone or all(isinstance(w, OutputWaiter) for w in waiters))):
                task.spec.output = output if type(output) is bytes else bytes(output)  # (a mapped file's: copied)
            status = entry.message.status
            setattr(status, old, getattr(status, old) - 1)
            new = _COUNTER[final.state]
            setattr(status, new, getattr(status, new) + 1)
            entry.attempts.pop(tid, None)
            entry.timeouts.pop(tid, None)
            entry.input_files.pop(tid, None)
            if entry.watches:
                entry.completions.append(task)
                for watch in entry.watches.values():
                    claim(watch, self._due, entry)
            if entry.task_watches:  # (a call less per task where nobody watches one)
                self._claim_task_watches(entry, tid)
            entry.wake()
        if waiters:
            self._notify_waiters([(waiters, task)], output)
        # The watchers claimed here are fed once every result of this commit is applied
        # (``Store.after_callbacks``): one message for all of them.
        if on_committed is not None:
            on_committed()

    @staticmethod
    def _notify_waiters(
        waiting: list[tuple[list[Waiter], pb.Task]], output: Mapped | None = None, status: bytes | None = None
    ) -> None:
        """Call each task's waiters; ``output``, when given, is the output of the one task of ``waiting``
        (which may have been left out of its message: see :class:`OutputWaiter`), and ``status`` its final
        status serialized (else its message's is)."""
        for waiters, task in waiting:
            for waiter in waiters:
                try:
                    if isinstance(waiter, OutputWaiter):
                        given = output
                        if given is None and task.spec.HasField("output"):  # (kept from before a restart)
                            given = task.spec.output
                        waiter.call(task, given, task.status.SerializeToString() if status is None else status)
                    else:
                        waiter(task)
                except Exception:  # a waiter's bug must not stop the others
                    log.exception("a task waiter failed")

    def complete_task(self, session_id: str, task_id: str, output: bytes | None) -> None:
        """Record success and return once committed (for callers that wait; the scheduler does not)."""
        self._finish_and_wait(session_id, task_id, output=output)

    def fail_task(self, session_id: str, task_id: str, message: str) -> None:
        """Record a failure of a running or pending task and return once committed."""
        tid = int(task_id)
        with self.lock:
            entry = self._entry(session_id)
            task = entry.tasks.get(tid)
            if task is None or task.status.state not in (RUNNING, PENDING) or tid in entry.finishing:
                return
            done = threading.Event()
            self._finalize(entry, task, FAILED, message, on_committed=done.set)
        self.store.commit()
        done.wait()

    def _finish_and_wait(self, session_id: str, task_id: str, *, output: bytes | None) -> None:
        done = threading.Event()
        if self.finish_task(session_id, int(task_id), output=output, on_committed=done.set):
            done.wait()

    def _requeue(self, entry: SessionEntry, task: pb.Task, message: str, *, front: bool = False) -> None:
        """A RUNNING task back to PENDING (called with the lock held)."""
        status = entry.message.status
        status.running -= 1
        status.pending += 1
        _mark(task, PENDING, message, now_ms())
        self.store.enqueue(_task_ops(entry, task), durable=True, lazy=True)
        tid = int(task.metadata.id)
        entry.running_writes.pop(tid, None)
        if front:
            entry.pending.appendleft(tid)
        else:
            entry.pending.append(tid)
        if entry.task_watches:  # (a call less per task where nobody watches one)
            self._claim_task_watches(entry, tid)
        entry.wake()

    def retry_task(self, session_id: str, task_id: str, message: str) -> bool:
        """Put a task whose instance died back at the head of the queue; False once retries are spent."""
        with self.lock:
            entry = self._entry(session_id)
            tid = int(task_id)
            task = entry.tasks.get(tid)
            if task is None or task.status.state != RUNNING or tid in entry.finishing:
                return False
            attempts = entry.attempts.get(tid, 0) + 1
            entry.attempts[tid] = attempts
            if tid in entry.cancelling:  # its instance was stopped to cancel it: never retried
                self._finalize(entry, task, CANCELLED, message)
                retried = False
            elif attempts > self.task_retry_limit:
                self._finalize(
                    entry,
                    task,
                    FAILED,
                    f"{message}; gave up after {self.task_retry_limit} "
                    f"{'retry' if self.task_retry_limit == 1 else 'retries'}",
                )
                retried = False
            else:
                self._requeue(entry, task, f"retry {attempts}/{self.task_retry_limit}: {message}", front=True)
                retried = True
        self.store.commit()
        self._run_due()
        if retried:
            self.scheduler.tasks_pending(session_id)
        return retried

    def fail_pending(self, session_id: str, message: str, *, commit: bool = True) -> int:
        """Fail every pending task of a session (its instances cannot start or enter it)."""
        with self.lock:
            entry = self._sessions.get(session_id)
            if entry is None or not entry.is_open or entry.closing:
                return 0
            count = 0
            for tid in list(entry.pending):
                self._finalize(entry, entry.tasks[tid], FAILED, message)
                count += 1
        if commit:
            self.store.commit()
        return count

    # -- cancelling ----------------------------------------------------------------------------------------

    def cancel_task(self, session_id: str, task_id: str, by: str, on_done: TaskWaiter) -> None:
        """Cancel one task; ``on_done`` gets it (no payloads) once its final state is committed.

        A pending task is cancelled at once (event: ``cancelled by <by>``). A running one is handed to
        the scheduler, which stops its instance; it ends CANCELLED, unless its result came first. A task
        that already finished is left as it was, and ``on_done`` gets it at once. Raises NOT_FOUND for an
        unknown session or task.
        """
        tid = self._task_id(task_id)
        with self.lock:
            entry = self._entry(session_id)
            task = entry.tasks.get(tid)
            if task is not None:
                stop = self._cancel_locked(entry, task, by, _Gather(1, lambda tasks: on_done(tasks[0])).add)
        if task is None:  # finished (its final state is in the store), or it never existed
            stored = self._load_task(session_id, tid, payloads=False)  # the answer carries none
            if stored is None:
                raise _not_found("task", f"{task_id} of session {session_id}")
            on_done(_status_reply(stored))
            return
        self.store.commit()
        if stop:
            self._stop_running(session_id, tid, by)

    def cancel_session_tasks(self, session_id: str, by: str, on_done: Callable[[list[pb.Task]], None]) -> None:
        """Cancel every pending and running task of a session, as :meth:`cancel_task` does one.

        ``on_done`` gets the tasks (no payloads, in id order) once all of them are final; at once, with
        none, when nothing was pending or running. Raises NOT_FOUND for an unknown session.
        """
        with self.lock:
            entry = self._entry(session_id)
            targets = sorted(entry.tasks)
            gather = _Gather(len(targets), on_done)
            stop = [tid for tid in targets if self._cancel_locked(entry, entry.tasks[tid], by, gather.add)]
        self.store.commit()
        for tid in stop:
            self._stop_running(session_id, tid, by)

    def _cancel_locked(self, entry: SessionEntry, task: pb.Task, by: str, waiter: TaskWaiter) -> bool:
        """Cancel ``task`` (called with the lock held); True when its instance must be stopped."""
        tid = int(task.metadata.id)
        entry.waiters.setdefault(tid, []).append(waiter)
        if tid in entry.finishing or tid in entry.cancelling:
            return False  # its final state is on its way; the waiter gets it
        if task.status.state == PENDING:
            self._finalize(entry, task, CANCELLED, f"cancelled by {by}")
            return False
        entry.cancelling[tid] = by
        task.status.events.add(
            code=EVENT_CANCEL_REQUESTED,
            message=bound_failure_text(f"cancel requested by {by}; stopping its instance"),
            creation_time=now_ms(),
        )
        # Stored, so a server that stops now cancels it at its next start instead of running it again.
        self.store.enqueue(_task_ops(entry, task), durable=True, lazy=True)
        return True

    def _stop_running(self, session_id: str, tid: int, by: str) -> None:
        """Have the scheduler stop the task's instance; if none runs it, the task is cancelled now."""
        if self.scheduler.cancel_running(session_id, tid, f"cancelled by {by}"):
            return
        with self.lock:
            entry = self._sessions.get(session_id)
            task = entry.tasks.get(tid) if entry is not None else None
            if entry is None or task is None or tid in entry.finishing or tid not in entry.cancelling:
                return
            self._finalize(entry, task, CANCELLED, None)
        self.store.commit()

    def force_close_session(self, session_id: str, by: str, timeout: float) -> pb.Session:
        """Cancel the session's pending and running tasks, then close it (``close_session(force=True)``).

        Blocks until the running tasks' instances are stopped, at most ``timeout`` seconds: call it from
        a thread that may wait, never from a store commit callback.
        """
        deadline = time.monotonic() + timeout
        by = f"a forced close of the session by {by}"
        for _ in range(FORCE_CLOSE_ROUNDS):
            settled = threading.Event()
            self.cancel_session_tasks(session_id, by, partial(_set_when_settled, settled))
            if not settled.wait(max(0.0, deadline - time.monotonic())):
                raise FlameError(
                    FlameErrorCode.DEADLINE_EXCEEDED,
                    f"session {session_id}: its running tasks were not stopped within {timeout:g} s, so it stays "
                    f"open; close it again with force to retry",
                )
            try:
                return self.close_session(session_id)
            except FlameError as exc:
                if exc.code != FlameErrorCode.INVALID_STATE or not self.get_session(session_id).status.running:
                    raise
        raise FlameError(
            FlameErrorCode.INVALID_STATE,
            f"session {session_id} kept starting new tasks while it was being closed by force "
            f"({FORCE_CLOSE_ROUNDS} rounds); stop submitting tasks to it, then close it again",
        )


class _Outcome(Generic[T]):
    """A one-shot result for a caller that waits on a callback API."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: T | None = None
        self._error: FlameError | None = None

    def settle(self, value: T | None, error: FlameError | None) -> None:
        self._value, self._error = value, error
        self._done.set()

    def wait(self) -> T:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
