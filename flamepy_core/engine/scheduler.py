"""The scheduler and the instance drivers: which process serves which session, and what happens when one
fails.

Each instance has one driver thread (never one per task): it starts the process, enters a session
(``OnSessionEnter``), runs that session's tasks one at a time (``OnTaskInvoke``), leaves when the session
closes (``OnSessionLeave``), then waits warm for ``delay_release`` seconds to be bound to another session
of the same application before it is stopped.

Failures have bounds, so no client waits forever: an instance that dies during a task has the task
retried on a fresh instance up to ``task_retry_limit`` times (each retry is a task event), then failed
with the exit code or signal and the tail of its stderr; an instance that cannot start or enter a session
is retried ``instance_start_retry_limit`` times (session events 1001), then the waiting tasks fail with
that cause (event 1002).
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import threading
import time
from collections import defaultdict

from flamepy_core.config import RuntimeSettings
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.executor import Instance, InstanceLauncher, InstanceProcess
from flamepy_core.engine.instances import InstanceInfo
from flamepy_core.engine.state import EVENT_BIND_FAILED, EVENT_RETRY_LIMIT, Engine
from flamepy_core.wire.methods import INSTANCE
from flamepy_core.wire.proto import shim_pb2
from flamepy_core.wire.proto import types_pb2 as pb

log = logging.getLogger(__name__)

ON_SESSION_ENTER = INSTANCE["OnSessionEnter"].path
ON_TASK_INVOKE = INSTANCE["OnTaskInvoke"].path
ON_SESSION_LEAVE = INSTANCE["OnSessionLeave"].path
_LINK_DOWN = frozenset({FlameErrorCode.UNAVAILABLE, FlameErrorCode.CANCELLED})


class InstanceDriver(threading.Thread):
    """Drives one instance process through sessions until it is no longer needed."""

    def __init__(self, scheduler: Scheduler, instance_id: str, app_name: str, session_id: str) -> None:
        super().__init__(name=f"flame-instance-{instance_id}", daemon=True)
        self.scheduler = scheduler
        self.instance_id = instance_id
        self.app_name = app_name
        self.session_id: str | None = session_id
        self.process: Instance | None = None
        self.assigned = threading.Event()
        self.stopping = threading.Event()
        # What `instances()` reports; plain attribute writes, read without a lock by listings.
        self.state: int = pb.ExecutorState.ExecutorVoid
        self.start_time_ms = int(time.time() * 1000)
        self.tasks_served = 0
        self.current_task: int | None = None
        """The id of the task sent to the instance and not answered yet."""
        self.stopped_for_cancel = False
        """Its process is being stopped because its task was cancelled: its death is nobody's failure."""

    def info(self) -> InstanceInfo:
        process = self.process
        return InstanceInfo(
            id=self.instance_id,
            application=self.app_name,
            state=self.state,
            session_id=self.session_id,
            pid=process.pid if process is not None else None,
            start_time_ms=self.start_time_ms,
            tasks_served=self.tasks_served,
        )

    # -- the life of an instance -----------------------------------------------------------------------

    def run(self) -> None:
        sched = self.scheduler
        try:
            try:
                app = sched.engine.get_application(self.app_name)
                self.process = sched.launcher.start(app, self.instance_id)
            except FlameError as exc:
                if self.session_id:
                    sched.bind_failed(self, self.session_id, f"instance could not start: {exc.message}")
                return
            while self.session_id and not self.stopping.is_set():
                session_id = self.session_id
                if not self._enter(session_id):
                    return
                if not self._serve(session_id):
                    return  # the process died; the scheduler starts another if there is work
                self._leave(session_id)
                self.session_id = sched.park(self)
        except Exception as exc:
            # A bug here must cost a bounded number of attempts, like any other failure, never a
            # respawn loop: count it against the session.
            log.exception("instance driver %s crashed", self.instance_id)
            if self.session_id:
                sched.bind_failed(self, self.session_id, f"internal error in the instance driver: {exc!r}")
        finally:
            self.state = pb.ExecutorState.ExecutorReleasing
            if self.process is not None:
                self.process.stop(sched.settings.shutdown_grace)
            sched.instance_gone(self)

    def _session_context(self, session_id: str) -> bytes:
        engine = self.scheduler.engine
        session = engine.get_session(session_id)
        app = engine.get_application(self.app_name)
        ctx = shim_pb2.SessionContext(session_id=session_id)
        ctx.application.name = app.metadata.name
        ctx.application.shim = app.spec.shim
        for name in ("image", "command", "working_directory", "url", "installer"):
            if app.spec.HasField(name):
                setattr(ctx.application, name, getattr(app.spec, name))
        if session.spec.HasField("common_data"):
            ctx.common_data = session.spec.common_data
        return ctx.SerializeToString()

    def _enter(self, session_id: str) -> bool:
        """OnSessionEnter; the first call also proves the process is up (retried while it starts)."""
        assert self.process is not None
        self.state = pb.ExecutorState.ExecutorBinding
        sched = self.scheduler
        settings = sched.settings
        request = self._session_context(session_id)
        deadline = time.monotonic() + settings.instance_start_timeout
        while True:
            if not self.process.alive():
                sched.bind_failed(self, session_id, self.process.describe_exit())
                return False
            if not self.process.connect_if_listening():
                if time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                detail = (
                    f"instance {self.instance_id} did not start listening on {self.process.url} within "
                    f"{settings.instance_start_timeout} s"
                )
                tail = self.process.stderr_tail(settings.stderr_tail_lines)
                sched.bind_failed(self, session_id, detail + (f"; last lines of its stderr:\n{tail}" if tail else ""))
                return False
            try:
                reply = pb.Result.FromString(
                    self.process.channel.unary(ON_SESSION_ENTER, request, timeout=settings.session_enter_timeout)
                )
                break
            except FlameError as exc:
                if exc.code in _LINK_DOWN and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                if exc.code in _LINK_DOWN:
                    detail = (
                        f"instance {self.instance_id} did not start serving {self.process.url} within "
                        f"{settings.instance_start_timeout} s"
                    )
                    tail = self.process.stderr_tail(settings.stderr_tail_lines)
                    if tail:
                        detail += f"; last lines of its stderr:\n{tail}"
                else:
                    detail = f"OnSessionEnter failed: {exc.message}"
                sched.bind_failed(self, session_id, detail)
                return False
        if reply.return_code != 0:
            sched.bind_failed(self, session_id, f"on_session_enter raised: {reply.message}")
            return False
        self.state = pb.ExecutorState.ExecutorBound
        sched.bound(self, session_id)
        return True

    def _serve(self, session_id: str) -> bool:
        """Run tasks until the session closes (True) or the process dies (False)."""
        assert self.process is not None
        sched = self.scheduler
        engine = sched.engine
        while not self.stopping.is_set():
            try:
                task = engine.take_task(session_id, timeout=sched.settings.heartbeat_interval)
            except FlameError:
                return True  # the session closed (or vanished)
            if task is None:
                if self.stopped_for_cancel:
                    return False  # stopped to cancel a task that finished just before: not a failure
                if not self.process.alive():
                    # Dying while idle is a failure to serve the session: count it, or a service that
                    # always dies after entering would be restarted forever.
                    sched.bind_failed(self, session_id, self.process.describe_exit())
                    return False
                continue
            if not self._invoke(session_id, task):
                return False
        return True

    def _invoke(self, session_id: str, task: pb.Task) -> bool:
        assert self.process is not None
        engine = self.scheduler.engine
        ctx = shim_pb2.TaskContext(task_id=task.metadata.id, session_id=session_id)
        if task.spec.HasField("input"):
            ctx.input = task.spec.input
        self.current_task = int(task.metadata.id)
        try:
            # A task may run for hours: no deadline here. A dead process breaks the link at once.
            raw = self.process.channel.unary(ON_TASK_INVOKE, ctx.SerializeToString(), timeout=None)
        except FlameError as exc:
            self.current_task = None
            if self.stopping.is_set():
                # The server is shutting down and stopped this instance: not the task's failure, so it
                # spends no retry; it stays RUNNING in the store and is requeued when the server restarts.
                return False
            if exc.code in _LINK_DOWN or not self.process.alive():
                cause = self.process.describe_exit(wait=2.0)
                engine.retry_task(session_id, task.metadata.id, cause)
                return False
            engine.fail_task(session_id, task.metadata.id, f"calling the instance failed: {exc}")
            return True
        self.current_task = None
        result = pb.TaskResult.FromString(raw)
        self.tasks_served += 1
        self.scheduler.served(session_id)
        if result.return_code == 0:
            engine.complete_task(session_id, task.metadata.id, result.output if result.HasField("output") else None)
        else:
            engine.fail_task(session_id, task.metadata.id, result.message or "the task failed without a message")
        return True

    def _leave(self, session_id: str) -> None:
        assert self.process is not None
        self.state = pb.ExecutorState.ExecutorUnbinding
        try:
            self.process.channel.unary(ON_SESSION_LEAVE, b"", timeout=self.scheduler.settings.instance_call_timeout)
        except FlameError as exc:
            log.warning("instance %s: OnSessionLeave of %s failed: %s", self.instance_id, session_id, exc)


def _stop_for_cancel(process: Instance, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace``; the link is left to break as the process ends, so the
    driver reports how it ended. An in-process instance (no process of its own) is just stopped."""
    if not isinstance(process, InstanceProcess):
        process.stop(grace)
        return
    process.terminate()
    try:
        process.popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()


class Scheduler:
    """Matches sessions that need instances with warm instances or new processes."""

    def __init__(self, engine: Engine, launcher: InstanceLauncher, settings: RuntimeSettings) -> None:
        self.engine = engine
        self.launcher = launcher
        self.settings = settings
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._drivers: set[InstanceDriver] = set()
        self._by_session: dict[str, set[InstanceDriver]] = defaultdict(set)
        self._idle: dict[str, list[InstanceDriver]] = defaultdict(list)
        self._bind_failures: dict[str, int] = defaultdict(int)
        self._closed = False
        engine.scheduler = self

    # -- engine hooks ------------------------------------------------------------------------------------

    def tasks_pending(self, session_id: str) -> None:
        with self._lock:
            if self._closed:
                return
            want = self.engine.demand(session_id)
            have = self._by_session.get(session_id)
            missing = want - (len(have) if have else 0)
            if missing <= 0:
                return
            app_name = self.engine.get_session(session_id).spec.application
            app = self.engine.get_application(app_name)
            leaving: int | None = None
            for _ in range(missing):
                idle = self._idle.get(app_name)
                if idle:
                    driver = idle.pop()
                    driver.session_id = session_id
                    self._by_session[session_id].add(driver)
                    driver.assigned.set()
                    continue
                if leaving is None:
                    leaving = self._leaving(app_name)
                if leaving:
                    # An instance is leaving a closed session of this application (OnSessionLeave takes
                    # a moment): it is rebound when it parks, or replaced when it stops. Starting a
                    # process now would miss the warm one whenever sessions run back to back.
                    leaving -= 1
                    continue
                running = sum(1 for d in self._drivers if d.app_name == app_name)
                if running >= app.spec.max_instances:
                    break  # the application's cap; a busy instance will take the task when free
                driver = InstanceDriver(self, f"i{next(self._ids)}", app_name, session_id)
                self._drivers.add(driver)
                self._by_session[session_id].add(driver)
                driver.start()

    def _leaving(self, app_name: str) -> int:
        """Instances of ``app_name`` still bound to a session that is closed (called with the lock held)."""
        count = 0
        for driver in self._drivers:
            sid = driver.session_id
            if driver.app_name != app_name or not sid or driver.stopping.is_set():
                continue
            try:
                is_open = self.engine.session_entry(sid).is_open
            except FlameError:
                is_open = False  # deleted
            count += not is_open
        return count

    def session_closed(self, session_id: str) -> None:
        with self._lock:
            self._bind_failures.pop(session_id, None)
        # Drivers notice through take_task and leave on their own.

    def application_removed(self, name: str) -> None:
        with self._lock:
            idle = self._idle.pop(name, [])
        for driver in idle:
            driver.stopping.set()
            driver.session_id = None
            driver.assigned.set()

    def cancel_running(self, session_id: str, task_id: int, reason: str) -> bool:
        """Stop the process running a cancelled task (``flame.v1.Instance`` has no call to cancel one).

        SIGTERM to its process group, SIGKILL after ``shutdown_grace``, on a thread of its own so the
        caller never waits. The driver then sees the link break and reports the task through
        ``retry_task``, which the engine records as CANCELLED; the driver ends and a fresh instance
        takes the session's other tasks. Minimal on purpose: the lease scheduler carries it over.
        """
        with self._lock:
            driver = next((d for d in self._by_session.get(session_id, ()) if d.current_task == task_id), None)
        process = driver.process if driver is not None else None
        if driver is None or process is None:
            return False
        log.info(
            "session %s: stopping instance %s to cancel task %s (%s)", session_id, driver.instance_id, task_id, reason
        )
        driver.stopped_for_cancel = True
        threading.Thread(
            target=_stop_for_cancel,
            args=(process, self.settings.shutdown_grace),
            name=f"flame-cancel-{driver.instance_id}",
            daemon=True,
        ).start()
        return True

    # -- driver callbacks ----------------------------------------------------------------------------------

    def bound(self, driver: InstanceDriver, session_id: str) -> None:
        log.debug("instance %s entered session %s", driver.instance_id, session_id)

    def served(self, session_id: str) -> None:
        """An instance answered a task: the session's instances work, so forget earlier failures."""
        if self._bind_failures.get(session_id):
            with self._lock:
                self._bind_failures.pop(session_id, None)

    def bind_failed(self, driver: InstanceDriver, session_id: str, detail: str) -> None:
        """An instance could not start or enter the session: count it; past the limit fail the tasks."""
        log.warning("session %s: %s", session_id, detail)
        self.engine.add_session_event(session_id, EVENT_BIND_FAILED, f"failed to bind session: {detail}")
        with self._lock:
            self._by_session[session_id].discard(driver)
            self._bind_failures[session_id] += 1
            failures = self._bind_failures[session_id]
            exhausted = failures > self.settings.instance_start_retry_limit
            if exhausted:
                self._bind_failures.pop(session_id, None)
        if exhausted:
            message = (
                f"no instance of application {driver.app_name} could serve session {session_id} after "
                f"{failures} attempts; last error: {detail}"
            )
            self.engine.add_session_event(session_id, EVENT_RETRY_LIMIT, message)
            self.engine.fail_pending(session_id, message)
        driver.session_id = None
        driver.stopping.set()

    def park(self, driver: InstanceDriver) -> str | None:
        """An instance left its session: rebind it at once, keep it warm, or let it stop."""
        app_name = driver.app_name
        with self._lock:
            if driver.session_id:
                self._by_session[driver.session_id].discard(driver)
                if not self._by_session[driver.session_id]:
                    del self._by_session[driver.session_id]
            driver.session_id = None
            driver.assigned.clear()
            if self._closed:
                return None
            try:
                delay = float(self.engine.get_application(app_name).spec.delay_release)
            except FlameError:
                return None  # the application is gone
            if delay <= 0 or len(self._idle[app_name]) >= self.settings.warm_pool_max:
                return None
            self._idle[app_name].append(driver)
            driver.state = pb.ExecutorState.ExecutorIdle
        # Someone may be waiting for an instance of this application right now.
        for session_id in self._sessions_needing(app_name):
            self.tasks_pending(session_id)
        if driver.assigned.wait(timeout=delay):
            return driver.session_id
        with self._lock:
            if driver in self._idle.get(app_name, []):
                self._idle[app_name].remove(driver)
                return None
        driver.assigned.wait(timeout=1.0)  # assigned in the same instant it timed out
        return driver.session_id

    def _sessions_needing(self, app_name: str) -> list[str]:
        return self.engine.pending_sessions(app_name)

    def instance_gone(self, driver: InstanceDriver) -> None:
        with self._lock:
            self._drivers.discard(driver)
            for members in self._by_session.values():
                members.discard(driver)
            idle = self._idle.get(driver.app_name)
            if idle and driver in idle:
                idle.remove(driver)
            retry = [sid for sid in list(self._by_session) if self.engine.has_pending(sid)] if not self._closed else []
        for session_id in retry:
            self.tasks_pending(session_id)
        if not self._closed:
            for session_id in self._sessions_needing(driver.app_name):
                self.tasks_pending(session_id)

    # -- introspection and shutdown ------------------------------------------------------------------------

    def instance_count(self) -> int:
        with self._lock:
            return len(self._drivers)

    def instances(self) -> list[InstanceInfo]:
        """Every instance process now: id, application, state, session, pid (for listings and live views)."""
        with self._lock:
            drivers = list(self._drivers)
        return sorted((d.info() for d in drivers), key=lambda i: (i.application, int(i.id.lstrip("i") or 0)))

    def shutdown(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._closed = True
            drivers = list(self._drivers)
        for driver in drivers:
            driver.stopping.set()
            driver.session_id = None
            driver.assigned.set()
        deadline = time.monotonic() + timeout
        for driver in drivers:
            driver.join(timeout=max(0.1, deadline - time.monotonic()))
            if driver.is_alive() and driver.process is not None:
                # Busy with a long task: stop the process; the driver thread then ends by itself.
                driver.process.stop(self.settings.shutdown_grace)
