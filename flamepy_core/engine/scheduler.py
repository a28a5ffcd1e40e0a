"""The scheduler: which instance serves which session. Instances are leases, not threads.

Each instance is a record with a state and a channel (:class:`Instance`); nothing waits on it. A task
committed for a session with an idle bound instance is marked RUNNING and sent (``OnTaskInvoke``,
asynchronously) by the very thread that learnt of it: the server thread that received the call, or the
channel thread that received the previous result. When the result comes back, the same callback records
it and sends that instance its next pending task at once, back to back.

State changes arrive as events (new tasks, results, readiness, exits, timers) from many threads and are
handled one at a time under one lock, by whichever thread posted while nobody else was handling: it
handles the queue to the end, then commits what the events wrote (one group commit) before letting go.
No event blocks; the work that can (starting a process, waiting for its readiness and its exit) is the
:class:`Supervisor`'s, one thread whatever the number of sessions.

Life of an instance (as Flame's executors: **one process per session binding**)::

    STARTING -> SPARE ---------------> ENTERING -> IDLE <-> BUSY -> LEAVING -> STOPPING -> gone
       \\______ (claimed by a session) _/

A process is started for a session (or ahead of one, as a spare), enters exactly one session, serves its
tasks one at a time, leaves when the session closes, and is stopped: the next session gets a fresh
process, so no state leaks from one session to the next. Speed comes from spares: when an instance
leaves, a fresh process of the same application is started ahead (imported and listening, bound to no
session) and kept for the application's ``delay_release`` seconds, so the next session binds it at once.

Failures have bounds, so no client waits forever: an instance that dies during a task has the task
retried on a fresh instance up to ``task_retry_limit`` times (each retry is a task event), then failed
with the exit code or signal and the tail of its stderr; an instance that cannot start or enter a session
is retried ``instance_start_retry_limit`` times (session events 1001), then the waiting tasks fail with
that cause (event 1002).
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from flamepy_core.config import ENV_TASK_TIMEOUT, RuntimeSettings, parse_task_timeout
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.executor import GenericSlot, InstanceLauncher, process_status
from flamepy_core.engine.executor import Instance as InstanceHandle
from flamepy_core.engine.instances import InstanceInfo
from flamepy_core.engine.lanes import LaneBook, LaneLease, ending_when_heard
from flamepy_core.engine.payload_files import PayloadFile
from flamepy_core.engine.state import (
    EVENT_BIND_FAILED,
    EVENT_NO_EXECUTOR,
    EVENT_RETRY_LIMIT,
    EVENT_WAITING_FOR_CAPACITY,
    Created,
    Engine,
    Finished,
    OutputWaiter,
    task_key,
)
from flamepy_core.engine.supervisor import Supervisor
from flamepy_core.transport_kit import answering, left_to_waiting_thread, stream_async, unary_then
from flamepy_core.wire.methods import INSTANCE
from flamepy_core.wire.payload_handoff import Mapped, map_payload_file
from flamepy_core.wire.payload_messages import (
    GRANT_LANE,
    RUN_TASKS,
    WITHDRAW_TASKS,
    lanes_offered,
    read_enter_result,
    read_task_result,
    read_withdrawn_tasks,
    task_batch,
    task_context,
    tasks_offered,
)
from flamepy_core.wire.proto import ext_pb2, shim_pb2
from flamepy_core.wire.proto import types_pb2 as pb

log = logging.getLogger(__name__)

ON_SESSION_ENTER = INSTANCE["OnSessionEnter"].path
ON_TASK_INVOKE = INSTANCE["OnTaskInvoke"].path
ON_SESSION_LEAVE = INSTANCE["OnSessionLeave"].path
_LINK_DOWN = frozenset({FlameErrorCode.UNAVAILABLE, FlameErrorCode.CANCELLED})
LANE_GRANT_TIMEOUT = 10.0
"""Seconds the server waits for an idle instance to open a lane it lends (it answers at once, unless stuck)."""
LANE_ANSWER_WAIT = 30.0
"""Seconds a close waits more for its lanes' answers when their logs say no task runs on them."""
LOST_GRACE = 1.0
"""Seconds to wait for the exit of an instance whose link broke, before calling it unresponsive."""
ENTER_RETRY_DELAY = 0.01
"""Seconds between OnSessionEnter attempts while a service found by its socket file starts serving."""
GENERIC_DELAY = 0.25
"""Seconds after the scheduler starts, or after the generic process was handed to an instance, before a
generic process starts (then put off like a spare while a session waits for a process to start)."""
SPARE_DELAY = 0.1
"""Seconds after a session's process left before its replacement spare starts, and between checks while
a session waits for a process of its own to start (spares give way to it)."""
BATCH_MAX = 64
"""Tasks in flight to one instance at most when they go in batches (``RunTasks``); a new batch tops
them up once half have answered."""
BATCH_BYTES = 1 << 20
"""Input bytes in one batch at most (beyond its first task): a batch is one message."""
RESULTS_TOGETHER = 16
"""A batch's results read together are handled as one event, this many at most (see ``_send_batch``)."""
BATCH_SHORT = 0.005
"""Seconds: an instance gets tasks queued behind the one it runs only while its tasks take less than this
(its last result came sooner after the one before). Longer tasks go one at a time, as to any instance."""
BATCH_HOLD = 0.05
"""Seconds a task may run with tasks queued behind it on its instance before they are withdrawn and go
back to the queue (checked on the scheduler's tick): a long task holds no other, and a task that waits
for one of its session's tasks cannot wait for one queued behind itself."""


def application_task_timeout(app: pb.Application) -> float | None:
    """The application's default task timeout (``spec.task_timeout``, carried as ``FLAMEPY_TASK_TIMEOUT``
    in its environments), or None: its tasks may run forever."""
    for env in app.spec.environments:
        if env.name == ENV_TASK_TIMEOUT:
            return parse_task_timeout(env.value, f"application {app.metadata.name}, {ENV_TASK_TIMEOUT}")
    return None


def may_send_batch(inst: Instance) -> bool:
    """Whether the instance may be sent a batch now (see :meth:`Scheduler._dispatch`): it takes batches,
    its tasks are short, nothing is being withdrawn, at most half of ``BATCH_MAX`` is in flight, and
    nothing sent before may still be overtaken (a batch that has not answered, a task's ``OnTaskInvoke``
    that its ``RunTask``'s thread will make later)."""
    return (
        inst.batches
        and inst.short
        and not inst.withdrawing
        and len(inst.inflight) <= BATCH_MAX // 2
        and not inst.unheard
        and inst.lone not in inst.inflight
    )


class State(enum.Enum):
    STARTING = "starting"
    """The process runs; it has not said (or shown) that it listens."""
    SPARE = "spare"
    """Listening, bound to no session: started ahead, waiting for one."""
    ENTERING = "entering"
    """OnSessionEnter is in flight."""
    IDLE = "idle"
    """Bound to a session, no task in flight."""
    BUSY = "busy"
    """Bound, running a task."""
    LEAVING = "leaving"
    """OnSessionLeave is in flight."""
    STOPPING = "stopping"
    """Told to stop (SIGTERM); SIGKILL after the grace period."""


BOUND = frozenset({State.ENTERING, State.IDLE, State.BUSY})
_SERVING = BOUND | {State.STARTING}


@dataclass(eq=False)
class Instance:
    """One instance's lease: its state, its process and what it is doing."""

    id: str
    app: str
    state: State
    since: float
    process: InstanceHandle | None = None
    session_id: str | None = None
    """The session it serves, or (while STARTING) the one it was started for."""
    inflight: dict[int, float] = field(default_factory=dict)
    """Tasks sent and not answered, in the order it runs them: id -> when sent. The first is the one it
    runs; the others (sent in batches) have not started."""
    expires: float | None = None
    """A spare is stopped at this time if no session took it."""
    kill_at: float | None = None
    """A stopping instance is killed (SIGKILL) at this time."""
    cause: str | None = None
    """Why it is stopping, when that is not its exit status (it stopped answering...)."""
    awaited: bool = True
    """Started for a session that waits for it (or will: its first), not as a spare replacing one that left."""
    deliberate: bool = False
    """Stopped on purpose (left its session, spare expired...): its exit is no failure of a session."""
    ready: bool = False
    head_since: float = 0.0
    """When the task it runs now started (or, while it runs none, when its last one ended)."""
    blocked: bool = False
    """Its current task has run ``busy_overflow_delay`` using less than half a CPU: it waits on something."""
    cpu_mark: tuple[float, float] | None = None
    """(when, CPU seconds of the process) sampled during its current task, to tell blocked from busy."""
    task_timeout: float | None = None
    """The task timeout of its session's application (seconds); a task's own timeout overrides it."""
    stopped_since: float | None = None
    """Since when its process has been seen stopped by a signal (``/proc`` state T), for an instance
    that sends no heartbeats; None while it is not."""
    start_time_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    tasks_served: int = 0
    handoff: bool = False
    """Its process takes large payloads as files (it said so entering its session: ``wire.payload_handoff``)."""
    batches: bool = False
    """Its process takes tasks in batches (``RunTasks``: it said so entering its session)."""
    may_take_generic: bool = False
    """Spawned while a generic process was held and not started yet: its start may be handed that process,
    so until it has a process the generic one counts as its place under the cap, not as another."""
    unheard: int = 0
    """Batches sent to it that have not answered yet (no result, no end): one may still be on its way, and
    another sent now could overtake it (see :meth:`Scheduler._dispatch`)."""
    lone: int | None = None
    """A task whose ``OnTaskInvoke`` was left for the thread that answers its ``RunTask`` to make, later:
    no batch goes behind it until it has answered."""
    short: bool = False
    """Its last task took less than ``BATCH_SHORT``: tasks may be queued behind the one it runs."""
    withdrawing: bool = False
    """A ``WithdrawTasks`` is in flight: nothing more is sent until it is answered."""
    cancels: dict[int, str] = field(default_factory=dict)
    """Tasks queued on it that were cancelled, and why: withdrawn, or it is stopped if one started."""
    idle_after_answer: bool = False
    """Its warm task's result was handled with nothing queued behind it: it becomes idle once the result's
    answer has left (:meth:`Scheduler._call`), not before (see :meth:`Scheduler._on_task_done`)."""
    lanes: bool = False
    """Its process opens lanes (it said so entering its session: ``GrantLane``)."""
    lane: LaneLease | None = None
    """The lane it is lent to now (:meth:`Scheduler.open_lane`): the next call sent to it takes it back."""
    lanes_closing: list[LaneLease] = field(default_factory=list)
    """Lanes taken back whose logs are not known complete yet: the call that took them back got no answer
    from the instance (its deadline passed while a lane task ran). The next call it answers, or its exit,
    ends them."""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def info(self) -> InstanceInfo:
        return InstanceInfo(
            id=self.id,
            application=self.app,
            state=_EXECUTOR_STATE[self.state],
            session_id=self.session_id,
            pid=self.pid,
            start_time_ms=self.start_time_ms,
            tasks_served=self.tasks_served,
        )


_EXECUTOR_STATE = {
    State.STARTING: pb.ExecutorState.ExecutorVoid,
    State.SPARE: pb.ExecutorState.ExecutorIdle,
    State.ENTERING: pb.ExecutorState.ExecutorBinding,
    State.IDLE: pb.ExecutorState.ExecutorBound,
    State.BUSY: pb.ExecutorState.ExecutorBound,
    State.LEAVING: pb.ExecutorState.ExecutorUnbinding,
    State.STOPPING: pb.ExecutorState.ExecutorReleasing,
}
"""How an instance's state reads as Flame's executor state (ListExecutor, flmctl top)."""


class _Acquired(enum.Enum):
    """What asking for one more instance for a session gave."""

    YES = "yes"
    """A spare was bound, a starting spare claimed, or a process started."""
    APP_CAP = "app-cap"
    """The application's max_instances is reached: one of its instances takes the tasks when free."""
    MACHINE_CAP = "machine-cap"
    """The machine-wide cap on instance processes is reached."""
    GONE = "gone"
    """The session or its application is gone, or nothing of its shim runs here."""


@dataclass(frozen=True)
class _Outcome:
    """An OnTaskInvoke's answer, read (see :meth:`Scheduler._task_outcome`)."""

    error: FlameError | None = None
    """The call failed (the task did not answer)."""
    return_code: int = 0
    output: Mapped | None = None
    """A large output its service process wrote into a payload file is that file mapped (see
    ``payload_handoff.map_payload_file``)."""
    message: str = ""
    """Why the task failed (``return_code`` not 0)."""
    output_file: PayloadFile | None = None
    """The payload file holding a large output, pending until its row is settled."""


class Scheduler:
    """Matches sessions that need instances with spares or new processes, and drives instances by events."""

    def __init__(
        self,
        engine: Engine,
        launcher: InstanceLauncher,
        settings: RuntimeSettings,
        generic: GenericSlot | None = None,
    ) -> None:
        self.engine = engine
        self.launcher = launcher
        self.generic = generic
        """The generic process kept ready for a new application's first instance (``generic_instance``):
        it counts under the machine-wide cap, and gives its place to any instance that needs it."""
        self._generic_due = False
        self.settings = settings
        self._lock = threading.RLock()
        self._events: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._events_lock = threading.Lock()
        self._draining = False
        self._handling_now = False
        """An event runs through :meth:`_handle_now` (read with the lock held): its thread goes on to commit,
        which sends the answers its writes wait for, and then looks at ``Instance.idle_after_answer``."""
        self._ids = itertools.count(1)
        self._instances: dict[str, Instance] = {}
        self._bind_failures: dict[str, int] = defaultdict(int)
        self._shim_noted: set[str] = set()
        """Sessions already told that no executor of their application's shim exists."""
        self.cap = settings.instance_process_cap()
        """The machine-wide cap on instance processes (every instance counts until its exit is known)."""
        self._wanting: dict[str, float] = {}
        """Sessions that want more instances than they have, and since when: served in this order."""
        self._idle: dict[str, Instance] = {}
        """The instance of each session that went idle last: where :meth:`run_warm` looks first (checked
        there; an entry is dropped when its session closes)."""
        self.warm_runs = 0
        """How many tasks took the warm lane (:meth:`run_warm`): for tests and benchmarks."""
        self.results_together = 0
        self.result_groups = 0
        """Results of batches handled together (:meth:`_on_tasks_done`), and in how many groups: for tests."""
        self._capacity_noted: set[str] = set()
        """Sessions told (event 1006) that they wait for the machine-wide cap; forgotten once served."""
        self._spares_due: set[str] = set()
        """Applications whose replacement spare is to start (see :meth:`_replace_with_spare`)."""
        self._closed = False
        self.supervisor = Supervisor(self, settings)
        engine.scheduler = self
        self.supervisor.start()
        self._want_generic()

    # -- events ----------------------------------------------------------------------------------------

    def post(self, handler: Callable[..., None], *args: Any) -> None:
        """Handle an event now on this thread, or queue it for the thread already handling events."""
        with self._events_lock:
            self._events.append((handler, args))
            if self._draining:
                return
            self._draining = True
        self._drain()

    def _drain(self) -> None:
        while True:
            while True:
                with self._events_lock:
                    if not self._events:
                        break
                    handler, args = self._events.popleft()
                self._run_event(handler, args)
            # What the events wrote (results, events) goes out in one group commit; its callbacks may post
            # more events, which this loop then handles. Lazy writes alone (a task became RUNNING) wait
            # for the next commit: on a warm invoke, its result's.
            self._commit_events()
            with self._events_lock:
                if not self._events:
                    self._draining = False
                    return

    def _handle_now(self, handler: Callable[..., None], *args: Any) -> None:
        """Handle an event on this thread at once, under the lock, then commit what it wrote, as
        :meth:`_drain` does: for a warm task's result (see :meth:`run_warm`), whose handler would otherwise
        be queued, taken off the queue and committed by the same thread anyway, unless another thread is
        handling events (this one then waits for the lock instead: the order of two threads' events is
        theirs)."""
        self._run_event(handler, args, now=True)
        self._commit_events()

    def _run_event(self, handler: Callable[..., None], args: tuple[Any, ...], *, now: bool = False) -> None:
        try:
            with self._lock:
                outer, self._handling_now = self._handling_now, now
                try:
                    handler(*args)
                finally:
                    self._handling_now = outer
        except Exception:  # a bug in one event must not stop the others
            log.exception("scheduler event %s failed", getattr(handler, "__name__", handler))

    def _commit_events(self) -> None:
        try:
            self.engine.store.commit(lazy=False)
        except Exception:
            log.exception("committing the scheduler's writes failed")

    # -- engine hooks (called without the engine lock) ------------------------------------------------

    def tasks_pending(self, session_id: str) -> None:
        self.post(self._on_tasks_pending, session_id)

    def session_opened(self, session_id: str) -> None:
        self.post(self._on_session_opened, session_id)

    def session_closed(self, session_id: str) -> None:
        self.post(self._on_session_closed, session_id)

    def application_removed(self, name: str) -> None:
        self.post(self._on_application_removed, name)

    def run_warm(self, session_id: str, data: bytes | None, waiter: OutputWaiter, on_created: Created) -> bool:
        """RunTask's warm lane: the session has an idle instance, so the task is sent to it at once, on this
        thread (the one that received RunTask), and created RUNNING for it while it runs; False, with nothing
        done, when the general path must take it (no idle instance, tasks queued, a failing store...).

        The general path queues the task, posts an event, and the event's handler looks for an instance,
        takes the task from the queue and marks it RUNNING: about a thousand bytecodes more on a warm
        invoke's critical path, before the instance gets its task (see docs/benchmarks.md). The state
        this leaves is the one that path leaves: the task RUNNING and in flight on its instance, which is
        BUSY; its result is handled by the same handler (``_on_task_done``), only without the event queue.
        """
        inst = self._idle.get(session_id)
        if inst is None:
            return False
        failed = False
        with self._lock:
            if inst.idle_after_answer:  # its last answer is on its way: it is idle (see _on_task_done)
                self._idle_after_answer(inst)
            if not self._takes_now(inst, session_id):
                return False

            broken: list[Exception] = []

            def send(task_id: int, record: Callable[[], None]) -> None:
                inst.state = State.BUSY
                try:
                    # Outside the engine's own ``answering`` block (submit_tasks'): this task's, named here.
                    with answering(task_key(session_id, task_id)):
                        self._send_task(inst, session_id, task_id, data, None, now=True, on_sent=record)
                except Exception as exc:  # a bug below: the task fails, saying so, rather than stay Running
                    if not (isinstance(exc, FlameError) and exc.code in _LINK_DOWN):  # (a dead instance: below)
                        log.exception("sending task %s of %s to instance %s failed", task_id, session_id, inst.id)
                    inst.inflight.pop(task_id, None)
                    inst.lone = None
                    inst.state = State.IDLE
                    broken.append(exc)

            # The instance gets the task before the engine records it (see Engine.start_warm).
            tid = self.engine.start_warm(session_id, data, waiter, on_created, send=send)
            if tid is None:
                return False
            self.warm_runs += 1
            if broken and isinstance(broken[0], FlameError) and broken[0].code in _LINK_DOWN:
                # The instance is gone (its exit not handled yet): the task never left, so it goes back to
                # the queue, for the instance that replaces it, without spending a retry.
                if self._idle.get(session_id) is inst:
                    del self._idle[session_id]
                self._return(session_id, [tid], f"not started: instance {inst.id} is gone ({broken[0].message})")
            elif broken:
                failure = (
                    f"sending the task to instance {inst.id} failed: {broken[0]!r}; it did not run: run it again "
                    "(the server's log has the traceback)"
                )
                self.engine.finish_task(session_id, tid, failure=failure, commit=False)
                failed = True
        if failed:
            self._commit_events()  # the failure is the caller's answer
        return True

    def _takes_now(self, inst: Instance, session_id: str) -> bool:
        """Whether ``inst``, the session's idle instance, can take the session's next task at once (the warm
        path, or a lane): idle, bound to it, with a process, and no instance being started for it."""
        return not (
            self._closed
            or inst.state != State.IDLE
            or inst.session_id != session_id
            or inst.inflight
            or inst.process is None
            or session_id in self._wanting
        )

    # -- lanes (flamepy_core.engine.lanes) -------------------------------------------------------------

    @property
    def _lanes(self) -> LaneBook:
        lanes = self.engine.lanes
        assert lanes is not None, "a lane was lent by a server without a lane book"
        return lanes

    def open_lane(
        self, session_id: str, timeout: float = LANE_GRANT_TIMEOUT, *, for_runs: bool = False, renew: bytes = b""
    ) -> LaneLease:
        """Lend the session's idle service process to the caller for its warm tasks (``OpenLane``): the
        lease, once the instance opened the lane; else ``INVALID_STATE`` saying why (the caller then
        sends its tasks through the server, as before).

        Lent only what the server would otherwise run at once on the warm path: an idle instance of an open
        session with nothing queued, whose process opens lanes; not while it is lent to another client, nor
        for an application with a task timeout (the server enforces it, and a lane's tasks do not pass
        through it). The client reaches the instance at its link's endpoint (a local one: a client on
        another machine cannot, and keeps the server's path).

        ``for_runs``: for ``run()``'s tasks, which the client sends many at a time and queues itself. Any
        idle instance of the session not lent yet, one per call, and only while the session has all the
        instances it may have (``Engine.instance_cap``): a queue kept in the client is one the server
        cannot count, and would otherwise cost the session the instances it would start for it.
        ``renew``: the token of a lane lent for runs whose ids are used up: the same instance again, with
        new ids and a new log (the grant closes the old lane when the instance receives it).
        """
        lanes = self.engine.lanes
        answered = threading.Event()
        answers: list[bytes | FlameError] = []

        def granted(answer: bytes | FlameError) -> None:
            answers.append(answer)
            answered.set()

        if for_runs and not renew and lanes is not None:
            # What the session's lanes run now, read fresh: an instance running a lane's task is busy, and
            # lent for runs its new client's tasks would wait behind it (a recursive service: for ever).
            lanes.catch_up(session_id)
        with self._lock:
            if renew:
                inst = self._lent_for(session_id, renew)
                why = "the lane to renew is not lent any more" if inst is None else None
            elif for_runs:
                inst = self._lendable_for_runs(session_id)
                why = self._why_no_lane_for_runs(inst, session_id)
            else:
                inst = self._idle.get(session_id)
                if inst is not None and inst.idle_after_answer:
                    self._idle_after_answer(inst)
                why = self._why_no_lane(inst, session_id)
            if why is not None:
                raise _no_lane(session_id, why)
            assert inst is not None and inst.process is not None and lanes is not None
            process = inst.process
            lease = lanes.lend(session_id, inst.id, process.url, for_runs=for_runs or bool(renew))
            if lease is None:
                raise _no_lane(session_id, "tasks are queued, or the session is closing")
            replaced = self._take_lane_back(inst)
            inst.lane = lease
            request = ext_pb2.GrantLaneRequest(
                token=lease.token, first_task_id=lease.first, count=lease.end - lease.first, log_path=str(lease.path)
            ).SerializeToString()
            # Sent under the lock: every call the scheduler sends the instance later goes after the grant on
            # the link, so the instance receives it after, closes the lane, and its answer ends the lease.
            unary_then(process.channel, GRANT_LANE, request, granted, timeout)()
        if not answered.wait(timeout + 1.0):
            answers.append(FlameError(FlameErrorCode.DEADLINE_EXCEEDED, f"no answer within {timeout} s"))
        answer = answers[0]
        if replaced:  # (the lane renewed: closed by the grant, its log complete once the grant is answered)
            self._lanes_heard(inst, replaced, answer)
        if isinstance(answer, FlameError):
            code, message = -1, answer.message
        else:
            code, message, _handoff = read_enter_result(answer)
        with self._lock:
            taken_back = inst.lane is not lease
            if code != 0 and not taken_back:
                inst.lane = None
        if code != 0:
            if not taken_back:  # (taken back: the call that did ends it once answered)
                lanes.end(lease)
            raise _no_lane(session_id, f"instance {inst.id} did not open it: {message}")
        if taken_back:
            raise _no_lane(session_id, f"instance {inst.id} was given other work meanwhile")
        return lease

    def _lent_for(self, session_id: str, token: bytes) -> Instance | None:
        """The instance lent with the lane of ``token`` (for the session's runs), if it still is and can
        take the session's next tasks at once."""
        for inst in self._instances.values():
            lane = inst.lane
            if lane is not None and lane.token == token and lane.session_id == session_id:
                return inst if self._takes_now(inst, session_id) and not inst.lanes_closing else None
        return None

    def _lendable_for_runs(self, session_id: str) -> Instance | None:
        """An idle instance of the session not lent for runs: one lent to nobody first, else one lent for a
        client's invokes and running none of them (taken back: its client sends them through the server)."""
        first = self._idle.get(session_id)
        if first is not None and first.idle_after_answer:
            self._idle_after_answer(first)
        fit = [
            i
            for i in self._instances.values()
            if i.session_id == session_id
            and self._takes_now(i, session_id)
            and i.lanes
            and not i.lanes_closing
            and (i.lane is None or not (i.lane.for_runs or i.lane.running))
        ]
        return min(fit, key=lambda i: (i.lane is not None, i is not first), default=None)

    def _why_no_lane_for_runs(self, inst: Instance | None, session_id: str) -> str | None:
        cap = self.engine.instance_cap(session_id)
        if cap is None or len(self._serving(session_id)) < cap:
            return "the session may get more instances: run()'s tasks go through the server, which starts them"
        # (an instance lent for a client's invokes may be taken back for runs: _lendable_for_runs)
        return self._why_no_lane(inst, session_id, lent_ok=True)

    def _why_no_lane(self, inst: Instance | None, session_id: str, *, lent_ok: bool = False) -> str | None:
        if self.engine.lanes is None or not self.engine.lanes.lends:
            return "this server lends no lanes (it runs in strict durability, or without lanes)"
        if inst is None or not self._takes_now(inst, session_id):
            return "no idle instance"
        if not inst.lanes:
            return f"instance {inst.id} does not open lanes (not flamepy's service runtime)"
        if (inst.lane is not None and not lent_ok) or inst.lanes_closing:
            return f"instance {inst.id} is lent to another client"
        if inst.task_timeout is not None:
            return f"application {inst.app} has a task timeout, which only the server's path enforces"
        return None

    def _take_lane_back(self, inst: Instance) -> Sequence[LaneLease]:
        """A call is about to be sent to ``inst``: the lane it is lent to (if any) closes when the instance
        receives it, and its log is complete once the instance has answered the call (not when the call
        failed here: a deadline passes while a lane's task still runs). The caller hands the lanes to
        :meth:`_lanes_heard` with the answer."""
        if inst.lane is None and not inst.lanes_closing:
            return _NO_LANES  # (every call to an instance asks: nothing built when it is lent to nobody)
        lanes = inst.lanes_closing
        if inst.lane is not None:
            lanes.append(inst.lane)
            inst.lane = None
        inst.lanes_closing = []
        return lanes

    def _lanes_heard(self, inst: Instance, lanes: Sequence[LaneLease], answer: object) -> None:
        """The call that took ``lanes`` back was answered (``answer``: its reply, or a FlameError)."""
        why = ""
        if isinstance(answer, FlameError):
            with self._lock:
                if answer.code not in _LINK_DOWN and inst.id in self._instances:
                    # No word from a live instance (a deadline passed while a lane's task ran): a later
                    # answer, or its exit, ends them.
                    inst.lanes_closing.extend(lanes)
                    return
            why = f"instance {inst.id} is gone ({answer.message})"  # (its exit may have been handled first)
        for lane in lanes:
            self._lanes.end(lane, why)

    def take_lanes_back(self, session_id: str, timeout: float) -> bool:
        """Close the session's lanes and record what they ran (before the session closes): True once done,
        False when a lane's task still ran after ``timeout`` s (the lane is closed all the same)."""
        lanes = self.engine.lanes
        if lanes is None or not lanes.leases(session_id):
            return True
        waits: list[threading.Event] = []
        with self._lock:
            for inst in self._instances.values():
                if inst.lane is None or inst.lane.session_id != session_id or inst.process is None:
                    continue
                done = threading.Event()
                waits.append(done)
                # A grant of no ids: it closes the lane when received, and is answered once the lane's task
                # (if one runs) is done and in the log. No deadline on the call (the task may run long):
                # the close waits for ``done`` as long as it will, and the lane ends when the answer comes.
                closing = ext_pb2.GrantLaneRequest(count=0).SerializeToString()
                self._call(inst, GRANT_LANE, closing, None, _lane_closed, done)
        deadline = time.monotonic() + timeout
        finished = all(done.wait(max(0.0, deadline - time.monotonic())) for done in waits)
        lanes.catch_up(session_id)
        if not finished and timeout > 0 and not lanes.running_in(session_id):
            # No task runs on them, as their logs say: the answers are on their way, behind a server busy
            # recording what the lanes ran (a burst of run()'s tasks). Waited for, not taken for a running task.
            deadline = time.monotonic() + LANE_ANSWER_WAIT
            finished = all(done.wait(max(0.0, deadline - time.monotonic())) for done in waits)
            lanes.catch_up(session_id)
        return finished

    def cancel_running(self, session_id: str, task_id: int, reason: str) -> bool:
        """Stop the instance running a cancelled task (``flame.v1.Instance`` has no call to cancel one).

        Its exit reports the task lost, as for any instance that dies (``retry_task``), and the engine
        records it CANCELLED instead of retrying it; a task sent to the same instance behind it goes back
        to the head of the queue without spending a retry. Minimal on purpose (see issue 12): no call to
        the service first.
        """
        with self._lock:
            inst = next(
                (i for i in self._instances.values() if i.session_id == session_id and task_id in i.inflight), None
            )
            lanes = self.engine.lanes
            lane = lanes.running_on(session_id, task_id) if inst is None and lanes is not None else None
            if lane is not None:  # a client's lane runs it: its instance is stopped, as for any running task
                lent = self._instances.get(lane.instance_id)
                if lent is not None:
                    self.post(self._stop_lane_instance, lent, task_id, reason)
                    return True
        if inst is None:
            return False
        self.post(self._on_cancel, inst, task_id, reason)
        return True

    def _stop_lane_instance(self, inst: Instance, task_id: int, reason: str) -> None:
        """Stop an instance running a lane's task that was cancelled: its exit ends the lane, and the task,
        as the lane's log leaves it (begun, no result), is recorded CANCELLED (:meth:`LaneBook.end`)."""
        if inst.state == State.STOPPING or inst.process is None:
            return
        log.info(
            "instance %s: stopping it to cancel task %s of %s (on a lane: %s)",
            inst.id,
            task_id,
            inst.session_id,
            reason,
        )
        self._stop(inst, deliberate=True)

    def _on_cancel(self, inst: Instance, task_id: int, reason: str) -> None:
        if task_id not in inst.inflight:
            return  # answered meanwhile
        if task_id != next(iter(inst.inflight)) and inst.state != State.STOPPING:
            # Queued behind the task it runs: taken back, then cancelled (the engine), no instance stopped;
            # should it have started meanwhile, its instance is stopped once the withdrawal answers.
            inst.cancels[task_id] = reason
            self._withdraw(inst)
            return
        log.info("instance %s: stopping it to cancel task %s of %s (%s)", inst.id, task_id, inst.session_id, reason)
        self._stop(inst, deliberate=True)  # SIGTERM, SIGKILL after shutdown_grace; on_exit reports the task

    # -- placing sessions ------------------------------------------------------------------------------

    def _bound_to(self, session_id: str) -> list[Instance]:
        return [i for i in self._instances.values() if i.session_id == session_id and i.state in BOUND]

    def _on_tasks_pending(self, session_id: str) -> None:
        if self._closed:
            return
        serving = self._serving(session_id)
        for inst in serving:
            if inst.state in (State.IDLE, State.BUSY):
                self._dispatch(inst)
        if session_id not in self._wanting and self.engine.covered(
            session_id, sum(1 for i in serving if i.state in BOUND or i.state == State.STARTING)
        ):
            # The warm case (its instance took the task, nothing else waits): no capacity to account for.
            self._satisfied(session_id)
            return
        if self._missing(session_id) <= 0:
            self._satisfied(session_id)
            return
        self._wanting.setdefault(session_id, time.monotonic())
        self._place()

    def _serving(self, session_id: str) -> list[Instance]:
        """The instances bound to the session, or starting for it."""
        return [
            i for i in self._instances.values() if i.session_id == session_id and i.state in (BOUND | {State.STARTING})
        ]

    def _missing(self, session_id: str) -> int:
        """How many more instances the session should get now (0 when it has enough).

        Its demand within its CPU share (``Engine.demand``), and beyond that share one more at a time
        when it has pending tasks and every instance it has is blocked (see :meth:`_overflow`): tasks
        that wait for tasks of their own session (a recursive Runner service) hold their instances, and
        the share alone would deadlock them. The machine-wide cap stays hard; the session's and the
        application's ``max_instances`` too.
        """
        serving = self._serving(session_id)
        missing = self.engine.demand(session_id) - len(serving)
        if missing > 0 or not serving or not self.engine.has_pending(session_id):
            return missing
        blocked = all(i.state == State.BUSY and i.blocked for i in serving)
        if blocked and len(serving) < self.engine.demand(session_id, cpu_share=False):
            return 1
        return 0

    def _satisfied(self, session_id: str) -> None:
        self._wanting.pop(session_id, None)
        self._capacity_noted.discard(session_id)

    def _place(self) -> None:
        """Give the sessions that want instances what the caps allow, fairly.

        Sessions without any instance first (they make no progress at all), then in the order they
        started waiting; one instance per session per round, so capacity is shared out rather than
        taken by the first session with many tasks. When the machine-wide cap stops a session, room is
        made for it (a spare of another application, or an idle instance, is stopped) and it waits,
        with a session event saying why.
        """
        if self._closed:
            return
        progress = True
        while progress and self._wanting:
            progress = False
            blocked: list[str] = []
            order = sorted(self._wanting, key=lambda sid: (bool(self._serving(sid)), self._wanting[sid]))
            for sid in order:
                if self._missing(sid) <= 0:
                    self._satisfied(sid)
                    continue
                outcome = self._acquire_for(sid)
                if outcome is _Acquired.YES:
                    progress = True
                    if self._missing(sid) <= 0:
                        self._satisfied(sid)
                elif outcome is _Acquired.GONE:
                    self._satisfied(sid)
                elif outcome is _Acquired.MACHINE_CAP:
                    blocked.append(sid)
            if blocked and not progress:
                self._make_room(blocked)

    def _acquire_for(self, session_id: str) -> _Acquired:
        try:
            app_name = self.engine.get_session(session_id).spec.application
            app = self.engine.get_application(app_name)
        except FlameError:
            return _Acquired.GONE  # the session or its application is gone
        if app.spec.shim != pb.Shim.Host:
            self._no_executor(session_id, app)
            return _Acquired.GONE
        return self._acquire(session_id, app)

    def _acquire(self, session_id: str, app: pb.Application) -> _Acquired:
        """Give ``session_id`` one more instance of ``app``: a spare, a starting spare, or a new process."""
        name = app.metadata.name
        spares = [i for i in self._instances.values() if i.app == name and i.state == State.SPARE]
        if spares:
            self._enter(spares[0], session_id)
            return _Acquired.YES
        starting = [i for i in self._instances.values() if i.app == name and i.state == State.STARTING]
        unclaimed = [i for i in starting if i.session_id is None]
        if unclaimed:
            unclaimed[0].session_id = session_id
            return _Acquired.YES
        alive = sum(1 for i in self._instances.values() if i.app == name and i.state != State.STOPPING)
        if alive >= app.spec.max_instances:
            return _Acquired.APP_CAP  # the application's cap: a busy instance takes the task when it is free
        if not self._room():
            self._note_capacity(session_id)
            return _Acquired.MACHINE_CAP
        self._spawn(app, session_id)
        return _Acquired.YES

    def _note_capacity(self, session_id: str) -> None:
        """Tell a session, once per wait, that it waits for the machine-wide cap."""
        if session_id in self._capacity_noted:
            return
        self._capacity_noted.add(session_id)
        message = (
            f"waiting for an instance: this machine runs at most {self.cap} instance processes at once "
            f"(max_instance_processes) and all of them are in use; the session's tasks stay pending until one "
            f"is free (an instance is freed when its session closes, has been idle for its delay_release, or "
            f"is idle while other sessions wait)"
        )
        log.info("session %s: %s", session_id, message)
        self.engine.add_session_event(session_id, EVENT_WAITING_FOR_CAPACITY, message)

    def _make_room(self, blocked: list[str]) -> None:
        """Stop what holds capacity without using it, so the sessions in ``blocked`` can have it.

        Spares first (they serve nobody), then instances idle in sessions that have nothing pending
        (beyond their ``min_instances``), the longest idle first. Only as many as the blocked sessions
        need, counting instances already on their way out.
        """
        leaving = sum(1 for i in self._instances.values() if i.state in (State.LEAVING, State.STOPPING))
        needed = len(blocked) - leaving
        if needed <= 0:
            return
        apps = set()
        for sid in blocked:
            with contextlib.suppress(FlameError):
                apps.add(self.engine.get_session(sid).spec.application)
        spares = sorted(
            (i for i in self._instances.values() if i.state == State.SPARE and i.app not in apps),
            key=lambda i: i.since,
        )
        for inst in spares[:needed]:
            log.info("stopping spare instance %s of %s: sessions wait for the machine-wide cap", inst.id, inst.app)
            self._stop(inst, deliberate=True)
            needed -= 1
        if needed <= 0:
            return
        for inst in self._idle_instances()[:needed]:
            log.info(
                "instance %s leaves session %s, idle while other sessions wait for the machine-wide cap",
                inst.id,
                inst.session_id,
            )
            self._leave(inst, replace=False)

    def _idle_instances(self) -> list[Instance]:
        """Instances bound to a session that has nothing pending, beyond its ``min_instances``: longest idle first."""
        by_session: dict[str, list[Instance]] = defaultdict(list)
        for inst in self._instances.values():
            if inst.state == State.IDLE and inst.session_id is not None and not _runs_lane_task(inst):
                by_session[inst.session_id].append(inst)
        idle: list[Instance] = []
        for sid, instances in by_session.items():
            if self.engine.has_pending(sid):
                continue
            bound = len(self._bound_to(sid))
            keep = self._min_instances(sid)
            instances.sort(key=lambda i: i.since)
            idle.extend(instances[: max(0, min(len(instances), bound - keep))])
        return sorted(idle, key=lambda i: i.since)

    def _min_instances(self, session_id: str) -> int:
        try:
            return int(self.engine.session_entry(session_id).message.spec.min_instances)
        except FlameError:
            return 0

    def _no_executor(self, session_id: str, app: pb.Application) -> None:
        """This server runs Host applications only: the session's tasks wait, and the session says why."""
        if session_id in self._shim_noted:
            return
        self._shim_noted.add(session_id)
        shim = pb.Shim.Name(app.spec.shim)
        message = (
            f"no executor of shim {shim} exists on this server (it runs {pb.Shim.Name(pb.Shim.Host)} applications "
            f"only): the tasks of application {app.metadata.name} stay pending; register it with shim: Host, or "
            f"connect to a Flame cluster that has {shim} executors (FLAME_ENDPOINT)"
        )
        log.warning("session %s: %s", session_id, message)
        self.engine.add_session_event(session_id, EVENT_NO_EXECUTOR, message)

    def _spawn(self, app: pb.Application, session_id: str | None, *, awaited: bool = True) -> Instance:
        now = time.monotonic()
        inst = Instance(id=f"i{next(self._ids)}", app=app.metadata.name, state=State.STARTING, since=now)
        inst.session_id = session_id
        inst.awaited = awaited
        if session_id is None:
            inst.expires = now + float(app.spec.delay_release)
        inst.may_take_generic = self.generic is not None and bool(self.generic.held())
        self._instances[inst.id] = inst
        self.supervisor.spawn(inst, app)
        return inst

    # -- supervisor events -----------------------------------------------------------------------------

    def on_started(self, inst: Instance, process: InstanceHandle | None, error: FlameError | None) -> None:
        """The supervisor started the process (or could not)."""
        inst.may_take_generic = False
        if process is None:
            self._instances.pop(inst.id, None)
            detail = f"instance could not start: {error.message if error else 'unknown error'}"
            if inst.session_id is not None:
                self._bind_failed(inst.session_id, inst.app, detail)
            else:
                log.warning("spare instance %s of %s: %s", inst.id, inst.app, detail)
            return
        inst.process = process
        if self.generic is not None and len(self._instances) + self._generic_place() > self.cap:
            self.generic.drop()  # this start did not take it, and a start counted on it: over the cap by it
        if inst.state == State.STOPPING or self._closed:
            self.supervisor.stop(inst, self.settings.shutdown_grace)
        elif self.generic is not None and not self.generic.held():
            self._want_generic()  # this instance may have been the generic process

    def on_ready(self, inst: Instance) -> None:
        """The process listens (it said so, or its socket appeared) and the channel to it is made."""
        if inst.state != State.STARTING or self._closed:
            return
        inst.ready = True
        process = inst.process
        assert process is not None
        if inst.session_id is not None:
            sid = inst.session_id
            if self.engine.demand(sid) > 0 and self._session_open(sid):
                self._enter(inst, sid)
                return
            inst.session_id = None  # the session it was started for no longer needs it
        self._make_spare(inst)

    def _make_spare(self, inst: Instance) -> None:
        inst.state = State.SPARE
        inst.since = time.monotonic()
        try:
            delay = float(self.engine.get_application(inst.app).spec.delay_release)
        except FlameError:
            self._stop(inst, deliberate=True)
            return
        inst.expires = inst.since + delay
        # Somebody may be waiting for an instance of this application right now.
        for session_id in self.engine.pending_sessions(inst.app):
            if inst.state != State.SPARE:
                break
            self._on_tasks_pending(session_id)
        if inst.state == State.SPARE and self._wanting:
            self._place()  # sessions of other applications may wait for the capacity it holds

    def on_exit(self, inst: Instance) -> None:
        """The process has exited (its status is known)."""
        if self._instances.pop(inst.id, None) is None:
            return
        process = inst.process
        state = inst.state
        description = inst.cause or (process.describe_exit(wait=0) if process is not None else "the instance ended")
        if process is not None:
            process.cleanup()
        for lane in self._take_lane_back(inst):  # the process is gone: nothing more is appended to the logs
            self._lanes.end(lane, f"instance {inst.id} ended ({description})")
        if inst.session_id is not None and self._idle.get(inst.session_id) is inst:
            del self._idle[inst.session_id]  # (an idle instance that died is no warm path for the next task)
        if self._closed:
            return
        lost = list(inst.inflight) if inst.session_id else []
        inst.inflight.clear()
        if lost:  # a task never stays RUNNING without its instance
            assert inst.session_id is not None
            if len(lost) > 1:  # queued behind the one it ran (first, so that one goes back ahead of them)
                self._return(inst.session_id, lost[1:], f"not started: instance {inst.id} ended ({description})")
            self.engine.retry_task(inst.session_id, str(lost[0]), description)
        if not inst.deliberate:
            sid = inst.session_id
            if state in (State.STARTING, State.ENTERING) and sid is not None:
                self._bind_failed(sid, inst.app, description)
            elif state in (State.IDLE, State.BUSY) and sid is not None and not lost and self._session_open(sid):
                # Dying while idle is a failure to serve the session: count it, or a service that always
                # dies after entering would be restarted forever.
                self._bind_failed(sid, inst.app, description)
        for session_id in self._sessions_wanting(inst.app):
            self._on_tasks_pending(session_id)
        self._place()  # its place under the machine-wide cap is free
        if self.generic is not None and not self.generic.held():
            self._want_generic()

    def on_tick(self, now: float) -> None:
        """Timers: task timeouts, tasks queued behind a long one, liveness, start deadlines, spare expiry,
        idle release, going beyond a CPU share, SIGKILL after the grace period; and the engine's sweep of
        watch streams whose caller has gone (at most once per ``WATCH_SWEEP``)."""
        self.engine.sweep_watches(now)
        for inst in self._instances.values():  # a lane in use is no idle instance to release
            if inst.lane is not None and inst.lane.news_at > inst.since:
                inst.since = inst.lane.news_at
        self._expire_tasks(now)
        for inst in list(self._instances.values()):
            if len(inst.inflight) > 1 and inst.state == State.BUSY and now - inst.head_since > BATCH_HOLD:
                self._withdraw(inst)
        self._check_liveness(now)
        self._release_idle(now)
        self._overflow(now)
        for inst in list(self._instances.values()):
            if inst.state == State.STARTING and inst.process is not None:
                if now - inst.since > self.settings.instance_start_timeout:
                    self._start_timed_out(inst)
            elif inst.state == State.SPARE and inst.expires is not None and now >= inst.expires:
                log.info("spare instance %s of %s was not used within delay_release: stopping it", inst.id, inst.app)
                self._stop(inst, deliberate=True)
            elif inst.state == State.STOPPING and inst.kill_at is not None and now >= inst.kill_at:
                inst.kill_at = None
                if inst.process is not None:
                    inst.process.kill()

    def _expire_tasks(self, now: float) -> None:
        """Fail each task that has run longer than its task timeout, and stop the instance running it.

        The timeout counts from when the task was sent to its instance, and is the task's own
        (``task_timeout`` of the call) or else the application's (``spec.task_timeout``). The instance is
        never reused: it gets SIGTERM, SIGKILL after ``shutdown_grace``, and the session's next task runs
        on a fresh one.
        """
        for inst in list(self._instances.values()):
            sid = inst.session_id
            if inst.state != State.BUSY or sid is None or not inst.inflight:
                continue
            tid = next(iter(inst.inflight))
            own = self.engine.task_timeout(sid, tid)
            timeout = own if own is not None else inst.task_timeout
            if timeout is not None and now - inst.head_since > timeout:
                self._task_timed_out(inst, sid, tid, timeout)

    def _task_timed_out(self, inst: Instance, session_id: str, tid: int, timeout: float) -> None:
        pid = inst.pid
        failure = (
            f"task {tid} of session {session_id} exceeded the task timeout of {timeout:g} s; its instance "
            f"{inst.id} (pid {pid}) of application {inst.app} was stopped (SIGTERM, then SIGKILL after "
            f"{self.settings.shutdown_grace:g} s) and is replaced by a fresh one"
        )
        log.warning("%s", failure)
        del inst.inflight[tid]
        self.engine.finish_task(session_id, tid, failure=failure, commit=False)
        if inst.inflight:  # queued behind it, never started
            self._return(session_id, list(inst.inflight), f"not started: task {tid} before it timed out")
            inst.inflight.clear()
        self._stop(inst, deliberate=True)
        self._on_tasks_pending(session_id)

    def _check_liveness(self, now: float) -> None:
        """Handle as crashed an instance that has shown no sign of life for ``liveness_timeout``.

        A sign of life is a heartbeat (an instance of this SDK writes one every ``heartbeat_interval``
        from a thread of its own: none comes while the process is frozen or a callback holds the GIL);
        for an instance that sends none (written with Flame's SDK), its process not being stopped by a
        signal (``/proc/<pid>/stat`` state T). The process is killed (SIGKILL: a frozen or GIL-bound
        process cannot act on SIGTERM) and its exit is handled as any crash: its task is retried per the
        retry rules, with this cause in the task's events.
        """
        limit = self.settings.liveness_timeout
        for inst in list(self._instances.values()):
            process = inst.process
            if process is None or inst.state in (State.STARTING, State.STOPPING) or inst.pid == os.getpid():
                continue
            beat = process.last_beat
            state: str | None = None
            if beat is None:  # no heartbeats: only a stopped process is known to be unresponsive
                state = self._process_state(process.pid)
                if state in ("T", "t"):
                    inst.stopped_since = inst.stopped_since or now
                else:
                    inst.stopped_since = None
                beat = inst.stopped_since
            if beat is not None and now - beat > limit:
                self._unresponsive(inst, now - beat, state or self._process_state(process.pid))

    @staticmethod
    def _process_state(pid: int) -> str:
        status = process_status(pid)
        return status[0] if status is not None else "?"

    def _unresponsive(self, inst: Instance, silent: float, state: str) -> None:
        how = "stopped by a signal (state T)" if state in ("T", "t") else f"in state {state}"
        inst.cause = (
            f"instance {inst.id} (pid {inst.pid}) of application {inst.app} stopped answering: no sign of "
            f"life for {silent:.1f} s (liveness_timeout {self.settings.liveness_timeout:g} s), the process "
            f"{how}; it was killed"
        )
        log.warning("%s", inst.cause)
        deliberate = inst.session_id is None or inst.state == State.LEAVING
        inst.state = State.STOPPING
        inst.since = time.monotonic()
        inst.deliberate = deliberate
        inst.kill_at = None
        assert inst.process is not None
        inst.process.kill()

    def _release_idle(self, now: float) -> None:
        """An instance idle for its application's ``delay_release`` leaves its session (keeping the
        session's ``min_instances``): an open session nobody uses (its client died, or forgot it) does not
        hold processes. The session gets an instance again when work arrives."""
        for inst in self._idle_instances():
            try:
                delay = float(self.engine.get_application(inst.app).spec.delay_release)
            except FlameError:
                delay = 0.0
            if now - inst.since >= delay:
                log.info(
                    "instance %s leaves session %s: idle for %.0f s (delay_release of %s)",
                    inst.id,
                    inst.session_id,
                    now - inst.since,
                    inst.app,
                )
                self._leave(inst, replace=False)

    def _overflow(self, now: float) -> None:
        """Find instances that are blocked, and give their sessions one more instance beyond their CPU share.

        An instance is blocked when its current task has run ``busy_overflow_delay`` seconds while its
        process used less than half a CPU (measured over another such period, from ``/proc``) and is not
        runnable when measured (on a loaded machine a computing process may get less than half a CPU): it
        waits for something, such as tasks of its own session. A session with pending tasks whose every
        instance is blocked may start one more (see :meth:`_missing`); one computing flat out may not, so
        a burst of long CPU-bound tasks stays within the CPU share. Only instances of sessions with
        pending tasks are measured.
        """
        delay = self.settings.busy_overflow_delay
        waiting: dict[str, bool] = {}
        for inst in self._instances.values():
            sid = inst.session_id
            if sid is None or inst.state != State.BUSY or inst.blocked or now - inst.head_since < delay:
                continue
            if sid not in waiting:
                waiting[sid] = self.engine.has_pending(sid)
            if not waiting[sid]:
                continue
            status = process_status(inst.pid) if inst.pid is not None and inst.pid != os.getpid() else None
            if status is None:
                inst.blocked = True  # nothing to measure (an in-process instance): its wait is what counts
            elif inst.cpu_mark is None:
                inst.cpu_mark = (now, status[1])
            elif now - inst.cpu_mark[0] >= delay:
                used = (status[1] - inst.cpu_mark[1]) / (now - inst.cpu_mark[0])
                # A process that wants the CPU (state R: running, or runnable on a busy machine) computes,
                # however little CPU the machine gave it: only one that sleeps waits for something.
                inst.blocked = used < 0.5 and status[0] != "R"
                inst.cpu_mark = (now, status[1])
        for sid, pending in waiting.items():
            if pending and sid not in self._wanting and self._missing(sid) > 0:
                self._on_tasks_pending(sid)

    def _start_timed_out(self, inst: Instance) -> None:
        process = inst.process
        assert process is not None
        detail = (
            f"instance {inst.id} did not start listening on {process.url} within "
            f"{self.settings.instance_start_timeout} s"
        )
        tail = process.stderr_tail(self.settings.stderr_tail_lines)
        if tail:
            detail += f"; last lines of its stderr:\n{tail}"
        sid = inst.session_id
        self._stop(inst, deliberate=True)
        if sid is not None:
            self._bind_failed(sid, inst.app, detail)

    # -- entering and leaving sessions ----------------------------------------------------------------

    def _session_context(self, session_id: str, app_name: str) -> bytes:
        session = self.engine.get_session(session_id)
        app = self.engine.get_application(app_name)
        ctx = shim_pb2.SessionContext(session_id=session_id)
        ctx.application.name = app.metadata.name
        ctx.application.shim = app.spec.shim
        for name in ("image", "command", "working_directory", "url", "installer"):
            if app.spec.HasField(name):
                setattr(ctx.application, name, getattr(app.spec, name))
        if session.spec.HasField("common_data"):
            ctx.common_data = session.spec.common_data
        return ctx.SerializeToString()

    def _enter(self, inst: Instance, session_id: str) -> None:
        process = inst.process
        assert process is not None
        inst.state = State.ENTERING
        inst.since = time.monotonic()
        inst.session_id = session_id
        inst.expires = None
        try:
            request = self._session_context(session_id, inst.app)
            inst.task_timeout = application_task_timeout(self.engine.get_application(inst.app))
        except FlameError as exc:
            self._stop(inst, deliberate=True)
            log.info("instance %s: session %s is gone (%s)", inst.id, session_id, exc.message)
            return
        self._call(inst, ON_SESSION_ENTER, request, self.settings.session_enter_timeout, self._on_entered, session_id)

    def _call(
        self,
        inst: Instance,
        method: str,
        request: bytes,
        timeout: float | None,
        then: Callable[..., None],
        *args: Any,
        prepare: Callable[[bytes | FlameError], Any] | None = None,
        answers: Hashable | None = None,
        now: bool = False,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        """Call the instance asynchronously; ``then(inst, *args, answer)`` runs as an event when it answers,
        ``answer`` the response or the call's :class:`FlameError`.

        The call holds no future (:func:`flamepy_core.transport_kit.unary_then`). ``prepare``, when given,
        turns the answer into what ``then`` gets instead, on the thread that received it, before the event
        is posted: for work that must not hold the scheduler's lock. ``answers`` names the call for
        :func:`flamepy_core.transport_kit.answering` (a task's, whose result is the reply a waiting
        RunTask thread sends). With ``now``, ``then`` runs on that thread at once (:meth:`_handle_now`)
        rather than through the event queue. ``on_sent`` runs once the call is on its way, before anything
        handles its answer (an answer that came first is handled after it, on this thread).
        """
        process = inst.process
        assert process is not None
        handle = self._handle_now if now else self.post
        files = self.engine.store.payloads
        # (WithdrawTasks is answered by the instance's receiving thread at once, not after the lane's task:
        # it does not take a lane back, and the instance does not close one for it.)
        lanes = self._take_lane_back(inst) if method != WITHDRAW_TASKS else _NO_LANES

        def answered(answer: bytes | FlameError) -> None:
            handle(then, inst, *args, answer if prepare is None else prepare(answer))
            if inst.idle_after_answer:
                self._run_event(self._idle_after_answer, (inst,))
            files.drop_due()  # after the answer was handled (a RunTask's reply sent): off its path
            if lanes:  # answered after the call that closed them: the lanes' logs are complete
                self._lanes_heard(inst, lanes, answer)

        arm = unary_then(process.channel, method, request, answered, timeout, answers=answers)
        if on_sent is not None:
            on_sent()
        arm()

    def _on_entered(self, inst: Instance, session_id: str, answer: bytes | FlameError) -> None:
        if inst.state != State.ENTERING or inst.session_id != session_id:
            return
        process = inst.process
        assert process is not None
        if isinstance(answer, FlameError):
            error = answer
            if (
                error.code in _LINK_DOWN
                and process.alive()
                and time.monotonic() - process.started < self.settings.instance_start_timeout
            ):
                # A service found by its socket file may not serve yet: try again shortly.
                self.supervisor.later(ENTER_RETRY_DELAY, partial(self.post, self._retry_enter, inst, session_id))
                return
            if error.code in _LINK_DOWN:
                if not process.alive():
                    return  # its exit event reports the cause
                detail = (
                    f"instance {inst.id} did not start serving {process.url} within "
                    f"{self.settings.instance_start_timeout} s"
                )
                tail = process.stderr_tail(self.settings.stderr_tail_lines)
                if tail:
                    detail += f"; last lines of its stderr:\n{tail}"
            else:
                detail = f"OnSessionEnter failed: {error.message}"
            self._stop(inst, deliberate=True)
            self._bind_failed(session_id, inst.app, detail)
            return
        return_code, message, inst.handoff = read_enter_result(answer)
        inst.batches = tasks_offered(answer)
        inst.lanes = lanes_offered(answer)
        if return_code != 0:
            self._stop(inst, deliberate=True)
            self._bind_failed(session_id, inst.app, f"on_session_enter raised: {message}")
            return
        inst.state = State.IDLE
        inst.since = time.monotonic()
        log.debug("instance %s entered session %s", inst.id, session_id)
        if not self._session_open(session_id):
            self._leave(inst)
            return
        self._dispatch(inst)

    def _retry_enter(self, inst: Instance, session_id: str) -> None:
        if inst.state == State.ENTERING and inst.session_id == session_id and not self._closed:
            self._enter(inst, session_id)

    def _on_session_closed(self, session_id: str) -> None:
        self._idle.pop(session_id, None)
        self._bind_failures.pop(session_id, None)
        self._shim_noted.discard(session_id)
        self._satisfied(session_id)
        for inst in list(self._instances.values()):
            if inst.session_id != session_id:
                continue
            if inst.state == State.IDLE:
                self._leave(inst)
            elif inst.state == State.STARTING:
                inst.session_id = None  # it becomes a spare when it is ready
                try:
                    delay = float(self.engine.get_application(inst.app).spec.delay_release)
                except FlameError:
                    delay = 0.0
                inst.expires = time.monotonic() + delay
            # ENTERING: leaves once it has entered; BUSY: leaves when its last task is answered.

    def _leave(self, inst: Instance, *, replace: bool = True) -> None:
        """OnSessionLeave, then stop the process; with ``replace`` a spare of the application takes its place."""
        inst.state = State.LEAVING
        inst.since = time.monotonic()
        self._call(inst, ON_SESSION_LEAVE, b"", self.settings.instance_call_timeout, self._on_left, replace)

    def _on_left(self, inst: Instance, replace: bool, answer: bytes | FlameError) -> None:
        if inst.state != State.LEAVING:
            return
        if isinstance(answer, FlameError):
            log.warning("instance %s: OnSessionLeave of %s failed: %s", inst.id, inst.session_id, answer)
        self._stop(inst, deliberate=True)
        if replace:
            self._replace_with_spare(inst.app)

    def _replace_with_spare(self, app_name: str) -> None:
        """Keep the capacity a session used: a fresh process of the application, started ahead.

        Started ``SPARE_DELAY`` later, and put off while a session waits for a process of its own to
        start: a spare is for a session that may come and must not take the CPU from one waiting now (a
        new application's first session, opened as the previous session closes).
        """
        if self._closed or app_name in self._spares_due:
            return
        self._spares_due.add(app_name)
        self.supervisor.later(SPARE_DELAY, partial(self.post, self._spare_due, app_name))

    def _spare_due(self, app_name: str) -> None:
        if not self._closed and any(i.state == State.STARTING and i.session_id for i in self._instances.values()):
            self.supervisor.later(SPARE_DELAY, partial(self.post, self._spare_due, app_name))
            return
        self._spares_due.discard(app_name)
        self._spawn_spare(app_name, awaited=False)

    def _on_session_opened(self, session_id: str) -> None:
        """Start a process for a new session's application now, as a spare, if it has none ready or starting.

        Its first task usually follows at once (``invoke`` right after ``create_session``). Started here,
        the process starts while the client gets its reply and sends the task, instead of after (a round
        trip and the task's commit off a new application's first invoke); that task then claims it
        (:meth:`_acquire`). One at a time per application, under the spare rules (caps, sessions waiting
        first, ``delay_release`` 0 keeps none): a session that never runs a task leaves a spare, as a
        closed session does, stopped after ``delay_release``.
        """
        try:
            name = self.engine.session_entry(session_id).message.spec.application
        except FlameError:
            return
        if any(
            i.app == name and (i.state == State.SPARE or (i.state == State.STARTING and i.session_id is None))
            for i in self._instances.values()
        ):
            return  # the usual case, checked first: it reads no copy of the session or the application
        try:
            shim = self.engine.get_application(name).spec.shim
        except FlameError:
            return
        if shim == pb.Shim.Host:
            self._spawn_spare(name)

    def _spawn_spare(self, app_name: str, *, awaited: bool = True) -> None:
        if self._closed:
            return
        try:
            app = self.engine.get_application(app_name)
        except FlameError:
            return
        if app.spec.delay_release <= 0:
            return
        waiting = [
            i
            for i in self._instances.values()
            if i.app == app_name and (i.state == State.SPARE or (i.state == State.STARTING and i.session_id is None))
        ]
        alive = sum(1 for i in self._instances.values() if i.app == app_name and i.state != State.STOPPING)
        if len(waiting) >= self.settings.warm_pool_max or alive >= app.spec.max_instances:
            return
        if self._wanting or not self._room():
            return  # the capacity goes to sessions that wait, or there is none: no spare
        self._spawn(app, None, awaited=awaited)

    def _room(self) -> bool:
        """Whether one more instance fits under the machine-wide cap; the generic process, which counts
        under it, gives its place when it is what is in the way (an instance about to start may be handed
        it anyway)."""
        if len(self._instances) >= self.cap:
            return False
        if self.generic is not None and len(self._instances) + self._generic_place() >= self.cap:
            self.generic.drop()
        return True

    def _generic_place(self) -> int:
        """The place the generic process takes under the cap besides the instances: none while an instance
        whose start may be handed it has no process yet (dropping it then would start that instance cold,
        and the one asking for room would start a process of its own anyway: both cold, the test of the
        cap saw it on a loaded machine); :meth:`on_started` settles the count once that start is done."""
        if self.generic is None or not self.generic.held():
            return 0
        pending = any(i.may_take_generic and i.process is None for i in self._instances.values())
        return 0 if pending else 1

    # -- the generic process ---------------------------------------------------------------------------

    def _want_generic(self) -> None:
        """Have a generic process started ``GENERIC_DELAY`` from now, if the server keeps one."""
        if self.generic is None or self._closed or self._generic_due:
            return
        self._generic_due = True
        self.supervisor.later(GENERIC_DELAY, partial(self.post, self._generic_check))

    def _generic_check(self) -> None:
        """Start a generic process when there is none, it would not take the last place under the cap, and
        no session waits (for the cap, or for a process of its own to start: that start has the CPU)."""
        self._generic_due = False
        generic = self.generic
        if generic is None or self._closed or generic.held():
            return
        if len(self._instances) + 1 >= self.cap:
            return  # asked again when an instance exits
        if self._wanting or any(i.state == State.STARTING and i.session_id for i in self._instances.values()):
            self._want_generic()
            return
        self.supervisor.run_blocking(generic.fill)

    # -- tasks ---------------------------------------------------------------------------------------

    @staticmethod
    def _new_head(inst: Instance, now: float) -> None:
        inst.head_since = now
        inst.blocked = False
        inst.cpu_mark = None

    def _dispatch(self, inst: Instance) -> None:
        """Send the instance its session's next pending task if it holds none; and, to an instance of ours
        whose tasks are short, a batch of the next ones behind it.

        A Flame executor runs one task at a time, and any instance gets one task while it has none. Only
        flamepy's own instance runtime takes batches (``RunTasks``: one message for many tasks, run in
        order, each result streamed back as it is done), and only while its tasks are short: a task queued
        behind a running one of the same session may be the very task that one waits for (a recursive
        service, Runner inside Runner), and would never start; it would also wait while another instance
        may be idle. So a batch holds at most the instance's share of the queue, and what is queued behind
        a task that runs past ``BATCH_HOLD`` is withdrawn (see :meth:`on_tick`).

        The instance must get its calls in the order they were sent. A batch sent behind another that has
        not answered yet could overtake it: on a transport whose server hands each call to a thread of a
        pool (gRPC's), two batches' requests are read by two threads, in either order. So a batch goes only
        once every earlier batch has answered once (a result, or its end: its tasks are then queued there),
        and never behind an ``OnTaskInvoke`` that the thread answering ``RunTask`` will make later
        (``left_to_waiting_thread``). Calls already sent arrive in order on every transport: the instance's
        server queues a call's work (or grpcio's routine for it) as the call arrives.
        """
        sid = inst.session_id
        process = inst.process
        if sid is None or process is None or self._closed or inst.state == State.STOPPING:
            return
        # Nothing queued (an instance that answered a warm invoke): nothing to ask the engine for.
        queued = self.engine.pending_hint(sid)
        # An idle instance gets a batch only for two tasks or more: a lone task (a warm invoke) goes as
        # OnTaskInvoke, and nothing is sent behind it here (its call may still be waiting to be made by the
        # thread that answers it, ``answers`` below, and must reach the instance first).
        if queued >= (1 if inst.inflight else 2) and may_send_batch(inst):
            share = sum(1 for i in self._instances.values() if i.session_id == sid and i.state in _SERVING)
            batch = self.engine.start_many(
                sid,
                BATCH_MAX - len(inst.inflight),
                share,
                BATCH_BYTES,
                input_as_file=inst.handoff,
                least=1 if inst.inflight else 2,
            )
            if batch:
                self._send_batch(inst, sid, batch)
        started = None if inst.inflight or not queued else self.engine.start_next(sid, input_as_file=inst.handoff)
        if started is not None:
            self._send_task(inst, sid, *started)
        if inst.inflight:
            inst.state = State.BUSY
        elif inst.state == State.BUSY:
            inst.state = State.IDLE
            inst.since = time.monotonic()  # idle from now: delay_release counts from here
        if inst.state == State.IDLE:
            if self._session_open(sid):
                self._idle[sid] = inst  # the next RunTask of the session may take the warm lane (run_warm)
            else:
                self._leave(inst)

    def _send_task(
        self,
        inst: Instance,
        sid: str,
        tid: int,
        task_input: bytes | None,
        input_file: PayloadFile | None,
        *,
        now: bool = False,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        """Send one started task to the instance (``OnTaskInvoke``), which runs it next; its result is handled
        by ``_on_task_done`` (at once on the thread that reads it, with ``now``). ``now`` and ``on_sent``:
        see :meth:`_call`."""
        sent = time.monotonic()
        self._new_head(inst, sent)
        inst.inflight[tid] = sent
        ctx, output_name = self._task_context(inst, sid, tid, task_input, input_file)
        # A task may run for hours: no deadline here. A dead process breaks the link at once.
        prepare = partial(self._task_outcome, sid, tid, output_name)
        key = task_key(sid, tid)
        inst.lone = tid if left_to_waiting_thread(key) else None
        self._call(
            inst,
            ON_TASK_INVOKE,
            ctx,
            None,
            self._on_task_done,
            sid,
            tid,
            prepare=prepare,
            answers=key,
            now=now,
            on_sent=on_sent,
        )

    def _send_batch(self, inst: Instance, sid: str, batch: list[tuple[int, bytes | None, PayloadFile | None]]) -> None:
        """``RunTasks`` with these tasks: each result comes back as a stream item, in order, and is handled
        as an ``OnTaskInvoke``'s answer (on the link's thread, then as an event)."""
        process = inst.process
        assert process is not None
        now = time.monotonic()
        if not inst.inflight:
            self._new_head(inst, now)  # its first task starts now
        contexts: list[bytes] = []
        expected: deque[tuple[int, str | None]] = deque()
        inst.unheard += 1
        heard = False
        for tid, task_input, input_file in batch:
            inst.inflight[tid] = now
            ctx, output_name = self._task_context(inst, sid, tid, task_input, input_file)
            contexts.append(ctx)
            expected.append((tid, output_name))

        def hear() -> None:
            """The batch's first answer (a result or its end): its tasks are queued on the instance."""
            nonlocal heard
            if not heard:
                heard = True
                self.post(self._on_batch_heard, inst)

        arrived: list[tuple[int, _Outcome]] = []
        later = getattr(process.channel, "after_reading", None)

        def deliver() -> None:
            """The results read so far, as one event (nothing when another call took them already)."""
            if arrived:
                done = arrived[:]
                arrived.clear()
                self.post(self._on_tasks_done, inst, sid, done)
                self.engine.store.payloads.drop_due()

        def on_item(payload: bytes) -> None:
            if not heard:  # (the first only: a call less per result)
                hear()
            if not expected:  # more results than tasks: a bug of the instance's; its tasks were answered
                log.warning(
                    "instance %s of session %s answered more results than its batch of %d tasks had: the extra "
                    "one is ignored (a bug in the instance's runtime: report it with this log)",
                    inst.id,
                    sid,
                    len(batch),
                )
                return
            tid, output_name = expected.popleft()
            arrived.append((tid, self._task_outcome(sid, tid, output_name, payload)))
            # The results the link brought together are handled together (one event, one dispatch, one
            # commit), once they are all read: the channel runs ``deliver`` then, where it can.
            count = len(arrived)
            if count >= RESULTS_TOGETHER or (count == 1 and (later is None or not later(deliver))):
                deliver()

        def on_end(error: FlameError | None) -> None:
            hear()
            left = list(expected)
            expected.clear()
            files = self.engine.store.payloads
            for _tid, output_name in left:
                if output_name is not None:
                    files.release(output_name, written=error is not None)
            if left and error is not None:
                self.post(self._on_batch_failed, inst, sid, [tid for tid, _name in left], error)
            # Ended with tasks left and no error: they were withdrawn (``_on_withdrawn`` has them).

        item: Callable[[bytes], None] = on_item
        end: Callable[[FlameError | None], None] = on_end
        lanes = self._take_lane_back(inst)
        if lanes:  # their logs are complete once the batch is heard from (a result, or its end)
            item, end = ending_when_heard(partial(self._lanes_heard, inst, lanes), on_item, on_end)
        stream_async(process.channel, RUN_TASKS, task_batch(contexts), item, end, None)

    def _on_batch_heard(self, inst: Instance) -> None:
        """A batch answered for the first time: its tasks are queued on the instance, another may follow."""
        inst.unheard -= 1

    def _on_batch_failed(self, inst: Instance, sid: str, tids: list[int], error: FlameError) -> None:
        """A batch's stream failed before all its tasks answered. A broken link is a lost instance (its
        exit sorts out which task ran); otherwise the first task left fails with the error, and the
        others, which never started (the instance stops a batch whose stream failed), are queued again."""
        tids = [tid for tid in tids if tid in inst.inflight]
        if not tids:
            return
        if self._link_lost(inst, error):
            return
        head, rest = tids[0], tids[1:]
        for tid in tids:
            del inst.inflight[tid]
        if rest:
            self._return(sid, rest, f"not started: the batch's stream failed ({error.message})")
        if error.code == FlameErrorCode.MESSAGE_TOO_LARGE:
            failure = f"the task's result was refused: {error}"
        else:
            failure = f"calling the instance failed: {error}"
        self.engine.finish_task(sid, head, failure=failure, commit=False)
        self._new_head(inst, time.monotonic())
        self._dispatch(inst)

    def _withdraw(self, inst: Instance) -> None:
        """Take back the tasks queued behind the one the instance runs (``WithdrawTasks``)."""
        if inst.withdrawing or inst.process is None or inst.state == State.STOPPING:
            return
        inst.withdrawing = True
        inst.short = False
        self._call(inst, WITHDRAW_TASKS, b"", self.settings.instance_call_timeout, self._on_withdrawn)

    def _on_withdrawn(self, inst: Instance, answer: bytes | FlameError) -> None:
        inst.withdrawing = False
        sid = inst.session_id
        if isinstance(answer, FlameError):
            # A broken link: its exit requeues what it had not started. Anything else: they run there.
            log.info("instance %s: WithdrawTasks failed: %s", inst.id, answer)
            return
        if sid is None:
            return
        try:
            ids = [int(tid) for tid in read_withdrawn_tasks(answer)]
        except ValueError as exc:
            log.warning("instance %s answered a malformed WithdrawTasks: %s", inst.id, exc)
            return
        taken = [tid for tid in ids if tid in inst.inflight]
        for tid in taken:
            del inst.inflight[tid]
        if taken:
            self._return(sid, taken, f"not started: withdrawn from instance {inst.id} behind a longer task")
        cancels, inst.cancels = inst.cancels, {}
        started = [tid for tid in cancels if tid in inst.inflight]
        if started:  # a cancelled task started before the withdrawal came: stopped, as any running one
            log.info(
                "instance %s: stopping it to cancel task %s of %s (%s)", inst.id, started[0], sid, cancels[started[0]]
            )
            self._stop(inst, deliberate=True)
            return
        self._dispatch(inst)

    def _idle_after_answer(self, inst: Instance) -> None:
        if inst.idle_after_answer:
            inst.idle_after_answer = False
            self._dispatch(inst)

    def _return(self, sid: str, tids: list[int], why: str) -> None:
        """Tasks an instance never started go back to the head of the queue, in order, no retry spent."""
        self.engine.return_tasks(sid, tids, why)

    def _task_context(
        self, inst: Instance, sid: str, tid: int, task_input: bytes | None, input_file: PayloadFile | None
    ) -> tuple[bytes, str | None]:
        """The OnTaskInvoke request, and the payload file name reserved for a large output (or None).

        An instance that takes payload files reads a large input from its file (the request is small)
        and writes a large output to a file reserved here; others get the input in the request, copied
        once, however large."""
        if not inst.handoff:
            return task_context(str(tid), sid, task_input), None
        files = self.engine.store.payloads
        output_name = files.reserve(for_instance=True)
        given = None if input_file is None else (files.path_text(input_file.name), input_file.size)
        output = (files.path_text(output_name), files.threshold, self.settings.max_message_size, files.sync)
        return task_context(str(tid), sid, task_input, input_file=given, output_file=output), output_name

    def _task_outcome(self, session_id: str, tid: int, output_name: str | None, answer: bytes | FlameError) -> _Outcome:
        """What the instance answered to OnTaskInvoke (or in a batch's stream), or the call's error, read on
        the thread that received it (not under the scheduler's lock): the result parsed, and a large output
        in its payload file (written here, or written by the instance and read back for the waiting client)."""
        files = self.engine.store.payloads
        written = True  # for all we know, something was written under ``output_name``
        try:
            if isinstance(answer, FlameError):
                return _Outcome(error=answer)
            try:
                return_code, output, message, output_size = read_task_result(answer)
            except ValueError as exc:
                return _Outcome(return_code=-1, message=f"the instance answered a malformed TaskResult: {exc}")
            if output_size is None:
                written = False  # it answered without the file: it wrote none under that name
            if return_code != 0:
                return _Outcome(return_code=return_code, message=message or "the task failed without a message")
            if output_size is None or output_name is None:
                return _Outcome(output=output, output_file=files.spill(output))
            path = files.path(output_name)
            try:
                # Mapped, not read: the reply is written to the client straight from the page cache.
                mapped = map_payload_file(path, output_size)
            except (OSError, ValueError) as exc:
                why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
                failure = (
                    f"the service wrote the output of task {tid} of session {session_id} to {path}, but it "
                    f"cannot be read back ({why}): the file was removed or damaged meanwhile. Run the task again"
                )
                return _Outcome(return_code=-1, message=failure)
            files.cached(output_name)  # written by the instance, read once here: its pages leave the cache
            taken, output_name = PayloadFile(output_name, output_size), None
            return _Outcome(output=mapped, output_file=taken)
        except Exception as exc:  # a bug here must not leave the task running forever: it fails, saying so
            log.exception("reading the result of task %s of %s failed", tid, session_id)
            return _Outcome(return_code=-1, message=f"reading the task's result failed: {exc!r}")
        finally:
            if output_name is not None:
                files.release(output_name, written=written)

    def _on_tasks_done(self, inst: Instance, session_id: str, done: list[tuple[int, _Outcome]]) -> None:
        """Results of a batch read together: each handled as :meth:`_on_task_done` does, the instance's next
        tasks looked for once, after the last."""
        self.result_groups += 1
        self.results_together += len(done)
        dispatch = False
        finished: list[Finished] = []
        for tid, outcome in done:
            dispatch = self._task_done(inst, session_id, tid, outcome, finished) or dispatch
        if finished:  # their final states, under one engine lock and in one write (Engine.finish_tasks)
            self.engine.finish_tasks(session_id, finished)
        if dispatch:
            self._dispatch(inst)

    def _on_task_done(self, inst: Instance, session_id: str, tid: int, outcome: _Outcome) -> None:
        if self._task_done(inst, session_id, tid, outcome):
            self._dispatch(inst)

    def _task_done(
        self, inst: Instance, session_id: str, tid: int, outcome: _Outcome, finished: list[Finished] | None = None
    ) -> bool:
        """A task's result (or its call's failure) recorded; True when the instance may be sent more now.
        ``finished``: a result or a failure is added there, for the caller to finish with the others', rather
        than finished here."""
        if tid == inst.lone:
            inst.lone = None
        if tid not in inst.inflight or self._closed:
            # Settled elsewhere (it timed out, its instance was lost), or the server is stopping: its file
            # is not kept.
            self.engine.store.payloads.settled([outcome.output_file], "the task is no longer running")
            return False
        error = outcome.error
        if error is not None and self._link_lost(inst, error):
            return False
        del inst.inflight[tid]
        now = time.monotonic()
        inst.short = now - inst.head_since < BATCH_SHORT  # since it started (the previous result, or sent idle)
        self._new_head(inst, now)  # the next one in flight starts now; if none, nothing runs or is measured
        if error is None:
            inst.tasks_served += 1
            self._bind_failures.pop(session_id, None)  # the session's instances work
            if finished is not None:
                failure = None if outcome.return_code == 0 else outcome.message
                finished.append((tid, outcome.output, outcome.output_file, failure))
            elif outcome.return_code == 0:
                self.engine.finish_task(
                    session_id, tid, output=outcome.output, output_file=outcome.output_file, commit=False, spilled=True
                )
            else:
                self.engine.finish_task(session_id, tid, failure=outcome.message, commit=False)
            if self._handling_now and not inst.inflight and not self.engine.pending_hint(session_id):
                # Nothing to send it: a warm invoke's instance, idle again. Made so once the answer has left
                # (on this thread, right after): its next task cannot come before its caller has the answer,
                # and whatever comes meanwhile is queued and sent by that _dispatch. 4 µs of a warm invoke.
                inst.idle_after_answer = True
                return False
            return True
        if error.code == FlameErrorCode.MESSAGE_TOO_LARGE:
            # The instance answered, but too much: the task fails once, the instance is fine.
            refused = f"the task's result was refused: {error}"
            if finished is not None:
                finished.append((tid, None, None, refused))
            else:
                self.engine.finish_task(session_id, tid, failure=refused)
            return True
        failure = f"calling the instance failed: {error}"
        if finished is not None:
            finished.append((tid, None, None, failure))
        else:
            self.engine.finish_task(session_id, tid, failure=failure, commit=False)
        return True

    def _link_lost(self, inst: Instance, error: FlameError) -> bool:
        """Whether ``error`` means the instance is lost (its link broke, or its process is gone); if so, its
        tasks in flight are settled once the process is gone (:meth:`on_exit`: the first is retried, the
        ones queued behind it go back to the queue).

        A process that died closes its sockets a moment before its exit status can be read: give it
        ``LOST_GRACE`` seconds to be seen exiting (its status is then the cause); one still running then
        has stopped answering, and is stopped.
        """
        process = inst.process
        if error.code not in _LINK_DOWN and (process is None or process.alive()):
            return False
        if inst.state != State.STOPPING:
            inst.state = State.STOPPING
            inst.since = time.monotonic()
            self.supervisor.later(LOST_GRACE, partial(self.post, self._still_lost, inst, error))
        return True

    def _still_lost(self, inst: Instance, error: FlameError) -> None:
        if inst.id not in self._instances or inst.kill_at is not None:
            return  # it exited meanwhile (or is being stopped)
        process = inst.process
        if process is not None:
            inst.cause = (
                f"instance {inst.id} (pid {process.pid}) of application {inst.app} stopped answering "
                f"(the process is still running): {error.message}"
            )
        inst.state = State.LEAVING  # not STOPPING yet, so _stop proceeds
        self._stop(inst, deliberate=False)

    def _stop(self, inst: Instance, *, deliberate: bool) -> None:
        """SIGTERM now, SIGKILL after the grace period; its exit event finishes the job."""
        if inst.state == State.STOPPING:
            return
        inst.state = State.STOPPING
        inst.since = time.monotonic()
        inst.deliberate = deliberate
        inst.kill_at = inst.since + self.settings.shutdown_grace
        if inst.process is not None:
            self.supervisor.stop(inst, self.settings.shutdown_grace)

    # -- failures of a session's instances --------------------------------------------------------------

    def _bind_failed(self, session_id: str, app_name: str, detail: str) -> None:
        """An instance could not start or enter the session: count it; past the limit fail the tasks."""
        log.warning("session %s: %s", session_id, detail)
        self.engine.add_session_event(session_id, EVENT_BIND_FAILED, f"failed to bind session: {detail}")
        self._bind_failures[session_id] += 1
        failures = self._bind_failures[session_id]
        if failures > self.settings.instance_start_retry_limit:
            self._bind_failures.pop(session_id, None)
            message = (
                f"no instance of application {app_name} could serve session {session_id} after "
                f"{failures} attempts; last error: {detail}"
            )
            self.engine.add_session_event(session_id, EVENT_RETRY_LIMIT, message)
            self.engine.fail_pending(session_id, message, commit=False)
            return
        self._on_tasks_pending(session_id)

    # -- other events ----------------------------------------------------------------------------------

    def _on_application_removed(self, name: str) -> None:
        for inst in list(self._instances.values()):
            if inst.app == name and (
                inst.state == State.SPARE or (inst.state == State.STARTING and not inst.session_id)
            ):
                self._stop(inst, deliberate=True)

    def _session_open(self, session_id: str) -> bool:
        try:
            return self.engine.session_entry(session_id).is_open
        except FlameError:
            return False

    def _sessions_wanting(self, app_name: str) -> list[str]:
        return self.engine.pending_sessions(app_name)

    # -- introspection and shutdown ------------------------------------------------------------------------

    def instances(self) -> list[InstanceInfo]:
        """Every instance process now: id, application, state, session, pid (cheap: for listings and live views)."""
        with self._lock:
            infos = [i.info() for i in self._instances.values()]
        return sorted(infos, key=lambda i: (i.application, int(i.id.lstrip("i") or 0)))

    def instance_count(self) -> int:
        with self._lock:
            return len(self._instances)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every instance (tasks in flight stay RUNNING in the store: requeued at the next start)."""
        with self._lock:
            self._closed = True
            instances = list(self._instances.values())
            self._instances.clear()
        if self.generic is not None:
            self.generic.close()
        self.supervisor.shutdown([i for i in instances if i.process is not None], timeout)


_NO_LANES: tuple[LaneLease, ...] = ()
"""What :meth:`Scheduler._take_lane_back` returns for an instance lent to nobody."""


def _no_lane(session_id: str, why: str) -> FlameError:
    return FlameError(
        FlameErrorCode.INVALID_STATE, f"no lane for session {session_id}: {why}; send tasks through the server"
    )


def _lane_closed(_inst: Instance, done: threading.Event, _answer: bytes | FlameError) -> None:
    done.set()


def _runs_lane_task(inst: Instance) -> bool:
    """Whether a lane's log says a task began on ``inst`` and has not ended: busy, though idle to the server."""
    return (inst.lane is not None and bool(inst.lane.running)) or any(lane.running for lane in inst.lanes_closing)
