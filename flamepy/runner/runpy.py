"""``FlameRunpyService``: the generic service behind every Runner application (``flmrun``).

Run as ``python -m flamepy.runner.runpy``. On ``on_session_enter`` it reads the session's
:class:`~flamepy.runner.types.RunnerContext` from the object cache (the common data is its ``ObjectRef``)
and, for a class, makes one instance. Each task is a cloudpickled
:class:`~flamepy.runner.types.RunnerRequest`: arguments that are object refs are fetched first (several
at once in parallel), the object or its method is called, and the result is stored in the cache under
``<app>/<session id>``; the task's output is that ref, BSON-encoded. A stateful object (an instance)
is written back to the cache after each successful call, so the session's state survives its process.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle

from flamepy.runner.types import RunnerContext, RunnerRequest
from flamepy_core.client.objects import get_object, put_object, update_object
from flamepy_core.instance.runtime import run
from flamepy_core.instance.service import FlameService, SessionContext, TaskContext
from flamepy_core.objref import ObjectRef

__all__ = ["FlameRunpyService", "main"]

log = logging.getLogger(__name__)

MAX_RESOLVE_THREADS = 8
_MISSING = object()


def _decode_ref(value: Any) -> ObjectRef | None:
    if isinstance(value, ObjectRef):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return ObjectRef.decode(bytes(value))
        except Exception:
            return None  # ordinary bytes pass unchanged
    return None


class FlameRunpyService(FlameService):
    """Runs the execution object of a Runner session."""

    def __init__(self) -> None:
        self._context: RunnerContext | None = None
        self._object: Any = None
        self._ref: ObjectRef | None = None
        self._session_id: str | None = None
        self._app: str | None = None

    def on_session_enter(self, context: SessionContext) -> None:
        data = context.common_data()
        if data is None:
            raise ValueError(
                f"session {context.session_id} has no common data: a Runner session's common data is the "
                f"ObjectRef of its RunnerContext (open it with flamepy.runner.Runner.service)"
            )
        ref = ObjectRef.decode(data)
        stored = get_object(ref)
        runner_context = cloudpickle.loads(stored) if isinstance(stored, (bytes, bytearray)) else stored
        if not isinstance(runner_context, RunnerContext):
            raise ValueError(f"the common data of session {context.session_id} is not a RunnerContext")
        if runner_context.execution_object is None:
            raise ValueError(f"the RunnerContext of session {context.session_id} has no execution object")
        target = runner_context.execution_object
        self._object = target() if isinstance(target, type) else target
        self._context = runner_context
        self._ref = ref
        self._session_id = context.session_id
        self._app = context.application.name

    def _resolve_object_ref(self, value: Any) -> Any:
        """The cached value for an argument that is an ObjectRef (or its encoding); others unchanged."""
        ref = _decode_ref(value)
        if ref is None:
            return value
        return get_object(ref)  # a cached None is a value like any other

    def _resolve_object_refs_parallel(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Top-level arguments that are refs, fetched: one inline, several in parallel."""
        slots: list[tuple[str, Any]] = [(f"arg:{i}", a) for i, a in enumerate(args)]
        slots += [(f"kwarg:{k}", v) for k, v in kwargs.items()]
        refs = [(where, value) for where, value in slots if _decode_ref(value) is not None]
        resolved: dict[str, Any] = {}

        def fetch(item: tuple[str, Any]) -> tuple[str, Any]:
            where, value = item
            try:
                return where, self._resolve_object_ref(value)
            except Exception as exc:
                raise ValueError(f"Failed to resolve ObjectRef at {where}: {exc}") from exc

        if len(refs) == 1:
            resolved.update([fetch(refs[0])])
        elif refs:
            with ThreadPoolExecutor(max_workers=min(MAX_RESOLVE_THREADS, len(refs))) as pool:
                resolved.update(pool.map(fetch, refs))
        new_args = tuple(resolved.get(f"arg:{i}", a) for i, a in enumerate(args))
        new_kwargs = {k: resolved.get(f"kwarg:{k}", v) for k, v in kwargs.items()}
        return new_args, new_kwargs

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        if self._context is None or self._ref is None:
            raise RuntimeError("the Runner service received a task before it entered a session")
        if context.input is None:
            raise ValueError("a Runner task needs input: a cloudpickled RunnerRequest")
        request = cloudpickle.loads(context.input)
        if not isinstance(request, RunnerRequest):
            raise ValueError(f"the task input is a {type(request).__name__}, not a RunnerRequest")
        request = RunnerRequest(request.method, request.args, request.kwargs)  # re-validated
        args, kwargs = self._resolve_object_refs_parallel(tuple(request.args or ()), dict(request.kwargs or {}))
        if request.method is None:
            target = self._object
        else:
            target = getattr(self._object, request.method, _MISSING)
            if target is _MISSING:
                raise ValueError(f"Execution object has no method '{request.method}'")
        if not callable(target):
            raise ValueError(f"'{request.method or type(self._object).__name__}' is not callable")
        result = target(*args, **kwargs)
        if self._context.stateful:
            updated = RunnerContext(self._object, True, self._context.autoscale, self._context.warmup)
            self._ref = update_object(self._ref, cloudpickle.dumps(updated, protocol=cloudpickle.DEFAULT_PROTOCOL))
        stored = put_object(f"{self._app}/{self._session_id}", result)
        return stored.encode()

    def on_session_leave(self) -> None:
        self._context = None
        self._object = None
        self._ref = None
        self._session_id = None


def main() -> None:
    level = os.environ.get("FLAME_LOG", "info").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(FlameRunpyService())


if __name__ == "__main__":
    main()
