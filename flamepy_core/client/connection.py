"""``Connection``: Flame's Frontend API over any channel, returning the public model types.

Errors keep the server's code (our server and transports carry it exactly) and read
``"failed to <verb> <noun>: <server message>"`` as Flame's do.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from flamepy_core.client.embedded import ensure_inprocess_server
from flamepy_core.client.local import ensure_local_server, live_server
from flamepy_core.client.transports import client_security_options, client_tls_options, shared_transport
from flamepy_core.config import ClientConfig, FlameClientTls, normalize_endpoint, resolve_config
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import DEFAULT_TIMEOUT, Channel, Timeout
from flamepy_core.model import (
    Application,
    ApplicationAttributes,
    SessionAttributes,
    Task,
    application_attributes_to_spec,
    application_from_proto,
    session_attributes_to_spec,
    short_name,
    task_from_proto,
)
from flamepy_core.plugins import get_registry, local_endpoint
from flamepy_core.transport_kit import unary_async, unary_read
from flamepy_core.wire.methods import CONTROL, EXT, FRONTEND, RUNTIME
from flamepy_core.wire.payload_messages import create_task_request_parts
from flamepy_core.wire.proto import ext_pb2
from flamepy_core.wire.proto import frontend_pb2 as fe
from flamepy_core.wire.proto import types_pb2 as pb

M = TypeVar("M", bound=Message)
_T = TypeVar("_T")

GC_TIMEOUT = 3600.0
"""Seconds ``collect_garbage`` waits: a store created before incremental compaction is rebuilt whole."""
CANCEL_TIMEOUT = 120.0
"""Seconds a cancel or a forced close waits for the server, which first stops the instances of running
tasks (SIGTERM, then SIGKILL after its ``shutdown_grace``)."""


class Connection:
    """A client of one Frontend endpoint. Thread-safe; cheap calls share one channel."""

    def __init__(self, addr: str, channel: Channel, *, cache_endpoint: str | None = None) -> None:
        self.addr = addr
        self.channel = channel
        self.cache_endpoint = cache_endpoint or addr
        self._last_ok = time.monotonic()
        self.recover: Callable[[], bool] | None = None
        """Set for the embedded local server: restarts it if it has gone; True when it did."""
        self.local_home: Path | None = None
        """The ``FLAME_HOME`` of the embedded local server this connection talks to (where its logs are)."""
        self.has_extensions: bool | None = None
        """Whether the server speaks flamepy.ext.v1 (None = not known yet)."""
        self.has_batches: bool | None = None
        """Whether the server has flamepy.ext.v1's CreateTasks and WatchOutcomes (None = not known yet)."""
        self.watches = TaskWatches()
        """The watchers and the pool that complete this connection's ``run()`` futures."""
        self._pid = os.getpid()

    # -- plumbing ------------------------------------------------------------------------------------

    # Calls that change nothing, or change it the same way twice, are retried once after the local
    # server was restarted; creating a task is not (the first attempt may have been stored).
    _NOT_RETRIED = frozenset({"CreateTask", "RunTask"})

    def unary(self, rpc: str, path: str, data: bytes, timeout: Timeout = DEFAULT_TIMEOUT) -> bytes:
        """One call on the channel; after the local server went away, restart it (and retry if safe)."""
        return self._recovering(rpc, lambda: self.channel.unary(path, data, timeout=timeout))

    def _recovering(self, rpc: str, call: Callable[[], _T]) -> _T:
        """``call()`` (one call of ``rpc`` on the channel); after the local server went away, restart it (and
        call again if that is safe)."""
        if rpc in self._NOT_RETRIED and self.recover is not None and time.monotonic() - self._last_ok > 1.0:
            # After a quiet spell the local server may have exited (idle exit): make sure it is there
            # before a call that cannot be repeated safely.
            self.recover()
        try:
            reply = call()
        except FlameError as exc:
            if exc.code != FlameErrorCode.UNAVAILABLE or self.recover is None or not self.recover():
                raise
            if rpc in self._NOT_RETRIED:
                raise FlameError(
                    exc.code,
                    f"{exc.message}; the local server had stopped and was restarted: check whether the task "
                    f"was created (list the session's tasks) before you submit it again",
                ) from exc
            reply = call()
        self._last_ok = time.monotonic()
        return reply

    def call(self, rpc: str, request: Message, what: str, timeout: Timeout = DEFAULT_TIMEOUT) -> Any:
        method = FRONTEND[rpc]
        try:
            raw = self.unary(rpc, method.path, request.SerializeToString(), timeout=timeout)
        except FlameError as exc:
            raise FlameError(exc.code, f"failed to {what}: {exc.message}") from exc
        return method.response.FromString(raw)

    def stream(self, rpc: str, request: Message, what: str, timeout: Timeout = None) -> Iterator[Any]:
        method = FRONTEND[rpc]
        data = request.SerializeToString()
        for attempt in (1, 2):
            received = False
            try:
                for raw in self.channel.stream(method.path, data, timeout=timeout):
                    received = True
                    yield method.response.FromString(raw)
                return
            except FlameError as exc:
                retry = (
                    attempt == 1
                    and not received
                    and exc.code == FlameErrorCode.UNAVAILABLE
                    and self.recover is not None
                    and self.recover()
                )
                if not retry:
                    raise FlameError(exc.code, f"failed to {what}: {exc.message}") from exc

    def close(self) -> None:
        self.watches.close()
        self.channel.close()

    # -- applications --------------------------------------------------------------------------------

    def register_application(self, name: str, app_attrs: ApplicationAttributes | Mapping[str, Any]) -> None:
        spec = application_attributes_to_spec(app_attrs)
        request = fe.RegisterApplicationRequest(name=name, application=spec)
        what = f"register application {name}"
        _check_result(self.call("RegisterApplication", request, what), what)

    def update_application(self, name: str, app_attrs: ApplicationAttributes | Mapping[str, Any]) -> None:
        spec = application_attributes_to_spec(app_attrs)
        request = fe.UpdateApplicationRequest(name=name, application=spec)
        what = f"update application {name}"
        _check_result(self.call("UpdateApplication", request, what), what)

    def unregister_application(self, name: str) -> None:
        what = f"unregister application {name}"
        _check_result(self.call("UnregisterApplication", fe.UnregisterApplicationRequest(name=name), what), what)

    def get_application(self, name: str) -> Application | None:
        try:
            app = self.call("GetApplication", fe.GetApplicationRequest(name=name), f"get application {name}")
        except FlameError as exc:
            if exc.code == FlameErrorCode.NOT_FOUND:
                return None
            raise
        return application_from_proto(app)

    def list_applications(self) -> list[Application]:
        reply = self.call("ListApplication", fe.ListApplicationRequest(), "list applications")
        return [application_from_proto(a) for a in reply.applications]

    def list_executors(self) -> list[pb.Executor]:
        return list(self.call("ListExecutor", fe.ListExecutorRequest(), "list executors").executors)

    def list_instances(self) -> list[ext_pb2.Instance]:
        """The server's instance processes with their application, state, session and pid.

        flamepy's ``flamepy.ext.v1.Runtime/ListInstances``; a server without it (a Flame cluster) is asked
        ``ListExecutor`` instead, whose executors carry no pid (0) and, when idle, no application.
        """
        method = RUNTIME["ListInstances"]
        try:
            raw = self.unary("ListInstances", method.path, ext_pb2.ListInstancesRequest().SerializeToString())
        except FlameError as exc:
            if exc.code != FlameErrorCode.UNIMPLEMENTED:
                raise FlameError(exc.code, f"failed to list instances: {exc.message}") from exc
            return [_instance_from_executor(e) for e in self.list_executors()]
        return list(ext_pb2.InstanceList.FromString(raw).instances)

    def collect_garbage(
        self, older_than: float | None = None, timeout: float = GC_TIMEOUT
    ) -> ext_pb2.CollectGarbageReply:
        """Have the server purge finished tasks' payloads (older than ``older_than`` s; default: its
        ``payload_retention``) and compact its store now: ``flamepy.ext.v1.Runtime/CollectGarbage``."""
        request = ext_pb2.CollectGarbageRequest()
        if older_than is not None:
            request.older_than = older_than
        method = RUNTIME["CollectGarbage"]
        try:
            raw = self.unary("CollectGarbage", method.path, request.SerializeToString(), timeout=timeout)
        except FlameError as exc:
            if exc.code == FlameErrorCode.UNIMPLEMENTED:
                raise FlameError(
                    exc.code,
                    f"failed to collect garbage: the server at {self.addr} has no such call (flamepy's own server "
                    f"has it; a Flame cluster manages its storage itself)",
                ) from exc
            raise FlameError(exc.code, f"failed to collect garbage: {exc.message}") from exc
        return ext_pb2.CollectGarbageReply.FromString(raw)

    def list_nodes(self) -> list[pb.Node]:
        return list(self.call("ListNodes", fe.ListNodesRequest(), "list nodes").nodes)

    # -- sessions ------------------------------------------------------------------------------------

    def create_session(self, attrs: SessionAttributes, *, priority: int = 0) -> Session:
        spec = session_attributes_to_spec(attrs)
        spec.priority = priority
        session_id = attrs.id or short_name(attrs.application)
        reply = self.call(
            "CreateSession", fe.CreateSessionRequest(session_id=session_id, session=spec), "create session"
        )
        return Session(self, reply)

    def open_session(self, session_id: str, spec: SessionAttributes | None = None) -> Session:
        request = fe.OpenSessionRequest(session_id=session_id)
        if spec is not None:
            request.session.CopyFrom(session_attributes_to_spec(spec))
        return Session(self, self.call("OpenSession", request, "open session"))

    def get_session(self, session_id: str) -> Session:
        return Session(self, self.call("GetSession", fe.GetSessionRequest(session_id=session_id), "get session"))

    def list_sessions(self) -> list[Session]:
        reply = self.call("ListSession", fe.ListSessionRequest(), "list sessions")
        return [Session(self, s) for s in reply.sessions]

    def close_session(self, session_id: str, force: bool = False, *, requested_by: str = "a client") -> Session:
        """Close once the tasks this connection's ``run()`` submitted to it are created (pending ones are
        then cancelled, as Flame's do: a close never overtakes a submission made before it).

        ``force``: cancel its running tasks too (their instances are stopped), then close (flamepy's
        server only); without it a session with a running task is refused, as in Flame.
        """
        self.watches.flush(session_id)
        if force:
            forced = ext_pb2.CloseSessionRequest(session_id=session_id, force=True, requested_by=requested_by)
            raw = self._control("CloseSession", forced, f"close session {session_id} by force")
            closed = Session(self, pb.Session.FromString(raw))
        else:
            request = fe.CloseSessionRequest(session_id=session_id)
            closed = Session(self, self.call("CloseSession", request, "close session"))
        self.watches.refuse(
            session_id,
            FlameError(
                FlameErrorCode.INVALID_STATE,
                f"Cannot create task in closed session {session_id}; open a new session",
            ),
        )
        return closed

    def cancel_tasks(
        self, session_id: str, task_id: str | None = None, *, requested_by: str = "a client"
    ) -> list[pb.Task]:
        """Cancel one task of a session, or (``task_id`` None) all its pending and running ones.

        Returns the tasks once final, without payloads: CANCELLED, or the state a task reached before the
        cancel could take effect. flamepy's ``flamepy.ext.v1.Control/CancelTasks``; a server without it (a
        Flame cluster) is an ``UNIMPLEMENTED`` error.
        """
        request = ext_pb2.CancelTasksRequest(session_id=session_id, requested_by=requested_by)
        if task_id is not None:
            request.task_id = task_id
            what = f"cancel task {task_id} of session {session_id}"
        else:
            what = f"cancel the tasks of session {session_id}"
        return list(ext_pb2.CancelTasksReply.FromString(self._control("CancelTasks", request, what)).tasks)

    def _control(self, rpc: str, request: Message, what: str) -> bytes:
        method = CONTROL[rpc]
        try:
            return self.unary(rpc, method.path, request.SerializeToString(), timeout=CANCEL_TIMEOUT)
        except FlameError as exc:
            if exc.code == FlameErrorCode.UNIMPLEMENTED:
                raise FlameError(
                    exc.code,
                    f"failed to {what}: the server at {self.addr} cannot cancel tasks (flame.v1 has no such call; "
                    f"flamepy's own server has it): wait for the tasks to finish instead",
                ) from exc
            raise FlameError(exc.code, f"failed to {what}: {exc.message}") from exc

    # -- tasks ---------------------------------------------------------------------------------------

    def create_task(self, session_id: str, input_data: bytes | None) -> pb.Task:
        spec = pb.TaskSpec(session_id=session_id)
        if input_data is not None:
            spec.input = input_data
        task: pb.Task = self.call("CreateTask", fe.CreateTaskRequest(task=spec), "create task")
        return task

    def get_task_message(self, session_id: str, task_id: str) -> pb.Task:
        task: pb.Task = self.call("GetTask", fe.GetTaskRequest(session_id=session_id, task_id=task_id), "get task")
        return task

    def run_task(
        self, session_id: str, input_data: bytes | None, read: Callable[[memoryview], _T], timeout: float | None = None
    ) -> _T:
        """flamepy.ext.v1 RunTask: create the task and get it back completed, in one round trip.

        The answer, the serialized ``flame.v1.Task``, goes to ``read``, for it to copy out only what it needs
        (``payload_messages.run_task_reply_parts``: protobuf copies a large output twice): it gets a buffer
        valid only while it runs (see ``kit.unary_read``), and what it returns is returned. The request goes
        as its parts: the input is not joined into one message first."""
        # By hand: protobuf would copy the input twice.
        request = create_task_request_parts(session_id, input_data)
        path = EXT["RunTask"].path
        start = time.monotonic()
        try:
            raw = self._recovering("RunTask", lambda: unary_read(self.channel, path, request, read, timeout))
        except FlameError as exc:
            # The server drops the call when our deadline passes; its CANCELLED can beat our own timer.
            timed_out = exc.code == FlameErrorCode.DEADLINE_EXCEEDED or (
                exc.code == FlameErrorCode.CANCELLED and timeout is not None and time.monotonic() - start >= timeout
            )
            if timed_out and timeout is not None:
                raise FlameError(
                    FlameErrorCode.DEADLINE_EXCEEDED,
                    f"the task of session {session_id} did not finish within {timeout} s (it keeps running)",
                ) from exc
            raise FlameError(exc.code, f"failed to run task: {exc.message}") from exc
        return raw

    def create_tasks_async(
        self, session_id: str, inputs: list[bytes | None], timeouts: list[float | None] | None = None
    ) -> Future[ext_pb2.CreateTasksResponse]:
        """flamepy.ext.v1 CreateTasks, sent now: the future completes once the tasks are committed.

        ``timeouts``, when given, holds each task's own task timeout in seconds (None: the application's).
        """
        request = ext_pb2.CreateTasksRequest(session_id=session_id)
        for i, data in enumerate(inputs):
            item = request.tasks.add()
            if data is not None:
                item.input = data
            if timeouts is not None and timeouts[i] is not None:
                item.task_timeout = timeouts[i]  # type: ignore[assignment]
        if self.recover is not None and time.monotonic() - self._last_ok > 1.0:
            self.recover()  # as for CreateTask: make sure the local server is there before a call not repeated
        sent = unary_async(self.channel, EXT["CreateTasks"].path, request.SerializeToString())
        answer: Future[ext_pb2.CreateTasksResponse] = Future()

        def settle(done: Future[bytes]) -> None:
            error = done.exception()
            if error is None:
                self._last_ok = time.monotonic()
                answer.set_result(ext_pb2.CreateTasksResponse.FromString(done.result()))
            elif isinstance(error, FlameError):
                answer.set_exception(FlameError(error.code, f"failed to create tasks: {error.message}"))
            else:
                answer.set_exception(error)

        sent.add_done_callback(settle)
        return answer

    def watch_outcomes(self, session_id: str, after_task_id: int) -> Iterator[ext_pb2.TaskOutcomes]:
        """flamepy.ext.v1 WatchOutcomes: batches of completed tasks of the session as they complete."""
        method = EXT["WatchOutcomes"]
        request = ext_pb2.WatchSessionRequest(session_id=session_id, after_task_id=max(0, after_task_id))
        try:
            for raw in self.channel.stream(method.path, request.SerializeToString(), timeout=None):
                yield ext_pb2.TaskOutcomes.FromString(raw)
        except FlameError as exc:
            raise FlameError(exc.code, f"failed to watch session {session_id}: {exc.message}") from exc

    def watch_session(self, session_id: str, after_task_id: int) -> Iterator[pb.Task]:
        """flamepy.ext.v1 WatchSession: completed tasks of the session as they complete."""
        method = EXT["WatchSession"]
        request = ext_pb2.WatchSessionRequest(session_id=session_id, after_task_id=max(0, after_task_id))
        try:
            for raw in self.channel.stream(method.path, request.SerializeToString(), timeout=None):
                yield pb.Task.FromString(raw)
        except FlameError as exc:
            raise FlameError(exc.code, f"failed to watch session {session_id}: {exc.message}") from exc

    def get_task(self, session_id: str, task_id: str) -> Task:
        reply: pb.Task = self.call("GetTask", fe.GetTaskRequest(session_id=session_id, task_id=task_id), "get task")
        return task_from_proto(reply)

    def list_tasks(self, session_id: str) -> Iterator[Task]:
        for task in self.stream("ListTask", fe.ListTaskRequest(session_id=session_id), "list tasks"):
            yield task_from_proto(task)

    def watch_task(self, session_id: str, task_id: str) -> Iterator[pb.Task]:
        """Raw task snapshots as the task changes; no deadline (a task may run for hours)."""
        return self.stream(
            "WatchTask", fe.WatchTaskRequest(session_id=session_id, task_id=task_id), "watch task", timeout=None
        )


def _instance_from_executor(executor: pb.Executor) -> ext_pb2.Instance:
    instance = ext_pb2.Instance(id=executor.metadata.id, state=executor.status.state)
    name = executor.metadata.name
    if "/" in name:  # a flamepy server names its executors "<application>/<instance id>"
        instance.application = name.split("/", 1)[0]
    if executor.status.HasField("session_id"):
        instance.session_id = executor.status.session_id
    return instance


_IN_BAND_CODES = (
    ("already exist", FlameErrorCode.ALREADY_EXISTS),
    ("not found", FlameErrorCode.NOT_FOUND),
    ("open session", FlameErrorCode.INVALID_STATE),
)


def _check_result(result: pb.Result, what: str) -> None:
    """Flame's server refuses register/update/unregister in-band (``return_code`` -1 with a message).

    Our server answers with a status instead, but a Flame cluster does not: without this check a refused
    registration would pass silently. The code is read from Flame's message where it says it plainly.
    """
    if result.return_code == 0:
        return
    message = result.message or "the server refused it without a message"
    lowered = message.lower()
    code = next((c for text, c in _IN_BAND_CODES if text in lowered), FlameErrorCode.INTERNAL)
    raise FlameError(code, f"failed to {what}: {message}")


def connect(addr: str, tls_config: FlameClientTls | None = None) -> Connection:
    """A connection to a Frontend endpoint: a URL whose scheme picks the transport, or a bare socket path.

    An endpoint whose transport declares security (TLS on ``https://``/``grpcs://``, CURVE...) gets the
    configured client settings (:func:`~flamepy_core.client.transports.client_security_options`). For TLS,
    the server is verified with ``tls_config.ca_file``, else the configured CA (``flame.yaml``
    ``tls.ca_file``, then ``FLAME_CA_FILE``), else gRPC's default roots; for mutual TLS the client
    certificate is ``tls_config.cert_file`` and ``key_file``, else ``FLAME_CLIENT_CERT_FILE`` and
    ``FLAME_CLIENT_KEY_FILE``. ``tls_config`` is ignored for plain endpoints.
    """
    endpoint = get_registry().endpoint_url(normalize_endpoint(addr))
    options = client_tls_options(
        endpoint,
        ca_file=getattr(tls_config, "ca_file", None),
        cert_file=getattr(tls_config, "cert_file", None),
        key_file=getattr(tls_config, "key_file", None),
    )
    return _connect(endpoint, options)


def _connect(endpoint: str, security_options: dict[str, Any]) -> Connection:
    transport = shared_transport(endpoint, None, **security_options)
    return Connection(endpoint, transport.connect(endpoint))


def local_endpoint_for(config: ClientConfig) -> str:
    """The endpoint of the runtime for ``config``'s home when no endpoint is configured, starting it if needed.

    The configured transport (``FLAME_TRANSPORT``, ``flame.yaml`` ``transport:``) or the local default: an
    in-process one runs the runtime inside this process; any other runs it as the home's server process,
    which must listen on a private local endpoint (``local_schemes``). A name that is not installed, or a
    transport that cannot do this, is refused here, before anything starts.
    """
    registry = get_registry()
    chosen = registry.transport_spec(config.transport) if config.transport else registry.local_default()
    if chosen.spec.capabilities.in_process:
        endpoint = local_endpoint(registry.create_transport(chosen), config.home, "flame")
        ensure_inprocess_server(endpoint, config.home)
        return endpoint
    registry.require(chosen, "local_schemes", "to run the local server (it listens on a private socket in FLAME_HOME)")
    origin = config.source.get("transport", "default") if config.transport else None
    return ensure_local_server(config.home, transport=config.transport, asked_by=origin)


def connect_config(config: ClientConfig) -> Connection:
    """A connection for a resolved configuration: its endpoint, or the local runtime for its home."""
    registry = get_registry()
    if config.endpoint is None:
        endpoint = local_endpoint_for(config)
    else:
        endpoint = registry.endpoint_url(config.endpoint)
        if registry.transport_spec_for_endpoint(endpoint).spec.capabilities.in_process:
            ensure_inprocess_server(endpoint, config.home)
    conn = _connect(endpoint, client_security_options(endpoint, config))
    if config.cache_endpoint:
        conn.cache_endpoint = registry.endpoint_url(config.cache_endpoint)
    if config.endpoint is None and not registry.transport_spec_for_endpoint(endpoint).spec.capabilities.in_process:
        conn.recover = partial(_restart_local_server, conn, config)
        conn.local_home = config.home
    return conn


def _restart_local_server(conn: Connection, config: ClientConfig) -> bool:
    """Start the local server again if it has gone (idle exit, crash, ``flmctl server stop``)."""
    if live_server(config.home):
        return False  # it is there: the error was real
    endpoint = ensure_local_server(config.home, transport=config.transport)
    if endpoint != conn.addr:  # a TCP fallback listens on a new port each time
        conn.channel.close()
        conn.channel = shared_transport(endpoint).connect(endpoint)
        conn.addr = conn.cache_endpoint = endpoint
    return True


_default_lock = threading.Lock()
_default: Connection | None = None


def default_connection() -> Connection:
    """The process's connection, from the configuration; with nothing configured, the local server.

    Rebuilt after ``fork()`` (a channel must not cross processes) and after :func:`reset_default_connection`.
    """
    global _default
    conn = _default
    if conn is not None and conn._pid == os.getpid():
        return conn
    with _default_lock:
        if _default is not None and _default._pid == os.getpid():
            return _default
        conn = connect_config(resolve_config())
        _default = conn
        return conn


def reset_default_connection() -> None:
    """Forget the process's connection (tests; after changing FLAME_* variables)."""
    global _default
    with _default_lock:
        if _default is not None and _default._pid == os.getpid():
            _default.close()
        _default = None


from flamepy_core.client.session import Session, TaskWatches  # noqa: E402  (they need Connection's module loaded)
