"""Serving a ``FlameService`` on ``FLAME_INSTANCE_ENDPOINT``.

A bare path (what Flame's executors pass) is served by the transport that speaks Flame's protocol on a
bare socket path (``bare_path_scheme``), so services written with this SDK run under Flame's executors;
a URL with a scheme picks the transport by that scheme.
The process stops when told to (SIGTERM/SIGINT), and then ends by that same signal so its exit status
names it, or when the executor that started it goes away, so an instance never outlives its server.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from functools import partial
from pathlib import Path
from types import FrameType
from typing import ParamSpec, TypeVar

from flamepy_core.addresses import normalize_endpoint
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    CallContext,
    DeferredHandler,
    DeferredStreamHandler,
    Handler,
    Responder,
    Server,
    StreamWriter,
    Transport,
    UnaryHandler,
)
from flamepy_core.failure_text import bound_failure_text
from flamepy_core.instance.lane import LaneDesk
from flamepy_core.instance.service import ApplicationContext, FlameService, SessionContext, TaskContext
from flamepy_core.kit.basics import run_calls_on
from flamepy_core.plugin_classes import build_transport_of_class
from flamepy_core.privacy import private_umask
from flamepy_core.wire.payload_handoff import REPLY_ROOM, read_payload_file, write_payload_file
from flamepy_core.wire.payload_messages import (
    GRANT_LANE,
    ON_SESSION_ENTER,
    ON_SESSION_LEAVE,
    ON_TASK_INVOKE,
    RUN_LANE_TASK,
    RUN_LANE_TASKS,
    RUN_TASKS,
    WITHDRAW_TASKS,
    read_session_context,
    read_task_batch,
    read_task_call,
    result,
    task_result,
    withdrawn_tasks,
)

log = logging.getLogger(__name__)

ENDPOINT_ENV = "FLAME_INSTANCE_ENDPOINT"
FAST_ENDPOINT_ENV = "FLAMEPY_INSTANCE_ENDPOINT"
"""Offered by flamepy's runtime next to FLAME_INSTANCE_ENDPOINT: a faster link our instances prefer."""
READY_FD_ENV = "FLAMEPY_READY_FD"
HEARTBEAT_INTERVAL_ENV = "FLAMEPY_HEARTBEAT_INTERVAL"
"""Seconds between heartbeats on the readiness pipe (flamepy_core.engine.executor describes both)."""
HEARTBEAT_READY = b"H"
"""A pipe flamepy's runtime passes: one byte written to it says "listening" (no polling for the socket)."""
TRANSPORTS_ENV = "FLAMEPY_INSTANCE_TRANSPORTS"
"""The transport classes (``module:Class``, comma-separated) of the endpoints flamepy's runtime offers: a
service process builds its transport from them without scanning every installed plugin."""


_RUNTIME_DIRS = tuple(str(Path(__file__).resolve().parent.parent.parent / pkg) for pkg in ("flamepy_core", "flamepy"))


def describe_exception(exc: BaseException) -> str:
    """The failure text a client receives: type, message and the service's traceback.

    Frames of the runtime itself are dropped: the user needs their own code's frames.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIRS):
        tb = tb.tb_next
    import traceback  # only when a service raises: not on the start path

    lines = "".join(traceback.format_exception(type(exc), exc, tb))
    # Bounded here too (the server bounds what it stores), so a huge message never crosses the link.
    return bound_failure_text(f"{type(exc).__name__}: {exc}\n\nIn the service:\n{lines}")


class _Callbacks:
    """The three ``flame.v1.Instance`` callbacks of one service, as functions from request to response bytes."""

    def __init__(self, service: FlameService, *, batches: bool = False) -> None:
        self.service = service
        self._entered = _ENTERED_BATCHES if batches else _ENTERED
        self.session_id: str | None = None
        """The session entered (None outside one)."""

    def enter(self, data: bytes) -> bytes:
        session_id, common_data, app = read_session_context(data)
        context = SessionContext(
            common_data,
            session_id,
            ApplicationContext(
                name=app["name"],
                image=app.get("image"),
                command=app.get("command"),
                working_directory=app.get("working_directory"),
                url=app.get("url"),
            ),
        )
        try:
            self.service.on_session_enter(context)
        except Exception as exc:
            log.exception("on_session_enter failed")
            return result(-1, describe_exception(exc))
        self.session_id = session_id
        return self._entered

    def invoke(self, data: bytes) -> bytes:
        call = read_task_call(data)
        task_input = call.input
        if call.input_file is not None:
            try:
                task_input = read_payload_file(Path(call.input_file[0]), call.input_file[1])
            except (OSError, ValueError) as exc:
                return task_result(-1, message=_unreadable_input(call.input_file[0], exc))
        output, failure = self.run_task(call.task_id, call.session_id, task_input)
        if failure is not None:
            return task_result(-1, message=failure)
        if output is not None and call.output_file is not None and _to_file(len(output), call.output_file):
            path, _least, _most, sync = call.output_file
            try:
                write_payload_file(Path(path), output, sync=sync)
                return task_result(0, output_size=len(output))
            except OSError as exc:  # a full disk: the output travels inline, and the server decides
                log.warning("cannot write the output of task %s to %s (%s): sent inline", call.task_id, path, exc)
        return task_result(0, None if output is None else bytes(output))  # encoded with one copy of output

    def run_task(
        self, task_id: str, session_id: str, task_input: bytes | None
    ) -> tuple[bytes | bytearray | memoryview | None, str | None]:
        """Run the service's entrypoint: ``(output, None)``, or ``(None, why it failed)`` (its exception
        described, or an output that is not bytes)."""
        try:
            output = self.service.on_task_invoke(TaskContext(task_id, session_id, task_input))
        except Exception as exc:
            return None, describe_exception(exc)
        if output is not None and not isinstance(output, (bytes, bytearray, memoryview)):
            return None, (
                f"TypeError: on_task_invoke of {type(self.service).__name__} returned "
                f"{type(output).__name__}; it must return bytes or None"
            )
        return output, None

    def leave(self, _data: bytes) -> bytes:
        self.session_id = None
        try:
            self.service.on_session_leave()
        except Exception as exc:
            log.exception("on_session_leave failed")
            return result(-1, describe_exception(exc))
        return _OK

    def table(self) -> dict[str, Callable[[bytes], bytes]]:
        return {ON_SESSION_ENTER: self.enter, ON_TASK_INVOKE: self.invoke, ON_SESSION_LEAVE: self.leave}


_OK = result(0)
_ENTERED = result(0, handoff_offered=True)
"""OnSessionEnter's answer: entered, and payload files are welcome (see ``wire.payload_handoff``)."""
_ENTERED_BATCHES = result(0, handoff_offered=True, tasks_offered=True, lanes_offered=True)
"""The same from a service process, which also takes tasks in batches (``RunTasks``, see :class:`_Batch`) and
opens lanes (:mod:`flamepy_core.instance.lane`)."""


def _to_file(size: int, offer: tuple[str, int, int, bool]) -> bool:
    """Whether an output of ``size`` bytes goes to the offered file: large enough, and small enough to be
    answered at all (a larger one is sent inline, where the message limit refuses it)."""
    _path, least, most, _sync = offer
    return least <= size <= most - REPLY_ROOM


def _unreadable_input(path: str, exc: OSError | ValueError) -> str:
    why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    return (
        f"the task's input could not be read from its payload file {path} ({why}); the service did not run. "
        f"The file is the server's: it was removed or damaged outside flamepy (a payload_retention purge, "
        f"a cleanup of FLAME_HOME). Submit the task again"
    )


def instance_handlers(service: FlameService) -> dict[str, Handler]:
    """The ``flame.v1.Instance`` table for ``service``, run on the transport's threads one at a time.

    For in-process instances, which have no thread of their own; a service process uses
    :class:`MainThreadServing` instead.
    """
    lock = threading.Lock()

    def serialized(call: Callable[[bytes], bytes]) -> UnaryHandler:
        def handle(data: bytes, _ctx: CallContext) -> bytes:
            with lock:
                return call(data)

        return UnaryHandler(handle)

    return {path: serialized(call) for path, call in _Callbacks(service).table().items()}


class Interrupted(BaseException):
    """Raised into the service's running callback (from a signal handler) to stop it now.

    A ``BaseException``, like ``KeyboardInterrupt``, so that a service's ``except Exception`` does not
    swallow it; ``finally`` blocks still run.
    """


SIGNAL_CHECK = 0.25
"""Seconds the serving thread waits for a call at most before it looks for a signal to handle."""


class _Batch:
    """One ``RunTasks`` call: its tasks, run in order on the serving thread, and the stream of their results.

    ``started``, ``done`` and ``end`` count tasks from the front and change under the serving's lock:
    a withdrawal takes the tasks from ``started`` to ``end`` (none of them has begun) and moves ``end``
    back; the stream is closed by whoever sees ``done`` reach ``end``.
    """

    __slots__ = ("done", "end", "started", "tasks", "writer")

    def __init__(self, tasks: list[bytes], writer: StreamWriter) -> None:
        self.tasks = tasks
        self.writer = writer
        self.started = 0
        self.done = 0
        self.end = len(tasks)


_P = ParamSpec("_P")
_T = TypeVar("_T")
_Call = TypeVar("_Call")


class _Routine:
    """A routine a server submitted to run on the serving thread (:meth:`MainThreadServing.submit`)."""

    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self, future: Future[object], fn: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            outcome = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise  # Interrupted: the serving ends
            log.exception("a routine the server submitted failed")
        else:
            self.future.set_result(outcome)


_Item = tuple[Callable[[bytes], bytes], bytes, Responder] | tuple[_Batch, int] | _Routine | None


class MainThreadServing(Executor):
    """Runs the service's callbacks on one thread (the main thread), fed by the transport.

    The transport's receiving thread only queues each call (a deferred reply: it holds no thread); the
    serving thread runs them in arrival order, one at a time, and completes each reply. So the service
    never runs two callbacks at once, and a signal sent to the process reaches the thread that runs
    the service's code (it can interrupt a blocking call).

    Tasks also come in batches (``RunTasks``, from flamepy's own server: one message for many tasks):
    each is queued as a call of its own, in order, and its result is sent on the batch's stream as soon
    as it is done, before the next task starts, so only the task running can be lost with the process.
    ``WithdrawTasks`` is answered by the receiving thread itself while a task runs: it takes back every
    queued task that has not started (the server sends them elsewhere: a long task must not hold tasks
    queued behind it, one of which it may be waiting for).

    A server that can lend its socket (``host_wait``: the kit's framed servers, uds's among them, and
    zmq's; see :meth:`host_on`) has the serving thread receive the calls itself while it has nothing to
    run: no hand-off from the transport's thread. The kit's also runs a task the serving thread reads
    there at once, inside the wait (``serve_inline``), while nothing queued waits to run before it.
    """

    def __init__(self, service: FlameService) -> None:
        callbacks = _Callbacks(service, batches=True)
        self._lanes = LaneDesk(callbacks.run_task, lambda: callbacks.session_id)
        self._calls = {path: self._server_call(call) for path, call in callbacks.table().items()}
        self._invoke = self._server_call(callbacks.invoke)
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._open: list[_Batch] = []
        """Batches with tasks not done: what a withdrawal looks at."""
        self.busy = False
        """A callback of the service is running (on the serving thread)."""
        self._thread: int | None = None
        """The serving thread's id, once :meth:`serve` runs."""
        self._stopping = False
        """:meth:`stop` was called: no callback starts any more (a call queued meanwhile gets no reply)."""
        self._context = contextvars.copy_context()
        """The context every callback runs in, whoever submitted it: what one callback sets, the next sees."""
        self._host: Callable[[float], bool] | None = None
        """The server's ``host_wait``: wait for calls on this thread, receiving them here (None: the queue)."""
        self._wake: Callable[[], None] | None = None
        self._hosting = False
        """The serving thread is in the server's ``host_wait``: a call it receives there is queued, and run
        once it has left it (not inside the server's round, which holds the socket)."""

    def host_on(self, server: Server) -> None:
        """Receive ``server``'s calls on the serving thread while it waits, when the server can
        (``host_wait(timeout) -> bool`` and ``wake_host()``, as the kit's framed servers and zmq's have
        them): the calls then reach the service with no thread hand-off (a warm invoke's instance CPU, see
        docs/benchmarks.md)."""
        host = getattr(server, "host_wait", None)
        wake = getattr(server, "wake_host", None)
        if callable(host) and callable(wake):
            self._host, self._wake = host, wake
            inline = getattr(server, "serve_inline", None)
            if callable(inline):
                # A task the serving thread reads while it waits runs there at once, answered by the server
                # (the kit's; uds's among them): no queue, no trip back through serve() per task.
                run = partial(self._run_call, self._calls[ON_TASK_INVOKE])
                inline(ON_TASK_INVOKE, run, self._queue.empty, (Interrupted,))

    def _server_call(self, call: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        """``call`` as the serving thread runs it for the server: the lane the server took back (if any) is
        closed first; every lane task received before this call has run (see :mod:`.lane`)."""
        lanes = self._lanes

        def run(data: bytes) -> bytes:
            lanes.server_call_runs()
            return call(data)

        return run

    def handlers(self) -> dict[str, Handler]:
        lanes = self._lanes

        def deferred(call: Callable[[bytes], bytes], here: bool) -> DeferredHandler:
            def handle(data: bytes, _ctx: CallContext, responder: Responder) -> None:
                lanes.server_call_received()
                if threading.get_ident() == self._thread and not self._hosting:  # a routine: see submit
                    self._answer(call, data, responder)
                else:
                    self._queue.put((call, data, responder))

            if here:
                run_calls_on(handle, self)
            return DeferredHandler(handle)

        table: dict[str, Handler] = {path: deferred(call, path == ON_TASK_INVOKE) for path, call in self._calls.items()}
        table[RUN_TASKS] = DeferredStreamHandler(self._run_tasks)
        table[WITHDRAW_TASKS] = UnaryHandler(self._withdraw)
        table[GRANT_LANE] = DeferredHandler(self._grant_lane)
        table[RUN_LANE_TASK] = DeferredHandler(self._lane_task)
        table[RUN_LANE_TASKS] = DeferredHandler(self._lane_tasks)
        return table

    def _grant_lane(self, data: bytes, _ctx: CallContext, responder: Responder) -> None:
        grant = self._lanes.grant_received(data)
        self._queue.put((partial(self._lanes.open, grant), b"", responder))

    def _lane_task(self, data: bytes, _ctx: CallContext, responder: Responder) -> None:
        self._admitted(self._lanes.admit, self._lanes.run, data, responder)

    def _lane_tasks(self, data: bytes, _ctx: CallContext, responder: Responder) -> None:
        self._admitted(self._lanes.admit_batch, self._lanes.run_batch, data, responder)

    def _admitted(
        self, admit: Callable[[bytes], _Call], run: Callable[[_Call, bytes], bytes], data: bytes, responder: Responder
    ) -> None:
        """A lane's call, on the receiving thread: admitted now (or refused, answered at once), run in turn
        on the serving thread."""
        try:
            call = admit(data)
        except FlameError as exc:
            responder.fail(exc)
            return
        self._queue.put((partial(run, call), b"", responder))

    def _run_tasks(self, data: bytes, _ctx: CallContext, writer: StreamWriter) -> None:
        self._lanes.server_call_received()
        batch = _Batch(read_task_batch(data), writer)
        if not batch.tasks:
            writer.close()
            return
        with self._lock:  # queued whole: a batch read by another thread at once cannot cut into this one
            self._open.append(batch)
            for index in range(batch.end):
                self._queue.put((batch, index))

    def _withdraw(self, _data: bytes, _ctx: CallContext) -> bytes:
        # (No lane is closed: answered at once on this thread, it does not wait for a lane's task, and the
        # server does not take a lane back with it.)
        taken: list[bytes] = []
        finished: list[_Batch] = []
        with self._lock:
            for batch in self._open:
                taken += batch.tasks[batch.started : batch.end]
                batch.end = batch.started
                if batch.done >= batch.end:
                    finished.append(batch)
            for batch in finished:
                self._open.remove(batch)
        for batch in finished:
            batch.writer.close()
        return withdrawn_tasks([read_task_call(task).task_id for task in taken])

    def stop(self) -> None:
        """End :meth:`serve` after the call it is running (safe from a signal handler: the queue is reentrant)."""
        self._stopping = True
        self._queue.put(None)
        wake = self._wake
        if wake is not None:
            wake()  # a serving thread waiting in host_wait returns to its queue

    def serve(self) -> None:
        """Run queued calls until :meth:`stop`.

        The wait is cut every ``SIGNAL_CHECK`` seconds: a signal the kernel hands to another thread of the
        process (a transport's, the heartbeat's) runs its Python handler, which stops this loop, only when
        the main thread runs Python code again, and a main thread blocked in an endless wait never would.
        """
        self._thread = threading.get_ident()
        while True:
            host = self._host
            try:
                item = self._queue.get(timeout=SIGNAL_CHECK) if host is None else self._queue.get_nowait()
                empty = False
            except queue.Empty:
                empty = True  # (not handled in the except block: a task run inline below would raise its
                # service's exception with queue.Empty as its context, and our frames in its traceback)
            if empty:
                # Nothing queued: receive calls here until a handler queues one (or the wait is cut, as
                # above); a server that cannot lend its socket (any more) leaves the waiting to the queue.
                if host is not None:
                    self._hosting = True
                    try:
                        if not host(SIGNAL_CHECK):
                            self._host = None
                    except Interrupted:
                        return  # stopped in the middle of a task run inline: nobody gets its reply
                    finally:
                        self._hosting = False
                continue
            if item is None:
                return
            try:
                if isinstance(item, _Routine):
                    item.run()
                elif len(item) == 2:
                    if self._batch_task(*item):
                        return
                else:
                    self._answer(*item)
            except Interrupted:
                return  # stopped in the middle: nobody gets this reply

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` on the serving thread, in turn with the queued calls.

        A server that runs each call as one routine (grpcio's) submits the routine of an ``OnTaskInvoke``
        here (the handler asks for it with ``run_calls_on``): the serving thread then receives the
        request, runs the task and sends the reply itself, and no server thread waits for it.
        """
        future: Future[_T] = Future()
        self._queue.put(_Routine(future, fn, args, kwargs))  # type: ignore[arg-type]
        return future

    def _run_call(self, call: Callable[[bytes], bytes], data: bytes) -> bytes:
        """Run one callback on the serving thread and return its reply (a task read while the thread waited is
        run this way by the server itself, ``serve_inline``, which sends the reply or the error raised here).

        Once stopped, a callback does not start: the server's routine of a task (see :meth:`submit`) may
        have been waiting for its request when the signal came, and the task must not run to its end.
        """
        if self._stopping:
            raise Interrupted("stopped before the callback started")
        self.busy = True
        try:
            return self._context.run(call, data)
        finally:
            self.busy = False

    def _answer(self, call: Callable[[bytes], bytes], data: bytes, responder: Responder) -> None:
        """Run one callback and complete its reply (on the serving thread); ``Interrupted`` passes through."""
        try:
            reply = self._run_call(call, data)
        except Interrupted:
            raise  # stopped in the middle: nobody gets this reply
        except BaseException as exc:  # a bug of ours (the callbacks catch the service's exceptions)
            responder.fail(exc)
            if not isinstance(exc, Exception):
                raise
            return
        responder.send(reply)

    def _batch_task(self, batch: _Batch, index: int) -> bool:
        """Run one task of a batch unless it was withdrawn; True when a signal interrupted it."""
        if self._stopping:
            return True  # the tasks not started go back to the server's queue with this process
        with self._lock:
            if index >= batch.end:
                return False  # withdrawn: the server sent it elsewhere
            batch.started = index + 1
            self.busy = True
        try:
            reply = self._context.run(self._invoke, batch.tasks[index])
        except Interrupted:
            return True
        except BaseException as exc:  # a bug of ours: the stream fails, and the batch's other tasks with it
            self._end_batch(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return False
        finally:
            self.busy = False
        if not batch.writer.send(reply):  # the stream ended (its result too large, the server gone)
            self._end_batch(batch, None)
            return False
        with self._lock:
            batch.done = index + 1
            last = batch.done >= batch.end
            if last:
                self._open.remove(batch)
        if last:
            batch.writer.close()
        return False

    def _end_batch(self, batch: _Batch, error: BaseException | None) -> None:
        """No more of this batch runs here: the server takes its failed stream's tasks back."""
        with self._lock:
            batch.end = batch.started
            if batch in self._open:
                self._open.remove(batch)
        if error is not None:
            batch.writer.fail(error)


def _signal_ready() -> None:
    """Tell the runtime that started this process that it listens (see FLAMEPY_READY_FD), then send it
    heartbeats on the same pipe every ``FLAMEPY_HEARTBEAT_INTERVAL`` seconds, when it asks for them.

    The heartbeats come from a thread of their own, in Python: they stop when the process is frozen
    (SIGSTOP) or when a callback holds the GIL (a C extension that never releases it), which is exactly
    what the runtime must notice; a callback that computes in Python or waits lets them through.
    """
    raw = os.environ.pop(READY_FD_ENV, "")
    interval_text = os.environ.pop(HEARTBEAT_INTERVAL_ENV, "")
    if not raw:
        return  # started by Flame's executors, or by hand: they find the socket
    try:
        fd = int(raw)
        interval = float(interval_text) if interval_text else 0.0
    except ValueError as exc:
        log.debug("could not signal readiness on %s=%r: %s", READY_FD_ENV, raw, exc)
        return
    try:
        if interval > 0:
            os.set_blocking(fd, False)  # a server too busy to read must never block this process
            os.write(fd, HEARTBEAT_READY)
            threading.Thread(target=_beat, args=(fd, interval), name="flame-heartbeat", daemon=True).start()
        else:
            os.write(fd, b"1")
            os.close(fd)
    except OSError as exc:
        log.debug("could not signal readiness on %s=%r: %s", READY_FD_ENV, raw, exc)


def _beat(fd: int, interval: float) -> None:
    """Write one byte on ``fd`` every ``interval`` seconds, until the reading end is gone."""
    wait = threading.Event().wait
    while True:
        wait(interval)
        try:
            os.write(fd, b".")
        except BlockingIOError:
            continue  # the pipe is full: the server has not read for a while, and will
        except OSError:
            with contextlib.suppress(OSError):
                os.close(fd)
            return


PARENT_GONE_GRACE = 2.0
"""Seconds an instance whose server has gone gives its running callback before it exits anyway."""


def _serve(transport: Transport, endpoint: str, handlers: dict[str, Handler]) -> Server:
    if not transport.capabilities.deferred_replies:
        from flamepy_core.transport_kit import adapt_handlers  # only a transport without deferred replies needs it

        return transport.serve(endpoint, adapt_handlers(handlers, transport.capabilities))
    return transport.serve(endpoint, handlers)


def _instance_transport(endpoint: str, hints: list[str]) -> tuple[Transport, str]:
    """The transport for ``endpoint`` and the endpoint as a URL: one of the classes the server named
    (``FLAMEPY_INSTANCE_TRANSPORTS``) when one owns it, built from its class alone; else the one the
    installed plugins give (the plugin registry, imported only then: it scans every installed plugin)."""
    for class_path in hints:
        found = build_transport_of_class(class_path, endpoint)
        if found is not None:
            return found
    from flamepy_core.plugins import get_registry

    registry = get_registry()
    url = registry.endpoint_url(endpoint)
    return registry.transport(url), url


def _watch_parent(stop: Callable[[], None], interval: float = 0.5) -> None:
    parent = os.getppid()

    def loop() -> None:
        while True:
            threading.Event().wait(interval)
            if os.getppid() != parent:
                log.warning("the process that started this instance (pid %d) is gone: exiting", parent)
                stop()
                # Nobody will read what a running task returns: do not let it hold the process.
                threading.Event().wait(PARENT_GONE_GRACE)
                sys.stdout.flush()
                os._exit(1)

    threading.Thread(target=loop, name="flame-parent-watch", daemon=True).start()


LOG_LEVEL_ENVS = ("FLAME_LOG_LEVEL", "FLAME_LOG")
"""The log level of a service process: ``FLAME_LOG_LEVEL`` (the guide's application YAML sets it), else
``FLAME_LOG`` (what Flame's runner reads)."""


def configure_logging() -> None:
    """Log to stderr (the instance's ``.err`` file) at ``$FLAME_LOG_LEVEL``, unless logging is set up already.

    Without it, what the runtime logs at INFO in a service (the instance's endpoint, a class pickled by
    value) would be dropped by Python's default WARNING threshold.
    """
    level = next((os.environ[name] for name in LOG_LEVEL_ENVS if os.environ.get(name)), None)
    root = logging.getLogger()
    if level is None or root.handlers:
        return
    if not isinstance(logging.getLevelName(level.strip().upper()), int):
        print(f"flamepy: ignoring the log level {level!r}: use DEBUG, INFO, WARNING or ERROR", file=sys.stderr)
        return
    logging.basicConfig(
        level=level.strip().upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def run(service: FlameService, endpoint: str | None = None) -> None:
    """Serve ``service`` until told to stop. The endpoint defaults to ``$FLAME_INSTANCE_ENDPOINT``."""
    configure_logging()
    raw = endpoint or os.environ.get(ENDPOINT_ENV)
    if not raw:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"{ENDPOINT_ENV} is not set: this process is a Flame service instance and is started by the "
            f"runtime, not by hand. Register it as an application (flmctl register --file app.yaml) and call "
            f"it with flamepy.service.Session(...).invoke(...)",
        )
    raw = normalize_endpoint(raw)
    fast = None if endpoint else os.environ.get(FAST_ENDPOINT_ENV)
    hints = [] if endpoint else [c for c in os.environ.get(TRANSPORTS_ENV, "").split(",") if c]
    serving = MainThreadServing(service)
    handlers = serving.handlers()
    server: Server | None = None
    with private_umask():  # the socket is reachable by this user only (see flamepy_core.privacy)
        if fast:
            try:
                transport, fast = _instance_transport(fast, hints)
                server = _serve(transport, fast, handlers)
            except FlameError as exc:  # e.g. the transport is not installed here: the compatible link works
                log.warning("cannot serve %s (%s); serving %s instead", fast, exc.message, raw)
        if server is None:
            transport, url = _instance_transport(raw, hints)
            server = _serve(transport, url, handlers)
    stopped_by: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopped_by.append(signum)
        serving.stop()
        if serving.busy:
            raise Interrupted(f"stopped by {signal.Signals(signum).name}")  # a task must not hold the process

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    serving.host_on(server)
    log.info("instance serving on %s", server.endpoint)
    _signal_ready()
    # After the readiness byte: starting a thread waits until it runs, which the server need not wait for.
    _watch_parent(serving.stop)
    try:
        serving.serve()
    except Interrupted:
        pass  # a signal arrived just as a callback started
    finally:
        server.stop(grace=1.0)
    sys.stdout.flush()
    if stopped_by:
        die_by_signal(stopped_by[0])


def die_by_signal(signum: int) -> None:
    """End this process by ``signum``, as if it had not been caught.

    The instance catches SIGTERM/SIGINT only to stop serving cleanly. Its exit status must still say
    that a signal ended it: the server reports an instance that died during a task by that status
    ("was killed by SIGTERM"), and an exit code 0 would read as the service quitting on its own.
    Flame's own SDK leaves these signals at their default, so its instances end the same way.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1.0)  # the default action ends the process as the signal is delivered
    os._exit(128 + signum)  # pragma: no cover - only if the signal could not end it
