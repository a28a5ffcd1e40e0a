"""``ServiceTests``: the service contract, end to end, over the transport and serializer under test.

Where :class:`~flamepy_conformance.TransportTests` proves that bytes cross a transport and
:class:`~flamepy_conformance.SerializerTests` that values survive a serializer, this suite proves that the
*runtime* built on them keeps the promises of the public API: a :class:`flamepy.service.Session` created
with or without a context, reopened by id, invoked one task at a time or from several threads at once,
its context updated by the service and read by the client, errors arriving with their code and text,
the object cache's versions, and closing. A plugin author runs it in ten lines::

    from flamepy_conformance import ServiceTests

    class TestMyTransportService(ServiceTests):
        transport_name = "mytcp"          # the server's transport (installed: found by its URL scheme)
        serializer_name = "cloudpickle"   # requests, results and context go through it

How the runtime is built (once per test class): a transport that declares ``cross_process`` gets a
private server *process* for a temporary ``FLAME_HOME``, listening on that transport (and linked to its
instances with it when it offers a local socket scheme), so every instance is a real process; one that
does not (``inmem``) gets the engine *inside the test process* with in-process instances
(:mod:`flamepy_core.engine.inprocess`). The suite writes a model service to a temporary folder, registers
it, points this process's default connection at the server and restores everything afterwards.

What is checked, against a plain in-memory model of the expected behaviour (results compared by value,
errors by code): the deterministic tests each pin one promise, so a broken runtime fails the test that
names what broke. Among them: a context update is visible to every reader as soon as the task that made
it has returned; ``invoke(timeout=...)`` raises ``DEADLINE_EXCEEDED`` after the timeout while the task runs
on; a ``close()`` refused because a task runs is reported (``INVALID_STATE``) and leaves the session open;
a failed task's message and traceback arrive whole up to the runtime's failure-text limit
(:data:`flamepy_core.failure_text.MAX_FAILURE_TEXT`), and longer ones keep their head and tail.
:class:`ServiceMachine` then drives everything in random orders (hypothesis stateful testing) and shrinks
a failure to the shortest sequence of calls. Optional behaviour is gated on the transport's declared
capabilities (``Session.run()`` futures need ``streaming``) and skips, naming the capability, when it is
not declared.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

import flamepy
from flamepy.service import Session
from flamepy_core.client.connection import reset_default_connection
from flamepy_core.client.transports import shared_transport
from flamepy_core.contracts.bounds import DEADLINE_RESOLUTION_S, PROMPT_FAILURE_S
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import TransportSpec
from flamepy_core.engine.server import FlameServer
from flamepy_core.failure_text import MAX_FAILURE_TEXT
from flamepy_core.home import read_server_info
from flamepy_core.model import ApplicationAttributes
from flamepy_core.objref import ObjectRef
from flamepy_core.plugins import get_registry

MODEL_SERVICE = '''\
"""The flamepy conformance suite's model service: each request is a dict naming an operation."""

import time

from flamepy.service import FlameInstance

ins = FlameInstance(serializer={serializer!r})


def _level_three(message):
    raise ValueError(message)


def _level_two(message):
    _level_three(message)


def _level_one(message):
    _level_two(message)


@ins.entrypoint
def handle(req):
    op = req["op"]
    if op == "echo":
        return {{"echo": req["value"]}}
    if op == "sleep":
        time.sleep(req["seconds"])
        return {{"echo": req["value"]}}
    if op == "append":
        history = ins.context() or []
        history.append(req["value"])
        ins.update_context(history)
        return {{"length": len(history)}}
    if op == "context":
        return {{"context": ins.context()}}
    if op == "fail":
        raise ValueError(req["message"])
    if op == "fail_deep":  # three frames deep, so the traceback has something to show
        _level_one(req["message"])
    raise KeyError(f"unknown operation {{op!r}}")


if __name__ == "__main__":
    ins.run()
'''
"""The service the suite registers (``{serializer!r}`` is filled in). Pure functions of the request and
the session context, so the model can predict every answer."""

SERVICE_FILE = "conformance_service.py"

FAST_SETTINGS: Mapping[str, str] = {
    "FLAME_INSTANCE_START_TIMEOUT": "30",
    "FLAME_SESSION_ENTER_TIMEOUT": "30",
    "FLAME_SHUTDOWN_GRACE": "2",
    "FLAME_TASK_RETRY_LIMIT": "1",
    "FLAME_INSTANCE_START_RETRY_LIMIT": "1",
    "FLAME_HEARTBEAT_INTERVAL": "0.2",
}
"""Runtime settings for the suite's server: a failure path must take seconds, not the default minutes."""

_CLIENT_ENV = ("FLAME_ENDPOINT", "FLAME_CACHE_ENDPOINT", "FLAME_HOME", "FLAME_TRANSPORT", "FLAME_SERIALIZER")
"""Variables the suite sets (or clears) in the test process for the life of a runtime, then restores."""


# -- values ------------------------------------------------------------------------------------------------


def service_values() -> st.SearchStrategy[Any]:
    """Values the suite sends through the service: plain data every bundled serializer domain carries.

    Deliberately modest (no floats, no tuples, small ints): the serializer suite proves a domain; this
    suite proves the runtime delivers values, contexts and answers to the right place.
    """
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**31), max_value=2**31 - 1)
        | st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=6,
    )


def failure_messages() -> st.SearchStrategy[str]:
    """Messages the model service raises: must reach the client verbatim, inside the failure text."""
    return st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=30)


def _printable_text(length: int) -> str:
    """``length`` characters of every UTF-8 width, spaces and newlines, none the runtime escapes."""
    pattern = "Flame ✓ 日本語 🔥 é\n"
    return (pattern * (length // len(pattern) + 1))[:length]


# -- the runtime under test --------------------------------------------------------------------------------


def _short_temp_root() -> str:
    # AF_UNIX paths (the server's socket lives in FLAME_HOME) must stay under ~100 characters.
    root = tempfile.gettempdir()
    return "/tmp" if len(root) > 40 and os.path.isdir("/tmp") else root


class ServiceRuntime:
    """A server on the transport under test, the model application registered on it, and the client
    environment of this process pointing at it. One per test class; :meth:`close` undoes everything."""

    def __init__(
        self,
        transport_name: str,
        serializer_name: str,
        *,
        startup_timeout: float = 60.0,
        delay_release: int = 30,
        max_open_sessions: int = 3,
        session_instances: int = 2,
    ) -> None:
        self.transport_name = transport_name
        self.serializer_name = serializer_name
        self.startup_timeout = startup_timeout
        self.delay_release = delay_release
        self.max_open_sessions = max_open_sessions
        """How many sessions a test keeps open at once. An instance stays bound to its session until the
        session closes, so sessions beyond the application's instances would wait (as Flame's do)."""
        self.session_instances = session_instances
        """``max_instances`` of each session: two, so concurrent tasks of one session overlap."""
        self.spec: TransportSpec = get_registry().transport_spec(transport_name).spec
        self.in_process = not self.spec.capabilities.cross_process
        """No cross-process transport: the engine and its instances run in this process."""
        self.home = Path(tempfile.mkdtemp(prefix="fsvc-", dir=_short_temp_root()))
        self.app = f"conformance-{uuid.uuid4().hex[:8]}"
        self.endpoint = ""
        self._server: FlameServer | None = None
        self._inmem_endpoint: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._saved_env: dict[str, str | None] = {}

    @property
    def streaming(self) -> bool:
        return self.spec.capabilities.streaming

    @property
    def mode(self) -> str:
        """``"in-process"`` or ``"process"``: where the engine and its instances run."""
        return "in-process" if self.in_process else "process"

    # -- start and stop ----------------------------------------------------------------------------------

    def listen_endpoint(self) -> str:
        """Where the server listens: a socket in FLAME_HOME when the transport has a local scheme."""
        schemes = self.spec.schemes
        if "inmem" in schemes:
            return f"inmem://flamepy-conformance-{uuid.uuid4().hex[:12]}"
        if "zmq+ipc" in schemes:
            return f"zmq+ipc://{self.home}/flame.ipc"
        if "unix" in schemes:
            return f"unix://{self.home}/flame.sock"
        return f"{schemes[0]}://127.0.0.1:0"

    def start(self) -> None:
        try:
            self._set_env(FLAME_HOME=str(self.home), FLAME_SERIALIZER=self.serializer_name, **FAST_SETTINGS)
            if self.in_process:
                self._start_in_process()
            else:
                self._start_process()
            self._set_env(FLAME_ENDPOINT=self.endpoint)
            reset_default_connection()
            self._register()
        except BaseException:
            self.close()
            raise

    def _set_env(self, **values: str) -> None:
        for name in [*_CLIENT_ENV, *values]:
            if name not in self._saved_env:
                self._saved_env[name] = os.environ.get(name)
                os.environ.pop(name, None)
        os.environ.update(values)

    def _start_in_process(self) -> None:
        listen = self.listen_endpoint()
        if listen.startswith("inmem://"):
            # The embedded inmem server: the same one a client of FLAME_ENDPOINT=inmem://... would start.
            from flamepy_core.engine.embedded import ensure_inprocess_server

            self._inmem_endpoint = listen
            self._server = ensure_inprocess_server(listen, self.home, instance_mode="inprocess")
        else:
            self._server = FlameServer(
                self.home,
                listen,
                publish=False,
                frontend_transport=shared_transport(listen),
                instance_mode="inprocess",
            ).start()
        self.endpoint = self._server.endpoint

    def server_argv(self) -> list[str]:
        """The private server's command line (override for a transport that needs other options)."""
        local = {"unix", "zmq+ipc"} & set(self.spec.schemes)
        return [
            sys.executable, "-m", "flamepy_core.engine", "--home", str(self.home),
            "--listen", self.listen_endpoint(),
            "--instance-transport", self.transport_name if local else "auto",
            "--idle-exit", "300",  # insurance: a server orphaned by a killed test run exits by itself
        ]  # fmt: skip

    def _start_process(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
        env.update(FAST_SETTINGS)
        env["FLAME_HOME"] = str(self.home)
        log_path = self.home / "server-under-test.log"
        with open(log_path, "wb") as log:
            self._process = subprocess.Popen(
                self.server_argv(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            info = read_server_info(self.home)
            if info and info.get("pid") == self._process.pid:
                self.endpoint = str(info["endpoint"])
                return
            if self._process.poll() is not None:
                break
            time.sleep(0.02)
        tail = log_path.read_text(errors="replace")[-3000:]
        raise AssertionError(
            f"the {self.transport_name} server for the service suite did not start within "
            f"{self.startup_timeout} s (exit code {self._process.poll()}); its log ends with:\n{tail}"
        )

    def _register(self) -> None:
        folder = self.home / "app"
        folder.mkdir()
        (folder / SERVICE_FILE).write_text(MODEL_SERVICE.format(serializer=self.serializer_name), encoding="utf-8")
        flamepy.register_application(
            self.app,
            ApplicationAttributes(
                command=sys.executable,
                arguments=[SERVICE_FILE],
                working_directory=str(folder),
                environments={"FLAME_SERIALIZER": self.serializer_name},
                max_instances=self.max_open_sessions * self.session_instances,
                delay_release=self.delay_release,
            ),
        )

    def close(self) -> None:
        """Stop the server (and so its instances), restore the environment, remove FLAME_HOME."""
        with contextlib.suppress(Exception):
            reset_default_connection()
        if self._inmem_endpoint is not None:
            from flamepy_core.engine.embedded import stop_inprocess_server

            stop_inprocess_server(self._inmem_endpoint)
            self._inmem_endpoint = None
        elif self._server is not None:
            self._server.stop()
        self._server = None
        if self._process is not None:
            _stop_process(self._process)
            self._process = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}
        with contextlib.suppress(Exception):
            reset_default_connection()
        shutil.rmtree(self.home, ignore_errors=True)


def _stop_process(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM (the server stops its instances), then SIGKILL of the whole group after ``grace``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5.0)


# -- the model ---------------------------------------------------------------------------------------------


@dataclass
class ModelSession:
    """What the client should see of one session."""

    id: str
    context: list[Any] | None
    """The context as the service last stored it; None for a session created without one."""
    open: bool = True
    succeeded: int = 0
    failed: int = 0


@dataclass
class Handle:
    """One client ``Session`` object; several may name the same session (reopened by id)."""

    session: ModelSession
    client: Session
    closed: bool = False
    """``close()`` was called on this object: it refuses every call with RuntimeError."""

    def __repr__(self) -> str:
        return f"Handle({self.session.id}{', closed' if self.closed else ''})"


@dataclass
class ModelObject:
    """An object in the cache: base value, patches in order, current version."""

    ref: ObjectRef
    base: Any
    patches: list[Any] = field(default_factory=list)
    version: int = 1

    def __repr__(self) -> str:
        return f"ModelObject({self.ref.key} v{self.version})"


def _with_patches(base: Any, patches: list[Any]) -> list[Any]:
    """The deserializer the suite passes to ``get_object``: the base then each patch, in order."""
    return [base, *patches]


def expect_flame_error(code: FlameErrorCode, call: Callable[[], object], what: str) -> FlameError:
    """Run ``call``: it must raise ``FlameError(code)``; anything else fails with what happened instead."""
    try:
        result = call()
    except FlameError as err:
        assert err.code == code, f"{what}: expected FlameError({code.name}), got FlameError({err.code.name}): {err}"
        return err
    except Exception as exc:
        raise AssertionError(f"{what}: expected FlameError({code.name}), got {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"{what}: expected FlameError({code.name}), but it returned {result!r}")


def expect_closed_handle(call: Callable[[], object], what: str) -> None:
    """A closed ``Session`` object refuses calls with RuntimeError, before anything is sent."""
    try:
        result = call()
    except RuntimeError:
        return
    except Exception as exc:
        raise AssertionError(f"{what}: expected RuntimeError from a closed Session, got {exc!r}") from exc
    raise AssertionError(f"{what}: expected RuntimeError from a closed Session, but it returned {result!r}")


class ServiceClient:
    """What the tests and the machine share: calls to the model service and their expected outcomes."""

    def __init__(self, runtime: ServiceRuntime, *, invoke_timeout: float = 60.0) -> None:
        self.runtime = runtime
        self.invoke_timeout = invoke_timeout
        self._count_lock = threading.Lock()  # the model's counters are bumped from concurrent callers

    def create(self, ctx: list[Any] | None) -> Handle:
        runtime = self.runtime
        client = Session(
            runtime.app, ctx=ctx, serializer=runtime.serializer_name, max_instances=runtime.session_instances
        )
        sid = client.id()
        assert sid and sid.startswith(self.runtime.app), f"new session id {sid!r} does not name the application"
        model = ModelSession(sid, None if ctx is None else list(ctx))
        handle = Handle(model, client)
        self.check_client_context(handle)
        return handle

    def reopen(self, session: ModelSession) -> Handle | None:
        """A second ``Session`` object for ``session``; a closed session refuses with INVALID_STATE."""
        if not session.open:
            expect_flame_error(
                FlameErrorCode.INVALID_STATE,
                lambda: Session(session_id=session.id),
                f"reopening closed session {session.id}",
            )
            return None
        client = Session(session_id=session.id)
        assert client.id() == session.id, f"reopened {session.id}, got a Session for {client.id()}"
        assert client.name == self.runtime.app, f"reopened {session.id}: application {client.name!r}"
        handle = Handle(session, client)
        self.check_client_context(handle)
        return handle

    def call(self, handle: Handle, request: dict[str, Any], expected: Any, what: str) -> None:
        """Invoke ``request`` on ``handle`` and compare with ``expected`` (or the error the model predicts)."""
        if handle.closed:
            expect_closed_handle(lambda: handle.client.invoke(request, timeout=self.invoke_timeout), what)
            return
        if not handle.session.open:
            expect_flame_error(
                FlameErrorCode.INVALID_STATE,
                lambda: handle.client.invoke(request, timeout=self.invoke_timeout),
                f"{what} on closed session {handle.session.id}",
            )
            return
        got = handle.client.invoke(request, timeout=self.invoke_timeout)
        with self._count_lock:
            handle.session.succeeded += 1
        assert got == expected, f"{what} in session {handle.session.id}: expected {expected!r}, got {got!r}"

    def echo(self, handle: Handle, value: Any) -> None:
        self.call(handle, {"op": "echo", "value": value}, {"echo": value}, f"echo {value!r}")

    def append(self, handle: Handle, value: Any) -> None:
        """The service appends ``value`` to the context; the client then reads the same context."""
        session = handle.session
        usable = not handle.closed and session.open
        if usable and session.context is not None:
            session.context.append(value)
        length = 1 if session.context is None else len(session.context)
        self.call(handle, {"op": "append", "value": value}, {"length": length}, f"append {value!r} to the context")
        if usable:
            self.check_client_context(handle)

    def service_context(self, handle: Handle) -> None:
        expected = {"context": handle.session.context}
        self.call(handle, {"op": "context"}, expected, "read the context in the service")

    def check_client_context(self, handle: Handle) -> None:
        if handle.closed:
            expect_closed_handle(handle.client.context, "context() of a closed Session")
            return
        got = handle.client.context()
        expected = handle.session.context
        assert got == expected, (
            f"session.context() of {handle.session.id}: expected {expected!r} (what the service stored), got {got!r}"
        )

    def fail(self, handle: Handle, message: str) -> None:
        """A service that raises: the client gets FlameError(INTERNAL) carrying the exception's text."""
        request = {"op": "fail", "message": message}
        what = f"a task raising ValueError({message!r})"
        if handle.closed or not handle.session.open:
            self.call(handle, request, None, what)
            return
        err = expect_flame_error(
            FlameErrorCode.INTERNAL, lambda: handle.client.invoke(request, timeout=self.invoke_timeout), what
        )
        handle.session.failed += 1
        assert f"ValueError: {message}" in err.message, f"{what}: the error does not carry it: {err.message!r}"

    def concurrently(self, handle: Handle, values: list[Any], delays: list[float]) -> None:
        """Invoke from one thread per value at once; each thread must get its own answer (or error)."""

        def one(index: int) -> None:
            value = [index, values[index]]
            self.call(
                handle,
                {"op": "sleep", "seconds": delays[index % len(delays)], "value": value},
                {"echo": value},
                f"concurrent call {index} of {len(values)}",
            )

        with ThreadPoolExecutor(max_workers=len(values), thread_name_prefix="flamepy-service-suite") as pool:
            for future in [pool.submit(one, i) for i in range(len(values))]:
                future.result(timeout=self.invoke_timeout + 10)

    def futures(self, handle: Handle, values: list[Any]) -> None:
        """``Session.run()``: submit every value, then each future holds its own answer."""
        requests = [{"op": "echo", "value": [i, v]} for i, v in enumerate(values)]
        if handle.closed:
            expect_closed_handle(lambda: handle.client.run(requests[0]), "run() on a closed Session")
            return
        if not handle.session.open:
            expect_flame_error(
                FlameErrorCode.INVALID_STATE,
                lambda: handle.client.run(requests[0]),
                f"run() on closed session {handle.session.id}",
            )
            return
        pending = [handle.client.run(r) for r in requests]
        # Every future settles before any is judged, so a failure leaves no task running behind it.
        answers = [future.result(timeout=self.invoke_timeout) for future in pending]
        handle.session.succeeded += len(answers)
        for request, got in zip(requests, answers, strict=True):
            expected = {"echo": request["value"]}
            assert got == expected, f"run({request!r}): the future holds {got!r}, expected {expected!r}"

    def close_quietly(self, handle: Handle) -> None:
        """Close after a test, even a failed one, waiting out tasks still running (a session with running
        tasks refuses to close): a session left open would keep its instances from the next test."""
        deadline = time.monotonic() + self.invoke_timeout
        while True:
            try:
                handle.client.close()
                return
            except FlameError as exc:
                if exc.code != FlameErrorCode.INVALID_STATE or time.monotonic() > deadline:
                    return
            except Exception:
                return
            time.sleep(0.05)

    def close(self, handle: Handle) -> None:
        """Close (idempotent on the object; a session closed through another object closes quietly)."""
        handle.client.close()
        handle.closed = True
        handle.session.open = False

    def check_counters(self, session: ModelSession) -> None:
        """``flamepy.get_session(id)``: fresh counters must equal the model's, nothing left pending."""
        got = flamepy.get_session(session.id)
        counts = (got.succeed, got.failed, got.pending, got.running)
        expected = (session.succeeded, session.failed, 0, 0)
        assert counts == expected, (
            f"get_session({session.id!r}) (succeed, failed, pending, running): expected {expected}, got {counts}"
        )
        state = "OPEN" if session.open else "CLOSED"
        assert got.state.name == state, f"get_session({session.id!r}).state: expected {state}, got {got.state.name}"

    # -- the object cache ------------------------------------------------------------------------------

    def put(self, session_id: str, value: Any) -> ModelObject:
        """``put_object`` under ``<app>/<session_id>`` (the cache checks the key's form, not the session)."""
        prefix = f"{self.runtime.app}/{session_id}"
        ref = flamepy.put_object(prefix, value)
        assert ref.key.startswith(prefix + "/"), f"put_object({prefix!r}): key {ref.key!r} is not under it"
        assert ref.version == 1, f"put_object: a new object is version 1, got {ref.version}"
        obj = ModelObject(ref, value)
        self.check_object(obj)
        return obj

    def patch(self, obj: ModelObject, delta: Any) -> None:
        ref = flamepy.core.patch_object(obj.ref, delta)
        obj.patches.append(delta)
        obj.version += 1
        assert ref.version == obj.version, f"patch_object({obj.ref.key}): expected version {obj.version}, got {ref}"
        obj.ref = ref

    def update(self, obj: ModelObject, value: Any) -> None:
        ref = flamepy.update_object(obj.ref, value)
        obj.base, obj.patches = value, []
        obj.version += 1
        assert ref.version == obj.version, f"update_object({obj.ref.key}): expected version {obj.version}, got {ref}"
        obj.ref = ref

    def check_object(self, obj: ModelObject) -> None:
        plain = flamepy.get_object(obj.ref)
        assert plain == obj.base, f"get_object({obj.ref.key}) v{obj.version}: expected {obj.base!r}, got {plain!r}"
        merged = flamepy.get_object(obj.ref, deserializer=_with_patches)
        expected = [obj.base, *obj.patches]
        assert merged == expected, (
            f"get_object({obj.ref.key}, deserializer) v{obj.version}: expected base + patches {expected!r}, "
            f"got {merged!r}"
        )


# -- the state machine -------------------------------------------------------------------------------------


class ServiceMachine(RuleBasedStateMachine):
    """Sessions, tasks, contexts, objects and closing in any order, each step checked against the model.

    Takes the system under test as an argument: run it with
    ``run_state_machine_as_test(lambda: ServiceMachine(runtime), settings=...)``. Every session it
    creates gets a fresh id, so examples never see each other's sessions on the shared server; the ones
    left open are closed at teardown, which keeps instances warm for the next example. At most
    ``runtime.max_open_sessions`` are open at once, within the application's instances: an instance stays
    bound to its session until it closes, so a session past that number would rightly wait for one.
    """

    handles = Bundle("handles")
    objects = Bundle("objects")

    def __init__(self, runtime: ServiceRuntime, *, invoke_timeout: float = 60.0, concurrency: int = 4) -> None:
        super().__init__()
        self.client = ServiceClient(runtime, invoke_timeout=invoke_timeout)
        self.streaming = runtime.streaming
        self.concurrency = max(2, concurrency)
        self.sessions: list[ModelSession] = []
        self.open_handles: list[Handle] = []
        self.unknown = 0

    def _track(self, handle: Handle) -> Handle:
        if handle.session not in self.sessions:
            self.sessions.append(handle.session)
        self.open_handles.append(handle)
        return handle

    # Each example starts with a session that has a context and an object, so the rules that need them
    # (context updates, patches, updates) get to run within a few steps.

    @initialize(target=handles, ctx=st.lists(service_values(), max_size=3))
    def first_session(self, ctx: list[Any]) -> Handle:
        return self._track(self.client.create(ctx))

    @initialize(target=objects, value=service_values())
    def first_object(self, value: Any) -> ModelObject:
        return self.client.put(f"{self.client.runtime.app}-objects", value)

    def _room(self) -> bool:
        return sum(s.open for s in self.sessions) < self.client.runtime.max_open_sessions

    @precondition(_room)
    @rule(target=handles, ctx=st.lists(service_values(), max_size=3))
    def create_with_context(self, ctx: list[Any]) -> Handle:
        return self._track(self.client.create(ctx))

    @precondition(_room)
    @rule(target=handles)
    def create_without_context(self) -> Handle:
        return self._track(self.client.create(None))

    @rule(target=handles, handle=handles)
    def reopen_by_id(self, handle: Handle) -> Any:
        reopened = self.client.reopen(handle.session)
        return multiple() if reopened is None else self._track(reopened)

    @rule()
    def reopen_unknown_id(self) -> None:
        self.unknown += 1
        sid = f"{self.client.runtime.app}-nosuch{self.unknown}"
        expect_flame_error(FlameErrorCode.NOT_FOUND, lambda: Session(session_id=sid), f"reopening unknown {sid}")

    @rule(handle=handles, value=service_values())
    def invoke_echo(self, handle: Handle, value: Any) -> None:
        self.client.echo(handle, value)

    @rule(
        handle=handles,
        values=st.lists(service_values(), min_size=2, max_size=4),
        delays=st.lists(st.sampled_from([0.0, 0.005, 0.02]), min_size=1, max_size=4),
    )
    def invoke_concurrently(self, handle: Handle, values: list[Any], delays: list[float]) -> None:
        self.client.concurrently(handle, values[: self.concurrency], delays)

    @precondition(lambda self: self.streaming)
    @rule(handle=handles, values=st.lists(service_values(), min_size=1, max_size=3))
    def run_futures(self, handle: Handle, values: list[Any]) -> None:
        self.client.futures(handle, values)

    @rule(handle=handles, value=service_values())
    def append_to_context(self, handle: Handle, value: Any) -> None:
        self.client.append(handle, value)

    @rule(handle=handles)
    def read_context(self, handle: Handle) -> None:
        self.client.service_context(handle)
        self.client.check_client_context(handle)

    @rule(handle=handles, message=failure_messages())
    def invoke_failing(self, handle: Handle, message: str) -> None:
        self.client.fail(handle, message)

    @rule(target=objects, handle=handles, value=service_values())
    def put_object(self, handle: Handle, value: Any) -> ModelObject:
        return self.client.put(handle.session.id, value)

    @rule(obj=objects, delta=service_values())
    def patch_object(self, obj: ModelObject, delta: Any) -> None:
        self.client.patch(obj, delta)
        self.client.check_object(obj)

    @rule(obj=objects, value=service_values())
    def update_object(self, obj: ModelObject, value: Any) -> None:
        self.client.update(obj, value)
        self.client.check_object(obj)

    @rule(obj=objects)
    def get_object(self, obj: ModelObject) -> None:
        self.client.check_object(obj)

    @rule(handle=handles)
    def close(self, handle: Handle) -> None:
        self.client.close(handle)
        if handle in self.open_handles:
            self.open_handles.remove(handle)

    @invariant()
    def counters_match_the_model(self) -> None:
        for session in self.sessions:
            self.client.check_counters(session)

    def teardown(self) -> None:
        for handle in self.open_handles:
            self.client.close_quietly(handle)


# -- the suite ---------------------------------------------------------------------------------------------


class ServiceTests:
    """The service conformance suite. Subclass it as ``Test...`` and set :attr:`transport_name`.

    One runtime (:class:`ServiceRuntime`) serves every test of the class; each test makes sessions of
    its own. Class attributes tune the run without touching the tests.
    """

    __flamepy_conformance__: ClassVar[bool] = True
    """Lets the pytest plugin mark the items of subclasses without importing this module."""

    transport_name: ClassVar[str | None] = None
    """The server's transport (registry name); ``None`` = take it from ``--flamepy-transport``."""
    serializer_name: ClassVar[str | None] = None
    """The serializer of requests, results and context; ``None`` = ``--flamepy-serializer``, else cloudpickle."""
    max_examples: ClassVar[int] = 5
    """Hypothesis examples per property and stateful test (``--flamepy-max-examples`` overrides)."""
    stateful_steps: ClassVar[int] = 15
    """Steps per example of the state machine."""
    invoke_timeout: ClassVar[float] = 60.0
    """Bound of every wait for a task: a runtime that loses a task fails instead of hanging."""
    startup_timeout: ClassVar[float] = 60.0
    concurrency: ClassVar[int] = 4
    """Threads invoking one session at once."""
    slow_task_s: ClassVar[float] = 1.5
    """How long the task runs that a short ``invoke`` timeout and a refused ``close`` meet."""
    short_invoke_timeout_s: ClassVar[float] = 0.3
    """The ``invoke(timeout=...)`` set on that task."""
    shrink_failures: ClassVar[bool] = True
    """Shrink a failing example to the shortest one (hypothesis's shrink phase). Shrinking a stateful
    failure replays hundreds of examples (tens of seconds); False reports the first failure as found."""

    runtime: ServiceRuntime
    client: ServiceClient
    _flamepy_config: pytest.Config | None = None

    # -- hooks -----------------------------------------------------------------------------------------

    @classmethod
    def make_runtime(cls, transport_name: str, serializer_name: str) -> ServiceRuntime:
        """The runtime the class's tests run against (override to customise :class:`ServiceRuntime`)."""
        return ServiceRuntime(transport_name, serializer_name, startup_timeout=cls.startup_timeout)

    # -- plumbing --------------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def flamepy_service_runtime(cls, request: pytest.FixtureRequest) -> Iterator[ServiceRuntime]:
        """One server per test class, stopped (and the environment restored) after its last test."""
        config = request.config
        transport = cls.transport_name or config.getoption("flamepy_transport", None)
        if not transport:
            pytest.fail(f"{cls.__name__}: set transport_name = 'NAME' or run pytest with --flamepy-transport NAME")
        serializer = cls.serializer_name or config.getoption("flamepy_serializer", None) or "cloudpickle"
        domain = get_registry().serializer(serializer).domain
        if domain == "bytes":
            pytest.skip(
                f"serializer {serializer} has the value domain 'bytes': it cannot carry the model "
                f"service's dict requests"
            )
        runtime = cls.make_runtime(transport, serializer)
        runtime.start()
        try:
            yield runtime
        finally:
            runtime.close()

    @pytest.fixture(autouse=True)
    def _flamepy_service_setup(self, request: pytest.FixtureRequest, flamepy_service_runtime: ServiceRuntime) -> None:
        self._flamepy_config = request.config
        self.runtime = flamepy_service_runtime
        self.client = ServiceClient(flamepy_service_runtime, invoke_timeout=self.invoke_timeout)

    def examples(self) -> int:
        value = None if self._flamepy_config is None else self._flamepy_config.getoption("flamepy_max_examples", None)
        return int(value or self.max_examples)

    def hypothesis_settings(self, **overrides: Any) -> settings:
        """Bounded examples, no per-example deadline (a first invoke starts an instance), no database."""
        options: dict[str, Any] = {
            "max_examples": self.examples(),
            "deadline": None,
            "database": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
        }
        if not self.shrink_failures:
            options["phases"] = [Phase.explicit, Phase.reuse, Phase.generate]
        options.update(overrides)
        return settings(**options)

    def require_streaming(self) -> None:
        if not self.runtime.streaming:
            pytest.skip(f"capability 'streaming' not declared by transport {self.runtime.transport_name}")

    @contextlib.contextmanager
    def session(self, ctx: list[Any] | None = None) -> Iterator[Handle]:
        """A fresh session of the model service, closed afterwards whatever happens."""
        handle = self.client.create(ctx)
        try:
            yield handle
        finally:
            self.client.close_quietly(handle)

    # -- the tests -------------------------------------------------------------------------------------

    def test_echo_returns_each_task_its_own_answer(self) -> None:
        """Sequential invokes in one session: each answer is that request's, in order, counted once."""
        with self.session() as handle:

            @self.hypothesis_settings()
            @given(value=service_values())
            def check(value: Any) -> None:
                self.client.echo(handle, value)

            check()
            self.client.echo(handle, ["last", 1])
            self.client.check_counters(handle.session)

    def test_concurrent_invokes_each_get_their_own_answer(self) -> None:
        """Threads invoking one session at once (tasks overlap and finish out of order)."""
        with self.session() as handle:
            for delays in ([0.0], [0.02, 0.0, 0.01], [0.0, 0.03]):
                values = [f"value-{i}" for i in range(self.concurrency * 2)]
                self.client.concurrently(handle, values, delays)
            self.client.check_counters(handle.session)

    def test_run_futures_each_hold_their_own_answer(self) -> None:
        """``Session.run()`` (needs streaming: one WatchSession stream completes every future)."""
        self.require_streaming()
        with self.session() as handle:
            self.client.futures(handle, [f"future-{i}" for i in range(8)])
            self.client.check_counters(handle.session)

    def test_context_updates_reach_the_client(self) -> None:
        """The service's ``update_context`` is what ``session.context()`` and a reopened session read."""
        with self.session(ctx=["start"]) as handle:
            for value in ["a", {"b": [1, None]}, 3]:
                self.client.append(handle, value)
            self.client.service_context(handle)
            reopened = self.client.reopen(handle.session)
            assert reopened is not None
            self.client.append(reopened, "via the reopened session")
            self.client.check_client_context(handle)
            self.client.check_counters(handle.session)

    def test_session_without_context(self) -> None:
        """No ``ctx``: the context reads None on both sides and the service's updates are ignored."""
        with self.session(ctx=None) as handle:
            self.client.append(handle, "ignored")
            self.client.append(handle, "ignored too")
            self.client.service_context(handle)
            self.client.check_counters(handle.session)

    def test_failed_task_raises_its_message(self) -> None:
        """A raising entrypoint: FlameError(INTERNAL) with the exception's text; the session goes on."""
        with self.session() as handle:
            self.client.fail(handle, "the model service refused ✓")
            self.client.echo(handle, "still serving")
            self.client.fail(handle, "and again")
            self.client.check_counters(handle.session)

    def test_session_lifecycle_error_codes(self) -> None:
        """Unknown ids are NOT_FOUND; a closed session refuses tasks and reopening (INVALID_STATE)."""
        app = self.runtime.app
        expect_flame_error(
            FlameErrorCode.NOT_FOUND, lambda: Session(session_id=f"{app}-nosuch"), "reopening an unknown session id"
        )
        expect_flame_error(
            FlameErrorCode.NOT_FOUND,
            lambda: flamepy.get_session(f"{app}-nosuch"),
            "get_session of an unknown session id",
        )
        expect_flame_error(
            FlameErrorCode.NOT_FOUND,
            lambda: Session(f"{app}-no-such-application"),
            "creating a session of an application that is not registered",
        )
        handle = self.client.create(None)
        other = self.client.reopen(handle.session)
        assert other is not None
        self.client.echo(handle, "before closing")
        self.client.close(handle)
        self.client.close(handle)  # a second close does nothing
        self.client.echo(handle, "after closing")  # RuntimeError: this object is closed
        self.client.echo(other, "through another object")  # INVALID_STATE: the session is closed
        self.client.close(other)  # closing a closed session through another object is quiet
        assert self.client.reopen(handle.session) is None  # INVALID_STATE
        self.client.check_counters(handle.session)

    def test_objects_put_patch_update_get(self) -> None:
        """The object cache through the public API: values, patches in order, versions that grow."""
        with self.session() as handle:
            obj = self.client.put(handle.session.id, {"base": [1, 2]})
            self.client.patch(obj, "first patch")
            self.client.patch(obj, {"second": None})
            self.client.check_object(obj)
            self.client.update(obj, ["replaced"])
            self.client.check_object(obj)
            self.client.patch(obj, 5)
            self.client.check_object(obj)
            prefix = obj.ref.key.rsplit("/", 1)[0]
            missing = ObjectRef(endpoint=obj.ref.endpoint, key=f"{prefix}/nosuchobject", version=1)
            expect_flame_error(FlameErrorCode.NOT_FOUND, lambda: flamepy.get_object(missing), "get_object of no object")

    def test_context_update_is_visible_when_its_task_returns(self) -> None:
        """Once the task that called ``update_context`` has returned, every reader sees the update at once:
        the session that invoked it, another ``Session`` object of it, the service's next task, and after a
        ``run()`` future completes."""
        with self.session(ctx=["start"]) as handle:
            reader = self.client.reopen(handle.session)
            assert reader is not None
            for i in range(4):
                self.client.append(handle, f"invoke {i}")  # reads the context back at once, through handle
                self.client.check_client_context(reader)
                self.client.service_context(handle)
            if self.runtime.streaming:
                for i in range(3):
                    value = f"run {i}"
                    assert handle.session.context is not None
                    handle.session.context.append(value)
                    future = handle.client.run({"op": "append", "value": value})
                    got = future.result(timeout=self.invoke_timeout)
                    handle.session.succeeded += 1
                    assert got == {"length": len(handle.session.context)}, f"run(append {value!r}) gave {got!r}"
                    self.client.check_client_context(handle)
                    self.client.check_client_context(reader)
            self.client.check_counters(handle.session)

    def test_invoke_timeout_is_honoured_end_to_end(self) -> None:
        """``invoke(timeout=t)`` on a longer task: DEADLINE_EXCEEDED after ``t``, not before and not when the task
        ends; the task keeps running and its result is stored; the session goes on."""
        short, task = self.short_invoke_timeout_s, self.slow_task_s
        with self.session() as handle:
            self.client.echo(handle, "warm-up: an instance is bound, so the timeout meets the task itself")
            request = {"op": "sleep", "seconds": task, "value": "slow"}
            started = time.monotonic()
            expect_flame_error(
                FlameErrorCode.DEADLINE_EXCEEDED,
                lambda: handle.client.invoke(request, timeout=short),
                f"invoke(timeout={short}) of a task that runs {task} s",
            )
            took = time.monotonic() - started
            assert took >= short - DEADLINE_RESOLUTION_S, f"invoke(timeout={short}) gave up after {took:.2f} s"
            assert took <= short + PROMPT_FAILURE_S, (
                f"invoke(timeout={short}) raised after {took:.2f} s; it must come within {PROMPT_FAILURE_S} s of "
                f"the timeout, not when the task ends"
            )
            handle.session.succeeded += 1  # it keeps running, and its result is stored
            deadline = time.monotonic() + task + self.invoke_timeout
            while flamepy.get_session(handle.session.id).succeed < handle.session.succeeded:
                assert time.monotonic() < deadline, "the task whose invoke timed out never finished"
                time.sleep(0.05)
            got = handle.client.invoke({"op": "sleep", "seconds": 0.05, "value": "quick"}, timeout=task + short)
            handle.session.succeeded += 1
            assert got == {"echo": "quick"}, f"invoke(timeout={task + short}) of a 0.05 s task gave {got!r}"
            self.client.check_counters(handle.session)

    def test_refused_close_is_reported_not_swallowed(self) -> None:
        """``close()`` while a task runs is refused with INVALID_STATE; the session stays open and usable."""
        with self.session() as handle:
            self.client.echo(handle, "warm-up")
            request = {"op": "sleep", "seconds": self.slow_task_s, "value": "busy"}
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flamepy-service-suite") as pool:
                running = pool.submit(handle.client.invoke, request, timeout=self.invoke_timeout)
                deadline = time.monotonic() + self.invoke_timeout
                while flamepy.get_session(handle.session.id).running < 1:
                    assert time.monotonic() < deadline and not running.done(), "the slow task never ran"
                    time.sleep(0.02)
                expect_flame_error(
                    FlameErrorCode.INVALID_STATE,
                    handle.client.close,
                    f"close() of session {handle.session.id} while a task runs",
                )
                state = flamepy.get_session(handle.session.id).state.name
                assert state == "OPEN", f"a refused close() left session {handle.session.id} {state}"
                assert running.result(timeout=self.invoke_timeout) == {"echo": "busy"}
            handle.session.succeeded += 1
            self.client.echo(handle, "the Session object whose close() was refused still works")
            self.client.check_counters(handle.session)

    def test_failed_task_message_and_traceback_arrive_whole(self) -> None:
        """A failing task's exception message (of any width of character) and its traceback arrive whole up to
        the documented limit; a longer text keeps its head and its tail."""
        limit = MAX_FAILURE_TEXT
        with self.session() as handle:
            message = _printable_text((limit - 4096) // 2)  # it shows twice: the summary and the traceback's end
            what = f"a task raising ValueError with a message of {len(message)} characters, three frames deep"
            err = expect_flame_error(
                FlameErrorCode.INTERNAL,
                lambda: handle.client.invoke({"op": "fail_deep", "message": message}, timeout=self.invoke_timeout),
                what,
            )
            handle.session.failed += 1
            text = err.message
            assert text.startswith(f"ValueError: {message}"), (
                f"{what}: the text must begin with the whole message ({len(message)} characters; texts up to "
                f"{limit} arrive whole); it is {len(text)} characters: {text[:80]!r}...{text[-80:]!r}"
            )
            assert "Traceback (most recent call last)" in text, f"{what}: no traceback in {len(text)} characters"
            frames = [text.find(f"in {name}") for name in ("_level_one", "_level_two", "_level_three")]
            assert -1 not in frames and frames == sorted(frames), (
                f"{what}: the traceback must show _level_one, _level_two and _level_three in order ({frames})"
            )
            huge = _printable_text(2 * limit)
            what = f"a task raising ValueError with a message of {len(huge)} characters"
            err = expect_flame_error(
                FlameErrorCode.INTERNAL,
                lambda: handle.client.invoke({"op": "fail_deep", "message": huge}, timeout=self.invoke_timeout),
                what,
            )
            handle.session.failed += 1
            text = err.message
            assert len(text) <= limit + 100, f"{what}: {len(text)} characters arrived; the limit is {limit}"
            assert text.startswith(f"ValueError: {huge[:1000]}"), f"{what}: the head was not kept: {text[:80]!r}"
            assert text.rstrip().endswith(huge[-1000:].rstrip()), f"{what}: the tail was not kept: {text[-80:]!r}"
            self.client.check_counters(handle.session)

    def test_service_state_machine(self) -> None:
        """Everything above in random orders (:class:`ServiceMachine`), shrunk to the shortest failure."""
        runtime, timeout, concurrency = self.runtime, self.invoke_timeout, self.concurrency

        class Machine(ServiceMachine):
            def __init__(self) -> None:
                super().__init__(runtime, invoke_timeout=timeout, concurrency=concurrency)

        run_state_machine_as_test(Machine, settings=self.hypothesis_settings(stateful_step_count=self.stateful_steps))


__all__ = [
    "MODEL_SERVICE",
    "Handle",
    "ModelObject",
    "ModelSession",
    "ServiceClient",
    "ServiceMachine",
    "ServiceRuntime",
    "ServiceTests",
    "failure_messages",
    "service_values",
]
