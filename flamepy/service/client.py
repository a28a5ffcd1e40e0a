"""``Session``: the typed client of a ``FlameInstance`` service.

Requests and results go through a serializer, chosen per session: ``Session(serializer=...)`` > the
serializer the application was registered with (its ``FLAME_SERIALIZER`` environment, looked up once per
process with ``get_application``; for ``session_id=...`` the session's application) > the configuration
(``FLAME_SERIALIZER``, ``flame.yaml``) > cloudpickle. See :mod:`flamepy_core.serialization` for the
payload framing and the mismatch errors. Values are encoded before anything is sent, so a value the
serializer cannot carry fails here, in the caller, and creates no task.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from flamepy_core.client.api import create_session, open_session
from flamepy_core.client.objects import delete_objects, get_object, put_object
from flamepy_core.client.serializers import session_serializer
from flamepy_core.client.session import CancellableFuture, TaskFuture
from flamepy_core.client.session import Session as CoreSession
from flamepy_core.contracts.serializer import Serializer
from flamepy_core.model import ResourceRequirement, Task, short_name
from flamepy_core.objref import ObjectRef
from flamepy_core.serialization import decode_context, decode_payload, encode_payload

log = logging.getLogger(__name__)


class ResultFuture(CancellableFuture[Any]):
    """The future of ``Session.run()``: the decoded result of one task.

    ``cancel()`` cancels the task on the server (see :class:`flamepy_core.client.session.TaskFuture`):
    True once the task is CANCELLED, False when it finished first. ``task_id`` names the task.
    """

    def __init__(self, inner: TaskFuture) -> None:
        super().__init__()
        self._inner = inner

    @property
    def task_id(self) -> str:
        """The task's id (waits for the server to create it: ``run()`` submits in batches)."""
        return self._inner.task_id

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        self._inner.cancel()  # when it cancels the task, its callback has cancelled this future too
        return self.cancelled()


class Session:
    """Create (``name``) or reopen (``session_id``) a session and invoke its service with Python objects."""

    def __init__(
        self,
        name: str | None = None,
        ctx: Any = None,
        session_id: str | None = None,
        resreq: ResourceRequirement | dict[str, Any] | str | None = None,
        *,
        serializer: str | None = None,
        min_instances: int = 0,
        max_instances: int | None = None,
    ) -> None:
        if name is None and session_id is None:
            raise ValueError("Either 'name' or 'session_id' must be provided")
        if name is not None and session_id is not None:
            raise ValueError("Cannot provide both 'name' and 'session_id'. They are mutually exclusive.")
        self._serializer: Serializer
        self._serializer_origin: str
        self._session: CoreSession | None
        if session_id is not None:
            self._session = open_session(session_id)
            self.name = self._session.application
            self._serializer, self._serializer_origin = session_serializer(serializer, self.name)
        else:
            assert name is not None
            self.name = name
            self._serializer, self._serializer_origin = session_serializer(serializer, name)
            sid = short_name(name)
            common_data = None
            if ctx is not None:
                # Stored as the serializer's bytes, as Flame's SDK stores it (cloudpickle bytes), so a
                # service written with either SDK reads the same context.
                common_data = put_object(f"{name}/{sid}", encode_payload(ctx, self._serializer)).encode()
            try:
                self._session = create_session(
                    name,
                    common_data,
                    session_id=sid,
                    min_instances=min_instances,
                    max_instances=max_instances,
                    resreq=ResourceRequirement.from_any(resreq),
                )
            except BaseException:
                if common_data is not None:  # leave no orphan context behind
                    with contextlib.suppress(Exception):
                        delete_objects(f"{name}/{sid}")
                raise

    def _core(self) -> CoreSession:
        if self._session is None:
            raise RuntimeError("Service session is not initialized")
        return self._session

    def id(self) -> str | None:
        return self._session.id if self._session is not None else None

    def invoke(self, request: Any = None, timeout: float | None = None, *, task_timeout: float | None = None) -> Any:
        """Call the service's entrypoint with ``request``; returns its result (waits as long as it runs).

        ``timeout`` bounds this call's wait (the task keeps running past it); ``task_timeout`` (seconds,
        flamepy's server only) bounds the task itself, overriding the application's ``spec.task_timeout``:
        past it the task fails and its instance is stopped and replaced.
        """
        payload = encode_payload(request, self._serializer)  # before anything is sent
        output = self._core().invoke(payload, timeout=timeout, task_timeout=task_timeout)
        return None if output is None else self._decode(output)

    def run(self, request: Any = None, *, task_timeout: float | None = None) -> ResultFuture:
        """Submit ``request`` now; the future holds the decoded result, and ``cancel()`` cancels the task.

        ``task_timeout``: as for :meth:`invoke`."""
        inner = self._core().run(encode_payload(request, self._serializer), task_timeout=task_timeout)
        outer = ResultFuture(inner)

        def settle(done: Future[bytes | None]) -> None:
            if done.cancelled():
                outer.end_cancelled()
                return
            try:
                output = done.result()
                outer.set_result(None if output is None else self._decode(output))
            except BaseException as exc:
                outer.set_exception(exc)

        inner.add_done_callback(settle)
        return outer

    @property
    def serializer(self) -> Serializer:
        """The serializer of this session's requests and results."""
        return self._serializer

    def _decode(self, output: bytes) -> Any:
        return decode_payload(
            output, self._serializer, peer="service", what="result", chosen_by=self._serializer_origin
        )

    def context(self) -> Any:
        """The session's shared context as the service last stored it, or None."""
        data = self._core().common_data()
        if not data:
            return None
        return decode_context(get_object(ObjectRef.decode(data)), self._serializer, peer="service")

    def cancel_task(self, task_id: str) -> Task:
        """Cancel one task of this session (a ``run()`` future names its task: ``future.task_id``).

        Returns the task once final: CANCELLED, or the state it reached first. A running task's instance
        is stopped, and a fresh one takes the session's other tasks.
        """
        return self._core().cancel_task(task_id)

    def close(self, force: bool = False) -> None:
        """Close the session (once; later calls do nothing). Refused while a task runs, unless ``force``:
        then its pending and running tasks are cancelled (their instances stopped) first."""
        if self._session is not None:
            # Forget the session only once it is closed: a refused close (running tasks) leaves it usable.
            self._session.close(force=force)
            self._session = None

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        # Leaving because of an exception: that exception is what the caller must see. A close that
        # fails too (a task still runs, the server is gone) is logged and noted on it, never raised.
        session_id = self.id()
        try:
            self.close()
        except Exception as close_error:
            note = (
                f"flamepy: leaving the `with Session` block did not close session {session_id}: {close_error}. "
                f"It stays open; cancel its tasks with `flmctl cancel -s {session_id}`, or close it with "
                f"`flmctl close --force -s {session_id}`"
            )
            log.warning("%s", note)
            add_note = getattr(exc, "add_note", None)  # Python 3.11+
            if add_note is not None:
                add_note(note)
