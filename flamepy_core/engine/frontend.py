"""The server's handler tables: flame.v1.Frontend and flamepy.cache.v1.ObjectCache over any transport.

Each handler parses the request message, calls the engine, and serializes the answer. Errors are
``FlameError`` with precise codes; the gRPC transport turns them into the statuses Flame's server uses,
so Flame's own client sees what it expects (it folds almost everything into INTERNAL anyway), while our
client gets the exact code back.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from google.protobuf.message import DecodeError, Message

from flamepy_core.addresses import this_machine
from flamepy_core.config import parse_task_timeout
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    CallContext,
    DeferredHandler,
    DeferredStreamHandler,
    Handler,
    Responder,
    StreamHandler,
    StreamWriter,
    UnaryHandler,
)
from flamepy_core.engine.instances import executor_message, instance_message
from flamepy_core.engine.objects import ObjectCache
from flamepy_core.engine.retention import Retention
from flamepy_core.engine.state import Engine, echo_input, reply_task
from flamepy_core.engine.watches import StreamFeed
from flamepy_core.model import EVENT_PAYLOADS_PURGED
from flamepy_core.transport_kit import borrows_request, send_parts
from flamepy_core.wire.methods import CONTROL, EXT, FRONTEND, OBJECT_CACHE, RUNTIME, Method
from flamepy_core.wire.payload_handoff import Mapped
from flamepy_core.wire.payload_messages import (
    VIEW_BYTES,
    read_create_task_request,
    task_outcome_entry,
    task_outcomes_entry,
    task_reply,
    task_reply_parts,
)
from flamepy_core.wire.proto import cache_pb2, ext_pb2, frontend_pb2
from flamepy_core.wire.proto import types_pb2 as pb


def _parse(method: Method, data: bytes) -> Any:
    try:
        return method.request.FromString(data)
    except DecodeError as exc:
        raise _not_valid(method, exc) from exc


def _not_valid(method: Method, why: Exception) -> FlameError:
    return FlameError(
        FlameErrorCode.INVALID_ARGUMENT,
        f"{method.path}: the request is not a valid {method.request.DESCRIPTOR.full_name}: {why}",
    )


def _unary(method: Method, fn: Callable[[Any], Message]) -> UnaryHandler:
    def handle(data: bytes, ctx: CallContext) -> bytes:
        return fn(_parse(method, data)).SerializeToString()

    return UnaryHandler(handle)


def _unary_with_context(method: Method, fn: Callable[[Any, CallContext], Message]) -> UnaryHandler:
    """A unary handler that needs its call's context (the caller's deadline)."""

    def handle(data: bytes, ctx: CallContext) -> bytes:
        return fn(_parse(method, data), ctx).SerializeToString()

    return UnaryHandler(handle)


def _stream(method: Method, fn: Callable[[Any, CallContext], Iterator[Message]]) -> StreamHandler:
    def handle(data: bytes, ctx: CallContext) -> Iterator[bytes]:
        for message in fn(_parse(method, data), ctx):
            yield message.SerializeToString()

    return StreamHandler(handle)


def _deferred(method: Method, fn: Callable[[Any, CallContext, Responder], None]) -> DeferredHandler:
    """A handler that answers from a callback (a commit, a task's result) and holds no thread meanwhile."""

    def handle(data: bytes, ctx: CallContext, responder: Responder) -> None:
        fn(_parse(method, data), ctx, responder)

    return DeferredHandler(handle)


def _deferred_stream(method: Method, fn: Callable[[Any, CallContext, StreamWriter], None]) -> DeferredStreamHandler:
    """A stream fed from callbacks (a watch: see :mod:`.watches`): an open one holds no server thread."""

    def handle(data: bytes, ctx: CallContext, writer: StreamWriter) -> None:
        fn(_parse(method, data), ctx, writer)

    return DeferredStreamHandler(handle)


def _watch_feed(
    writer: StreamWriter, ctx: CallContext, encode: Callable[[list[pb.Task]], Iterable[bytes]]
) -> StreamFeed:
    """What an engine watch delivers to: ``writer``, each batch as ``encode`` makes it messages."""

    def send(tasks: list[pb.Task]) -> bool:
        return all(writer.send(message) for message in encode(tasks))  # stops at the first refusal

    def finish(error: FlameError | None) -> bool:
        return writer.close() if error is None else writer.fail(error)

    return StreamFeed(send, finish, ctx.is_active)


def _each_task(tasks: list[pb.Task]) -> Iterator[bytes]:
    for task in tasks:
        yield task.SerializeToString()


def _each_reply(tasks: list[pb.Task]) -> Iterator[bytes]:
    for task in tasks:
        yield reply_task(task).SerializeToString()


def _answer(responder: Responder) -> Callable[[Message | None, FlameError | None], None]:
    """A callback completing ``responder`` with a message or an error."""

    def settle(message: Message | None, error: FlameError | None) -> None:
        if error is not None:
            responder.fail(error)
        else:
            assert message is not None
            responder.send(message.SerializeToString())

    return settle


def _answer_task(
    responder: Responder,
) -> Callable[[pb.Task | None, Mapped | None, bytes | None, FlameError | None], None]:
    """A callback completing ``responder`` with a final task and its output as RunTask answers it: no input
    echoed, the output not copied where the transport sends a reply's parts as they are (``kit.send_parts``;
    otherwise once, into the answer). Through ``reply_task`` and protobuf a 16 MiB output was copied three
    times; the engine hands it over as it came (see ``state.OutputWaiter``): ``bytes``, or the mapping of
    the payload file its service process wrote."""

    def settle(task: pb.Task | None, output: Mapped | None, status: bytes | None, error: FlameError | None) -> None:
        if error is not None:
            responder.fail(error)
            return
        assert task is not None and status is not None
        meta = task.metadata
        if output is None or (type(output) is bytes and len(output) < VIEW_BYTES):  # small: one message
            responder.send(task_reply(meta.id, meta.name, task.spec.session_id, output, status))
            return
        # The output is not copied into the reply where the transport sends a reply's parts as they are.
        send_parts(responder, task_reply_parts(meta.id, meta.name, task.spec.session_id, output, status))

    return settle


FORCE_CLOSE_WAIT = 300.0
"""Seconds a forced close waits for the instances of running tasks to stop when its caller set no deadline."""
FORCE_CLOSE_LANE_WAIT = 0.5
"""Seconds a forced close waits for the tasks running on the session's lanes to end before it cancels them."""
REQUESTED_BY_MAX = 200
"""Characters of a cancel's ``requested_by`` kept for the tasks' events."""


def _requested_by(text: str) -> str:
    """Who asked for a cancel, as the events will say it: bounded, and never empty."""
    text = " ".join(text.split())[:REQUESTED_BY_MAX]
    return text or "a client"


def _ok() -> pb.Result:
    return pb.Result(return_code=0)


def _nothing() -> None:
    pass


def frontend_handlers(
    engine: Engine, cache: ObjectCache | None = None, *, on_freed: Callable[[], None] = _nothing
) -> dict[str, Handler]:
    """The ``flame.v1.Frontend`` table. With ``cache``, unregistering an app also drops its objects.

    ``on_freed`` is called after a session is closed or deleted and an application unregistered: the
    store may have payloads to purge or pages to give back (the server's retention sweep, woken).
    """

    def require_spec(request: Any, what: str) -> None:
        if not request.HasField("application"):
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{what}: the request has no application spec")

    def register(r: frontend_pb2.RegisterApplicationRequest) -> pb.Result:
        require_spec(r, "RegisterApplication")
        engine.register_application(r.name, r.application)
        return _ok()

    def update(r: frontend_pb2.UpdateApplicationRequest) -> pb.Result:
        require_spec(r, "UpdateApplication")
        engine.update_application(r.name, r.application)
        return _ok()

    def unregister(r: frontend_pb2.UnregisterApplicationRequest) -> pb.Result:
        engine.unregister_application(r.name)
        if cache is not None:  # its sessions are gone, so are their contexts and objects
            cache.delete(f"{r.name}/*")
        on_freed()
        return _ok()

    def freeing(session: pb.Session) -> pb.Session:
        on_freed()
        return session

    def list_apps(_r: Any) -> pb.ApplicationList:
        return pb.ApplicationList(applications=engine.list_applications())

    def create_session(r: frontend_pb2.CreateSessionRequest) -> pb.Session:
        return engine.create_session(r.session_id, r.session)

    def open_session(r: frontend_pb2.OpenSessionRequest) -> pb.Session:
        return engine.open_session(r.session_id, r.session if r.HasField("session") else None)

    def create_task(r: frontend_pb2.CreateTaskRequest, _ctx: CallContext, responder: Responder) -> None:
        task_input = r.task.input if r.task.HasField("input") else None

        def created(tasks: list[pb.Task] | None, error: FlameError | None) -> None:
            _answer(responder)(echo_input(tasks[0], task_input) if tasks else None, error)

        engine.submit_tasks(r.task.session_id, [task_input], created)

    def watch_task(r: frontend_pb2.WatchTaskRequest, ctx: CallContext, writer: StreamWriter) -> None:
        # Flame's semantics: the initial state is not sent unless the task is complete; ends after a
        # final state (see Engine.watch_task).
        engine.watch_task(caught_up(engine, r.session_id), r.task_id, _watch_feed(writer, ctx, _each_task))

    def list_sessions(_r: frontend_pb2.ListSessionRequest) -> pb.SessionList:
        lanes = engine.lanes
        if lanes is not None:  # (every session's: what the lanes ran, recorded first)
            lanes.catch_up_all()
        return pb.SessionList(sessions=engine.list_sessions())

    def list_tasks(r: frontend_pb2.ListTaskRequest, ctx: CallContext) -> Iterator[pb.Task]:
        return engine.list_tasks(caught_up(engine, r.session_id))

    def not_here(what: str) -> Callable[[Any], Message]:
        def refuse(_r: Any) -> Message:
            raise FlameError(
                FlameErrorCode.UNIMPLEMENTED,
                f"{what} is a cluster feature; this local server has no executors or nodes to report",
            )

        return refuse

    def list_executors(_r: Any) -> pb.ExecutorList:
        # Each instance process is one executor, so Flame's tools see what this server runs.
        node = socket.gethostname()
        return pb.ExecutorList(executors=[executor_message(i, node) for i in engine.scheduler.instances()])

    def list_nodes(_r: Any) -> pb.NodeList:
        return pb.NodeList()

    unary: dict[str, Callable[[Any], Message]] = {
        "RegisterApplication": register,
        "UnregisterApplication": unregister,
        "UpdateApplication": update,
        "GetApplication": lambda r: engine.get_application(r.name),
        "ListApplication": list_apps,
        "ListExecutor": list_executors,
        "ListNodes": list_nodes,
        "GetNode": not_here("GetNode"),
        "CreateSession": create_session,
        "DeleteSession": lambda r: freeing(engine.delete_session(r.session_id)),
        "OpenSession": open_session,
        "CloseSession": lambda r: freeing(engine.close_session(lanes_taken_back(engine, r.session_id))),
        "GetSession": lambda r: engine.get_session(caught_up(engine, r.session_id)),
        "ListSession": list_sessions,
        "GetTask": lambda r: engine.get_task(caught_up(engine, r.session_id), r.task_id),
    }
    streams: dict[str, Callable[[Any, CallContext], Iterator[Message]]] = {
        "ListTask": list_tasks,
    }
    table: dict[str, Handler] = {
        FRONTEND["CreateTask"].path: _deferred(FRONTEND["CreateTask"], create_task),
        FRONTEND["WatchTask"].path: _deferred_stream(FRONTEND["WatchTask"], watch_task),
    }
    for name, method in FRONTEND.items():
        if method.path in table:
            continue
        if method.server_streaming:
            table[method.path] = _stream(method, streams[name])
        else:
            table[method.path] = _unary(method, unary[name])
    return table


def cache_handlers(cache: ObjectCache) -> dict[str, Handler]:
    """The ``flamepy.cache.v1.ObjectCache`` table."""
    unary: dict[str, Callable[[Any], Message]] = {
        "PutObject": lambda r: cache.put(r.key_prefix, r.data),
        "UpdateObject": lambda r: cache.update(r.key, r.data),
        "PatchObject": lambda r: cache.patch(r.key, r.delta),
        "GetObject": lambda r: cache.get(r.key, r.known_version),
        "DeleteObjects": lambda r: cache_pb2.DeleteObjectsResponse(deleted=cache.delete(r.key_prefix)),
        "GetObjectPart": lambda r: cache.part(r.key, r.index),
    }
    return {method.path: _unary(method, unary[name]) for name, method in OBJECT_CACHE.items()}


def _fill_outcome(result: ext_pb2.TaskOutcome, task: pb.Task) -> int:
    """``task`` as its caller reads it, written into ``result``: id, state, output, and why it failed (if it
    did), or that its output was purged after the retention (read back from the store late). Returns about
    how many bytes it adds to a message (its output's and its message's)."""
    status = task.status
    state = status.state
    result.task_id = int(task.metadata.id)
    result.state = state
    size = 16
    if task.spec.HasField("output"):
        output = task.spec.output
        result.output = output
        size += len(output)
    events = status.events
    if not events:
        return size
    last = events[-1]
    if last.code == state:  # the usual case: nothing came after the final state (no purge)
        if state != pb.TaskState.Succeed and last.message:
            result.message = last.message
            size += len(result.message)
        return size
    purge = next((e for e in reversed(events) if e.code == EVENT_PAYLOADS_PURGED), None)
    result.purged = purge is not None
    if state == pb.TaskState.Succeed:
        if purge is not None:
            result.message = purge.message
    else:  # the event of its final state (a purge may have come after it)
        result.message = next((e.message for e in reversed(events) if e.code == state), last.message)
    return size + len(result.message)


def outcome(task: pb.Task) -> ext_pb2.TaskOutcome:
    """A completed task as its caller reads it (see :func:`_fill_outcome`)."""
    result = ext_pb2.TaskOutcome()
    _fill_outcome(result, task)
    return result


OUTCOMES_MESSAGE_BYTES = 4 << 20
"""Outputs one ``TaskOutcomes`` message carries at most (a larger single output goes alone): a long replay
is split rather than refused as too large."""


def outcome_messages(tasks: list[pb.Task]) -> Iterator[bytes]:
    """``tasks`` as ``TaskOutcomes`` messages of at most about ``OUTCOMES_MESSAGE_BYTES`` each.

    Each outcome's output is copied once, into its message; a task whose outcome would take the message
    past the limit starts the next one, so a message is over it only by one outcome."""
    parts: list[bytes] = []
    size = 0
    for task in tasks:
        entry, added = _outcome_entry(task)
        if parts and size + added > OUTCOMES_MESSAGE_BYTES:
            yield b"".join(parts)
            parts = []
            size = 0
        parts += entry
        size += added
    if parts:
        yield b"".join(parts)


_SUCCEED = pb.TaskState.Succeed
"""(A constant: reading an enum's value off its wrapper runs a Python ``__getattr__`` each time.)"""


def _outcome_entry(task: pb.Task) -> tuple[list[bytes], int]:
    """``task``'s outcome (see :func:`_fill_outcome`) as an entry of a ``TaskOutcomes`` message, and its size:
    written by hand in the usual case (nothing came after the final state's event), by protobuf otherwise."""
    status = task.status
    state = status.state
    message = ""
    events = status.events
    if events:
        last = events[-1]
        if last.code != state:  # a purge, or a history read back from elsewhere: the general rule
            written = outcome(task).SerializeToString()
            return task_outcomes_entry(written), len(written)
        if state != _SUCCEED:
            message = last.message
    spec = task.spec
    output = spec.output if spec.HasField("output") else None
    return task_outcome_entry(int(task.metadata.id), state, output, message)


LANE_CLOSE_WAIT = 1.0
"""Seconds a close waits for a task running on one of the session's lanes (then it is refused, as a close
is while a task runs)."""


def caught_up(engine: Engine, session_id: str) -> str:
    """``session_id``, once what its lanes ran is recorded: a client that read a lane's answer and then asks
    the server sees its task (:mod:`flamepy_core.engine.lanes`)."""
    lanes = engine.lanes
    if lanes is not None:
        lanes.catch_up(session_id)
    return session_id


def lanes_taken_back(engine: Engine, session_id: str) -> str:
    """``session_id``, once its lanes are closed and what they ran recorded (before a close); INVALID_STATE,
    as for any running task, when a lane's task still runs after ``LANE_CLOSE_WAIT``."""
    if not engine.scheduler.take_lanes_back(session_id, LANE_CLOSE_WAIT):
        raise FlameError(
            FlameErrorCode.INVALID_STATE,
            f"Cannot close session with running tasks: a task of session {session_id} runs on a client's "
            "lane; wait for it to finish, then close it",
        )
    return session_id


def ext_handlers(engine: Engine, *, on_freed: Callable[[], None] = _nothing) -> dict[str, Handler]:
    """The ``flamepy.ext.v1`` tables: ``Tasks`` (faster paths for invoke and run()), ``Runtime`` (what
    the server runs, for ``flmctl top`` and ``flmctl list -e``) and ``Control`` (cancel, forced close)."""

    @borrows_request
    def run_task(data: bytes | memoryview, _ctx: CallContext, responder: Responder) -> None:
        # Read by hand: protobuf's parse and accessor copied a large input twice. ``data`` may be the
        # transport's buffer (borrowed while this runs): the engine writes a large input to its file from
        # it and copies a smaller one, and keeps no view of it (Engine.run_task).
        try:
            session_id, task_input = read_create_task_request(data)
        except ValueError as exc:
            raise _not_valid(EXT["RunTask"], exc) from None
        engine.run_task(session_id, task_input, _answer_task(responder))

    def create_tasks(r: ext_pb2.CreateTasksRequest, _ctx: CallContext, responder: Responder) -> None:
        if not r.tasks:
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "CreateTasks: the request has no task")

        def created(tasks: list[pb.Task] | None, error: FlameError | None) -> None:
            if error is not None or not tasks:
                responder.fail(error or FlameError(FlameErrorCode.INTERNAL, "CreateTasks created nothing"))
                return
            reply = ext_pb2.CreateTasksResponse(
                first_task_id=int(tasks[0].metadata.id),
                count=len(tasks),
                creation_time=tasks[0].status.creation_time,
            )
            responder.send(reply.SerializeToString())

        inputs: list[bytes | None] = []
        timed = False
        for t in r.tasks:  # (one loop, no generator: a call less per task of a run())
            inputs.append(t.input if t.HasField("input") else None)
            timed = timed or t.HasField("task_timeout")
        timeouts = None
        if timed:
            timeouts = [
                parse_task_timeout(t.task_timeout, f"CreateTasks, task {i + 1} of the request")
                if t.HasField("task_timeout")
                else None
                for i, t in enumerate(r.tasks)
            ]
        engine.submit_tasks(r.session_id, inputs, created, timeouts=timeouts)

    def watch_session(r: ext_pb2.WatchSessionRequest, ctx: CallContext, writer: StreamWriter) -> None:
        engine.watch_session(caught_up(engine, r.session_id), r.after_task_id, _watch_feed(writer, ctx, _each_reply))

    def watch_outcomes(r: ext_pb2.WatchSessionRequest, ctx: CallContext, writer: StreamWriter) -> None:
        engine.watch_session(
            caught_up(engine, r.session_id), r.after_task_id, _watch_feed(writer, ctx, outcome_messages)
        )

    def open_lane(r: ext_pb2.OpenLaneRequest) -> ext_pb2.Lane:
        lease = engine.scheduler.open_lane(r.session_id, for_runs=r.for_runs, renew=r.renew)
        return ext_pb2.Lane(
            endpoint=lease.endpoint,
            token=lease.token,
            first_task_id=lease.first,
            count=lease.end - lease.first,
            machine=this_machine(),
            log_path=str(lease.path),
            instances=(engine.instance_cap(r.session_id) or 0) if r.for_runs else 0,
        )

    def list_instances(_r: ext_pb2.ListInstancesRequest) -> ext_pb2.InstanceList:
        return ext_pb2.InstanceList(instances=[instance_message(i) for i in engine.scheduler.instances()])

    def cancel_tasks(r: ext_pb2.CancelTasksRequest, _ctx: CallContext, responder: Responder) -> None:
        # Answered once the tasks are final; a running one first has its instance stopped.
        def settle(tasks: list[pb.Task]) -> None:
            responder.send(ext_pb2.CancelTasksReply(tasks=tasks).SerializeToString())

        by = _requested_by(r.requested_by)
        caught_up(engine, r.session_id)
        if r.HasField("task_id"):
            engine.cancel_task(r.session_id, r.task_id, by, lambda task: settle([task]))
        else:
            engine.cancel_session_tasks(r.session_id, by, settle)

    def close_session(r: ext_pb2.CloseSessionRequest, ctx: CallContext) -> pb.Session:
        if not r.force:
            closed = engine.close_session(lanes_taken_back(engine, r.session_id))
        else:
            remaining = ctx.time_remaining()
            wait = FORCE_CLOSE_WAIT if remaining is None else min(remaining, FORCE_CLOSE_WAIT)
            # The lanes are closed at once; a task of theirs that still runs after a moment is cancelled
            # with the others (its instance stopped), not waited for.
            engine.scheduler.take_lanes_back(r.session_id, min(wait, FORCE_CLOSE_LANE_WAIT))
            closed = engine.force_close_session(r.session_id, _requested_by(r.requested_by), timeout=wait)
        on_freed()
        return closed

    return {
        EXT["RunTask"].path: DeferredHandler(run_task),
        EXT["WatchSession"].path: _deferred_stream(EXT["WatchSession"], watch_session),
        EXT["CreateTasks"].path: _deferred(EXT["CreateTasks"], create_tasks),
        EXT["WatchOutcomes"].path: _deferred_stream(EXT["WatchOutcomes"], watch_outcomes),
        EXT["OpenLane"].path: _unary(EXT["OpenLane"], open_lane),
        RUNTIME["ListInstances"].path: _unary(RUNTIME["ListInstances"], list_instances),
        CONTROL["CancelTasks"].path: _deferred(CONTROL["CancelTasks"], cancel_tasks),
        CONTROL["CloseSession"].path: _unary_with_context(CONTROL["CloseSession"], close_session),
    }


def maintenance_handlers(retention: Retention) -> dict[str, Handler]:
    """``flamepy.ext.v1.Runtime/CollectGarbage``: what ``flmctl gc`` asks for."""

    def collect(r: ext_pb2.CollectGarbageRequest) -> ext_pb2.CollectGarbageReply:
        if r.HasField("older_than") and not (r.older_than >= 0):  # also refuses NaN
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"older_than must be a number of seconds, 0 or more, got {r.older_than!r}",
            )
        report = retention.collect(r.older_than if r.HasField("older_than") else None)
        return ext_pb2.CollectGarbageReply(
            tasks_purged=report.tasks_purged,
            bytes_before=report.bytes_before,
            bytes_after=report.bytes_after,
            seconds=report.seconds,
            older_than=report.older_than,
            rebuilt=report.rebuilt,
        )

    return {RUNTIME["CollectGarbage"].path: _unary(RUNTIME["CollectGarbage"], collect)}
