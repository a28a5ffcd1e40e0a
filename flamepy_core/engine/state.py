"""Applications, sessions and tasks: the engine's live state, with Flame's rules and error texts.

Live state is held as flame.v1 protobuf messages (the wire format), so answering a call is a
``SerializeToString`` away and the store writes the same bytes. One lock guards everything; each session
has its own condition so watchers and instance drivers of one session do not wake for another's news.
Closed sessions keep their summary in memory but their tasks only in the store.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from flamepy_core import validation
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.store import Store
from flamepy_core.failure_text import bound_failure_text
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
TERMINAL = frozenset({SUCCEED, FAILED, CANCELLED})


def _task_from_row(session_id: str, tid: int, inp: bytes | None, out: bytes | None, status: bytes) -> pb.Task:
    """A task as the store keeps it: the id, the input and output columns, and the status message."""
    task = pb.Task()
    task.metadata.id = str(tid)
    task.metadata.name = str(tid)
    task.spec.session_id = session_id
    if inp is not None:
        task.spec.input = inp
    if out is not None:
        task.spec.output = out
    task.status.CopyFrom(pb.TaskStatus.FromString(status))
    return task


def _trim_completions(entry: SessionEntry) -> None:
    """Drop the completions every watcher has read (all of them when nobody watches)."""
    low = min(entry.watch_positions.values(), default=entry.completions_offset + len(entry.completions))
    drop = low - entry.completions_offset
    if drop > 0:
        del entry.completions[:drop]
        entry.completions_offset = low


def _changed(task: pb.Task, entry: SessionEntry, state: int) -> bool:
    return task.status.state != state or not entry.is_open


def now_ms() -> int:
    return int(time.time() * 1000)


class SchedulerHooks(Protocol):
    """What the engine tells the scheduler. Called without the engine lock held."""

    def tasks_pending(self, session_id: str) -> None: ...

    def session_closed(self, session_id: str) -> None: ...

    def application_removed(self, name: str) -> None: ...


class _NoScheduler:
    def tasks_pending(self, session_id: str) -> None:
        pass

    def session_closed(self, session_id: str) -> None:
        pass

    def application_removed(self, name: str) -> None:
        pass


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


@dataclass
class SessionEntry:
    """A live session: its message, its tasks (while open) and its queue of pending task ids."""

    message: pb.Session
    cond: threading.Condition
    tasks: dict[int, pb.Task] = field(default_factory=dict)
    pending: deque[int] = field(default_factory=deque)
    attempts: dict[int, int] = field(default_factory=dict)
    next_id: int = 1
    completions: list[pb.Task] = field(default_factory=list)
    """Tasks in the order they completed, kept only while a session watcher has not read them yet."""
    completions_offset: int = 0
    """How many completions were dropped from the front of ``completions`` (positions are absolute)."""
    watch_positions: dict[int, int] = field(default_factory=dict)
    """For each session watcher, the absolute position in ``completions`` it has read up to."""

    @property
    def id(self) -> str:
        return self.message.metadata.id

    @property
    def is_open(self) -> bool:
        return self.message.status.state == OPEN


def _not_found(kind: str, name: str) -> FlameError:
    return FlameError(FlameErrorCode.NOT_FOUND, f"{kind} {name} not found")


class Engine:
    """The state machine of applications, sessions and tasks. Thread-safe."""

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
        self._apps: dict[str, pb.Application] = {}
        self._sessions: dict[str, SessionEntry] = {}
        self._watch_ids = itertools.count(1)
        with self.lock:  # requeueing notifies the sessions' conditions, which needs the lock held
            self._load()

    # -- recovery ------------------------------------------------------------------------------------

    def _load(self) -> None:
        for (data,) in self.store.query("SELECT data FROM applications"):
            app = pb.Application.FromString(data)
            self._apps[app.metadata.name] = app
        requeued = 0
        for (data,) in self.store.query("SELECT data FROM sessions"):
            session = pb.Session.FromString(data)
            entry = SessionEntry(message=session, cond=threading.Condition(self.lock))
            self._sessions[entry.id] = entry
            counts = dict(
                self.store.query("SELECT state, COUNT(*) FROM tasks WHERE session_id = ? GROUP BY state", entry.id)
            )
            max_id = self.store.query("SELECT MAX(id) FROM tasks WHERE session_id = ?", entry.id)[0][0]
            entry.next_id = (max_id or 0) + 1
            status = session.status
            for state, name in _COUNTER.items():
                setattr(status, name, int(counts.get(int(state), 0)))
            if not entry.is_open:
                continue
            for tid, inp, out, st in self.store.query(
                "SELECT id, input, output, status FROM tasks WHERE session_id = ? AND state IN (?, ?) ORDER BY id",
                entry.id,
                int(PENDING),
                int(RUNNING),
            ):
                task = _task_from_row(entry.id, tid, inp, out, st)
                entry.tasks[tid] = task
                if task.status.state == RUNNING:  # its instance died with the previous server
                    self._set_state(entry, task, PENDING, "requeued: the server restarted while it ran")
                    requeued += 1
                if task.status.state == PENDING:
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

    def _save_app(self, app: pb.Application) -> None:
        self.store.execute(
            "INSERT OR REPLACE INTO applications (name, data) VALUES (?, ?)",
            app.metadata.name,
            app.SerializeToString(),
        )

    def register_application(self, name: str, spec: pb.ApplicationSpec) -> pb.Application:
        self._validate_app_spec(name, spec)
        with self.lock:
            if name in self._apps:
                raise FlameError(
                    FlameErrorCode.ALREADY_EXISTS,
                    f"application {name} already exists; unregister it first or use update",
                )
            app = self._app_message(name, spec, now_ms())
            self._apps[name] = app
            self._save_app(app)
            return app

    def _open_sessions_of(self, name: str) -> list[SessionEntry]:
        return [s for s in self._sessions.values() if s.message.spec.application == name and s.is_open]

    def update_application(self, name: str, spec: pb.ApplicationSpec) -> pb.Application:
        self._validate_app_spec(name, spec)
        with self.lock:
            old = self.get_application(name)
            opened = self._open_sessions_of(name)
            if opened:
                raise FlameError(
                    FlameErrorCode.INVALID_STATE,
                    f"{len(opened)} open sessions in the application {name}; close them before updating it",
                )
            app = self._app_message(name, spec, old.status.creation_time)
            self._apps[name] = app
            self._save_app(app)
        self.scheduler.application_removed(name)  # warm instances run the old spec
        return app

    def unregister_application(self, name: str) -> None:
        with self.lock:
            self.get_application(name)
            opened = self._open_sessions_of(name)
            if opened:
                raise FlameError(
                    FlameErrorCode.INVALID_STATE,
                    f"{len(opened)} open sessions in the application {name}; close them before unregistering",
                )
            del self._apps[name]
            closed = [s.id for s in self._sessions.values() if s.message.spec.application == name]
            for sid in closed:
                del self._sessions[sid]
            ops: list[tuple[str, tuple[object, ...]]] = [("DELETE FROM applications WHERE name = ?", (name,))]
            for sid in closed:
                ops.append(("DELETE FROM tasks WHERE session_id = ?", (sid,)))
            ops.append(("DELETE FROM sessions WHERE application = ?", (name,)))
            self.store.submit(ops)
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
        with self.lock:
            app = self.get_application(spec.application)
            if app.status.state != pb.ApplicationState.Enabled:
                raise FlameError(FlameErrorCode.INVALID_STATE, f"application {spec.application} is disabled")
            if session_id in self._sessions:
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
            entry = SessionEntry(message=session, cond=threading.Condition(self.lock))
            self._sessions[session_id] = entry
            self._save_session(entry)
        if spec.min_instances:
            self.scheduler.tasks_pending(session_id)
        return self.snapshot(entry)

    def _save_session(self, entry: SessionEntry) -> None:
        self.store.execute(
            "INSERT OR REPLACE INTO sessions (id, application, state, data) VALUES (?, ?, ?, ?)",
            entry.id,
            entry.message.spec.application,
            int(entry.message.status.state),
            entry.message.SerializeToString(),
        )

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
                # Outside the lock: creating may call the scheduler, which takes its own lock first.
                return self.create_session(session_id, spec)
            except FlameError as exc:
                if exc.code != FlameErrorCode.ALREADY_EXISTS:
                    raise  # created concurrently: loop and open the one that won
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
        with self.lock:
            entry = self._entry(session_id)
            if not entry.is_open:
                return self.snapshot(entry)
            if entry.message.status.running:
                raise FlameError(
                    FlameErrorCode.INVALID_STATE,
                    f"Cannot close session with running tasks: session {session_id} has "
                    f"{entry.message.status.running} running; wait for them to finish, then close it",
                )
            while entry.pending:
                task = entry.tasks[entry.pending.popleft()]
                self._set_state(entry, task, CANCELLED, "cancelled: the session was closed")
            entry.message.status.state = CLOSED
            entry.message.status.completion_time = now_ms()
            self._save_session(entry)
            entry.tasks.clear()  # the store has them; closed sessions are read from there
            entry.attempts.clear()
            _trim_completions(entry)
            entry.cond.notify_all()
            snapshot = self.snapshot(entry)
        self.scheduler.session_closed(session_id)
        return snapshot

    def delete_session(self, session_id: str) -> pb.Session:
        snapshot = self.close_session(session_id)
        with self.lock:
            self._sessions.pop(session_id, None)
            self.store.submit(
                [
                    ("DELETE FROM tasks WHERE session_id = ?", (session_id,)),
                    ("DELETE FROM sessions WHERE id = ?", (session_id,)),
                ]
            )
        return snapshot

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

    # -- tasks ---------------------------------------------------------------------------------------

    def _persist_task(self, entry: SessionEntry, task: pb.Task, *, with_input: bool = False) -> None:
        tid = int(task.metadata.id)
        output = task.spec.output if task.spec.HasField("output") else None
        if with_input:
            self.store.execute(
                "INSERT OR REPLACE INTO tasks (session_id, id, state, input, output, status) VALUES (?,?,?,?,?,?)",
                entry.id,
                tid,
                int(task.status.state),
                task.spec.input if task.spec.HasField("input") else None,
                output,
                task.status.SerializeToString(),
            )
        else:
            self.store.execute(
                "UPDATE tasks SET state = ?, output = ?, status = ? WHERE session_id = ? AND id = ?",
                int(task.status.state),
                output,
                task.status.SerializeToString(),
                entry.id,
                tid,
            )

    def _set_state(self, entry: SessionEntry, task: pb.Task, state: int, message: str | None = None) -> None:
        old = task.status.state
        status = entry.message.status
        setattr(status, _COUNTER[old], getattr(status, _COUNTER[old]) - 1)
        setattr(status, _COUNTER[state], getattr(status, _COUNTER[state]) + 1)
        task.status.state = state  # type: ignore[assignment]
        ts = now_ms()
        if state in TERMINAL:
            task.status.completion_time = ts
            if entry.watch_positions:
                entry.completions.append(task)
        event = task.status.events.add(code=int(state), creation_time=ts)
        if message is not None:
            event.message = bound_failure_text(message)  # a service's text: bounded, controls escaped
        self._persist_task(entry, task)
        if state in TERMINAL:
            # Finished tasks live in the store only: memory holds what is in flight, however many
            # tasks a long session has run (readers and watchers hold their own references).
            entry.tasks.pop(int(task.metadata.id), None)
        entry.cond.notify_all()

    def create_task(self, session_id: str, task_input: bytes | None) -> pb.Task:
        with self.lock:
            entry = self._entry(session_id)
            if not entry.is_open:
                raise FlameError(
                    FlameErrorCode.INVALID_STATE,
                    f"Cannot create task in closed session {session_id}; open a new session",
                )
            tid = entry.next_id
            entry.next_id += 1
            task = pb.Task()
            task.metadata.id = str(tid)
            task.metadata.name = str(tid)
            task.spec.session_id = session_id
            if task_input is not None:
                task.spec.input = task_input
            task.status.state = PENDING
            task.status.creation_time = now_ms()
            task.status.events.add(code=EVENT_TASK_PENDING, creation_time=task.status.creation_time)
            entry.tasks[tid] = task
            entry.pending.append(tid)
            entry.message.status.pending += 1
            self._persist_task(entry, task, with_input=True)
            entry.cond.notify_all()
            reply = pb.Task()
            reply.CopyFrom(task)
        self.scheduler.tasks_pending(session_id)
        return reply

    def _load_task(self, session_id: str, task_id: int) -> pb.Task | None:
        self.store.flush()
        rows = self.store.query(
            "SELECT input, output, status FROM tasks WHERE session_id = ? AND id = ?", session_id, task_id
        )
        if not rows:
            return None
        inp, out, st = rows[0]
        return _task_from_row(session_id, task_id, inp, out, st)

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
                copy = pb.Task()
                copy.CopyFrom(task)
                return copy
        loaded = self._load_task(session_id, tid)
        if loaded is None:
            raise _not_found("task", f"{task_id} of session {session_id}")
        return loaded

    def list_tasks(self, session_id: str) -> Iterator[pb.Task]:
        with self.lock:
            self._entry(session_id)  # NOT_FOUND for an unknown session
        # Every state change is written before the lock is released; the read flushes first, so the
        # store is the complete, current list (memory holds only the tasks in flight).
        return self._iter_stored_tasks(session_id)

    def _iter_stored_tasks(self, session_id: str) -> Iterator[pb.Task]:
        self.store.flush()
        for tid, inp, out, st in self.store.iter_query(
            "SELECT id, input, output, status FROM tasks WHERE session_id = ? ORDER BY id", session_id
        ):
            yield _task_from_row(session_id, tid, inp, out, st)

    def watch_task(
        self, session_id: str, task_id: str, is_active: Callable[[], bool], poll: float = 0.5
    ) -> Iterator[pb.Task]:
        """Yield the task each time its state changes; end after it completes.

        As in Flame, the initial state is not sent unless the task is already complete.
        """
        tid = self._task_id(task_id)
        with self.lock:
            entry = self._entry(session_id)
            task = entry.tasks.get(tid)
            if task is None:
                stored = self._load_task(session_id, tid)
                if stored is None:
                    raise _not_found("task", f"{task_id} of session {session_id}")
                yield stored
                return
            last = task.status.state
            if last in TERMINAL:
                snap = pb.Task()
                snap.CopyFrom(task)
                yield snap
                return
        while is_active():
            with self.lock:
                entry.cond.wait_for(partial(_changed, task, entry, last), timeout=poll)
                if task.status.state == last:
                    if not entry.is_open and last not in TERMINAL:
                        return
                    continue
                last = task.status.state
                snap = pb.Task()
                snap.CopyFrom(task)
            yield snap
            if last in TERMINAL:
                return

    def run_task(self, session_id: str, task_input: bytes | None, is_active: Callable[[], bool]) -> pb.Task:
        """Create a task and return it once completed (flamepy's RunTask: one round trip per invoke)."""
        created = self.create_task(session_id, task_input)
        tid = int(created.metadata.id)
        with self.lock:
            entry = self._entry(session_id)
            task = entry.tasks.get(tid)
            if task is None:  # already finished (and so only in the store)
                stored = self._load_task(session_id, tid)
                if stored is None:
                    raise _not_found("task", f"{tid} of session {session_id}")
                return stored
            while task.status.state not in TERMINAL:
                if not is_active():
                    raise FlameError(
                        FlameErrorCode.CANCELLED, f"the caller stopped waiting for task {tid}; it keeps running"
                    )
                entry.cond.wait(timeout=0.5)
            snap = pb.Task()
            snap.CopyFrom(task)
            return snap

    def watch_session(
        self, session_id: str, after_task_id: int, is_active: Callable[[], bool], poll: float = 0.5
    ) -> Iterator[pb.Task]:
        """Completed tasks of the session with id > ``after_task_id``, in completion order, until it closes.

        Tasks that completed before the watcher came are read from the store first; later ones come from
        ``completions``, which keeps each task only until every watcher has read it.
        """
        token = next(self._watch_ids)
        with self.lock:
            entry = self._entry(session_id)
            # Under the lock no task completes, so store (flushed) + live list miss nothing, twice nothing.
            replay = [
                t
                for t in self._iter_stored_tasks(session_id)
                if int(t.metadata.id) > after_task_id and t.status.state in TERMINAL
            ]
            if not entry.is_open:
                watching = False
            else:
                watching = True
                position = entry.completions_offset + len(entry.completions)
                entry.watch_positions[token] = position
        try:
            yield from sorted(replay, key=lambda t: t.status.completion_time)
            while watching:
                with self.lock:
                    if position >= entry.completions_offset + len(entry.completions) and entry.is_open and is_active():
                        entry.cond.wait(timeout=poll)
                    batch = []
                    for task in entry.completions[position - entry.completions_offset :]:
                        if int(task.metadata.id) > after_task_id:
                            snap = pb.Task()
                            snap.CopyFrom(task)
                            batch.append(snap)
                    position = entry.completions_offset + len(entry.completions)
                    entry.watch_positions[token] = position
                    _trim_completions(entry)
                    finished = not entry.is_open or not is_active()
                yield from batch
                if finished:
                    return
        finally:
            if watching:
                with self.lock:
                    entry.watch_positions.pop(token, None)
                    _trim_completions(entry)

    # -- what instance drivers call --------------------------------------------------------------------

    def take_task(self, session_id: str, timeout: float) -> pb.Task | None:
        """The next pending task of an open session, now RUNNING; None when none came within ``timeout``.

        Raises FlameError(INVALID_STATE) once the session is closed, so the driver leaves it.
        """
        with self.lock:
            entry = self._entry(session_id)
            if not entry.pending and entry.is_open:
                entry.cond.wait_for(lambda: bool(entry.pending) or not entry.is_open, timeout=timeout)
            if not entry.is_open:
                raise FlameError(FlameErrorCode.INVALID_STATE, f"session {session_id} is closed")
            if not entry.pending:
                return None
            task = entry.tasks[entry.pending.popleft()]
            self._set_state(entry, task, RUNNING)
            copy = pb.Task()
            copy.CopyFrom(task)
            return copy

    def has_pending(self, session_id: str) -> bool:
        with self.lock:
            entry = self._sessions.get(session_id)
            return bool(entry and entry.is_open and entry.pending)

    def demand(self, session_id: str) -> int:
        """How many instances the session could use now.

        Pending + running tasks, at least ``min_instances``; at most ``max_instances`` (the session's and
        the application's), and at most as many instances as this machine has room for at the session's
        resource request (``cpu // resreq.cpu``): a burst of short tasks must not start a process each.
        """
        with self.lock:
            entry = self._sessions.get(session_id)
            if entry is None or not entry.is_open:
                return 0
            s = entry.message
            want = max(len(entry.pending) + s.status.running, s.spec.min_instances)
            if s.spec.resreq.cpu:
                want = min(want, max(1, self.capacity.cpu // s.spec.resreq.cpu, s.spec.min_instances))
            if s.spec.HasField("max_instances"):
                want = min(want, s.spec.max_instances)
            app = self._apps.get(s.spec.application)
            if app is not None and app.spec.HasField("max_instances"):
                want = min(want, app.spec.max_instances)
            return want

    def complete_task(self, session_id: str, task_id: str, output: bytes | None) -> None:
        with self.lock:
            entry = self._entry(session_id)
            task = entry.tasks.get(int(task_id))
            if task is None or task.status.state != RUNNING:
                return  # the session was closed under it, or it was already settled
            if output is not None:
                task.spec.output = output
            self._set_state(entry, task, SUCCEED)

    def fail_task(self, session_id: str, task_id: str, message: str) -> None:
        with self.lock:
            entry = self._entry(session_id)
            task = entry.tasks.get(int(task_id))
            if task is None or task.status.state not in (RUNNING, PENDING):
                return
            if task.status.state == PENDING:
                entry.pending.remove(int(task_id))
            self._set_state(entry, task, FAILED, message)

    def retry_task(self, session_id: str, task_id: str, message: str) -> bool:
        """Put a task whose instance died back at the head of the queue; False once retries are spent."""
        with self.lock:
            entry = self._entry(session_id)
            tid = int(task_id)
            task = entry.tasks.get(tid)
            if task is None or task.status.state != RUNNING:
                return False
            attempts = entry.attempts.get(tid, 0) + 1
            entry.attempts[tid] = attempts
            if attempts > self.task_retry_limit:
                self._set_state(
                    entry,
                    task,
                    FAILED,
                    f"{message}; gave up after {self.task_retry_limit} "
                    f"{'retry' if self.task_retry_limit == 1 else 'retries'}",
                )
                return False
            self._set_state(entry, task, PENDING, f"retry {attempts}/{self.task_retry_limit}: {message}")
            entry.pending.appendleft(tid)
        self.scheduler.tasks_pending(session_id)
        return True

    def fail_pending(self, session_id: str, message: str) -> int:
        """Fail every pending task of a session (its instances cannot start or enter it)."""
        with self.lock:
            entry = self._sessions.get(session_id)
            if entry is None or not entry.is_open:
                return 0
            count = 0
            while entry.pending:
                task = entry.tasks[entry.pending.popleft()]
                self._set_state(entry, task, FAILED, message)
                count += 1
            return count
