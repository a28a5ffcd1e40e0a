"""Deliberately wrong runtime behaviours, for ``test_service_suite_has_teeth.py``: a pytest plugin module.

Loaded with ``-p broken_runtime`` into the pytest run of the service suite, whose runtime is the engine
inside that same process (transport ``inmem``, in-process instances), it patches the engine, the client
and the service layer before any server is built. Every patch is inert until its flaw is switched on:
:data:`ACTIVE` names the flaw of the test class running (each class sets it for its own tests), so one
run holds every broken runtime and the intact control.

The flaws, each the kind of change a contributor might make:

* ``lost-context-updates``       - the cache's ``update`` bumps the version but keeps the old value;
* ``another-tasks-answer``       - each completed task is stored with the output of the one before it;
* ``not-found-becomes-internal`` - the frontend reports every NOT_FOUND as INTERNAL;
* ``context-written-behind``     - ``update_context`` hands the write to a timer thread so the task returns
  sooner: the task has returned before its update is visible;
* ``invoke-timeout-dropped``     - ``Session.invoke`` accepts ``timeout`` but does not pass it on;
* ``refused-close-swallowed``    - the core session's ``close`` swallows the server's refusal;
* ``failure-text-cut``           - the engine stores failure texts in a 4,096-character column;
* ``traceback-dropped``          - the instance reports a failed task as ``Type: message`` alone (the
  service's traceback "is noise for users").
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pytest

import flamepy.service.client as typed_client
from flamepy.service.instance import FlameInstance
from flamepy_core.client import session as core_session
from flamepy_core.client.objects import update_object
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import CallContext, Handler, UnaryHandler
from flamepy_core.engine import server, state
from flamepy_core.engine.objects import ObjectCache
from flamepy_core.engine.state import Engine
from flamepy_core.failure_text import bound_failure_text
from flamepy_core.instance import runtime
from flamepy_core.objref import ObjectRef
from flamepy_core.serialization import encode_payload
from flamepy_core.wire.proto import cache_pb2

ACTIVE = ""
"""The flaw switched on now ("" for none): set by each test class of the run for its own tests."""


def _on(flaw: str) -> bool:
    return flaw == ACTIVE


def lost_context_updates() -> None:
    original = ObjectCache.update

    def update(self: ObjectCache, key: str, data: bytes) -> cache_pb2.ObjectRef:
        if not _on("lost-context-updates"):
            return original(self, key, data)
        try:
            current = self.get(key, 0)
        except FlameError:
            return original(self, key, data)
        return original(self, key, current.base)

    ObjectCache.update = update  # type: ignore[method-assign]


def answered_with_another_tasks_output() -> None:
    """Each completed task of a session is stored with the output of the one completed before it."""
    original = Engine.finish_task
    previous: dict[str, bytes | None] = {}

    def finish_task(self: Engine, session_id: str, task_id: int, **kwargs: Any) -> bool:
        if not _on("another-tasks-answer") or kwargs.get("failure") is not None:
            return original(self, session_id, task_id, **kwargs)
        output = kwargs.get("output")
        kwargs["output"] = previous.get(session_id, output)
        previous[session_id] = output
        return original(self, session_id, task_id, **kwargs)

    Engine.finish_task = finish_task  # type: ignore[method-assign]


def not_found_becomes_internal() -> None:
    original = server.frontend_handlers

    def remap(handler: Handler) -> Handler:
        if not isinstance(handler, UnaryHandler):
            return handler
        inner = handler.fn

        def call(data: bytes, ctx: CallContext) -> bytes:
            try:
                return inner(data, ctx)
            except FlameError as exc:
                if exc.code == FlameErrorCode.NOT_FOUND and _on("not-found-becomes-internal"):
                    raise FlameError(FlameErrorCode.INTERNAL, exc.message) from exc
                raise

        return UnaryHandler(call)

    def frontend_handlers(*args: object, **kwargs: object) -> Mapping[str, Handler]:
        return {path: remap(h) for path, h in original(*args, **kwargs).items()}  # type: ignore[arg-type]

    server.frontend_handlers = frontend_handlers  # type: ignore[assignment]


def context_written_behind() -> None:
    original = FlameInstance.update_context

    def update_context(self: FlameInstance, data: Any) -> None:
        ref = self._ref
        if ref is None or not _on("context-written-behind"):
            return original(self, data)
        payload = encode_payload(data, self.serializer)
        # "Off the task's critical path": the write lands a moment after the task has returned.
        timer = threading.Timer(0.3, update_object, args=(ref, payload))
        timer.daemon = True
        timer.start()
        self._ref = ObjectRef(endpoint=ref.endpoint, key=ref.key, version=ref.version + 1)

    FlameInstance.update_context = update_context  # type: ignore[method-assign]


def invoke_timeout_dropped() -> None:
    original = typed_client.Session.invoke

    def invoke(self: typed_client.Session, request: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        return original(self, request, None if _on("invoke-timeout-dropped") else timeout, **kwargs)

    typed_client.Session.invoke = invoke  # type: ignore[method-assign]


def refused_close_swallowed() -> None:
    original = core_session.Session.close

    def close(self: core_session.Session, *args: Any, **kwargs: Any) -> None:
        if not _on("refused-close-swallowed"):
            return original(self, *args, **kwargs)
        with contextlib.suppress(FlameError):  # "closing must never raise"
            original(self, *args, **kwargs)

    core_session.Session.close = close  # type: ignore[method-assign]


def failure_text_cut() -> None:
    original = state.bound_failure_text

    def bound_failure_text(text: str, *args: Any, **kwargs: Any) -> str:
        bounded = original(text, *args, **kwargs)
        return bounded[:4096] if _on("failure-text-cut") else bounded

    state.bound_failure_text = bound_failure_text  # type: ignore[assignment]


def traceback_dropped() -> None:
    original = runtime.describe_exception

    def describe_exception(exc: BaseException) -> str:
        if not _on("traceback-dropped"):
            return original(exc)
        return bound_failure_text(f"{type(exc).__name__}: {exc}")

    runtime.describe_exception = describe_exception


FLAWS: dict[str, Callable[[], None]] = {
    "lost-context-updates": lost_context_updates,
    "another-tasks-answer": answered_with_another_tasks_output,
    "not-found-becomes-internal": not_found_becomes_internal,
    "context-written-behind": context_written_behind,
    "invoke-timeout-dropped": invoke_timeout_dropped,
    "refused-close-swallowed": refused_close_swallowed,
    "failure-text-cut": failure_text_cut,
    "traceback-dropped": traceback_dropped,
}


def pytest_configure(config: pytest.Config) -> None:
    for install in FLAWS.values():
        install()


@pytest.fixture(scope="class")
def broken_runtime_flaw(request: pytest.FixtureRequest) -> Any:
    """Switch on the flaw the test class names (``flaw = "..."``) for the class's tests."""
    global ACTIVE
    ACTIVE = getattr(request.cls, "flaw", "")
    try:
        yield ACTIVE
    finally:
        ACTIVE = ""
