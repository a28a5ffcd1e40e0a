"""Deliberately wrong runtime behaviours, for ``test_service_suite_has_teeth.py``: a pytest plugin module.

Loaded with ``-p broken_runtime`` into the pytester run of the service suite, whose runtime is the
engine inside that same process (transport ``inmem``), it monkeypatches the engine before any server is
built. ``FLAMEPY_BROKEN_RUNTIME`` names the flaw; unset, nothing is patched (the control run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import CallContext, Handler, UnaryHandler
from flamepy_core.engine import server
from flamepy_core.engine.objects import ObjectCache
from flamepy_core.engine.state import Engine
from flamepy_core.wire.proto import cache_pb2

ENV = "FLAMEPY_BROKEN_RUNTIME"


def lost_context_updates() -> None:
    """``update`` bumps the version but keeps the old value: the service's ``update_context`` is lost."""
    original = ObjectCache.update

    def update(self: ObjectCache, key: str, data: bytes) -> cache_pb2.ObjectRef:
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
        if kwargs.get("failure") is None:
            output = kwargs.get("output")
            kwargs["output"] = previous.get(session_id, output)
            previous[session_id] = output
        return original(self, session_id, task_id, **kwargs)

    Engine.finish_task = finish_task  # type: ignore[method-assign]


def not_found_becomes_internal() -> None:
    """The frontend reports every NOT_FOUND as INTERNAL (an error code changed on the way out)."""
    original = server.frontend_handlers

    def remap(handler: Handler) -> Handler:
        if not isinstance(handler, UnaryHandler):
            return handler
        inner = handler.fn

        def call(data: bytes, ctx: CallContext) -> bytes:
            try:
                return inner(data, ctx)
            except FlameError as exc:
                if exc.code == FlameErrorCode.NOT_FOUND:
                    raise FlameError(FlameErrorCode.INTERNAL, exc.message) from exc
                raise

        return UnaryHandler(call)

    def frontend_handlers(*args: object, **kwargs: object) -> Mapping[str, Handler]:
        return {path: remap(h) for path, h in original(*args, **kwargs).items()}  # type: ignore[arg-type]

    server.frontend_handlers = frontend_handlers  # type: ignore[assignment]


FLAWS: dict[str, Callable[[], None]] = {
    "lost-context-updates": lost_context_updates,
    "another-tasks-answer": answered_with_another_tasks_output,
    "not-found-becomes-internal": not_found_becomes_internal,
}


def pytest_configure(config: pytest.Config) -> None:
    flaw = os.environ.get(ENV, "")
    if flaw:
        FLAWS[flaw]()
