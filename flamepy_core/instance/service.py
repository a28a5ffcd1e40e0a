"""Flame's service-side API: ``FlameService`` and the contexts its callbacks receive (names as Flame's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ApplicationContext:
    """The application an instance runs for."""

    name: str
    image: str | None = None
    command: str | None = None
    working_directory: str | None = None
    url: str | None = None


@dataclass
class SessionContext:
    """What ``on_session_enter`` receives. Positional order is Flame's: common data first."""

    _common_data: bytes | None
    session_id: str
    application: ApplicationContext

    def common_data(self) -> bytes | None:
        """The session's common data, as the client sent it (for ``service.Session``, an ObjectRef)."""
        return self._common_data


@dataclass
class TaskContext:
    """What ``on_task_invoke`` receives."""

    task_id: str
    session_id: str
    input: bytes | None


class FlameService:
    """Subclass and implement the three callbacks; raise to fail. Calls come one at a time."""

    def on_session_enter(self, context: SessionContext) -> None:
        """The instance is bound to a session. Raising fails the bind (retried on a fresh instance)."""

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        """Run one task; return its output bytes (or None). Raising fails the task."""
        raise NotImplementedError(f"{type(self).__name__} does not implement on_task_invoke")

    def on_session_leave(self) -> None:
        """The session closed; the instance may be kept warm and bound to another session."""
